r"""
---
title: Process groups - launching under torchrun and talking across ranks
summary: >
  Starting torch.distributed from what torchrun sets, with a timeout that is a setting;
  the small collectives a training loop needs (objects, agreement checks, metrics)
  and the sharding of a batch over the ranks.
---

# Process groups

Everything that runs on several processes starts here. `torchrun` starts one
process per *rank* and tells each, in its environment, who it is (`RANK`,
`WORLD_SIZE`, `LOCAL_RANK`) and where to meet the others (`MASTER_ADDR`,
`MASTER_PORT`, or a rendezvous endpoint). `init_from_env` turns that into a
`torch.distributed` process group, NCCL on GPUs and gloo on CPUs: the code
that follows is the same for both, only the backend differs.

The other helpers are the small collectives a training loop needs beside the
model's own: every rank's random state for a checkpoint, rank 0's run folder
on every rank, a check that the ranks agree on their settings, means and sums
of metrics for rank 0 to log, and each rank's part of a batch. Each returns
the obvious single-process answer when there is no process group, so the
same loop runs on one process without torchrun.

The layers that use the group are in [expert_parallel.py](expert_parallel.py);
[gradient_sync.py](gradient_sync.py) averages the gradients,
[sharded_checkpoint.py](sharded_checkpoint.py) saves and loads,
[watchdog.py](watchdog.py) turns a rank that stops answering into a clear error.

## Timeouts

A collective waits for every rank of its group. If one rank dies, its
sockets close and the others fail at once; if it is *frozen* (stopped,
swapping, deadlocked) they wait until the process group's `timeout` and then
fail. torch's default is 10 minutes for gloo (30 for NCCL); a training loop
wants to know sooner, but not so soon that a slow checkpoint write or a first
`torch.compile` on one rank ends the job. `DEFAULT_TIMEOUT`, 3 minutes, is
the experiment's default; the experiment makes it a setting.
"""

import importlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .watchdog import start_heartbeat, stop_heartbeat, watch

# The experiment's default: long enough for a checkpoint or a compilation, short enough to notice a frozen rank
DEFAULT_TIMEOUT = timedelta(minutes=3)


def require_process_group(group: Any = None) -> tuple[int, int]:
    """
    This rank's number and the number of ranks in `group` (`None`: all ranks),
    or a `RuntimeError` that says how to set the group up.
    """
    # `torch.distributed` may be compiled out, or not set up yet
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun and call "
                           "labml_nn_switch.process_group.init_from_env(), or call "
                           "torch.distributed.init_process_group(...) first")
    #
    return dist.get_rank(group), dist.get_world_size(group)


