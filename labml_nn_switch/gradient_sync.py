r"""
---
title: Gradient synchronisation - data parallelism beside expert parallelism
summary: >
  DistributedDataParallel averages the replicated parameters' gradients (the experts left
  out); the experts' gradients are averaged over the ranks holding copies of them; and the
  gradient norm of the whole model is clipped the same way on every rank.
---

# Gradient synchronisation

With $W$ ranks, rank $r$'s loss $\mathcal{L}_r$ is over its own part of the
global batch, and the objective is their mean
$\mathcal{L} = \frac{1}{W}\sum_r \mathcal{L}_r$. After the backward pass:

* a **replicated** parameter $\theta$ (router, attention, embeddings) holds
  $\partial \mathcal{L}_r / \partial \theta$ of its own rank only. Its gradient
  is the mean over all $W$ ranks, exactly what `DistributedDataParallel` (DDP)
  computes;
* an **expert** parameter holds the gradient summed over every token it
  served, i.e. $\sum_{r \in g} \partial \mathcal{L}_r / \partial \theta$ over
  the ranks $r$ of its [expert group](expert_parallel.py) $g$, since their
  tokens came to it. Each of the $W / E$ copies of that expert (one per
  group, its *replica group*) saw another group's tokens, so the gradient of
  $\mathcal{L}$ is
  $$\frac{1}{W} \sum_{\text{copies}} \sum_{r \in g} \frac{\partial \mathcal{L}_r}{\partial \theta},$$
  one all-reduce (sum) over the replica group and a division by $W$: after it
  the copies hold the same gradient bit for bit, and stay identical after the
  optimiser's step.

## Why DDP for the replicated part

DDP is PyTorch's data parallelism: it buckets the gradients and all-reduces
each bucket *while the backward pass is still running*, overlapping the
communication with the computation of earlier layers' gradients; a
hand-written all-reduce after the backward waits until it has ended. It
also checks at construction that the ranks hold parameters of the same shapes
and makes them equal to rank 0's. Its result is the same mean up to rounding:
DDP multiplies each gradient by $1/W$ before summing, a hand-written
all-reduce would sum and then divide, which for $W$ a power of two is the same
floating-point number (scaling by a power of two is exact); elsewhere the two
may differ in the last bit. The tests hold both the replicated and the expert
gradients against the single-process model's.

The expert parameters are handed to DDP as parameters to ignore (DDP has no
notion of a parameter replicated on some ranks only), and
`sync_expert_gradients` below averages them after the backward pass: it waits
for the backward to end, but the experts' all-reduce runs over the replica
group only, $W/E$ ranks, and is empty when $E = W$.

## Clipping

`torch.nn.utils.clip_grad_norm_` on one rank would see only its own experts,
compute a different norm on every rank and scale the replicated gradients
differently: the replicas would drift apart. `clip_grad_norm_` below computes
the norm of the whole model, each parameter counted once, the same on every rank.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .expert_parallel import expert_parameters
from .process_group import world
from .watchdog import watch


def data_parallel(model: nn.Module, *, device: torch.device | None = None) -> nn.Module:
    """
    ## Wrap a model for data parallelism

    * `model`: built on every rank from the same seed, with
      [expert-parallel](expert_parallel.py) Switch layers
    * `device`: the rank's GPU (for NCCL); `None` on CPUs

    Returns `DistributedDataParallel(model)` over all ranks with the expert
    parameters left out, or `model` itself in a single process. Train through
    the returned module (its `forward` launches the gradient all-reduce during
    the backward pass); keep `model` for state dicts and everything else.
    """
    _, world_size = world()
    if world_size == 1:
        return model
    # The parameters DDP must leave alone: the experts
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(expert_parameters(model)))
    # `forward_sync_buffers=False`: the model's buffers are constants, built the same on every rank
    return DistributedDataParallel(model, device_ids=[device] if device is not None and device.type == "cuda" else None,
                                   forward_sync_buffers=False)


def unwrap(model: nn.Module) -> nn.Module:
    """The model `data_parallel` wrapped (for state dicts), or `model` itself."""
    return model.module if isinstance(model, DistributedDataParallel) else model


@torch.no_grad()
def sync_expert_gradients(model: nn.Module) -> None:
    r"""
    ## The experts' gradients

    Call after `loss.backward()` and before clipping and the optimiser's step.
    Each expert gradient is summed over its replica group and divided by $W$
    (one flat all-reduce per layer and dtype). A missing gradient (an expert
    that took no part) counts as zero, so that every copy reduces the same
    tensors and the copies stay identical. Nothing to do in a single process.
    """
    _, world_size = world()
    if world_size == 1:
        return
    # The expert gradients, bucketed by their replica group, dtype and device
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for p, layer in expert_parameters(unwrap(model)).values():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault((layer.groups.replica_group, p.grad.dtype, p.grad.device), []).append(p.grad)
    with watch("the expert gradients' all-reduce"):
        for (group, _, _), grads in buckets.items():
            # One flat tensor, summed over the copies, then the mean's $1 / W$
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat.div_(world_size)
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    r"""
    ## Gradient clipping across ranks

    The norm of the whole model,

    $$\begin{aligned}
    \lVert g \rVert^2 = &\sum_{\text{replicated}} \lVert g_\theta \rVert^2 \\
    + &\sum_{j} \sum_{\text{experts of group rank } j} \lVert g_\theta \rVert^2,
    \end{aligned}$$

    counts the replicated gradients (equal on all ranks after the
    synchronisation) once and each expert once: the experts' share is summed
    over one expert group, whose ranks together hold every expert. Every
    gradient is multiplied by $\min(1, \frac{\text{max\_norm}}{\lVert g \rVert + 10^{-6}})$,
    as torch does. Call after `sync_expert_gradients`. Returns $\lVert g \rVert$,
    the same on every rank; in a single process, torch's own clipping.
    """
    model = unwrap(model)
    _, world_size = world()
    if world_size == 1:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    experts = expert_parameters(model)
    expert_ids = {id(p) for p, _ in experts.values()}
    rep = [p.grad for p in model.parameters() if id(p) not in expert_ids and p.grad is not None]
    exp = [p.grad for p, _ in experts.values() if p.grad is not None]
    # Where the norm is computed: the device of the gradients (a GPU with NCCL)
    device = (rep + exp)[0].device if rep or exp else torch.device("cpu")
    zero = torch.zeros((), dtype=torch.float64, device=device)
    # This rank's experts' $\sum \lVert g_\theta \rVert^2$, in float64, summed over its expert group
    expert_sq = sum((torch.linalg.vector_norm(g).to(torch.float64).square() for g in exp), zero)
    groups = {id(layer.groups.expert_group): layer.groups.expert_group for _, layer in experts.values()}
    if len(groups) > 1:
        raise ValueError("clip_grad_norm_ needs every expert-parallel layer on the same expert groups")
    with watch("the gradient norm's all-reduce"):
        for group in groups.values():
            dist.all_reduce(expert_sq, op=dist.ReduceOp.SUM, group=group)
    # The replicated gradients' share, once
    replicated_sq = sum((torch.linalg.vector_norm(g).to(torch.float64).square() for g in rep), zero)
    # $\lVert g \rVert$ of the whole model
    total = (replicated_sq + expert_sq).sqrt()
    # The factor, at most one
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in rep + exp:
        g.mul_(coef.to(g.dtype))
    return total

