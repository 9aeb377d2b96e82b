"""
---
title: Checkpoints that survive a kill
summary: >
  Atomic checkpoints (write to a temporary file, then rename) holding the model, the optimiser,
  the step, every random number generator's state and the data order, so a resumed run
  continues exactly as if it had never stopped.
---

# Checkpoints that survive a kill

labml 0.5 no longer saves checkpoints (`experiment.add_pytorch_models` and
`experiment.save_checkpoint` are gone), so the experiment keeps its own, in this
small module.

Two promises:

* **Atomic.** A checkpoint is written to a temporary file in the same folder and
  then renamed over the old one with `os.replace`. A rename within one file system is
  atomic, so a process killed at any moment leaves either the previous complete
  checkpoint or the new complete one, never half a file.
* **Exact.** Besides the model and the optimiser, a checkpoint holds the step, the
  state of every random number generator (PyTorch's, CUDA's, Python's `random`,
  NumPy's) and the state of the data order. Resuming from step $N$ and training to
  $2N$ gives the same parameters as training to $2N$ without stopping (on a CPU, in
  float32).
"""

import os
import random
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

# The name of the latest checkpoint inside a run's `checkpoints/` folder
CHECKPOINT_FILE = 'checkpoint.pt'


def save_checkpoint(path: Path, state: dict[str, Any]):
    """
    ## Save atomically

    * `path` is the checkpoint file, e.g. `logs/<name>/<run>/checkpoints/checkpoint.pt`
    * `state` is a dictionary of tensors, numbers, strings, lists and dictionaries
    """
    # Make the folder
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary file in the same folder, so that the rename below stays on one file system
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            # Write the checkpoint
            torch.save(state, f)
            # Make sure the bytes are on disk before the rename makes them visible
            f.flush()
            os.fsync(f.fileno())
        # Replace the previous checkpoint in one step
        os.replace(tmp, path)
    except BaseException:
        # A failed (or interrupted) save leaves the previous checkpoint as it was
        Path(tmp).unlink(missing_ok=True)
        raise
    # Persist the rename itself (where the OS lets us open a folder)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """
    ## Load

    Tensors are loaded onto the CPU; the caller moves the model where it runs.
    `weights_only=True` loads only tensors and plain Python values, never code.
    """
    return torch.load(Path(path), map_location='cpu', weights_only=True)


def find_checkpoint(path: Path) -> Optional[Path]:
    """
    ## Find a checkpoint

    `path` may be a checkpoint file, a run folder (with `checkpoints/checkpoint.pt`)
    or the `checkpoints/` folder itself. Returns `None` when there is none.
    """
    path = Path(path)
    # A file is the checkpoint itself
    if path.is_file():
        return path
    # Look in the folder and in its `checkpoints/` sub-folder
    for candidate in (path / 'checkpoints' / CHECKPOINT_FILE, path / CHECKPOINT_FILE):
        if candidate.is_file():
            return candidate
    #
    return None


def latest_checkpoint(experiment_dir: Path) -> Optional[Path]:
    """
    The newest checkpoint of any run of an experiment (`logs/<name>/*/checkpoints/`).
    A run killed before its first checkpoint has none, so `--resume` falls back to
    the run before it.
    """
    # Every checkpoint of every run
    found = list(Path(experiment_dir).glob(f'*/checkpoints/{CHECKPOINT_FILE}'))
    # The one written last
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def rng_state() -> dict[str, Any]:
    """
    ## The state of every random number generator

    Dropout, the router's jitter noise and sampling draw from these. NumPy's and
    Python's states are converted to tensors and lists so that they load with
    `weights_only=True`.
    """
    # Python's `random`: `(version, tuple of 625 ints, gauss)`
    py_version, py_state, py_gauss = random.getstate()
    # NumPy's legacy global generator: `('MT19937', keys, pos, has_gauss, cached_gaussian)`
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        # PyTorch's CPU generator
        'torch': torch.get_rng_state(),
        #
        'python': [py_version, list(py_state), py_gauss],
        #
        'numpy': [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
    }
    # Every CUDA device's generator, when there is a GPU
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    #
    return state


def set_rng_state(state: dict[str, Any]):
    """
    Restore what `rng_state` saved.
    """
    # PyTorch
    torch.set_rng_state(state['torch'])
    # Python
    py_version, py_state, py_gauss = state['python']
    random.setstate((py_version, tuple(py_state), py_gauss))
    # NumPy
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state['numpy']
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    # CUDA, if it was saved and there is a GPU now
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
