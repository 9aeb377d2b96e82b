r"""
---
title: Expert parallelism - the Switch layer across processes
summary: >
  An expert-parallel Switch layer on torch.distributed: each process holds N / W of the
  experts, tokens travel to their expert and back with two all-to-alls, and the rest of the
  model is data-parallel. With the helpers that launch, train and checkpoint it under torchrun.
---

# Expert parallelism

The [Switch layer](switch.py) exists to scale past one device. Its parameters
grow with the number of experts $N$ while the work per token stays that of
one FFN, so the experts are the first thing that stops fitting: GShard
([Lepikhin et al. 2020](https://arxiv.org/abs/2006.16668)) and the Switch
Transformer put *different experts on different devices*. The seed
implementation we started from stops at one GPU ("in a distributed setup you
would have each FFN on a different device"); this file goes there, with
PyTorch's own `torch.distributed`.

With $W$ processes (*ranks*), rank $r$ holds

* a full copy of the router $W_r$, and of everything else in the model that
  is not an expert: these are **data-parallel**, every rank sees its own
  batch and their gradients are averaged;
* $E = N / W$ experts, numbers $rE, \dots, (r+1)E - 1$: these are
  **expert-parallel**, no other rank has them.

A token must therefore travel to the rank of its expert and its result must
travel back. Every rank sends tokens to every rank: that is an *all-to-all*,
`torch.distributed.all_to_all_single`, twice per layer.

## The picture

Two ranks, four experts, eight tokens each; `aN` is token `a` for expert `N`.
With a capacity of 2, tokens `g` and `o` found their expert full and were dropped.

```text
   rank 0  (experts 0, 1)                      rank 1  (experts 2, 3)
   tokens a..h of its batch                    tokens i..p of its batch
        │ router, plan_dispatch                     │ router, plan_dispatch
        ▼ (capacity, drop, sort)                    ▼ (capacity, drop, sort)
   ┌ to rank 0 ┐┌ to rank 1 ┐                 ┌ to rank 0 ┐┌ to rank 1 ┐
   │a0 d0 b1 h1││c2 e3 f3   │                 │k0 i1 m1   ││j2 l2 n3 p3│
   └─────┬─────┘└─────┬─────┘                 └─────┬─────┘└─────┬─────┘
         │            └───────────╲ ╱───────────────┘            │
         │        all-to-all #1    ╳  (counts first, then tokens)│
         │            ┌───────────╱ ╲───────────────┐            │
         ▼            ▼                             ▼            ▼
   │a0 d0 b1 h1│k0 i1 m1│                   │c2 e3 f3│j2 l2 n3 p3│
        │ sort by local expert                      │ sort by local expert
        ▼ experts 0, 1: one grouped matmul          ▼ experts 2, 3: one grouped matmul
   │y(a0) ... y(m1)   │                       │y(c2) ... y(p3)   │
         │        all-to-all #2  (the same splits, reversed)      │
         ▼                                                        ▼
   combine: × gate p_i*(x), dropped tokens 0,     combine, as on rank 0
   unsort to the token order: [a .. h]
```

Everything above and below the two all-to-alls is the single-process layer's
own code: this file reuses `SwitchFeedForward.forward` (router, float32
softmax, `plan_dispatch`, capacity, the combine step, the losses) and replaces
only the step that runs the experts.

## What "the same layer" means: capacity per rank

The single-process layer computes the capacity
$C = \lfloor \frac{T}{N} \cdot \text{capacity factor} \rfloor$ over the $T$ tokens
*it sees* and keeps, for each expert, the first $C$ of them in position (or
priority) order. Across ranks, each rank is what GShard calls a *group*: it
routes its own $T_r$ tokens with $C_r = \lfloor \frac{T_r}{N} \cdot
\text{capacity factor} \rfloor$ and decides alone which of them to drop
(Mesh TensorFlow, which the paper ran, also splits the batch into groups and
computes the capacity per group). So:

1. $W$ ranks holding batches $x_0, \dots, x_{W-1}$ give, on rank $r$, **exactly**
   the output, the auxiliary losses and the statistics of the single-process
   layer applied to $x_r$ alone, with the same weights; and the gradients of
   $\sum_r \mathcal{L}(x_r)$ (each expert's summed over all the tokens it served).
2. When no token is dropped (dropless routing, or a capacity no expert
   reaches), this is also the single-process layer on the whole global batch
   $[x_0, \dots, x_{W-1}]$: the route of a token depends on that token alone.
   The load-balancing loss stays per rank (its $f_i P_i$ is not linear in the batch).

A *global* capacity, $\lfloor \frac{\sum_r T_r}{N} \cdot \text{capacity factor}\rfloor$
in global position order, would need every rank to know every other rank's
routing before sending its first token: one more collective per layer, and
batches of different ranks that crowd each other out.

## How the tokens travel: counts first, then variable-size all-to-all

Rank $r$ sends each other rank only its *kept* tokens for that rank's experts,
and that number changes with every batch. `all_to_all_single` takes the sizes
as Python lists, so the ranks first exchange their per-expert counts (a tiny
all-to-all of $N$ integers), read them on the host, and then exchange the
tokens. This costs one device-to-host synchronisation per layer and pass, and
buys: no traffic for dropped tokens or empty slots, dropless routing without a
special case, and ranks holding different numbers of tokens (a last short
batch, an evaluation).

The alternative, fixed buffers `[N, C, d_model]` exchanged with equal splits,
is what the paper did on TPUs, whose compiler needs static shapes: no
synchronisation, but all ranks must agree on $C$, and the empty slots travel
too (the capacity factor times the traffic).

## Gradients

An all-to-all is a permutation of rows across ranks, and the gradient of a
permutation is the inverse permutation: the backward of an all-to-all is the
all-to-all with the send and receive sizes swapped (`AllToAll` below). The
backward pass therefore runs the same two exchanges in reverse order: the
gradients of the expert outputs travel to the experts' ranks, the gradients of
the expert inputs travel back to the tokens' ranks. An expert's weight
gradient is summed over every token it served, whichever rank the token came
from. The replicated parameters are averaged across ranks after the backward
pass by `sync_gradients`, which also divides the experts' gradients by $W$,
so that every parameter gets the gradient of the mean of the ranks' losses.

## Lockstep

Collectives pair up by order: every rank must make the same calls in the same
order, or they wait for each other until the process group's timeout. So every
rank runs every forward pass through a Switch layer (training, evaluation and
sampling alike: give each rank its shard, or all the same input), every
backward pass, and the helpers that communicate (`sync_gradients`,
`clip_grad_norm_`, `full_state_dict`, ...), even where only rank 0 uses the
result. The backward exchanges pair up by themselves: the ranks' graphs have
the same shape, and autograd walks them in the same order.

## Running it

```shell
torchrun --nproc-per-node 2 -m labml_nn_switch.experiment train preset=quick
```

`init_from_env` reads what torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
`MASTER_ADDR`, `MASTER_PORT`), `expert_parallel` converts a built model,
`shard_batch` gives each rank its part of a batch, `sync_gradients` and
`clip_grad_norm_` replace DDP and `torch.nn.utils.clip_grad_norm_`, and
`full_state_dict` / `full_optimizer_state_dict` gather a checkpoint in the
single-process layout (so it also loads into an ordinary model to sample).
NCCL runs it on GPUs, gloo on CPUs.
"""

