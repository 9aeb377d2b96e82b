"""
---
title: Checkpoints that survive a kill
summary: >
  Atomic checkpoints (write to a temporary file, then rename), the last two kept, read back
  with one clear error when a file is truncated or not a checkpoint; the state of every
  random number generator, so a resumed run continues exactly.
---

# Checkpoints that survive a kill

labml 0.5 no longer saves checkpoints (`experiment.add_pytorch_models` and
`experiment.save_checkpoint` are gone), so the experiment keeps its own, in this
small module. What goes *into* a checkpoint is the [training loop](trainer.py)'s
business; this module only writes, finds and reads the files, behind four
functions (`save_checkpoint`, `load_checkpoint`, `find_checkpoint`,
`latest_checkpoint`), so that another way of storing them can take their place.

Three promises:

* **Atomic.** A checkpoint is written to a temporary file in the same folder and
  then renamed to its final name with `os.replace`. A rename within one file system
  is atomic, so a process killed at any moment leaves complete checkpoints only,
  never half a file under a checkpoint's name.
* **Two kept.** A run's `checkpoints/` folder holds `step_<step>.pt` files; after each
  save only the newest two stay. If the newest is damaged anyway (a full disk, a file
  copied in half), the one before it is still there to resume from.
* **Read with care.** A zero-byte, truncated or foreign file gives one line naming the
  file and what is wrong with it (and the previous checkpoint, if there is one), never
  a traceback from deep inside `torch.load`.
"""

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

# How many checkpoints a run keeps
KEEP = 2
# The name of a checkpoint file: `step_00000500.pt`
_NAME = re.compile(r'^step_(\d+)\.pt$')


class CheckpointError(ValueError):
    """
    A checkpoint that cannot be used (missing, empty, truncated, not a checkpoint).
    The command line prints its message as one line and exits with status 2.
    """


def checkpoint_step(path: Path) -> Optional[int]:
    """
    The step in a checkpoint's file name, or `None` for a file not named as one.
    """
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints_in(folder: Path) -> list[Path]:
    """
    The checkpoints in a `checkpoints/` folder, oldest step first.
    """
    found = [p for p in Path(folder).glob('step_*.pt') if checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def save_checkpoint(folder: Path, step: int, state: dict[str, Any]) -> Path:
    """
    ## Save atomically, keep the last two

    * `folder` is the run's `checkpoints/` folder
    * `step` is the number of optimiser steps done; it names the file
    * `state` is a dictionary of tensors, numbers, strings, lists and dictionaries

    Returns the path of the new checkpoint.
    """
    # Make the folder
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'step_{step:08d}.pt'
    # A temporary file in the same folder, so that the rename below stays on one file system
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name + '.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            # Write the checkpoint
            torch.save(state, f)
            # Make sure the bytes are on disk before the rename makes them visible
            f.flush()
            os.fsync(f.fileno())
        # Give it its name in one step
        os.replace(tmp, path)
    except BaseException:
        # A failed (or interrupted) save leaves the previous checkpoints as they were
        Path(tmp).unlink(missing_ok=True)
        raise
    # Persist the rename itself (where the OS lets us open a folder)
    _fsync_folder(folder)
    # Only now, with the new one complete, remove all but the newest `KEEP`
    for old in checkpoints_in(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    #
    return path


def _fsync_folder(folder: Path):
    """Flush a folder's entries to disk; some systems cannot open a folder, and then it is skipped."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """
    ## Load

    Tensors are loaded onto the CPU; the caller moves the model where it runs.
    `weights_only=True` loads only tensors and plain Python values, never code.
    A file that cannot be a checkpoint raises a `CheckpointError` naming it.
    """
    path = Path(path)
    # What is wrong, if anything
    problem = None
    if not path.is_file():
        problem = 'does not exist'
    elif path.stat().st_size == 0:
        problem = 'is empty (0 bytes)'
    else:
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001 -- zip, pickle and EOF errors all mean a damaged file
            # The first line of torch's reason: "failed finding central directory", "invalid load key", ...
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            problem = f'is truncated or not a checkpoint ({reason})'
        else:
            if not isinstance(state, dict) or 'step' not in state:
                problem = 'is not a checkpoint of this experiment (it has no step)'
    if problem is None:
        return state
    # Point at the checkpoint before it, if the run kept one
    message = f'checkpoint {str(path)!r} {problem}'
    older = [p for p in checkpoints_in(path.parent) if p != path and p.stat().st_size > 0]
    if older:
        message += f'; the previous one is {str(older[-1])!r}'
    raise CheckpointError(message)


def find_checkpoint(path: Path) -> Optional[Path]:
    """
    ## Find a checkpoint

    `path` may be a checkpoint file, a run folder (with `checkpoints/`) or the
    `checkpoints/` folder itself; a folder gives its newest checkpoint. Returns
    `None` when there is none.
    """
    path = Path(path)
    # A file is the checkpoint itself
    if path.is_file():
        return path
    # The newest in the folder, or in its `checkpoints/` sub-folder
    for folder in (path / 'checkpoints', path):
        found = checkpoints_in(folder)
        if found:
            return found[-1]
    #
    return None


def latest_checkpoint(experiment_dir: Path) -> Optional[Path]:
    """
    The newest checkpoint of any run of an experiment (`logs/<name>/*/checkpoints/`).
    A run killed before its first checkpoint has none, so `--resume` falls back to
    the run before it.
    """
    # The newest checkpoint of every run
    runs = [run for run in Path(experiment_dir).glob('*') if run.is_dir()]
    found = [p for p in (find_checkpoint(run / 'checkpoints') for run in runs) if p]
    # The one written last
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def rng_state() -> dict[str, Any]:
    """
    ## The state of every random number generator

    Dropout and the router's jitter noise draw from PyTorch's generators (the CPU's,
    and each GPU's); Python's `random` is saved too, for code that uses it. Python's
    state is converted to a list so that it loads with `weights_only=True`.
    """
    # Python's `random`: `(version, tuple of 625 ints, gauss)`
    py_version, py_state, py_gauss = random.getstate()
    state = {'torch': torch.get_rng_state(), 'python': [py_version, list(py_state), py_gauss]}
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
    # CUDA, if it was saved and there is a GPU now
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
