r"""
---
title: Sharded checkpoints - every rank writes its own experts, any world reads them
summary: >
  Checkpoints of an expert-parallel model with torch.distributed.checkpoint (DCP): each
  rank writes its shard, a checkpoint saved on W ranks with degree E loads on W' ranks
  with degree E' or in one process, bit for bit, and a crash mid-save leaves the
  previous checkpoint whole.
---

# Sharded checkpoints

A rank of an [expert-parallel](expert_parallel.py) model holds $N / E$ of each
layer's experts. Gathering every expert (and its Adam moments) on one rank to
write a single file would put the whole model on that rank, the very thing
expert parallelism avoids. PyTorch's distributed checkpoint (DCP,
`torch.distributed.checkpoint`) writes a checkpoint as a *folder*: one file
of data per rank and a `.metadata` file that says which slice of which
tensor is where. Loading asks for slices again, whatever slices the loading
ranks hold, and reads them from wherever they were written: that is
**resharding**, and it is DCP's job, not ours.

What we tell DCP is which tensors are slices. An expert weight of a layer,
`[N, d_model, d_hidden]` on one process, is on a rank its `[N / E, ...]`
block of the $[W/E, E]$ device mesh: *sharded* along dimension 0 over the
mesh's `expert` dimension and *replicated* over its `replica` dimension. That
is exactly a `DTensor` with placements `[Replicate(), Shard(0)]` on that mesh,
so at save and load time each expert parameter, and each of its optimiser
states of the same shape, is wrapped as one (`DTensor.from_local`, no copy).
Everything else (router, attention, embeddings, Adam's step counters) is an
ordinary tensor, the same on every rank; DCP writes each such tensor, and
each replicated slice, once.

* **Any world.** A checkpoint saved on $(W, E)$ loads on $(W', E')$: each rank
  asks for its new slices. In one process without a process group (`sample`),
  the ordinary single-process model asks for the whole tensors and gets them:
  the names are the same, since the expert-parallel layer keeps its experts
  under `experts` as the single-process layer does.
* **Bit-identical.** Tensors are written and read as they are: on the same
  world the parameters and the optimiser states come back bit for bit, and
  training continues as if it had not stopped.
* **Atomic.** DCP writes into `<path>.partial`; when every rank has written
  its part and the metadata is on disk, rank 0 renames the folder to `<path>`
  in one step. A crash at any moment before leaves no folder under the
  checkpoint's name, only a `.partial` one, which is never loaded and is
  removed by the next save; the previous checkpoint is untouched.

Other values go in as Python objects: `extra`, the same on every rank (the
step, the data order, the configuration), written once; and `rank_extra`,
one per rank (its random generator states), loaded back only when the world
is the same size, since on another world there is no "same rank".

All ranks must call `save_sharded` and `load_sharded` (they are collectives).
The folder must be on a file system every rank sees (one machine, or a shared
file system across nodes), as DCP's file writer needs.
"""

import io
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor, Replicate, Shard

from .expert_parallel import expert_parameters
from .gradient_sync import unwrap
from .process_group import world
from .watchdog import watch