import copy
import dataclasses
import importlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .feed_forward import Experts
from .switch import DispatchPlan, SwitchConfig, SwitchFeedForward, grouped_mm_supported, plan_dispatch


# ## Process groups
#
# Every function below takes an optional `group`, a `torch.distributed`
# process group; `None` means the default group of all ranks (`WORLD`).

def require_process_group(group: Any = None) -> tuple[int, int]:
    """
    This rank's number and the number of ranks in `group`, or a `RuntimeError`
    that says how to set the group up.
    """
    # `torch.distributed` may be compiled out, or not set up yet
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun and call "
                           "labml_nn_switch.distributed.init_from_env(), or call "
                           "torch.distributed.init_process_group(...) first")
    #
    return dist.get_rank(group), dist.get_world_size(group)


def _world(group: Any = None) -> tuple[int, int]:
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


def init_from_env(*, backend: str | None = None, timeout: timedelta = timedelta(minutes=10)) -> Launch:
    """
    ## Start from what torchrun sets

    * `backend`: `"nccl"` or `"gloo"`; by default NCCL where there is a GPU, gloo otherwise
    * `timeout`: how long a collective waits for the other ranks before failing

    torchrun starts one process per rank with `RANK`, `WORLD_SIZE`,
    `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT` in the environment.
    Without `WORLD_SIZE` (a plain `python -m ...`) nothing is set up and the
    process is rank 0 of 1. Calling it again returns the same answer.
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
    # NCCL for GPUs, gloo for CPUs
    backend = backend or ("nccl" if cuda else "gloo")
    # With NCCL each process drives the GPU of its local rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    # The default process group, rendezvous at `MASTER_ADDR:MASTER_PORT`
    if not dist.is_initialized():
        # (First import `torch._dynamo`, as building a torch optimiser does: imported after the group
        # exists, it keeps the group alive past `destroy_process_group`, and at exit the group's
        # threads can abort the process, "terminate called without an active exception"; torch 2.13)
        importlib.import_module("torch._dynamo")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timeout)
    #
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_main_process(group: Any = None) -> bool:
    """Rank 0 writes the logs and checkpoints; a single process is rank 0."""
    return _world(group)[0] == 0


def shutdown() -> None:
    """Tear the default process group down at the end of a run (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any, *, group: Any = None) -> list:
    """
    Every rank's `obj` (any picklable value, e.g. its random generator state),
    in rank order, on every rank; `[obj]` in a single process.
    """
    _, world_size = _world(group)
    if world_size == 1:
        return [obj]
    # One slot per rank
    objects = [None] * world_size
    dist.all_gather_object(objects, obj, group=group)
    return objects


