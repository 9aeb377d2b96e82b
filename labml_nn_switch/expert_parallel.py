r"""
---
title: Expert parallelism - the Switch layer across processes
summary: >
  An expert-parallel Switch layer on torch.distributed: W ranks in groups of E, each
  rank of a group holding N / E of the experts, tokens travelling to their expert and
  back with two differentiable all-to-alls; each expert copied on W / E ranks.
---

# Expert parallelism

The [Switch layer](switch.py) exists to scale past one device. Its parameters
grow with the number of experts $N$ while the work per token stays that of
one FFN, so the experts are the first thing that stops fitting: GShard
([Lepikhin et al. 2020](https://arxiv.org/abs/2006.16668)) and the Switch
Transformer put *different experts on different devices*. This page does it
with PyTorch's own `torch.distributed`, in the layout DeepSpeed-MoE and
Megatron-Core use.

## Expert × data groups

$W$ processes (*ranks*) train together, every one on its own part of the
batch. With an **expert-parallel degree** $E$ (dividing $W$ and $N$), the
ranks form $W / E$ **expert groups** of $E$ consecutive ranks. Inside a group
the experts are split: the group's $j$-th rank holds experts
$j \frac{N}{E}, \dots, (j + 1)\frac{N}{E} - 1$, and the ranks of a group send each other
the tokens routed to those experts. Every group holds all $N$ experts, so
each expert has $W / E$ copies, one per group: the ranks holding the same
experts form a **replica group**. $W = 4$ ranks, $E = 2$, $N = 4$ experts:

```text
                  expert group 0                expert group 1
               (all-to-alls inside)          (all-to-alls inside)
            ┌────────────────────────┐    ┌────────────────────────┐
            │ rank 0       rank 1    │    │ rank 2       rank 3    │
            │ experts 0,1  experts 2,3│    │ experts 0,1  experts 2,3│
            └───┬─────────────┬──────┘    └───┬─────────────┬──────┘
                │             └───── replica group {1, 3} ──┘
                └─────────── replica group {0, 2} ──┘
                 (expert gradients averaged inside)

   router, attention, embeddings: replicated on all 4 ranks, gradients averaged over all 4
```

* $E = W$ is pure expert parallelism (one copy of each expert, the largest
  saving); $E = 1$ is pure data parallelism (every rank holds every expert and
  the all-to-alls are empty exchanges with oneself). `torchrun
  --nproc-per-node 4 ... ep=2` is the picture above.
* Consecutive ranks make an expert group so that, with $E$ no more than the
  GPUs of a machine, the all-to-alls stay inside the machine (NVLink) and only
  the gradient all-reduces cross machines, as DeepSpeed-MoE arranges them.
* The groups are a `torch.distributed.device_mesh.DeviceMesh` of shape
  $[W/E, E]$ with dimensions `("replica", "expert")`: rank $r$ is at
  $(r \,\mathrm{div}\, E,\ r \bmod E)$. [The sharded checkpoints](sharded_checkpoint.py)
  describe the experts on the same mesh.

## The journey of a token

Two ranks of an expert group, four experts, eight tokens each; `aN` is token
`a` for expert `N`. With a capacity of 2, tokens `g` and `o` found their
expert full and were dropped.

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
        ▼ experts 0, 1: the layer's own dispatch    ▼ experts 2, 3
   │y(a0) ... y(m1)   │                       │y(c2) ... y(p3)   │
         │        all-to-all #2  (the same splits, reversed)      │
         ▼                                                        ▼
   combine: × gate p_i*(x), dropped tokens 0,     combine, as on rank 0
   unsort to the token order: [a .. h]
```

Everything above and below the two all-to-alls is the single-process layer's
own code: this layer is a `SwitchFeedForward` whose `forward` (router,
float32 softmax, `plan_dispatch`, capacity, combine, losses) is inherited, and
only `run_experts`, the step between planning and combining, is replaced.

## What "the same layer" means: capacity per rank

The single-process layer computes the capacity
$C = \lfloor \frac{T}{N} \cdot \text{capacity factor} \rfloor$ over the $T$ tokens
*it sees*. Here each rank is what GShard calls a *group of tokens*: it routes
its own $T_r$ tokens with $C_r = \lfloor \frac{T_r}{N} \cdot \text{capacity factor}
\rfloor$ and decides alone which to drop (Mesh TensorFlow, which the paper ran,
also splits the batch into groups and computes the capacity per group). So:

1. $W$ ranks holding batches $x_0, \dots, x_{W-1}$ give, on rank $r$, **exactly**
   the output, the auxiliary losses and the statistics of the single-process
   layer applied to $x_r$ alone, with the same weights; and the gradients of
   $\sum_r \mathcal{L}(x_r)$, each expert's summed over the tokens it served
   (from the ranks of its expert group; [gradient_sync.py](gradient_sync.py) adds the
   other groups').
2. When no token is dropped (dropless routing, or a capacity no expert
   reaches), this is also the single-process layer on the whole global batch:
   the route of a token depends on that token alone.
3. The load-balancing loss is per rank (its $f_i P_i$ is not linear in the
   batch), which is what a per-rank capacity needs: a rank whose own tokens
   crowd one expert loses tokens even if the global batch is balanced.
   `global_load_balance` computes the statistic over the global batch, the
   quantity Megatron-Core's *global* balancing loss uses, for logging.

A *global* capacity would need every rank to know every other rank's routing
before sending its first token: one more collective per layer, and batches of
different ranks that crowd each other out.

## How the tokens travel: counts first, then variable-size all-to-all

Rank $r$ sends each rank of its expert group only its *kept* tokens for that
rank's experts, and that number changes with every batch. The ranks first
exchange their per-expert counts (a tiny all-to-all of $N$ integers), read
them on the host, and then exchange the tokens with split sizes. This costs
one device-to-host synchronisation per layer and pass, and buys: no traffic
for dropped tokens or empty slots, dropless routing without a special case,
and ranks holding different numbers of tokens (a last short batch, an
evaluation). The alternative, fixed buffers `[N, C, d_model]` exchanged with
equal splits, is what the paper did on TPUs, whose compiler needs static
shapes: no synchronisation, but the empty slots travel too.

## Gradients

An all-to-all is a permutation of rows across ranks, and the gradient of a
permutation is the inverse permutation: the backward of an all-to-all is the
all-to-all with the send and receive sizes swapped. torch's functional
collective `all_to_all_single` has that backward built in, so the backward
pass runs the same two exchanges in reverse order without code of ours.

## Lockstep

Collectives pair up by order: every rank of a group must make the same calls
in the same order, or they wait for each other until the process group's
timeout. So every rank runs every forward pass through a Switch layer
(training, evaluation and sampling alike: give each rank its shard, or all the
same input) and every backward pass.

## No full model on any rank

A rank builds only its own $N / E$ experts: the layer's structure is made on
PyTorch's `meta` device (shapes, no memory, no random numbers), then the
router and the rank's experts are made for real, drawing the random numbers
in the order the single-process layer draws them (`draw_experts_` in
[feed_forward.py](feed_forward.py)): a model built from the same seed holds
exactly the single-process model's weights, and a rank's expert memory is
$N / E$ experts, never $N$.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .feed_forward import Experts
from .process_group import check_same_on_all_ranks, require_process_group
from .routing_result import RoutingResult
from .switch import DispatchPlan, Router, SwitchConfig, SwitchFeedForward, plan_dispatch, switch_config
from .watchdog import watch


# ## The groups

@dataclass(frozen=True)
class ExpertParallelGroups:
    """
    The $[W/E, E]$ device mesh of the picture above, and what a rank needs from it.
    """
    # Dimensions `("replica", "expert")`: rank $r$ at $(r \,\mathrm{div}\, E, r \bmod E)$
    mesh: DeviceMesh

    @property
    def ep(self) -> int:
        """$E$, the expert-parallel degree: the ranks of an expert group."""
        return self.mesh.size(1)

    @property
    def n_replicas(self) -> int:
        """$W / E$: the copies of each expert, one per expert group."""
        return self.mesh.size(0)

    @property
    def world_size(self) -> int:
        """$W$."""
        return self.mesh.size()

    @property
    def expert_group(self) -> Any:
        """This rank's expert group: the process group of the all-to-alls."""
        return self.mesh.get_group("expert")

    @property
    def replica_group(self) -> Any:
        """This rank's replica group: the ranks holding the same experts."""
        return self.mesh.get_group("replica")

    @property
    def expert_rank(self) -> int:
        """$j$, this rank's place in its expert group: it holds the $j$-th block of $N / E$ experts."""
        return self.mesh.get_local_rank("expert")


