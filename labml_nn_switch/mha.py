r"""
---
title: Multi-head attention
summary: >
  Annotated multi-head attention with shapes [seq_len, batch_size, d_model],
  an optional mask, and PyTorch's fused scaled_dot_product_attention.
---

# Multi-head attention

From [Vaswani et al. (2017), "Attention Is All You Need"](https://arxiv.org/abs/1706.03762).
Each token asks a *query* and offers a *key* and a *value*; a token's output is
the average of all values weighted by how well its query matches their keys:

$$\mathrm{Attention}(Q, K, V) = \underset{seq}{\mathrm{softmax}}\Big(\frac{Q K^\top}{\sqrt{d_k}}\Big) V$$

The division by $\sqrt{d_k}$ keeps the dot products from growing with the
dimension and pushing the softmax into regions of tiny gradient.

*Multi-head* attention does this $h$ times in parallel on $d_k = d_{model} / h$
features each, with learned projections, and concatenates the results:

$$\begin{gathered}
\mathrm{MultiHead}(Q, K, V) = W^O \big[\mathrm{head}_1; \dots; \mathrm{head}_h\big], \\
\mathrm{head}_i = \mathrm{Attention}(W^Q_i Q, W^K_i K, W^V_i V)
\end{gathered}$$

Tensors are `[seq_len, batch_size, d_model]`, as in labml_nn. The arithmetic
above is done by `torch.nn.functional.scaled_dot_product_attention`, which
computes exactly that formula with fused kernels (flash or memory-efficient
attention where they apply) instead of materialising the
`[batch_size, heads, seq_len, seq_len]` score tensor several times over; the
tests check it against the formula written out.
"""

import torch
import torch.nn.functional as F
from torch import nn


def subsequent_mask(seq_len: int, device: torch.device | None = None) -> torch.Tensor:
    r"""
    ## Causal mask

    `mask[i, j, 0]` is `True` when query position $i$ may attend to key position
    $j$, that is when $j \le i$: a token sees itself and the past, never the
    future. Shape `[seq_len, seq_len, 1]`; the last dimension broadcasts over the
    batch.
    """
    return torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)).unsqueeze(-1)


class MultiHeadAttention(nn.Module):
    """
    ## The module
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.1, bias: bool = True):
        """
        * `d_model`: the number of features of a token
        * `n_heads`: the number of heads $h$; must divide `d_model`
        * `dropout`: dropout probability on the attention weights
        * `bias`: whether the projections have biases
        """
        super().__init__()
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(f"n_heads must be >= 1 and divide d_model, got n_heads={n_heads}, d_model={d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")
        self.n_heads = n_heads
        # $d_k$, the features per head
        self.d_k = d_model // n_heads
        self.dropout = dropout
        # $W^Q$, $W^K$, $W^V$ of all heads together: `d_model -> n_heads * d_k`
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, d_model, bias=bias)
        self.value = nn.Linear(d_model, d_model, bias=bias)
        # $W^O$
        self.output = nn.Linear(d_model, d_model, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """`[seq_len, batch_size, n_heads * d_k]` to `[batch_size, n_heads, seq_len, d_k]`, SDPA's layout."""
        seq_len, batch_size, _ = x.shape
        return x.view(seq_len, batch_size, self.n_heads, self.d_k).permute(1, 2, 0, 3)

    def forward(self, *, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """
        * `query`: `[seq_len_q, batch_size, d_model]`
        * `key`, `value`: `[seq_len_k, batch_size, d_model]`
        * `mask`: boolean `[seq_len_q, seq_len_k, batch_size]` (or `1` for the last
          dimension), `True` where a query may attend to a key. Every query must
          be allowed at least one key, or its softmax is undefined.
        * `is_causal`: attend causally without building a mask (the fused kernels
          then skip the masked half); do not combine with `mask`

        Returns `[seq_len_q, batch_size, d_model]`.
        """
        d_model = self.n_heads * self.d_k
        for name, t in (("query", query), ("key", key), ("value", value)):
            if t.dim() != 3 or t.shape[-1] != d_model:
                raise ValueError(f"{name} must be [seq_len, batch_size, d_model] with d_model={d_model}, "
                                 f"got shape {list(t.shape)}")
        if mask is not None and is_causal:
            raise ValueError("give either mask or is_causal=True, not both")
        seq_len, batch_size, _ = query.shape
        # Project and split into heads: `[batch_size, n_heads, seq_len, d_k]`
        q = self._split_heads(self.query(query))
        k = self._split_heads(self.key(key))
        v = self._split_heads(self.value(value))
        # Our mask `[seq_len_q, seq_len_k, batch_size]` becomes SDPA's
        # `[batch_size, 1, seq_len_q, seq_len_k]` (the 1 broadcasts over heads)
        if mask is not None:
            mask = mask.permute(2, 0, 1).unsqueeze(1)
        # $\mathrm{softmax}\big(Q K^\top / \sqrt{d_k}\big) V$ per head, with dropout on
        # the attention weights in training: `[batch_size, n_heads, seq_len, d_k]`
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        # Concatenate the heads: `[seq_len, batch_size, d_model]`
        x = x.permute(2, 0, 1, 3).reshape(seq_len, batch_size, -1)
        # $W^O$
        return self.output(x)