def broadcast_object(obj: Any, *, src: int = 0, group: Any = None) -> Any:
    """Rank `src`'s `obj` on every rank (e.g. the run folder rank 0 chose); `obj` in a single process."""
    _, world_size = _world(group)
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
    side does not expect, and fail far from the cause, or hang.

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


# ## The all-to-all, with its gradient

class AllToAll(torch.autograd.Function):
    """
    `all_to_all_single` as an autograd function: each rank sends its first
    `send_splits[0]` rows to rank 0, the next `send_splits[1]` rows to rank 1,
    and so on, and receives `recv_splits[s]` rows from each rank $s$,
    concatenated in rank order. Its backward is the same exchange with the
    sizes swapped.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, send_splits: list[int], recv_splits: list[int], group: Any) -> torch.Tensor:
        """`x`: `[sum(send_splits), ...]`; returns `[sum(recv_splits), ...]`."""
        # Kept for the backward pass
        ctx.send_splits, ctx.recv_splits, ctx.group = send_splits, recv_splits, group
        # `[sum(recv_splits), ...]`, filled by the collective
        out = x.new_empty((sum(recv_splits),) + tuple(x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv_splits, input_split_sizes=send_splits,
                               group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """`grad`: `[sum(recv_splits), ...]`; returns the gradient of `x`, `[sum(send_splits), ...]`."""
        # The gradient of each received row goes back to the rank that sent it
        return AllToAll.apply(grad.contiguous(), ctx.recv_splits, ctx.send_splits, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, *, send_splits: list[int], recv_splits: list[int], group: Any = None) -> torch.Tensor:
    """
    * `x`: `[sum(send_splits), ...]`, the rows for rank 0 first, then rank 1, ...

    Returns `[sum(recv_splits), ...]`, differentiable.
    """
    return AllToAll.apply(x, send_splits, recv_splits, group)


# ## Experts split across ranks

def slice_experts(experts: Experts, first: int, last: int) -> Experts:
    """
    A new `Experts` holding copies of experts `first` to `last - 1` of
    `experts` (same device, dtype and options).
    """
    # A bank of the right size, built without disturbing the caller's random state
    with torch.random.fork_rng(devices=[]):
        sliced = Experts(n_experts=last - first, d_model=experts.w1.shape[1], d_ff=experts.w2.shape[1],
                         dropout=experts.dropout.p, activation=experts.activation, bias=experts.b1 is not None)
    # Its weights: copies of the slice (not views: the full bank is not kept alive)
    for name, param in experts.named_parameters(recurse=False):
        setattr(sliced, name, nn.Parameter(param.detach()[first:last].clone(), requires_grad=param.requires_grad))
    # The same mode (expert dropout is on only in training)
    return sliced.train(experts.training)


class ExpertParallelSwitchFeedForward(SwitchFeedForward):
    """
    ## The expert-parallel Switch layer

    A `SwitchFeedForward` (so it drops into a
    [`SwitchTransformerLayer`](transformer.py) unchanged) whose `experts` hold
    only this rank's $E = N / W$ experts. Its `forward` is the parent's: route,
    plan, combine and losses are the same code. Only the step that runs the
    experts, `run_experts`, is replaced by dispatch, all-to-all, local experts,
    all-to-all.
    """

    def __init__(self, config: SwitchConfig | None = None, /, *, group: Any = None, **options):
        r"""
        * `config`: the layer's [`SwitchConfig`](switch.py), the same on every
          rank; its `n_experts` is the number of experts $N$ over **all** ranks,
          a multiple of the world size
        * `options`: or the configuration's fields as keyword arguments
        * `group`: the process group the experts are spread over (`None`: all ranks)

        The whole bank of $N$ experts is drawn and this rank keeps its slice,
        so a layer built from the same seed on every rank holds exactly the
        experts of the single-process layer built from that seed.
        """
        # The group must exist before anything is built
        rank, world_size = require_process_group(group)
        # The single-process layer: checks the options, builds the router and all $N$ experts
        super().__init__(config, **options)
        n_experts = self.config.n_experts
        # Each rank holds the same number of experts
        if n_experts % world_size:
            raise ValueError(f"n_experts={n_experts} is not divisible by the world size {world_size}: "
                             f"each rank must hold the same number of experts")
        self.group = group
        self.rank = rank
        self.world_size = world_size
        # $E$, the experts of one rank
        self.n_local_experts = n_experts // world_size
        # This rank's experts are $rE, \dots, (r+1)E - 1$
        self.expert_slice = (rank * self.n_local_experts, (rank + 1) * self.n_local_experts)
        # Keep only them
        self.experts = slice_experts(self.experts, *self.expert_slice)
        # Every rank must have built the same layer
        check_same_on_all_ranks({**dataclasses.asdict(self.config), "world_size": world_size},
                                what="the Switch layer's configuration", group=group)

    @classmethod
    def from_switch(cls, ff: SwitchFeedForward, *, group: Any = None) -> "ExpertParallelSwitchFeedForward":
        """
        ### From a single-process layer

        An expert-parallel layer with a copy of `ff`'s router and of this
        rank's slice of its experts, on `ff`'s device and in `ff`'s mode;
        `ff` itself is left unchanged. The caller's random state is untouched.
        """
        # Build one with the same options (its own initial weights are replaced below)
        with torch.random.fork_rng(devices=[]):
            ep = cls(ff.config, group=group)
        # A copy of the router, the replicated part (its device, dtype and weights)
        ep.router = copy.deepcopy(ff.router)
        # A copy of this rank's experts
        ep.experts = slice_experts(ff.experts, *ep.expert_slice)
        #
        return ep.train(ff.training)

    def extra_repr(self) -> str:
        """What `print(model)` shows: which experts this rank holds."""
        first, last = self.expert_slice
        return (f"n_experts={self.config.n_experts}, rank={self.rank}, world_size={self.world_size}, "
                f"experts={first}..{last - 1}")

    # ### Running the experts, across ranks
    #
    # `SwitchFeedForward.forward` routes, plans and combines; between those it
    # calls `run_experts`, the one method we replace: the tokens cross the
    # ranks and back, and the local experts run with `grouped_mm` where it can
    # run (float32 or bfloat16) and a padded `bmm` elsewhere (float64, older torch).

    def run_experts(self, x: torch.Tensor, plan: DispatchPlan, capacity: int | None) -> torch.Tensor:
        """The exchange (the capacity is already applied in `plan.keep`)."""
        return self._exchange(x, plan, grouped=grouped_mm_supported(x))

    def _exchange(self, x: torch.Tensor, plan: DispatchPlan, *, grouped: bool) -> torch.Tensor:
        """
        * `x`: `[n_tokens, d_model]`, this rank's tokens
        * `plan`: their `DispatchPlan` over all $N$ experts (sorted by expert, with `keep`)
        * `grouped`: run the local experts with `grouped_mm` (else padded `bmm`)

        Returns the expert outputs in the plan's sorted order, `[n_tokens, d_model]`;
        the rows of dropped tokens are zero (the combine step zeroes them anyway).
        """
        n_tokens = x.shape[0]
        world_size, n_local = self.world_size, self.n_local_experts

        # #### Counts first
        #
        # Kept tokens per expert, `[N]`: $\min(T f_i, C)$, counted on the device
        sent = torch.zeros_like(plan.counts).scatter_add_(0, plan.expert, plan.keep.to(plan.counts.dtype))
        # The experts of rank $s$ are the $s$-th block of $E$ counts, so an equal-split
        # all-to-all hands each rank the counts for its own experts: `recv[s * E + e]`
        # is how many tokens rank $s$ sends to local expert $e$
        recv = torch.empty_like(sent)
        dist.all_to_all_single(recv, sent, group=self.group)
        # The sizes on the host: the one synchronisation of the layer
        sent_host, recv_host = torch.stack([sent, recv]).tolist()
        # Rows to and from each rank
        send_splits = [sum(sent_host[s * n_local:(s + 1) * n_local]) for s in range(world_size)]
        recv_splits = [sum(recv_host[s * n_local:(s + 1) * n_local]) for s in range(world_size)]
        n_send, n_recv = sum(send_splits), sum(recv_splits)

        # #### All-to-all #1: the tokens go to their experts
        #
        # The kept places of the sorted order, in order: the plan sorts by expert,
        # so they are already grouped by destination rank. (A stable `argsort`
        # puts the kept first without reading how many there are.)
        kept = torch.argsort((~plan.keep).to(torch.uint8), stable=True)[:n_send]
        # Their tokens: `[n_send, d_model]`
        x_send = x[plan.order[kept]]
        # This rank's experts' tokens, from rank 0 first: `[n_recv, d_model]`
        x_recv = all_to_all(x_send, send_splits=send_splits, recv_splits=recv_splits, group=self.group)

        # #### The local experts
        #
        # The local expert of each received row: within each source rank's block,
        # `recv[s * E + e]` rows for expert $e$, in expert order
        local_ids = torch.arange(n_local, device=x.device).repeat(world_size)
        row_expert = torch.repeat_interleave(local_ids, recv, output_size=n_recv)
        # Sorted by local expert with the same `plan_dispatch`; every row is kept
        # (the senders have applied the capacity), so no priority is needed
        local = plan_dispatch(row_expert, row_expert.new_zeros(n_recv, dtype=x.dtype), n_experts=n_local,
                              capacity=None)
        # The experts' outputs in that order: `[n_recv, d_model]`
        if grouped and n_recv > 0:
            # One `grouped_mm` per linear layer, no padding
            y = self.experts.forward_grouped(x_recv[local.order], group_ends=local.ends.to(torch.int32),
                                             row_expert=local.expert)
        else:
            # The busiest local expert sets the buffer's slots, known on the host
            per_expert = [sum(recv_host[s * n_local + e] for s in range(world_size)) for e in range(n_local)]
            slots = max(max(per_expert), 1)
            # Row `e * slots + position` of `[E * slots, d_model]` holds each token
            slot = local.expert * slots + local.position
            buffer = x_recv.new_zeros(n_local * slots, x.shape[1]).index_copy(0, slot, x_recv[local.order])
            # All local experts in one `bmm`, then each row's slot
            y = self.experts.forward_padded(buffer.view(n_local, slots, -1)).reshape(n_local * slots, -1)[slot]
        # Back to the order the rows arrived in
        y_recv = torch.empty_like(y).index_copy(0, local.order, y)

        # #### All-to-all #2: the results go home
        #
        # The same exchange reversed: `[n_send, d_model]`, in the order they were sent
        y_back = all_to_all(y_recv, send_splits=recv_splits, recv_splits=send_splits, group=self.group)
        # Into the plan's sorted order; dropped places stay zero
        return y_back.new_zeros(n_tokens, y_back.shape[1]).index_copy(0, kept, y_back)


# ## Whole models
#
# The helpers below work on any `nn.Module` holding Switch layers, e.g. a
# [`SwitchTransformer`](transformer.py) or the experiment's model around one.

def expert_parallel_layers(model: nn.Module) -> list[tuple[str, ExpertParallelSwitchFeedForward]]:
    """The expert-parallel layers of `model`, with their names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ExpertParallelSwitchFeedForward)]


