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

With several processes a checkpoint is not a file but a folder, `step_<step>.dcp`, to
which every process writes its own experts ([sharded_checkpoint.py](sharded_checkpoint.py)):
the same three promises hold (it is renamed into place once complete; the last two are
kept, files and folders alike; a folder without its metadata is never loaded), and
`load_checkpoint` returns its state with the folder under `'sharded'`, for the weights
to be loaded into a model built for the processes at hand.
"""

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from labml_nn_switch.process_group import is_main_process
from labml_nn_switch.sharded_checkpoint import fsync_folder, is_sharded_checkpoint, read_extra, save_sharded

# How many checkpoints a run keeps
KEEP = 2
# The name of a checkpoint: a file `step_00000500.pt`, or a sharded checkpoint's folder `step_00000500.dcp`
_NAME = re.compile(r'^step_(\d+)\.(pt|dcp)$')


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
    found = [p for p in Path(folder).glob('step_*') if checkpoint_step(p) is not None
             and (p.is_file() or is_sharded_checkpoint(p))]
    return sorted(found, key=checkpoint_step)


def _prune(folder: Path):
    """Remove all but the newest `KEEP` checkpoints of `folder` (files, or sharded checkpoints' folders)."""
    for old in checkpoints_in(folder)[:-KEEP]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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
    fsync_folder(folder)
    # Only now, with the new one complete, remove all but the newest `KEEP`
    _prune(folder)
    #
    return path


def save_sharded_checkpoint(folder: Path, step: int, state: dict[str, Any], *, model: torch.nn.Module,
                            optimizer: torch.optim.Optimizer, rank_state: Any) -> Optional[Path]:
    """
    ## Save a sharded checkpoint (several processes)

    The same checkpoint in a folder `step_<step>.dcp` written by every process
    ([sharded_checkpoint.py](sharded_checkpoint.py)): each writes its own experts and
    their Adam moments, `state` (the same in every process) once, and `rank_state`
    (its random states) for itself. Atomic like a file; the last two kept. Every
    process calls it; rank 0 gets the path.
    """
    folder = Path(folder)
    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
    path = save_sharded(folder / f'step_{step:08d}.dcp', model, optimizer, extra=state, rank_extra=rank_state)
    if not is_main_process():
        return None
    _prune(folder)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """
    ## Load

    Tensors are loaded onto the CPU; the caller moves the model where it runs.
    `weights_only=True` loads only tensors and plain Python values, never code.
    A file that cannot be a checkpoint raises a `CheckpointError` naming it.
    """
    path = Path(path)
    # A sharded checkpoint: its state here, the model and optimiser loaded by `load_sharded` into a built model
    if is_sharded_checkpoint(path):
        state, world_size = read_extra(path)
        return {**state, 'world_size': world_size, 'sharded': path}
    # What is wrong, if anything
    problem = None
    if path.is_dir():
        problem = 'is a folder without a complete sharded checkpoint (no .metadata)'
    elif not path.is_file():
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
    # A file (or a sharded checkpoint's folder) is the checkpoint itself
    if path.is_file() or is_sharded_checkpoint(path):
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
