r"""
---
title: Position-wise feed-forward network (the expert)
summary: >
  The FFN of a transformer layer, and a bank of such FFNs stacked into batched
  weights: the experts of a Switch layer.
---

# Position-wise feed-forward network

Every transformer layer ends with a small two-layer network applied to each
token on its own:

$$\mathrm{FFN}(x) = W_2\, \mathrm{act}(W_1 x + b_1) + b_2$$

with $x \in \mathbb{R}^{d_{model}}$, $W_1 \in \mathbb{R}^{d_{ff} \times d_{model}}$
and $W_2 \in \mathbb{R}^{d_{model} \times d_{ff}}$; usually $d_{ff} = 4\,d_{model}$.
It holds two thirds of a transformer's parameters, and it is the part the
[Switch Transformer](switch.py) multiplies: each *expert* is one such FFN.

The gated variants of
[Shazeer (2020), "GLU Variants Improve Transformer"](https://arxiv.org/abs/2002.05202)
replace $\mathrm{act}(W_1 x)$ by $\mathrm{act}(W_1 x) \odot (V x)$: `reglu`,
`geglu` and `swiglu` below.

This file holds two modules:

* `FeedForward`: one FFN, the dense layer (and the FLOP-matched dense baseline);
* `Experts`: $N$ FFNs whose weights are stacked into tensors with a leading
  expert dimension, so that all experts run in one batched (`bmm`) or grouped
  (`grouped_mm`) matrix multiplication on a GPU, and on the CPU on exactly their
  kept rows, neighbouring experts of about equal counts in one `bmm`
  ([expert_rows.py](expert_rows.py)).

A note on cost: a plain FFN does $2 \cdot 2\, d_{model} d_{ff}$ FLOPs per token
forward (two matrix multiplications, a multiply and an add each). A gated one
does $3 \cdot 2\, d_{model} d_{ff}$: $W_1$ has twice the outputs. To compare a
gated FFN with a plain one at equal FLOPs, take $d_{ff}$ two thirds as large.

It imports nothing but torch, so you can copy it into your own project.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# The activations we offer, by name. The gated ones (`*glu`) split the hidden
# layer in two halves $a, b$ and return $\mathrm{act}(a) \odot b$.
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "reglu": F.relu,
    "geglu": F.gelu,
    "swiglu": F.silu,
}


def is_gated(activation: str) -> bool:
    """Whether `activation` is a gated linear unit variant (it doubles $W_1$'s output)."""
    return activation.endswith("glu")


def check_activation(activation: str) -> None:
    """Raise a `ValueError` naming `activation` if we do not know it."""
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """
    Apply the activation to the hidden layer `h` of shape `[..., d_hidden]`.

    For a gated variant `d_hidden` is $2 d_{ff}$ and the result has $d_{ff}$ features.
    """
    # The function for this name
    act = ACTIVATIONS[activation]
    # Plain activation: $\mathrm{act}(h)$
    if not is_gated(activation):
        return act(h)
    # Gated: split into the gate $a$ and the value $b$, return $\mathrm{act}(a) \odot b$
    a, b = h.chunk(2, dim=-1)
    return act(a) * b


def truncated_normal_(weight: torch.Tensor, *, fan_in: int, scale: float) -> torch.Tensor:
    r"""
    The Switch Transformer's initialisation (section 2.4 of the paper, "Smaller parameter initialization
    for stability", Table 3): draw from a
    normal distribution with mean $0$ and standard deviation $\sigma = \sqrt{s / n}$,
    truncated at $\pm 2\sigma$, where $n$ is the number of input units (`fan_in`)
    and $s$ the `scale`. The paper lowers $s$ from the usual $1.0$ to $0.1$ and
    finds training much more stable.
    """
    # $\sigma = \sqrt{s / n}$
    std = math.sqrt(scale / fan_in)
    # In place, so it can be used on parameters
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def draw_experts_(weight: torch.Tensor, *, first: int, n_experts: int, fan_in: int, scale: float) -> None:
    r"""
    Initialise `weight`, `[E, ...]`, as experts `first` to `first + E - 1` of a
    bank of `n_experts`, with `truncated_normal_`.

    Every expert of the bank is drawn, **one after the other**, and only this
    module's are kept (the others are drawn into a one-expert scratch tensor
    and forgotten). The random generator therefore moves exactly as it does
    for the whole bank, and an [expert-parallel](expert_parallel.py) rank
    holding $E$ of the $N$ experts gets, without ever storing the other
    $N - E$, the weights the single-process layer built from the same seed
    holds: expert by expert and everything drawn after it. (One draw over the
    whole `[N, ...]` tensor would not do: `torch.nn.init.trunc_normal_` samples
    by rejection, redrawing the whole tensor while any value lies outside
    $\pm 2\sigma$, so what a slice gets depends on the size of the tensor it is
    drawn in.) The price is the time of drawing all $N$ experts on every rank;
    seeding one generator per expert would avoid it but tie the weights to a
    seed scheme of their own.
    """
    # One expert's worth of numbers to throw away, made when first needed
    scratch = None
    for e in range(n_experts):
        if first <= e < first + weight.shape[0]:
            # One of ours: drawn in place
            truncated_normal_(weight[e - first], fan_in=fan_in, scale=scale)
        else:
            # Someone else's: drawn and dropped, so the generator moves on as for the whole bank
            scratch = torch.empty_like(weight[0]) if scratch is None else scratch
            truncated_normal_(scratch, fan_in=fan_in, scale=scale)


def check_int(name: str, value, *, minimum: int) -> None:
    r"""Raise a `ValueError` naming `name` unless `value` is an integer (not a bool) $\ge$ `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")


def check_float(name: str, value, *, low: float, high: float = math.inf, low_open: bool = False,
                high_open: bool = True) -> None:
    """
    Raise a `ValueError` naming `name` unless `value` is a finite real number in
    the interval from `low` to `high` (each end open or closed as asked).
    """
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {name}={value!r}")


def check_sizes(*, d_model: int, d_ff: int, dropout: float, activation: str, init_scale: float,
                dropout_name: str = "dropout") -> None:
    """
    The checks every FFN needs, each bad value named, so a wrong config is
    found at once rather than deep inside a forward pass.
    """
    check_int("d_model", d_model, minimum=1)
    check_int("d_ff", d_ff, minimum=1)
    check_float(dropout_name, dropout, low=0.0, high=1.0)
    check_float("init_scale", init_scale, low=0.0, low_open=True)
    check_activation(activation)


def check_features(x: torch.Tensor, d_model: int) -> None:
    """Raise a `ValueError` unless the last dimension of the input `x` has `d_model` features."""
    if x.shape[-1] != d_model:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension but d_model={d_model}")


def grouped_mm_supported(x: torch.Tensor, *widths: int) -> bool:
    r"""
    Whether `torch.nn.functional.grouped_mm` (torch 2.8 and later) can multiply
    `x`, `[n_rows, d]`, by stacked weights whose other sides are `widths`:

    * on the CPU: float32, bfloat16 or float16; on a CUDA GPU: bfloat16 on
      compute capability 9.0 or more (its kernel is written for Hopper);
    * every row stride a multiple of 16 bytes: $d$ and every width times the
      element size (float32: multiples of 4, bfloat16: of 8);
    * at least one row (it rejects an empty input);
    * not under `torch.compile` unless bfloat16 (its shape-checking stand-in
      accepts only bfloat16, torch 2.13).

    Where it returns `False` the caller takes the padded `bmm` path, which has
    none of these limits.
    """
    if not hasattr(F, "grouped_mm") or x.dim() != 2 or x.shape[0] == 0:
        return False
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return False
    if any(w * x.element_size() % 16 for w in (x.shape[1], *widths)):
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return False


class FeedForward(nn.Module):
    r"""
    ## One FFN

    $$\mathrm{FFN}(x) = W_2\, \mathrm{Dropout}(\mathrm{act}(W_1 x + b_1)) + b_2$$
    """

    def __init__(self, *, d_model: int, d_ff: int, dropout: float = 0.1, activation: str = "relu",
                 bias: bool = False, init_scale: float = 0.1):
        """
        * `d_model`: the number of features of a token
        * `d_ff`: the number of features of the hidden layer
        * `dropout`: dropout probability on the hidden layer
        * `activation`: `relu`, `gelu`, `silu`, or a gated `reglu`, `geglu`, `swiglu`
        * `bias`: whether the two linear layers have biases; off by default, as in
          T5 and the Switch Transformer (labml_nn's FFN has them)
        * `init_scale`: $s$ of the truncated normal initialisation (`truncated_normal_`)
        """
        super().__init__()
        check_sizes(d_model=d_model, d_ff=d_ff, dropout=dropout, activation=activation, init_scale=init_scale)
        self.d_model = d_model
        self.d_ff = d_ff
        self.activation = activation
        # A gated unit needs both $W_1 x$ and $V x$: one linear layer of twice the width
        d_hidden = 2 * d_ff if is_gated(activation) else d_ff
        # $W_1$ and $b_1$
        self.layer1 = nn.Linear(d_model, d_hidden, bias=bias)
        # $W_2$ and $b_2$
        self.layer2 = nn.Linear(d_ff, d_model, bias=bias)
        # Dropout on the hidden layer
        self.dropout = nn.Dropout(dropout)
        # Initialise the weights as the paper does; biases start at zero
        truncated_normal_(self.layer1.weight, fan_in=d_model, scale=init_scale)
        truncated_normal_(self.layer2.weight, fan_in=d_ff, scale=init_scale)
        for layer in (self.layer1, self.layer2):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x` has shape `[..., d_model]`; so has the result."""
        check_features(x, self.d_model)
        # $\mathrm{act}(W_1 x + b_1)$, shape `[..., d_ff]`
        h = activate(self.layer1(x), self.activation)
        # Dropout on the hidden layer
        h = self.dropout(h)
        # $W_2 h + b_2$, shape `[..., d_model]`
        return self.layer2(h)


class Experts(nn.Module):
    r"""
    ## $N$ FFNs with stacked weights

    Expert $e$ computes $W_2^{(e)}\, \mathrm{act}(W_1^{(e)} x + b_1^{(e)}) + b_2^{(e)}$.
    Rather than $N$ `FeedForward` modules (and a loop over them), we keep one tensor per
    weight with the expert as the leading dimension:

    * `w1`: `[n_experts, d_model, d_hidden]`, `b1`: `[n_experts, d_hidden]`
    * `w2`: `[n_experts, d_ff, d_model]`, `b2`: `[n_experts, d_model]`

    (stored as $x W$ rather than $W x$, the layout matrix multiplication wants).
    Three ways to run them:

    * `forward_grouped`: tokens sorted by expert into one `[n_tokens, d_model]`
      tensor; `torch.nn.functional.grouped_mm` multiplies each contiguous group
      of rows by its own expert's weight, one kernel per linear layer for all
      experts. No padding is computed.
    * `forward_padded`: tokens in per-expert buffers `[n_experts, capacity, d_model]`
      (the layout of Mesh-TensorFlow and GShard); `torch.bmm` multiplies them,
      empty slots included. Works for every dtype and size.
    * `forward_rows(experts, ...)`, a function of its own file
      ([expert_rows.py](expert_rows.py)): the CPU path. The host already knows how many rows each
      expert has, so the experts multiply exactly their kept rows (no dropped
      token, and padding only where grouping experts into one `bmm` pays), the
      combine is folded in, and backward keeps only the hidden layer.
    """

    def __init__(self, *, n_experts: int, d_model: int, d_ff: int, dropout: float = 0.1,
                 activation: str = "relu", bias: bool = False, init_scale: float = 0.1,
                 shard: tuple[int, int] | None = None):
        """
        * `n_experts`: the number of experts $N$
        * `d_model`, `d_ff`, `activation`, `bias`, `init_scale`: as for `FeedForward`,
          the same for every expert
        * `dropout`: the *expert dropout*, on each expert's hidden layer. The paper
          (section 2.4, "Regularizing large sparse models", Table 4) fine-tunes with 0.4
          here and 0.1 elsewhere.
        * `shard`: `(first, last)` to hold only experts `first` to `last - 1` of the
          $N$ (an [expert-parallel](expert_parallel.py) rank's share), with the very
          weights the whole bank would give them; `None` holds all $N$
        """
        super().__init__()
        check_sizes(d_model=d_model, d_ff=d_ff, dropout=dropout, activation=activation, init_scale=init_scale)
        check_int("n_experts", n_experts, minimum=1)
        first, last = (0, n_experts) if shard is None else shard
        if not (isinstance(first, int) and isinstance(last, int) and 0 <= first < last <= n_experts):
            raise ValueError(f"shard must be (first, last) with 0 <= first < last <= n_experts={n_experts}, "
                             f"got shard={shard!r}")
        # The experts this module holds: $N$, or the shard's
        self.n_experts = last - first
        self.d_ff = d_ff
        self.activation = activation
        # $W_1$'s outputs: twice $d_{ff}$ for a gated unit
        self.d_hidden = d_hidden = 2 * d_ff if is_gated(activation) else d_ff
        # The stacked weights, initialised like `FeedForward`'s, one expert after the other
        self.w1 = nn.Parameter(torch.empty(self.n_experts, d_model, d_hidden))
        self.w2 = nn.Parameter(torch.empty(self.n_experts, d_ff, d_model))
        draw_experts_(self.w1, first=first, n_experts=n_experts, fan_in=d_model, scale=init_scale)
        draw_experts_(self.w2, first=first, n_experts=n_experts, fan_in=d_ff, scale=init_scale)
        # The biases, zero at first (or none)
        self.b1 = nn.Parameter(torch.zeros(self.n_experts, d_hidden)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(self.n_experts, d_model)) if bias else None
        # Expert dropout
        self.dropout = nn.Dropout(dropout)
        # Memory the CPU path ([expert_rows.py](expert_rows.py)) keeps from one step to the next:
        # the weight gradients, the hidden layers and its work space; not part of the state
        self.kept_memory: dict[str, torch.Tensor] = {}

    def __getstate__(self):
        # Pickled (`torch.save(model)`, `copy.deepcopy`) without the kept memory
        return {**super().__getstate__(), "kept_memory": {}}

    def supports_grouped(self, x: torch.Tensor) -> bool:
        """Whether `forward_grouped` can run on `x` (see `grouped_mm_supported`)."""
        return grouped_mm_supported(x, self.d_hidden, self.d_ff)

    def forward_grouped(self, x: torch.Tensor, *, group_ends: torch.Tensor,
                        row_expert: torch.Tensor) -> torch.Tensor:
        """
        * `x`: `[n_tokens, d_model]`, the rows of expert $e$ contiguous and in expert order
        * `group_ends`: `[n_experts]` int32, the cumulative row counts: expert $e$ owns
          rows `group_ends[e-1]` to `group_ends[e]` (an expert may own none)
        * `row_expert`: `[n_tokens]`, the expert of each row, to pick its biases

        Returns `[n_tokens, d_model]`. Every row must belong to a group
        (`group_ends[-1] == n_tokens`): rows past the last group are not computed.
        """
        # The first linear layer of every expert at once: `[n_tokens, d_hidden]`
        h = F.grouped_mm(x, self.w1.to(x.dtype), offs=group_ends)
        # Each row's own bias $b_1^{(e)}$, added in place (`grouped_mm`'s backward
        # does not need its output). `index_select`, whose backward is an
        # `index_add`, is much faster on the CPU than indexing with `[]`.
        if self.b1 is not None:
            h.add_(self.b1.to(x.dtype).index_select(0, row_expert))
        # Activation and expert dropout: `[n_tokens, d_ff]`
        h = self.dropout(activate(h, self.activation))
        # The second linear layer: `[n_tokens, d_model]`
        y = F.grouped_mm(h, self.w2.to(x.dtype), offs=group_ends)
        if self.b2 is not None:
            y.add_(self.b2.to(x.dtype).index_select(0, row_expert))
        return y

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """
        * `x`: `[n_experts, capacity, d_model]`, the tokens of expert $e$ in `x[e]`
          (unused slots hold anything; their outputs are to be ignored)

        Returns `[n_experts, capacity, d_model]`.
        """
        # `[n_experts, capacity, d_hidden]`: one batched matrix multiplication for all experts
        h = torch.bmm(x, self.w1.to(x.dtype))
        if self.b1 is not None:
            h = h + self.b1.to(x.dtype)[:, None, :]
        # Activation and expert dropout: `[n_experts, capacity, d_ff]`
        h = self.dropout(activate(h, self.activation))
        # `[n_experts, capacity, d_model]`
        y = torch.bmm(h, self.w2.to(x.dtype))
        if self.b2 is not None:
            y = y + self.b2.to(x.dtype)[:, None, :]
        return y