# One set of groups per degree (and default process group): making groups is a collective, every layer shares them
_GROUPS: dict[tuple[int, int], ExpertParallelGroups] = {}


def expert_parallel_groups(ep: int | None = None) -> ExpertParallelGroups:
    """
    ### The groups for degree `ep`

    * `ep`: $E$, dividing the world size $W$; `None` for $E = W$ (every expert once)

    Every rank must call it with the same `ep` (it is a collective the first
    time); later calls return the same groups. The device type of the mesh
    follows the backend: `cuda` for NCCL, `cpu` for gloo.
    """
    _, world_size = require_process_group()
    ep = world_size if ep is None else ep
    if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1 or world_size % ep:
        raise ValueError(f"ep={ep!r} must be a positive divisor of the number of processes ({world_size}): "
                         f"the ranks form groups of ep, each holding every expert once")
    # (A process group set up anew after `destroy_process_group` gets groups of its own)
    key = (ep, id(dist.group.WORLD))
    if key not in _GROUPS:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        mesh = init_device_mesh(device_type, (world_size // ep, ep), mesh_dim_names=("replica", "expert"))
        _GROUPS[key] = ExpertParallelGroups(mesh=mesh)
    return _GROUPS[key]


# ## The layer

class ExpertParallelSwitchFeedForward(SwitchFeedForward):
    """
    ## The expert-parallel Switch layer

    A `SwitchFeedForward` (so it drops into a
    [`SwitchTransformerLayer`](transformer.py) unchanged) whose `experts` hold
    only this rank's $N / E$ experts. Its `forward` is the parent's: route,
    plan, combine and losses are the same code; `run_experts` becomes
    all-to-all, local experts, all-to-all.
    """

    def __init__(self, config: SwitchConfig | None = None, /, *, groups: ExpertParallelGroups | None = None,
                 **options):
        r"""
        * `config`: the layer's [`SwitchConfig`](switch.py), the same on every
          rank; its `n_experts` is $N$ over **all** ranks of an expert group, a
          multiple of the degree $E$
        * `options`: or the configuration's fields as keyword arguments
        * `groups`: the `ExpertParallelGroups` (`None`: `expert_parallel_groups()`, $E = W$)

        Built from the same seed, the router and this rank's experts are those
        of the single-process layer built from that seed, and the random state
        after it is the same too (see [feed_forward.py](feed_forward.py)'s `draw_experts_`).
        """
        require_process_group()
        groups = expert_parallel_groups() if groups is None else groups
        config = switch_config(config, options)
        n_experts, ep = config.n_experts, groups.ep
        # Each rank of an expert group holds the same number of experts
        if n_experts % ep:
            raise ValueError(f"n_experts={n_experts} is not divisible by the expert-parallel degree ep={ep}: "
                             f"each rank of an expert group holds an equal share of the experts")
        # Every rank must build the same layer, before any exchange could hang on a mismatch
        check_same_on_all_ranks({**dataclasses.asdict(config), "ep": ep},
                                what="the Switch layer's configuration")
        # The layer's structure on the meta device: no memory, no random numbers
        with torch.device("meta"):
            super().__init__(config)
        self.groups = groups
        # The ranks of this rank's expert group, for messages
        self.group_ranks = dist.get_process_group_ranks(groups.expert_group)
        # $N / E$, the experts of one rank
        self.n_local_experts = n_experts // ep
        # This rank's experts: the $j$-th block of its expert group
        first = groups.expert_rank * self.n_local_experts
        self.expert_slice = (first, first + self.n_local_experts)
        # Now for real, in the single-process layer's order: the router, then the experts
        self.router = Router(d_model=config.d_model, n_experts=n_experts, jitter_eps=config.jitter_eps,
                             init_scale=config.init_scale)
        self.experts = Experts(n_experts=n_experts, d_model=config.d_model, d_ff=config.d_ff,
                               dropout=config.expert_dropout, activation=config.activation, bias=config.bias,
                               init_scale=config.init_scale, shard=self.expert_slice)

    def extra_repr(self) -> str:
        """What `print(model)` shows: which experts this rank holds."""
        first, last = self.expert_slice
        return f"n_experts={self.config.n_experts}, ep={self.groups.ep}, experts={first}..{last - 1}"

    # ### Running the experts, across ranks

    def run_experts(self, x: torch.Tensor, plan: DispatchPlan, capacity: int | None) -> torch.Tensor:
        """The exchange, under the [watchdog](watchdog.py): a rank that stops answering is named."""
        with watch(f"the forward pass's expert all-to-all (expert group of ranks {self.group_ranks})"):
            return self._exchange(x, plan)

    def _exchange(self, x: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        """
        * `x`: `[n_tokens, d_model]`, this rank's tokens
        * `plan`: their `DispatchPlan` over all $N$ experts (sorted by expert, with `keep`:
          the capacity is already applied)

        Returns the expert outputs in the plan's sorted order, `[n_tokens, d_model]`;
        the rows of dropped tokens are zero (the combine step zeroes them anyway).
        """
        n_tokens, d_model = x.shape
        group, ep, n_local = self.groups.expert_group, self.groups.ep, self.n_local_experts

        # #### Counts first
        #
        # Kept tokens per expert, `[N]`: $\min(T f_i, C)$, counted on the device
        sent = torch.zeros_like(plan.counts).scatter_add_(0, plan.expert, plan.keep.to(plan.counts.dtype))
        # The experts of group rank $s$ are the $s$-th block of $N / E$ counts, so an equal-split
        # all-to-all hands each rank the counts for its own experts: `recv[s * n_local + e]`
        # is how many tokens group rank $s$ sends to local expert $e$
        recv = torch.empty_like(sent)
        dist.all_to_all_single(recv, sent, group=group)
        # The sizes on the host: the one synchronisation of the layer
        sent_host, recv_host = torch.stack([sent, recv]).tolist()
        # Rows to and from each rank of the group
        send_splits = [sum(sent_host[s * n_local:(s + 1) * n_local]) for s in range(ep)]
        recv_splits = [sum(recv_host[s * n_local:(s + 1) * n_local]) for s in range(ep)]
        n_send, n_recv = sum(send_splits), sum(recv_splits)

        # #### All-to-all #1: the tokens go to their experts
        #
        # The kept places of the sorted order, in order: the plan sorts by expert,
        # so they are already grouped by destination. (A stable `argsort`
        # puts the kept first without reading how many there are.)
        kept = torch.argsort((~plan.keep).to(torch.uint8), stable=True)[:n_send]
        # Their tokens: `[n_send, d_model]`
        x_send = x.index_select(0, plan.order.index_select(0, kept))
        # This rank's experts' tokens, from group rank 0 first: `[n_recv, d_model]`, differentiable
        x_recv = funcol.all_to_all_single(x_send, recv_splits, send_splits, group)

        # #### The local experts
        #
        # The local expert of each received row: within each source's block,
        # `recv[s * n_local + e]` rows for expert $e$, in expert order
        local_ids = torch.arange(n_local, device=x.device).repeat(ep)
        row_expert = torch.repeat_interleave(local_ids, recv, output_size=n_recv)
        # Sorted by local expert with the same `plan_dispatch`; every row is kept
        # (the senders have applied the capacity), so no priority is needed
        local = plan_dispatch(row_expert, row_expert.new_zeros(n_recv, dtype=x.dtype), n_experts=n_local,
                              capacity=None)
        # The single-process layer's own dispatch over the local experts: `[n_recv, d_model]`, sorted
        y = super().run_experts(x_recv, local, None)
        # Back to the order the rows arrived in
        y_recv = torch.empty_like(y).index_copy(0, local.order, y)

        # #### All-to-all #2: the results go home
        #
        # The same exchange reversed: `[n_send, d_model]`, in the order they were sent
        y_back = funcol.all_to_all_single(y_recv, send_splits, recv_splits, group)
        # Into the plan's sorted order; dropped places stay zero
        return y_back.new_zeros(n_tokens, d_model).index_copy(0, kept, y_back)


# ## Whole models
#
# The helpers below work on any `nn.Module` holding expert-parallel layers, e.g. a
# [`SwitchTransformer`](transformer.py) built with
# `build_transformer(..., switch_layer=functools.partial(ExpertParallelSwitchFeedForward, groups=groups))`.

def expert_parallel_layers(model: nn.Module) -> list[tuple[str, ExpertParallelSwitchFeedForward]]:
    """The expert-parallel layers of `model`, with their names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ExpertParallelSwitchFeedForward)]


def expert_parameters(model: nn.Module) -> dict[str, tuple[nn.Parameter, ExpertParallelSwitchFeedForward]]:
    """
    The expert parameters of `model` by name (the experts' `w1`, `b1`, `w2`,
    `b2`), each with its layer: the parameters that are *not* replicated on
    every rank.
    """
    return {f"{name}.experts.{p}" if name else f"experts.{p}": (param, layer)
            for name, layer in expert_parallel_layers(model) for p, param in layer.experts.named_parameters()}


@torch.no_grad()
def global_load_balance(results: list[RoutingResult], *, group: Any = None) -> torch.Tensor:
    r"""
    ### The load balance of the global batch

    $N \sum_i f_i P_i$ per layer, with $f_i$ and $P_i$ over every rank's tokens
    (one all-reduce for all layers), `[n_layers]`: $1$ when the global batch is
    balanced. The per-rank losses the layers return can each be above $1$
    while this is $1$ (ranks crowding different experts), and that is what
    costs dropped tokens under a per-rank capacity. A statistic: no gradient.
    """
    # Per layer: tokens per expert and summed probabilities, and the token count: `[n_layers, 2N + 1]`
    rows = [torch.cat([r.tokens_per_expert.double(), r.mean_prob_per_expert.double() * r.n_tokens,
                       torch.tensor([float(r.n_tokens)], dtype=torch.float64, device=r.tokens_per_expert.device)])
            for r in results]
    total = torch.stack(rows)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, group=group)
    n_experts = results[0].tokens_per_expert.shape[0]
    tokens = total[:, -1:].clamp(min=1)
    f, p = total[:, :n_experts] / tokens, total[:, n_experts:2 * n_experts] / tokens
    return n_experts * (f * p).sum(dim=1)
