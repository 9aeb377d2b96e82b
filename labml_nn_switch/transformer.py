r"""
---
title: Switch Transformer layers and the FLOP-matched dense baseline
summary: >
  A pre-norm transformer layer whose feed-forward part is a Switch layer (or a
  dense FFN of the same FLOPs), a stack of them, and a builder for both.
---

# The Switch Transformer

A transformer layer with the [Switch layer](switch.py) in place of its
[FFN](feed_forward.py), stacked. The layer is *pre-norm*: each sub-layer reads a
normalised copy of the stream and adds its result back,

$$\begin{aligned}
x &\leftarrow x + \mathrm{Dropout}\big(\mathrm{Attention}(\mathrm{LN}(x))\big), \\
x &\leftarrow x + \mathrm{Dropout}\big(\mathrm{FFN}(\mathrm{LN}(x))\big),
\end{aligned}$$

so the residual stream itself is never normalised, and a token dropped by a
Switch layer (whose FFN output is zero) passes on unchanged.

## The FLOP-matched dense baseline

The paper's central claim is about equal computation. A top-1 Switch layer
runs *one* expert per token, so its cost per token is that of one FFN with the
same $d_{ff}$, plus the router:

$$\begin{aligned}
&\underbrace{2 \cdot 2\, d_{model} d_{ff}}_{\text{FFN, multiply-adds} \times 2} \\
+\; &\underbrace{2\, d_{model} N}_{\text{router}} \quad \text{FLOPs per token,}
\end{aligned}$$

the router being well under 1% for $N \ll d_{ff}$. The dense baseline is
therefore the same transformer with a plain [`FeedForward`](feed_forward.py)
of the same $d_{ff}$: same FLOPs, $N$ times fewer FFN parameters.
`build_transformer(kind="dense", ...)` builds it from the same arguments.
"""

import functools
from collections.abc import Callable

import torch
from torch import nn

from .feed_forward import FeedForward
from .mha import MultiHeadAttention
from .routing_result import RoutingResult
from .switch import SwitchConfig, SwitchFeedForward, switch_config


class SwitchTransformerLayer(nn.Module):
    """
    ## A transformer layer

    Attention, then a feed-forward part, each pre-norm with a residual
    connection. The feed-forward part is a `SwitchFeedForward` or, for the
    dense baseline, a `FeedForward`.
    """

    def __init__(self, *, d_model: int, attn: MultiHeadAttention, feed_forward: nn.Module,
                 dropout: float = 0.1):
        """
        * `d_model`: the number of features of a token
        * `attn`: the self-attention module
        * `feed_forward`: a `SwitchFeedForward`, or a dense `FeedForward`
        * `dropout`: dropout probability on each sub-layer's output, before it is added to the stream
        """
        super().__init__()
        self.size = d_model
        self.attn = attn
        self.feed_forward = feed_forward
        self.dropout = nn.Dropout(dropout)
        # One layer normalisation before each sub-layer
        self.norm_attn = nn.LayerNorm(d_model)
        self.norm_ff = nn.LayerNorm(d_model)

    def forward(self, *, x: torch.Tensor, mask: torch.Tensor | None = None,
                is_causal: bool = False) -> tuple[torch.Tensor, RoutingResult | None]:
        """
        * `x`: `[seq_len, batch_size, d_model]`
        * `mask`, `is_causal`: as for `MultiHeadAttention`

        Returns the new `x` and the `RoutingResult` of the Switch layer (`None` when dense).
        """
        # Self-attention on the normalised stream
        z = self.norm_attn(x)
        x = x + self.dropout(self.attn(query=z, key=z, value=z, mask=mask, is_causal=is_causal))
        # The feed-forward part on the normalised stream
        z = self.norm_ff(x)
        if isinstance(self.feed_forward, SwitchFeedForward):
            ff, routing = self.feed_forward(z)
        else:
            ff, routing = self.feed_forward(z), None
        # Add it back
        x = x + self.dropout(ff)
        return x, routing


