r"""
---
title: The Switch layer - top-1 routing to a mixture of experts
summary: >
  An annotated PyTorch implementation of the Switch Transformer's feed-forward
  layer: a float32 top-1 router, expert capacity and token dropping,
  load-balancing and z-losses, and vectorised dispatch to the experts.
---

# The Switch layer

[Fedus, Zoph and Shazeer (2021), "Switch Transformers: Scaling to Trillion Parameter
Models with Simple and Efficient Sparsity"](https://arxiv.org/abs/2101.03961)
replace the [feed-forward network](feed_forward.py) of a transformer layer by
$N$ of them, the *experts*, and send each token to **one** expert chosen by a
small learned *router*. Parameters grow $N$-fold; the computation per token
stays that of a single FFN. That is the whole trick, and this file is the
whole layer.

For a token $x$ the layer computes

$$h(x) = W_r x, \qquad p_i(x) = \frac{e^{h_i(x)}}{\sum_{j=1}^{N} e^{h_j(x)}},$$

$$i^* = \arg\max_i p_i(x), \qquad y = p_{i^*}(x)\, E_{i^*}(x),$$

where $E_i$ is expert $i$ and $W_r$ the router's weight (no bias). Multiplying by
the gate value $p_{i^*}(x)$ is what lets the router learn: its output reaches
the loss only through that product.

Four things make it work at scale, and each is a section below (the losses
on [a page of their own](routing_result.py)):

1. **Selective precision**: the router runs in float32 even when the rest of
   the model runs in bfloat16; the exponentials of the softmax are not safe in
   bfloat16.
2. **Expert capacity**: each expert takes at most
   $C = \left\lfloor \frac{T}{N} \cdot \text{capacity factor} \right\rfloor$ of the
   $T$ tokens of a batch, so that every expert's work has a fixed size. Tokens
   beyond it are *dropped*: the layer outputs zero for them and they continue on
   the residual connection.
3. **Load balancing**: an auxiliary loss pushes the router to spread tokens evenly.
4. **Vectorised dispatch**: tokens are sorted by expert, so each expert's
   tokens form one contiguous block; on a GPU all experts run in one grouped
   matrix multiplication with no host synchronisation; on the CPU, where the
   host reads the counts for free, the experts multiply exactly their kept
   tokens, neighbouring experts with about as many in one batched product.

The file imports nothing but torch, [`feed_forward.py`](feed_forward.py),
[`expert_rows.py`](expert_rows.py) and [`routing_result.py`](routing_result.py):
copy the four into your project.
"""

import dataclasses
import functools
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

try:
    from .expert_rows import forward_rows
    from .feed_forward import (Experts, check_features, check_float, check_int, check_sizes, grouped_mm_supported,
                               truncated_normal_)
    from .routing_result import RoutingResult
except ImportError:  # copied into a project as plain files, side by side
    from expert_rows import forward_rows
    from feed_forward import (Experts, check_features, check_float, check_int, check_sizes, grouped_mm_supported,
                              truncated_normal_)
    from routing_result import RoutingResult