def world(group: Any = None) -> tuple[int, int]:
    """Rank and world size, or `(0, 1)` in a single process (for the helpers that then do nothing)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


@dataclass
class Launch:
    """
    ## Where this process stands

    What `init_from_env` found: this process's rank among `world_size`, its
    rank on this machine (`local_rank`, the GPU it uses), and its device.
    """
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        """Whether a process group was set up (launched by torchrun)."""
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())


def init_from_env(*, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> Launch:
    """
    ## Start from what torchrun sets

    * `backend`: `"nccl"` or `"gloo"`; by default NCCL where there is a GPU, gloo otherwise
    * `timeout`: how long a collective waits for the other ranks before it fails

    Without `WORLD_SIZE` in the environment (a plain `python -m ...`) nothing is
    set up and the process is rank 0 of 1. Calling it again returns the same
    answer. With a group, it also starts this rank's [heartbeat](watchdog.py),
    so that a timeout can say which rank stopped.
    """
    # A GPU when there is one
    cuda = torch.cuda.is_available()
    # Not launched by torchrun: one process
    if "WORLD_SIZE" not in os.environ:
        return Launch(rank=0, world_size=1, local_rank=0, device=torch.device("cuda" if cuda else "cpu"))
    # What torchrun says
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    # A second call: the backend the group was set up with (gloo on a machine with a GPU, say)
    if dist.is_initialized():
        backend = dist.get_backend()
    # NCCL for GPUs, gloo for CPUs: the only difference between the two paths
    backend = backend or ("nccl" if cuda else "gloo")
    # With NCCL each process drives the GPU of its local rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    # The default process group, rendezvous where torchrun says
    if not dist.is_initialized():
        # (First import `torch._dynamo`, as building a torch optimiser does: imported after the group
        # exists, it keeps the group alive past `destroy_process_group`, and at exit the group's
        # threads can abort the process, "terminate called without an active exception"; torch 2.13)
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timeout)
        # This rank's pulse, for the watchdog's messages
        start_heartbeat()
    #
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_main_process(group: Any = None) -> bool:
    """Rank 0 writes the logs and checkpoints; a single process is rank 0."""
    return world(group)[0] == 0


def shutdown() -> None:
    """Tear the default process group down at the end of a run (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        stop_heartbeat()
        dist.destroy_process_group()


# ## Objects across ranks

def gather_objects(obj: Any, *, group: Any = None) -> list:
    """
    Every rank's `obj` (any picklable value, e.g. its random generator state),
    in rank order, on every rank; `[obj]` in a single process.
    """
    _, world_size = world(group)
    if world_size == 1:
        return [obj]
    # One slot per rank
    objects = [None] * world_size
    with watch("an all-gather of objects (settings, random states)"):
        dist.all_gather_object(objects, obj, group=group)
    return objects


def broadcast_object(obj: Any, *, src: int = 0, group: Any = None) -> Any:
    """Rank `src`'s `obj` on every rank (e.g. the run folder rank 0 chose); `obj` in a single process."""
    _, world_size = world(group)
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def check_same_on_all_ranks(values: dict[str, Any], *, what: str, group: Any = None) -> None:
    """
    ## Ranks must agree

    Gathers `values` (a small dictionary of settings) from every rank and
    raises the same `ValueError` on every rank if any of them differ, naming
    each differing key with every rank's value. Ranks that disagree on a
    layer's configuration would otherwise exchange tensors of sizes the other
    side does not expect, and fail far from the cause, or hang. Called before
    the first step, it costs one small gather.

    * `values`: this rank's settings
    * `what`: what they describe, for the message
    """
    # Every rank's dictionary, in rank order
    gathered = gather_objects(values, group=group)
    # The keys whose values are not the same everywhere
    keys = sorted(set().union(*gathered), key=str)
    differing = [k for k in keys if any(g.get(k, "<missing>") != gathered[0].get(k, "<missing>") for g in gathered)]
    if differing:
        details = "; ".join(
            f"{k}: " + ", ".join(f"rank {r}: {g.get(k, '<missing>')!r}" for r, g in enumerate(gathered))
            for k in differing)
        raise ValueError(f"ranks disagree on {what}: {details}")


# ## Metrics across ranks

@torch.no_grad()
def sum_over_ranks(tensor: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """
    A copy of `tensor` summed over the ranks (every rank must call it): e.g. the
    tokens each expert received, `[n_experts]`, over the global batch. The
    tensor itself in a single process.
    """
    _, world_size = world(group)
    if world_size == 1:
        return tensor
    total = tensor.detach().clone()
    with watch("the metrics' all-reduce"):
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


@torch.no_grad()
def mean_over_ranks(value: torch.Tensor | float, *, group: Any = None) -> torch.Tensor:
    """
    The mean of a metric over the ranks (every rank must call it), for rank 0
    to log: e.g. the loss of the global batch. Pass a tensor on this rank's
    device; a number works with gloo.
    """
    _, world_size = world(group)
    # A float64 copy, on the value's device (NCCL reduces GPU tensors only), summed (gloo has no average)
    total = sum_over_ranks(torch.as_tensor(value).detach().to(torch.float64, copy=True), group=group)
    return total / world_size


# ## Each rank's part of the batch

def shard_batch(batch: torch.Tensor, *, dim: int = 1, group: Any = None) -> torch.Tensor:
    """
    This rank's part of a global batch: block $r$ of $W$ equal blocks along
    `dim` (the batch dimension of `[seq_len, batch_size, ...]`). When every rank
    draws the same global batch from the same seeded sampler and keeps its
    shard, the ranks see disjoint data, the global batch does not depend on
    $W$, and the data order resumes exactly on any number of ranks that divides
    the batch. The whole batch in a single process.

    Every rank is a data-parallel rank, also under expert parallelism: the
    ranks of an expert group exchange tokens, they do not share a batch.
    """
    rank, world_size = world(group)
    if world_size == 1:
        return batch
    size = batch.shape[dim]
    if size % world_size:
        raise ValueError(f"a batch of {size} along dim={dim} does not split evenly over world size {world_size}")
    part = size // world_size
    return batch.narrow(dim, rank * part, part)