def expert_parameter_names(model: nn.Module) -> list[str]:
    """
    The names of the expert-parallel parameters (the experts' `w1`, `b1`, `w2`, `b2`).
    These are the ones to leave out of data parallelism, e.g. with
    `DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)`
    before wrapping it in DDP.
    """
    return [f"{name}.experts.{p}" for name, layer in expert_parallel_layers(model)
            for p, _ in layer.experts.named_parameters()]


def _split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The replicated parameters and the expert-parallel ones, each in `model.parameters()` order."""
    expert_ids = {id(p) for _, layer in expert_parallel_layers(model) for p in layer.experts.parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) not in expert_ids], [p for p in params if id(p) in expert_ids]


def expert_parallel(model: nn.Module, *, group: Any = None) -> nn.Module:
    """
    ## Convert a model, in place

    Replaces every `SwitchFeedForward` in `model` by an
    `ExpertParallelSwitchFeedForward` holding this rank's slice of its
    experts, then makes every replicated parameter and buffer equal to rank
    0's. Build the model with the same seed on every rank before calling it,
    and the optimiser after (the expert parameters are new tensors).
    Returns `model` (or, for a bare `SwitchFeedForward`, its replacement).
    """
    require_process_group(group)
    # A bare Switch layer has no parent to put its replacement in: return the replacement
    if isinstance(model, SwitchFeedForward) and not isinstance(model, ExpertParallelSwitchFeedForward):
        return ExpertParallelSwitchFeedForward.from_switch(model, group=group)
    # The single-process Switch layers, by name
    layers = [(name, m) for name, m in model.named_modules()
              if isinstance(m, SwitchFeedForward) and not isinstance(m, ExpertParallelSwitchFeedForward)]
    # The ranks must hold the same layers before any layer starts exchanging
    check_same_on_all_ranks({name: dataclasses.asdict(m.config) for name, m in layers}, what="the model's Switch layers",
                            group=group)
    for name, ff in layers:
        # The module holding the layer, and the layer's name in it
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        # Swap in the expert-parallel layer
        setattr(parent, child, ExpertParallelSwitchFeedForward.from_switch(ff, group=group))
    # Identical replicas, as DDP makes them
    broadcast_replicated(model, group=group)
    #
    return model


@torch.no_grad()
def broadcast_replicated(model: nn.Module, *, src: int = 0, group: Any = None) -> None:
    """Copy rank `src`'s replicated parameters and buffers to every rank (experts are left alone)."""
    _, world_size = _world(group)
    if world_size == 1:
        return
    replicated, _ = _split_parameters(model)
    for tensor in replicated + list(model.buffers()):
        dist.broadcast(tensor.data, src=src, group=group)


