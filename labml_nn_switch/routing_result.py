r"""
---
title: What the router reports - the auxiliary losses and the routing statistics
summary: >
  The Switch layer's second output: the load-balancing loss of the paper, the
  router z-loss of ST-MoE, and the routing statistics, each computed only when
  it is read.
---

# The auxiliary losses and the routing statistics

Besides its output, a [Switch layer](switch.py) returns a `RoutingResult`: the
router's logits and probabilities, the tokens each expert got, and, from
these, the two auxiliary losses a training loop adds to its task loss and the
statistics it logs.

It imports nothing but torch.
"""

import torch


class RoutingResult:
    r"""
    ## What a Switch layer reports besides its output

    The two auxiliary losses are returned *without* their coefficients: the
    training loop decides how much of each to add (the paper uses
    $\alpha = 10^{-2}$ for the load-balancing loss; ST-MoE uses $10^{-3}$ for the
    z-loss). The statistics are detached from the graph.

    Nothing here is computed until it is read: the layer hands over the
    router's tensors it already has, and a loss or statistic nobody reads costs
    nothing. Each is computed once, on first use.
    """

    def __init__(self, *, logits: torch.Tensor, probs: torch.Tensor, gate: torch.Tensor, plan: "DispatchPlan"):
        # `[n_tokens, n_experts]`: $h(x)$ and $p(x)$, float32
        self.logits, self.probs = logits, probs
        # `[n_tokens]`: $p_{i^*}(x)$
        self.gate = gate
        # `[n_experts]`: $T f_i$, tokens per expert before dropping
        self.counts = plan.counts
        # `[n_tokens]`: $i^*$, each token's chosen expert, in the tokens' order
        self.expert = plan.token_expert.detach()
        # The dispatch plan, for which tokens were kept
        self._plan = plan
        # The expert capacity $C$ of this call; when dropless, $T$ (no expert can
        # receive more than all the tokens, so none is dropped)
        self.capacity = self.n_tokens if plan.capacity is None else plan.capacity
        # The two losses, once computed
        self._losses = {}

    @property
    def n_tokens(self) -> int:
        """$T$, the number of tokens routed."""
        return self.gate.shape[0]

    @property
    def load_balancing_loss(self) -> torch.Tensor:
        r"""$N \sum_i f_i P_i$ (see `load_balancing_loss`), computed on first use."""
        if "lb" not in self._losses:
            self._losses["lb"] = load_balancing_loss(self.probs, self.counts)
        return self._losses["lb"]

    @property
    def z_loss(self) -> torch.Tensor:
        r"""$\frac{1}{T}\sum_x \big(\log \sum_j e^{h_j(x)}\big)^2$ (see `router_z_loss`), computed on first use."""
        if "z" not in self._losses:
            self._losses["z"] = router_z_loss(self.logits)
        return self._losses["z"]

    @property
    def tokens_per_expert(self) -> torch.Tensor:
        """`[n_experts]`: how many tokens the router sent to each expert, before dropping (float)."""
        return self.counts.detach().float()

    @property
    def mean_prob_per_expert(self) -> torch.Tensor:
        """`[n_experts]`: $P_i$, the mean router probability of each expert."""
        return self.probs.detach().sum(dim=0) / max(self.n_tokens, 1)

    @property
    def n_dropped(self) -> torch.Tensor:
        r"""Scalar: how many tokens were dropped for want of capacity, $\sum_i \max(T f_i - C, 0)$."""
        return (self.counts - self.capacity).clamp(min=0).sum()

    @property
    def max_prob(self) -> torch.Tensor:
        """`[n_tokens]`: $p_{i^*}(x)$, the router probability of each token's chosen expert."""
        return self.gate.detach()

    @property
    def kept(self) -> torch.Tensor:
        """`[n_tokens]`: whether each token got a place in its expert (`False`: dropped), in the tokens' order."""
        keep = self._plan.keep
        return torch.empty_like(keep).index_copy_(0, self._plan.order, keep)

    @property
    def route_fraction(self) -> torch.Tensor:
        """`[n_experts]`: $f_i$, the fraction of tokens routed to each expert."""
        return self.tokens_per_expert / max(self.n_tokens, 1)

    @property
    def dropped_fraction(self) -> torch.Tensor:
        """The fraction of tokens dropped."""
        return self.n_dropped.float() / max(self.n_tokens, 1)


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    r"""
    ## The load-balancing loss

    With $f_i$ the fraction of the $T$ tokens dispatched to expert $i$ and $P_i$ the
    fraction of router probability it receives,

    $$\begin{aligned}
    f_i &= \frac{1}{T} \sum_{x} \mathbb{1}\{\arg\max_j p_j(x) = i\}, \\
    P_i &= \frac{1}{T} \sum_{x} p_i(x),
    \end{aligned}$$

    the loss (equation 4 of the paper, before its coefficient $\alpha$) is

    $$\mathcal{L}_{aux} = N \sum_{i=1}^{N} f_i \cdot P_i .$$

    Uniform routing ($f_i = P_i = 1/N$) gives $1$. Where the router's
    probabilities agree with its choices ($P = f$) the loss is
    $N \sum_i f_i^2 \ge 1$ (Cauchy-Schwarz), with equality only when uniform:
    that is the sense in which $1$ is the target. It is not a lower bound for
    arbitrary probabilities: with $N = 2$ and three tokens, two choosing expert
    1 with $p = (0.51, 0.49)$ and one choosing expert 2 with $p = (0, 1)$,
    $f = (2/3, 1/3)$, $P = (0.34, 0.66)$ and the loss is $0.89$. It is at
    most $N$ (all tokens to one expert, all its probability there).

    $f_i$ is a count and carries no gradient; $P_i$ does, and the product
    steers probability away from the overloaded experts. $f_i$ counts every
    token the router chose, **before** any is dropped: a dropped token still
    says its expert is wanted too much. With no tokens the loss is $0$.

    * `probs`: `[n_tokens, n_experts]`, $p_i(x)$
    * `counts`: `[n_experts]`, $T f_i$
    """
    n_tokens, n_experts = probs.shape
    # $T f_i$ and $T P_i$
    count, prob_sum = counts.to(probs.dtype), probs.sum(dim=0)
    # $N \sum_i f_i P_i = \frac{N}{T^2} \sum_i (T f_i)(T P_i)$: one dot product and one scaling
    return torch.dot(count, prob_sum) * (n_experts / max(n_tokens, 1) ** 2)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    r"""
    ## The router z-loss

    From [Zoph et al. (2022), "ST-MoE"](https://arxiv.org/abs/2202.08906): penalise
    large router logits, which make the float32 softmax lose precision and
    training unstable,

    $$\mathcal{L}_z = \frac{1}{T} \sum_{x} \Big(\log \sum_{j=1}^{N} e^{h_j(x)}\Big)^2 .$$

    * `logits`: `[n_tokens, n_experts]`, $h(x)$ ($0$ when there are no tokens)
    """
    return torch.logsumexp(logits, dim=-1).square().sum() / max(logits.shape[0], 1)