@dataclass(frozen=True)
class SwitchConfig:
    r"""
    ## The configuration of a Switch layer

    Every option of the layer, declared once, typed and checked when it is
    made (as nanoGPT's `GPTConfig`). The layer keeps it as `layer.config`; the
    [expert-parallel layer](expert_parallel.py), the
    [model builder](transformer.py), the experiment's settings and its
    checkpoints all use this one class. It is frozen: a changed copy is
    `dataclasses.replace(config, capacity_factor=1.0)`.
    """
    # The number of features of a token
    d_model: int
    # The hidden size of each expert
    d_ff: int
    # The number of experts $N$
    n_experts: int
    # The capacity factor in training (the paper uses 1.0 to 1.25)
    capacity_factor: float = 1.25
    # The capacity factor in evaluation (`model.eval()`): larger, since dropping
    # a token at test time only costs quality
    eval_capacity_factor: float = 2.0
    # A floor under the capacity $C$, for batches too small for the formula
    min_capacity: int = 0
    # `False` for *dropless* routing: no capacity, no token dropped
    drop_tokens: bool = True
    # Drop the least confident tokens first instead of the latest (batch prioritized routing)
    batch_prioritized: bool = False
    # Multiply each expert's output by its gate $p_{i^*}(x)$, as the paper does.
    # With `False` the output is multiplied by $p_{i^*}(x) / \mathrm{stopgrad}(p_{i^*}(x)) = 1$
    # instead, which keeps the gradient path to the router (labml_nn's `is_scale_prob=False`)
    scale_by_gate: bool = True
    # $\epsilon$ of the router's multiplicative input jitter, in $[0, 1)$ (0 turns it off)
    jitter_eps: float = 0.0
    # Dropout on the experts' hidden layer (the paper's *expert dropout*, section 2.4,
    # "Regularizing Large Sparse Models", and its Table 4: 0.4 inside the experts and
    # 0.1 elsewhere when fine-tuning)
    expert_dropout: float = 0.1
    # The experts' activation: `relu`, `gelu`, `silu`, or a gated `reglu`, `geglu`, `swiglu`
    activation: str = "relu"
    # Whether the experts' linear layers have biases (off, as in the paper and T5)
    bias: bool = False
    # $s$ of the truncated normal initialisation of router and experts (section 2.4: 0.1)
    init_scale: float = 0.1

    def __post_init__(self):
        """Check every field, each bad value named; this is the only place they are checked."""
        check_sizes(d_model=self.d_model, d_ff=self.d_ff, dropout=self.expert_dropout, activation=self.activation,
                    init_scale=self.init_scale, dropout_name="expert_dropout")
        check_int("n_experts", self.n_experts, minimum=1)
        check_int("min_capacity", self.min_capacity, minimum=0)
        check_float("capacity_factor", self.capacity_factor, low=0.0, low_open=True)
        check_float("eval_capacity_factor", self.eval_capacity_factor, low=0.0, low_open=True)
        check_float("jitter_eps", self.jitter_eps, low=0.0, high=1.0)
        for name in ("drop_tokens", "batch_prioritized", "scale_by_gate", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {name}={getattr(self, name)!r}")

    def capacity(self, n_tokens: int, *, training: bool) -> int | None:
        r"""
        ### Expert capacity

        $$C = \max\Big(\Big\lfloor \frac{T \cdot \text{capacity factor}}{N} \Big\rfloor,\ C_{min}\Big)$$

        with the training or the evaluation factor; `None` when dropless. A
        factor of $1$ leaves no slack: any imbalance drops tokens. The factor is
        taken as the decimal number it is written as (`Fraction(repr(1.2))` is
        exactly $6/5$), so the floor is exact: $T = 35$, $N = 3$ and a factor
        of $1.2$ give $\lfloor 42 / 3 \rfloor = 14$, where floating point
        ($35 \cdot 1.2 = 41.99\ldots$) would give 13.
        """
        if not self.drop_tokens:
            return None
        factor = _as_written(float(self.capacity_factor if training else self.eval_capacity_factor))
        # $\lfloor T p / (q N) \rfloor$ for the factor $p / q$, in integers (arithmetic on `Fraction`s is slow)
        return max(n_tokens * factor.numerator // (factor.denominator * self.n_experts), self.min_capacity)


@functools.lru_cache(maxsize=64)
def _as_written(value: float) -> Fraction:
    """The decimal number `value` is written as, exactly (made once per value: a `Fraction` is slow to make)."""
    return Fraction(repr(value))


def switch_config(config: SwitchConfig | None, options: dict) -> SwitchConfig:
    """
    The configuration a constructor was given: a `SwitchConfig`, or its fields
    as keyword arguments (a `SwitchConfig` plus keywords is a changed copy).
    """
    if config is None:
        return SwitchConfig(**options)
    if not isinstance(config, SwitchConfig):
        raise TypeError(f"config must be a SwitchConfig, got {type(config).__name__}")
    return dataclasses.replace(config, **options) if options else config


# With fewer experts than this, the router's logits are stored expert-major,
# `[n_experts, n_tokens]` in memory: a row of fewer than 16 float32 logits does
# not fill one 64-byte vector register, and on the CPU the softmax and the top-1
# along such short rows run several times slower than across the tokens. (At 4
# experts and 2048 tokens the router's forward and backward take a third less
# time; from 16 experts on, token-major is as fast or faster.)
EXPERT_MAJOR_BELOW = 16


def softmax_over_experts(logits: torch.Tensor) -> torch.Tensor:
    r"""
    $p(x) = \mathrm{softmax}(h(x))$ over the experts of `logits`,
    `[n_tokens, n_experts]`, computed along the dimension that is contiguous in
    memory when the logits are expert-major (the result is then expert-major too).
    """
    if logits.dim() == 2 and logits.shape[1] > 1 and logits.stride(0) == 1:
        return torch.softmax(logits.t(), dim=0).t()
    return torch.softmax(logits, dim=-1)


class Router(nn.Module):
    """
    ## The router

    A linear map $h(x) = W_r x$ from a token to one logit per expert, computed in
    float32 whatever the model's precision (the paper's *selective precision*,
    section 2.4: casting the router's input to float32 and the result back is
    cheap, and it is what makes bfloat16 training stable).
    """

    def __init__(self, *, d_model: int, n_experts: int, jitter_eps: float = 0.0, init_scale: float = 0.1):
        r"""
        * `d_model`: the number of features of a token
        * `n_experts`: the number of experts $N$
        * `jitter_eps`: $\epsilon$ of the multiplicative jitter noise (0 turns it off)
        * `init_scale`: $s$ of the truncated normal initialisation
        """
        super().__init__()
        check_float("jitter_eps", jitter_eps, low=0.0, high=1.0)
        self.jitter_eps = jitter_eps
        # $W_r$: `[n_experts, d_model]`, no bias. Whatever its storage dtype, `forward` computes with it in float32.
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))
        truncated_normal_(self.weight, fan_in=d_model, scale=init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        `x`: `[n_tokens, d_model]`; returns the logits `[n_tokens, n_experts]`,
        float32 or wider. With fewer than `EXPERT_MAJOR_BELOW` experts they are
        laid out expert-major in memory (see `softmax_over_experts`).
        """
        # Selective precision: the router's input goes to float32 (float64 stays float64)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        # Jitter: in training, multiply the router's input by noise drawn from
        # $U[1-\epsilon, 1+\epsilon]$ (appendix of the paper, "input jitter").
        # The product is a new tensor: the experts still see the clean $x$ and
        # the caller's tensor is never changed.
        if self.training and self.jitter_eps > 0:
            noise = torch.empty_like(x).uniform_(1.0 - self.jitter_eps, 1.0 + self.jitter_eps)
            x = x * noise
        # $h(x) = W_r x$ with autocast turned off, so it stays float32 under bfloat16 autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = self.weight.to(x.dtype)
            if x.device.type == "cpu" and weight.shape[0] < EXPERT_MAJOR_BELOW:
                # Expert-major: computed as $W_r X^\top$, `[n_experts, n_tokens]`, and returned as its transpose
                return torch.mm(weight, x.t()).t()
            return F.linear(x, weight)


@dataclass
class DispatchPlan:
    """
    ## Where each token goes

    The plan is a permutation that sorts the tokens by expert, and the number
    of tokens of each expert. Three `[n_tokens]` tensors follow from these, in
    the sorted order: each token's expert, its place in that expert's queue and
    whether it fits in the capacity. They are computed when first read: the
    CPU path reads none of them (it cuts the sorted order by the counts, which
    it has on the host), and an operation not run is time saved at every layer
    of every step.
    """
    # `order[k]` is the token in sorted place $k$: experts in ascending order, and
    # within an expert its tokens in order of priority
    order: torch.Tensor
    # `[n_experts]`: tokens per expert before dropping, $T f_i$
    counts: torch.Tensor
    # `[n_experts]`: cumulative `counts`; expert $e$ owns sorted places `ends[e-1]` to `ends[e]`
    ends: torch.Tensor
    # `[n_tokens]`: each token's expert $i^*$, in the tokens' own order
    token_expert: torch.Tensor
    # $C$, or `None` when dropless
    capacity: int | None
    # The tensors below, once computed
    _computed: dict = dataclasses.field(default_factory=dict, repr=False)

    def _once(self, name: str, compute) -> torch.Tensor:
        # (Not `functools.cached_property`: `torch.compile` cannot trace the lock it takes on Python 3.11)
        if name not in self._computed:
            self._computed[name] = compute()
        return self._computed[name]

    @property
    def expert(self) -> torch.Tensor:
        """The expert of the token in each sorted place."""
        return self._once("expert", lambda: self.token_expert.index_select(0, self.order))

    @property
    def position(self) -> torch.Tensor:
        r"""Its place in its expert's queue, $0, 1, 2, \dots$: its sorted place minus the start of its expert's run."""
        return self._once("position", lambda: torch.arange(len(self.order), device=self.order.device)
                          - (self.ends - self.counts)[self.expert])

    @property
    def keep(self) -> torch.Tensor:
        """Whether it is kept: `position < capacity` (every token when dropless)."""
        return self._once("keep", lambda: torch.ones_like(self.order, dtype=torch.bool) if self.capacity is None
                          else self.position < self.capacity)


def count_per_expert(expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    r"""
    `[n_experts]`: how many tokens chose each expert, $T f_i$. One
    `torch.bincount` on the CPU; elsewhere a `scatter_add`, because `bincount`
    on a GPU asks the host for the largest value (a synchronisation).
    """
    if expert.device.type == "cpu":
        return torch.bincount(expert, minlength=n_experts)
    return torch.zeros(n_experts, dtype=torch.long, device=expert.device).scatter_add_(0, expert,
                                                                                    torch.ones_like(expert))


def plan_dispatch(expert: torch.Tensor, gate: torch.Tensor, *, n_experts: int, capacity: int | None,
                  batch_prioritized: bool = False) -> DispatchPlan:
    r"""
    ## Capacity and which tokens are dropped

    * `expert`: `[n_tokens]`, each token's chosen expert $i^*$
    * `gate`: `[n_tokens]`, its probability $p_{i^*}(x)$
    * `capacity`: $C$, or `None` for dropless routing (every token is kept)
    * `batch_prioritized`: serve the most confident tokens first

    An expert that is chosen by more than $C$ tokens keeps $C$ of them. Which ones
    must not be left to chance (nor to the order of a parallel scatter):

    * by default, **in order of position**, as the released Mesh-TensorFlow code
      does: tokens are taken in their order in memory, which for our
      `[seq_len, batch_size, d_model]` inputs is position-major, so an expert
      keeps the earliest positions of the sequence;
    * with `batch_prioritized`, by descending gate probability $p_{i^*}(x)$
      (*Batch Prioritized Routing*, Riquelme et al. 2021, "Scaling Vision with
      Sparse Mixture of Experts"): the tokens the router is least sure of are
      the ones dropped. Ties keep position order.

    The queue position of a token is the number of tokens before it in priority
    order that chose the same expert. One stable sort by expert gives it for all
    tokens at once: after the sort, the tokens of expert $e$ occupy places
    $\text{start}_e, \dots, \text{end}_e - 1$ in priority order, so a token's
    position is its place minus $\text{start}_e$ (`DispatchPlan.position`).
    """
    # Stable sort by expert: tokens of an expert together, in priority order within
    # it. Without prioritisation the priority order is the tokens' own order.
    if batch_prioritized:
        priority = torch.argsort(gate, descending=True, stable=True)
        order = priority[torch.argsort(expert[priority], stable=True)]
    else:
        order = torch.argsort(expert, stable=True)
    # $T f_i$: tokens per expert, counted **before** dropping
    counts = count_per_expert(expert, n_experts)
    # Where each expert's run of sorted places ends
    ends = torch.cumsum(counts, dim=0)
    return DispatchPlan(order=order, counts=counts, ends=ends, token_expert=expert, capacity=capacity)


class SwitchFeedForward(nn.Module):
    """
    ## The Switch feed-forward layer

    Takes the place of the FFN in a [transformer layer](transformer.py).
    """

    def __init__(self, config: SwitchConfig | None = None, /, **options):
        r"""
        * `config`: a [`SwitchConfig`](#the-configuration-of-a-switch-layer), or
        * `options`: its fields as keyword arguments,
          `SwitchFeedForward(d_model=512, d_ff=2048, n_experts=8)`
        """
        super().__init__()
        # The checked configuration, kept as it is
        self.config = config = switch_config(config, options)
        # The router $h(x) = W_r x$
        self.router = Router(d_model=config.d_model, n_experts=config.n_experts, jitter_eps=config.jitter_eps,
                             init_scale=config.init_scale)
        # The $N$ experts, their weights stacked
        self.experts = Experts(n_experts=config.n_experts, d_model=config.d_model, d_ff=config.d_ff,
                               dropout=config.expert_dropout, activation=config.activation, bias=config.bias,
                               init_scale=config.init_scale)

    def capacity(self, n_tokens: int) -> int | None:
        """$C$ for `n_tokens` tokens in the module's mode (see `SwitchConfig.capacity`)."""
        return self.config.capacity(n_tokens, training=self.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingResult]:
        """
        * `x`: `[seq_len, batch_size, d_model]` (or `[n_tokens, d_model]`)

        Returns the output, of the shape of `x`, and the `RoutingResult`.
        """
        if x.dim() not in (2, 3):
            raise ValueError(f"x must be [seq_len, batch_size, d_model] or [n_tokens, d_model], "
                             f"got a tensor of rank {x.dim()} and shape {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor (float32, bfloat16, ...), got dtype {x.dtype}")
        d_model = self.config.d_model
        check_features(x, d_model)
        shape = x.shape
        # Routing treats every token alike: flatten to `[n_tokens, d_model]`
        x = x.reshape(-1, d_model)
        n_tokens = x.shape[0]

        # #### Route
        #
        # Router logits $h(x)$ and probabilities $p(x)$, float32: `[n_tokens, n_experts]`
        logits = self.router(x)
        probs = softmax_over_experts(logits)
        # The top-1 expert $i^*$ and its gate $p_{i^*}(x)$: `[n_tokens]`
        gate, expert = probs.max(dim=-1)

        # #### Plan the dispatch
        capacity = self.capacity(n_tokens)
        plan = plan_dispatch(expert, gate, n_experts=self.config.n_experts, capacity=capacity,
                             batch_prioritized=self.config.batch_prioritized)
        # The factor of each expert output: the gate $p_{i^*}(x)$, or
        # $p / \mathrm{stopgrad}(p) = 1$, which keeps the router's gradient path: `[n_tokens]`
        scale = gate if self.config.scale_by_gate else gate / gate.detach()

        # #### Run the experts
        #
        # Under autocast, run the experts in the autocast dtype: `grouped_mm` is
        # not on autocast's list, so we cast by hand. The router stays float32.
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self._experts_by_blocks(x):
            out = self._run_blocks(x, plan, capacity, scale)
        else:
            out = self._combine(self.run_experts(x, plan, capacity), plan, scale)

        # #### Losses and statistics, computed when read
        result = RoutingResult(logits=logits, probs=probs, gate=gate, plan=plan)
        return out.reshape(shape[:-1] + (out.shape[-1],)), result

    def _experts_by_blocks(self, x: torch.Tensor) -> bool:
        """
        Whether to take the CPU path, `_run_blocks`: on the CPU, outside
        `torch.compile` (it reads the counts on the host, a graph break), outside
        `torch.func`'s transforms (`grad`, `jacrev`, ...: its autograd `Function`
        has a backward of its own, which they cannot take) and forward-mode
        differentiation (`torch.autograd.forward_ad.dual_level`: it has no
        `jvp`), and unless a subclass replaces `run_experts` (the
        [expert-parallel layer](expert_parallel.py) does).
        """
        return (x.device.type == "cpu" and not torch.compiler.is_compiling()
                and not torch._C._are_functorch_transforms_active()
                and torch.autograd.forward_ad._current_level < 0
                and type(self).run_experts is SwitchFeedForward.run_experts)

    def _run_blocks(self, x: torch.Tensor, plan: DispatchPlan, capacity: int | None,
                    scale: torch.Tensor) -> torch.Tensor:
        r"""
        ### The CPU path: the kept tokens only, combine included

        The counts are already in host memory, so reading them costs nothing.
        Expert $e$ keeps $\min(T f_e, C)$ tokens, the first of its run in the
        sorted order; [`forward_rows`](expert_rows.py) runs the
        experts on exactly their kept tokens (grouping neighbours of about
        equal counts into one batched product), and each token reads its
        $p_{i^*}(x) E_{i^*}(x)$ from there into its row of the output.
        Dropped tokens are not computed at all; their rows are zero.
        """
        counts = plan.counts.tolist()
        sizes = counts if capacity is None else [min(n, capacity) for n in counts]
        # The kept tokens, expert by expert: the sorted order with the tail of
        # each expert over capacity cut out, as slices of it joined by one `cat`
        # (all of them when none is dropped)
        pieces, start, end = [], 0, 0
        for n, kept in zip(counts, sizes):
            if kept < n:
                pieces.append(plan.order[start:end + kept])
                start = end + n
            end += n
        rows = torch.cat(pieces + [plan.order[start:]]) if pieces else plan.order
        return forward_rows(self.experts, x, rows, sizes, scale, plan.token_expert)

    def _combine(self, y: torch.Tensor, plan: DispatchPlan, scale: torch.Tensor) -> torch.Tensor:
        r"""
        ### Combine (the GPU paths)

        * `y`: `[n_tokens, d_model]`, the expert outputs in sorted order
        * `scale`: `[n_tokens]`, each token's factor, in token order

        Multiply each expert output by its factor and put it back in its token's
        row. A dropped token's row is set to **zero** first, so that it leaves the
        layer through the residual connection alone, exactly zero even where its
        expert overflowed in float16 (`inf` times a zero weight would be `NaN`),
        and neither the expert nor the gate gets a gradient from it.
        """
        keep = plan.keep[:, None]
        y = torch.where(keep, y, 0.0) * scale.index_select(0, plan.order).to(y.dtype)[:, None]
        # Undo the sort: the output of sorted place $k$ goes back to token `order[k]`
        # (in place into a new tensor: `order` covers every row, and the out-of-place
        # `index_copy` would first copy the empty tensor)
        return torch.empty_like(y).index_copy_(0, plan.order, y)

    def run_experts(self, x: torch.Tensor, plan: DispatchPlan, capacity: int | None) -> torch.Tensor:
        """
        ### Run the experts (the GPU paths)

        * `x`: `[n_tokens, d_model]`, the tokens in their original order
        * `plan`: the `DispatchPlan`; `capacity`: $C$, or `None` when dropless

        Returns each token's expert output in the plan's sorted order,
        `[n_tokens, d_model]` (rows of dropped tokens: anything; `_combine`
        zeroes them). The [expert-parallel layer](expert_parallel.py) overrides
        this one method. `grouped_mm` where `Experts.supports_grouped` says it
        can run, padded buffers elsewhere.
        """
        if self.experts.supports_grouped(x):
            return self._run_grouped(x, plan)
        return self._run_padded(x, plan, capacity)

    def _run_grouped(self, x: torch.Tensor, plan: DispatchPlan) -> torch.Tensor:
        """
        ### Grouped dispatch (sync-free, the GPU's fast path)

        Gather the tokens in sorted order, `[n_tokens, d_model]`: the tokens of
        each expert form one contiguous block, and `grouped_mm` multiplies every
        block by its expert's weights in a single call. Dropped tokens stay in
        their expert's block and are computed too: that keeps every shape fixed
        (no host synchronisation to learn how many were kept), and the total
        work is exactly that of one dense FFN over all $T$ tokens, the layer's
        physical limit. Their outputs are zeroed in the combine step.
        """
        return self.experts.forward_grouped(x.index_select(0, plan.order), group_ends=plan.ends.to(torch.int32),
                                            row_expert=plan.expert)

    def _run_padded(self, x: torch.Tensor, plan: DispatchPlan, capacity: int | None) -> torch.Tensor:
        r"""
        ### Padded dispatch (every dtype and size: float64, unaligned sizes, older torch, other GPUs)

        Copy each kept token into slot $e \cdot C + \text{position}$ of a buffer
        `[n_experts * capacity, d_model]`, run all experts with one `bmm` over
        `[n_experts, capacity, d_model]`, and read each token's slot back. Empty
        slots are computed too: this costs $N C / T$, the capacity factor,
        times the work of the grouped path. Dropless routing sizes $C$ by the
        busiest expert, which the host must read.
        """
        n_tokens, d_model = x.shape
        if capacity is None:
            capacity = int(plan.counts.max()) if n_tokens else 0
        # At least one slot per expert, so that the buffer is never empty
        slots = max(capacity, 1)
        # The slot of each sorted token; dropped ones point at a real slot but add zeros to it
        n_experts = self.experts.n_experts
        slot = (plan.expert * slots + plan.position).clamp(max=n_experts * slots - 1)
        kept_x = torch.where(plan.keep[:, None], x[plan.order], 0.0)
        # `[n_experts * slots, d_model]`, filled with the kept tokens
        buffer = x.new_zeros(n_experts * slots, d_model).index_add(0, slot, kept_x)
        # All experts at once: `[n_experts, slots, d_model]`
        y = self.experts.forward_padded(buffer.view(n_experts, slots, d_model))
        # Each sorted token's output (dropped ones read a slot that the combine step ignores)
        return y.reshape(n_experts * slots, -1)[slot]