@torch.no_grad()
def sync_gradients(model: nn.Module, *, group: Any = None) -> None:
    r"""
    ## Data-parallel gradients

    Call after `loss.backward()` and before clipping and `optimizer.step()`.
    Rank $r$'s loss $\mathcal{L}_r$ is over its own batch; the objective is their
    mean $\frac{1}{W}\sum_r \mathcal{L}_r$. After the backward pass

    * a replicated parameter holds $\partial \mathcal{L}_r / \partial \theta$ of its
      own rank: its gradients are summed over the ranks and divided by $W$ (one
      all-reduce per dtype, as DDP does);
    * an expert holds $\sum_r \partial \mathcal{L}_r / \partial \theta$ already,
      since the tokens of every rank came to it: it is only divided by $W$.

    A missing gradient (a parameter that took no part) counts as zero, so that
    all ranks reduce the same tensors and keep identical replicas.
    """
    _, world_size = _world(group)
    if world_size == 1:
        return
    replicated, experts = _split_parameters(model)
    # Zeros where a parameter got no gradient
    for p in replicated + experts:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    # The replicated gradients, bucketed by dtype and device: one flat all-reduce each
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for p in replicated:
        if p.requires_grad:
            buckets.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in buckets.values():
        # One flat tensor, summed over ranks
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        # The mean, copied back
        flat.div_(world_size)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))
    # The experts' gradients: only the mean's $1 / W$
    for p in experts:
        if p.grad is not None:
            p.grad.div_(world_size)


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float, *, group: Any = None) -> torch.Tensor:
    r"""
    ## Gradient clipping across ranks

    `torch.nn.utils.clip_grad_norm_` on one rank would see only its own
    experts, compute a different norm on every rank, and scale the replicated
    gradients differently: the replicas would drift apart. The norm of the
    whole model is

    $$\lVert g \rVert^2 = \sum_{\text{replicated}} \lVert g_\theta \rVert^2
    + \sum_{r} \sum_{\text{experts of } r} \lVert g_\theta \rVert^2$$

    with the replicated gradients (equal on all ranks after `sync_gradients`)
    counted once. Every gradient is multiplied by
    $\min(1, \frac{\text{max\_norm}}{\lVert g \rVert + 10^{-6}})$, as torch does.
    Returns $\lVert g \rVert$, the same on every rank.
    """
    _, world_size = _world(group)
    # In one process this is torch's own clipping (its fused kernels, its rounding)
    if world_size == 1:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    replicated, experts = _split_parameters(model)
    # The gradients that exist
    rep = [p.grad for p in replicated if p.grad is not None]
    exp = [p.grad for p in experts if p.grad is not None]
    # Where the norm is computed: the device of the gradients (a GPU with NCCL)
    device = (rep + exp)[0].device if rep or exp else torch.device("cpu")
    zero = torch.zeros((), dtype=torch.float64, device=device)
    # This rank's experts' $\sum \lVert g_\theta \rVert^2$, in float64, summed over ranks
    expert_sq = sum((torch.linalg.vector_norm(g).to(torch.float64).square() for g in exp), zero)
    if world_size > 1:
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