class TransformerRouting:
    """
    ## What the whole stack reports

    The per-layer results, and the auxiliary losses summed over layers (the
    paper adds one load-balancing loss per Switch layer). Like each layer's
    `RoutingResult`, a sum is computed when first read: a loss nobody reads
    (the z-loss, when its coefficient is zero) costs nothing.
    """

    def __init__(self, layers: list[RoutingResult], zero: torch.Tensor):
        # One `RoutingResult` per Switch layer, bottom first; empty for a dense model
        self.layers = layers
        # A float32 zero on the model's device, the sum of no losses
        self._zero = zero

    @functools.cached_property
    def load_balancing_loss(self) -> torch.Tensor:
        r"""$\sum_{\text{layers}} N \sum_i f_i P_i$ (zero for a dense model)."""
        return sum((r.load_balancing_loss for r in self.layers), self._zero)

    @functools.cached_property
    def z_loss(self) -> torch.Tensor:
        r"""$\sum_{\text{layers}} \mathcal{L}_z$ (zero for a dense model)."""
        return sum((r.z_loss for r in self.layers), self._zero)


class SwitchTransformer(nn.Module):
    """
    ## The stack

    The layers, then a final layer normalisation (pre-norm layers leave the
    stream unnormalised).
    """

    def __init__(self, layers: list[SwitchTransformerLayer]):
        """
        * `layers`: the transformer layers, bottom first; each its own module (with its own weights)
        """
        super().__init__()
        if len(layers) < 1:
            raise ValueError(f"need at least one layer, got {len(layers)}")
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(layers[0].size)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None,
                is_causal: bool = False) -> tuple[torch.Tensor, TransformerRouting]:
        """
        * `x`: `[seq_len, batch_size, d_model]`
        * `mask`, `is_causal`: as for `MultiHeadAttention`
        """
        results = []
        for layer in self.layers:
            x, routing = layer(x=x, mask=mask, is_causal=is_causal)
            if routing is not None:
                results.append(routing)
        # The auxiliary losses, summed over the Switch layers when read
        routing = TransformerRouting(results, x.new_zeros((), dtype=torch.float32))
        return self.norm(x), routing


def build_transformer(config: SwitchConfig | None = None, /, *, kind: str = "switch", n_layers: int, n_heads: int,
                      dropout: float = 0.1, switch_layer: Callable[[SwitchConfig], nn.Module] = SwitchFeedForward,
                      **options) -> SwitchTransformer:
    """
    ## Build a Switch Transformer or its dense baseline

    * `config`: the Switch layers' [`SwitchConfig`](switch.py) (or its fields as
      keyword `options`: `d_model=..., d_ff=..., n_experts=...`)
    * `kind`: `"switch"`, or `"dense"` for the FLOP-matched baseline: one `FeedForward`
      per layer with the configuration's `d_model`, `d_ff`, `activation`, `bias` and
      `init_scale` (its routing options are not used)
    * `n_layers`, `n_heads`: the number of layers and of attention heads
    * `dropout`: dropout of attention weights and sub-layer outputs; also of a dense FFN's hidden layer
    * `switch_layer`: makes each Switch layer from the configuration: `SwitchFeedForward`,
      or an [expert-parallel](expert_parallel.py) layer holding only this rank's experts

    Every layer is built anew, so each starts from its own random weights (a
    deep copy of one layer would start them all equal).
    """
    if kind not in ("switch", "dense"):
        raise ValueError(f"kind must be 'switch' or 'dense', got kind={kind!r}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got n_layers={n_layers!r}")
    # A dense model needs no expert count; any will do for the one configuration
    if kind == "dense" and config is None:
        options.setdefault("n_experts", 1)
    config = switch_config(config, options)

    def feed_forward() -> nn.Module:
        if kind == "dense":
            return FeedForward(d_model=config.d_model, d_ff=config.d_ff, dropout=dropout,
                               activation=config.activation, bias=config.bias, init_scale=config.init_scale)
        return switch_layer(config)

    layers = [SwitchTransformerLayer(d_model=config.d_model,
                                     attn=MultiHeadAttention(d_model=config.d_model, n_heads=n_heads, dropout=dropout),
                                     feed_forward=feed_forward(), dropout=dropout)
              for _ in range(n_layers)]
    return SwitchTransformer(layers)