def _sharded(tensor: torch.Tensor, layer) -> DTensor:
    """This rank's `[N / E, ...]` block of an expert tensor as a `DTensor` of global shape `[N, ...]` (no copy)."""
    shape = (layer.config.n_experts,) + tuple(tensor.shape[1:])
    return DTensor.from_local(tensor, layer.groups.mesh, [Replicate(), Shard(0)], run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


def sharded_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """
    ## What DCP sees

    `{"model": ..., "optimizer": ...}`: the model's `state_dict()` and the
    optimiser's state keyed by parameter name
    (`torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`, which
    also creates the state of an optimiser that has not stepped yet, so that
    there is something to load into). Expert tensors are `DTensor`s viewing
    this rank's storage: loading into them loads into the model and optimiser.
    """
    model = unwrap(model)
    experts = expert_parameters(model)
    # The model: expert weights as slices of the whole
    state = {name: _sharded(t, experts[name][1]) if name in experts else t for name, t in model.state_dict().items()}
    out = {"model": state}
    if optimizer is not None:
        optim = get_optimizer_state_dict(model, optimizer)
        for name, param_state in optim["state"].items():
            if name in experts:
                param, layer = experts[name]
                # Moments of the parameter's shape are sliced like it; scalars (`step`) are replicated
                optim["state"][name] = {k: _sharded(v, layer) if torch.is_tensor(v) and v.shape == param.shape
                                        else v for k, v in param_state.items()}
        out["optimizer"] = optim
    return out


def _local(tree: Any) -> Any:
    """`tree` with every `DTensor` replaced by this rank's block."""
    if isinstance(tree, DTensor):
        return tree.to_local()
    if isinstance(tree, dict):
        return {k: _local(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_local(v) for v in tree]
    return tree


def _blob(value: Any) -> io.BytesIO:
    """A Python value as one opaque item (DCP would otherwise split a dictionary into its keys)."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer


def _unblob(value: Any) -> Any:
    """The Python value `_blob` stored (DCP hands the bytes back as they were written)."""
    value.seek(0)
    # Plain values and tensors only, never code
    return torch.load(value, weights_only=True)


def _barrier() -> None:
    if world()[1] > 1:
        dist.barrier()


def save_sharded(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                 extra: Any = None, rank_extra: Any = None) -> Path:
    """
    ## Save

    * `path`: the checkpoint's folder, which must not exist yet (name it by
      the step); a `<path>.partial` left by a crashed save is removed
    * `model`, `optimizer`: this rank's (a `data_parallel` wrapper is unwrapped)
    * `extra`: a Python value, the same on every rank, written once
    * `rank_extra`: a Python value per rank (its random states, say)

    Every rank calls it; returns `path` once the checkpoint is complete. A
    rank that stops answering meanwhile is named by the [watchdog](watchdog.py).
    """
    with watch(f"saving the sharded checkpoint {str(path)!r}"):
        return _save_sharded(Path(path), model, optimizer, extra=extra, rank_extra=rank_extra)


def _save_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, *,
                  extra: Any, rank_extra: Any) -> Path:
    """The work of `save_sharded`."""
    partial = path.with_name(path.name + ".partial")
    rank, world_size = world()
    if path.exists():
        raise FileExistsError(f"checkpoint {str(path)!r} exists already: name each checkpoint by its step")
    # A previous crash's leftovers
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)
    _barrier()
    state = sharded_state_dict(model, optimizer)
    state["extra"] = _blob({"value": extra, "world_size": world_size})
    state["rank_extra"] = {str(rank): _blob(rank_extra)}
    # Every rank writes its file, rank 0 the metadata last
    with warnings.catch_warnings():
        # (In one process, without a process group, DCP says it saves alone: here that is meant)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=partial)
    _barrier()
    # Complete on every rank: give it its name in one step, and make the rename durable
    if rank == 0:
        os.replace(partial, path)
        fsync_folder(path.parent)
    _barrier()
    return path


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries to disk (where the system lets us open a folder)."""
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


def _load(state: dict, path: Path, *, no_dist: bool) -> None:
    """`dcp.load`, without its warning that one process reads alone: here that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=no_dist)


def is_sharded_checkpoint(path: Path | str) -> bool:
    """Whether `path` is a complete sharded checkpoint (a folder with DCP's metadata, not a `.partial`)."""
    path = Path(path)
    return path.is_dir() and not path.name.endswith(".partial") and (path / ".metadata").is_file()


def read_extra(path: Path | str) -> tuple[Any, int]:
    """
    `extra` and the world size it was saved with, read by this process alone
    (no collective, no process group needed): e.g. the configuration, to build
    the model before loading into it.
    """
    box = {"extra": io.BytesIO()}
    _load(box, Path(path), no_dist=True)
    extra = _unblob(box["extra"])
    return extra["value"], extra["world_size"]


def load_sharded(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[Any, Any]:
    """
    ## Load

    * `path`: a folder `save_sharded` completed
    * `model`, `optimizer`: built for this world (any $W'$ and $E'$, or one
      process with an ordinary model); loaded in place

    Every rank calls it. Returns `(extra, rank_extra)`, with `rank_extra`
    this rank's value when the checkpoint was saved by as many ranks, else `None`.
    """
    path = Path(path)
    if not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"{str(path)!r} is not a complete sharded checkpoint (no folder with .metadata)")
    rank, world_size = world()
    _, saved_world = read_extra(path)
    state = sharded_state_dict(model, optimizer)
    state["extra"] = io.BytesIO()
    if saved_world == world_size:
        state["rank_extra"] = {str(rank): io.BytesIO()}
    # Each rank reads its slices, wherever they were written
    with watch(f"loading the sharded checkpoint {str(path)!r}"):
        _load(state, path, no_dist=not (dist.is_available() and dist.is_initialized()))
    # The model's tensors were loaded in place; the optimiser takes its state back by name
    if optimizer is not None:
        set_optimizer_state_dict(unwrap(model), optimizer, optim_state_dict=_local(state["optimizer"]))
    rank_extra = _unblob(state["rank_extra"][str(rank)]) if saved_world == world_size else None
    return _unblob(state["extra"])["value"], rank_extra