# ## Checkpoints
#
# A checkpoint holds the model in the **single-process layout**: every
# expert-parallel layer's experts gathered into the full `[N, ...]` tensors.
# It loads back into an expert-parallel model on any world size that divides
# $N$, and into an ordinary model (to sample, say). Every rank must call the
# gathering functions (they are collectives); rank 0 writes the result.

def _gather_rows(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """Every rank's `tensor` (same shape everywhere), concatenated along the first dimension in rank order."""
    _, world_size = _world(group)
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts)


def full_state_dict(model: nn.Module, *, group: Any = None) -> dict[str, torch.Tensor]:
    """
    `model.state_dict()` with every expert tensor gathered from all ranks:
    the state dict of the single-process model.
    """
    state = model.state_dict()
    for name in expert_parameter_names(model):
        state[name] = _gather_rows(state[name], group)
    return state


def load_full_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True) -> None:
    """
    Load a single-process-layout `state` (from `full_state_dict`, or from a
    single-process model) into an expert-parallel `model`: each rank takes its
    slice of every expert tensor. No communication.
    """
    state = dict(state)
    for name, layer in expert_parallel_layers(model):
        first, last = layer.expert_slice
        for p, _ in layer.experts.named_parameters():
            key = f"{name}.experts.{p}"
            if key not in state:
                continue
            # The full bank, `[N, ...]`
            full = state[key]
            if full.shape[0] != layer.config.n_experts:
                raise ValueError(f"{key} has {full.shape[0]} experts in the checkpoint but the layer has "
                                 f"n_experts={layer.config.n_experts}")
            # This rank's slice
            state[key] = full[first:last]
    model.load_state_dict(state, strict=strict)


def _expert_owner(model: nn.Module) -> dict[int, ExpertParallelSwitchFeedForward]:
    """The layer of each expert parameter, by `id`."""
    return {id(p): layer for _, layer in expert_parallel_layers(model) for p in layer.experts.parameters()}


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The parameters in the numbering of `optimizer.state_dict()`."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, *,
                              group: Any = None) -> dict[str, Any]:
    """
    `optimizer.state_dict()` with the per-parameter state of every expert
    parameter (Adam's moments, say: tensors of the parameter's shape)
    gathered from all ranks, the layout of the single-process optimiser.
    Scalars such as Adam's `step` are the same on every rank and kept as they are.
    """
    state = optimizer.state_dict()
    params = _optimizer_params(optimizer)
    owner = _expert_owner(model)
    # The ranks must hold state for the same parameters, or the gathers below would not pair up
    check_same_on_all_ranks({"state": sorted((i, sorted(s)) for i, s in state["state"].items())},
                            what="the optimiser's state", group=group)
    gathered = {}
    for i, s in state["state"].items():
        p = params[i]
        # Expert state of the parameter's shape is gathered, the rest kept
        if id(p) in owner:
            s = {k: _gather_rows(v, group) if torch.is_tensor(v) and v.dim() > 0 and v.shape == p.shape else v
                 for k, v in s.items()}
        gathered[i] = s
    return {"state": gathered, "param_groups": state["param_groups"]}


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer,
                                   state: dict[str, Any]) -> None:
    """
    Load what `full_optimizer_state_dict` gathered: each rank takes its slice
    of the expert parameters' state. No communication.
    """
    params = _optimizer_params(optimizer)
    owner = _expert_owner(model)
    sliced = {}
    for i, s in state["state"].items():
        p = params[int(i)]
        if id(p) in owner:
            first, last = owner[id(p)].expert_slice
            # `[N, ...]` state becomes this rank's `[E, ...]`
            s = {k: v[first:last] if torch.is_tensor(v) and v.dim() > 0 and v.shape[1:] == p.shape[1:]
                 and v.shape[0] == owner[id(p)].config.n_experts else v for k, v in s.items()}
        sliced[i] = s
    optimizer.load_state_dict({"state": sliced, "param_groups": state["param_groups"]})


# ## Data

def shard_batch(batch: torch.Tensor, *, dim: int = 1, group: Any = None) -> torch.Tensor:
    """
    This rank's part of a global batch: block $r$ of $W$ equal blocks along
    `dim` (the batch dimension of `[seq_len, batch_size, ...]`). When every rank
    draws the same global batch from the same seeded sampler and keeps its
    shard, the ranks see disjoint data and the data order resumes exactly.
    The whole batch in a single process.
    """
    rank, world_size = _world(group)
    if world_size == 1:
        return batch
    size = batch.shape[dim]
    if size % world_size:
        raise ValueError(f"a batch of {size} along dim={dim} does not split evenly over world size {world_size}")
    part = size // world_size
    return batch.narrow(dim, rank * part, part)


@torch.no_grad()
def sum_over_ranks(tensor: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """
    A copy of `tensor` summed over the ranks (every rank must call it): e.g. the
    tokens each expert received, `[n_experts]`, over the global batch. The
    tensor itself in a single process.
    """
    _, world_size = _world(group)
    if world_size == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


@torch.no_grad()
def mean_over_ranks(value: torch.Tensor | float, *, group: Any = None) -> torch.Tensor:
    """
    The mean of a metric over the ranks (every rank must call it), for rank 0
    to log: e.g. the loss of the global batch. Pass a tensor on this rank's
    device; a number works with gloo.
    """
    _, world_size = _world(group)
    # A float64 copy, on the value's device (NCCL reduces GPU tensors only), summed (gloo has no average)
    total = sum_over_ranks(torch.as_tensor(value).detach().to(torch.float64, copy=True), group=group)
    return total / world_size
