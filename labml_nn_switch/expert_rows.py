r"""
---
title: The experts on the CPU
summary: >
  How the Switch layer runs its experts on the CPU: on exactly the kept
  tokens, neighbouring experts of about equal counts in one batched product,
  the combine folded in, and memory kept from one step to the next.
---

# The experts on the CPU

On a GPU, reading how many tokens each expert got would stall the device
until the router has run, so the GPU paths use shapes fixed in advance
(`grouped_mm`, or buffers of the full capacity). On the CPU there is no
device to stall: the counts are already in memory, and we use them to
choose the shapes of the work. For the $k$-th kept row $r_k$, of expert $e$,

$$\begin{aligned}
a_k &= \mathrm{Dropout}\big(\mathrm{act}(W_1^{(e)\top} x_{r_k} + b_1^{(e)})\big), \\
y_{r_k} &= s_k \big( W_2^{(e)\top} a_k + b_2^{(e)} \big).
\end{aligned}$$

[`SwitchFeedForward`](switch.py) calls `forward_rows` on the CPU; the
experts' weights are those of [`Experts`](feed_forward.py), whose other two
paths, `forward_grouped` and `forward_padded`, run on a GPU.

It imports nothing but torch and [`feed_forward.py`](feed_forward.py).
"""

import math

import torch

try:
    from .feed_forward import Experts, activate
except ImportError:  # copied into a project as plain files, side by side
    from feed_forward import Experts, activate


def forward_rows(experts: Experts, x: torch.Tensor, rows: torch.Tensor, sizes: list[int],
                 scale: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    r"""
    Run `experts` on the kept rows:

    * `x`: `[n_tokens, d_model]`, the tokens in their own order
    * `rows`: `[n_rows]`, the tokens to run: the first `sizes[0]` for expert 0,
      the next `sizes[1]` for expert 1, and so on
    * `sizes`: the number of rows of each expert, a list on the host
    * `scale`: `[n_tokens]`, the factor of each token's output (the gate), in the tokens' order
    * `expert`: `[n_tokens]`, each token's expert, in the tokens' order (for the biases' gradients)

    Returns `[n_tokens, d_model]`: row `rows[k]` is `scale[rows[k]]` times
    its expert's output, and the tokens not in `rows` are exactly zero.
    """
    # Under autocast the weights are cast with the input (autocast does not see inside a `Function`)
    w1, w2 = experts.w1.to(x.dtype), experts.w2.to(x.dtype)
    b1 = None if experts.b1 is None else experts.b1.to(x.dtype)
    b2 = None if experts.b2 is None else experts.b2.to(x.dtype)
    p = experts.dropout.p if experts.training else 0.0
    return ExpertRows.apply(x, rows, scale.to(x.dtype), expert, w1, b1, w2, b2, sizes, experts.activation, p,
                            experts.kept_memory)


def reusable_memory(memory: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], like: torch.Tensor, *,
                    may_be_held: bool = True) -> torch.Tensor:
    r"""
    An uninitialised tensor of `shape` (dtype and device of `like`), in memory
    kept in `memory[key]` from one step to the next, for a value that leaves
    `ExpertRows` and comes back free: a weight gradient, which autograd takes
    as the parameter's `.grad` without a copy, or a hidden layer saved for
    backward and let go after it.

    Why: a stacked weight of $N$ experts is large (64 experts of
    $512 \times 2048$ are 256 MiB), and so is its gradient. The C allocator
    hands out blocks of 32 MiB or more straight from the kernel and gives them
    back when freed, so a gradient made afresh at every step (as
    `optimizer.zero_grad()` sets `.grad` to `None`) faults in every one of its
    pages again: 65,536 page faults for those 256 MiB. A loop over per-expert
    weights never sees this, each gradient being small. Smaller blocks are
    reused by the allocator, but not necessarily the ones the last step
    touched: at the experiment's size, the hidden layer in memory kept this
    way made the layer's step 1 to 2% faster.

    The memory is reused only when nothing else refers to it any more: not the
    parameter's `.grad` (kept when gradients are accumulated over several
    backward passes), not a graph that still holds the hidden layer for its
    backward (two forward passes before one backward), nor a tensor someone
    kept from an earlier step. We ask torch how many tensors share the storage
    (`_storage_Use_Count`, which torch uses itself for the same check in its
    CUDA graph trees); where that private call is missing, or the memory is in
    use, the tensor is fresh memory, as without this function.

    `may_be_held=False` skips that check, for a value that never leaves the
    caller (`work_space`).
    """
    kept, numel = memory.get(key), math.prod(shape)
    held = False
    if may_be_held and kept is not None:
        count = getattr(torch._C, "_storage_Use_Count", None)
        # In use: our `kept`, the storage object we ask through, and anyone else's tensors
        held = count is None or count(kept.untyped_storage()._cdata) > 2
    # Too small (a hidden layer's rows change with the routing): grown to this size
    if held or kept is None or kept.numel() < numel or kept.dtype != like.dtype or kept.device != like.device:
        kept = memory[key] = like.new_empty(numel)
    # A new tensor over the same memory: the caller's to give away
    return kept[:numel].view(shape)


def work_space(memory: dict[str, torch.Tensor], key: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
    """
    A `[rows, cols]` tensor for a value that never leaves `ExpertRows` (the
    gathered rows, the gradients on the way), in memory kept in `memory[key]`
    and grown when too small: each step reuses the pages the last one touched
    instead of faulting in fresh ones. Each `key` is one value at a time, so
    nobody else can hold it (`reusable_memory` without the check).
    """
    return reusable_memory(memory, key, (rows, cols), like, may_be_held=False)


# The most elements of a hidden layer computed at once by `ExpertRows`: 16 MiB of
# float32. Blocks under 32 MiB are reused by the C allocator from one step to
# the next; a block of 32 MiB or more is fresh memory from the kernel every
# time (glibc maps it on its own), and touching it page by page costs time.
CHUNK_ELEMENTS = 1 << 22

# The most elements of a hidden layer into which small groups of experts are
# packed, so that their element-wise work runs once: 4 MiB of float32. Larger
# chunks than the groups themselves need cost fresh pages: packing up to 16 MiB
# took 4,000 to 6,000 page faults per step at 8 experts of $512 \times 2048$.
PACK_ELEMENTS = 1 << 20

# The most padding a group of experts may have, as a fraction of its kept rows.
# One `bmm` over a group hands one product to each thread at a time (MKL's
# batched GEMM), where a call per expert splits each product over the threads.
# On a 2-core Intel CPU with AVX-512 the `bmm` was 16% faster for four experts
# of 512 rows of $128 \times 256$ and 6% for 512 rows of $512 \times 2048$; on a
# 2-core AMD EPYC with AVX-512 8% and 5%, and 23% for 64 rows of
# $512 \times 2048$ (`bench_floor.py`); on a 2-core AVX2 CPU about 3%. The
# padding costs its arithmetic, and it is kept for backward like the rows:
# this bounds both. (A bound counted in multiply-adds per call saved instead,
# two million, as if a call cost the same at every size, grouped almost
# nothing at $512 \times 2048$: on the AMD CPU the layer of 64 such experts ran
# 1.12 to 1.15 times faster with this bound alone, the other sizes of the
# benchmark as fast.)
MAX_PADDING = 1 / 8

# What a product of its own costs beyond its rows, counted in rows: an
# expert's rows beyond its group's `bmm` block (a *tail*) are multiplied on
# their own, in one more call per product, instead of padding the block for
# everyone. At $128 \times 256$ a call's fixed cost, roughly 10 us a product,
# is the time of some 30 rows; at $512 \times 2048$ the call costs little but
# a product of a few rows runs far below the speed of a full one. On the AMD
# CPU, against padding every group to its busiest expert: 0.991, 0.992, 0.982
# and 0.983 of the time at the four sizes of `bench_layer.py` (1,000, 30, 30
# and 30 interleaved rounds); 16 or 64 instead of 32 made no difference at the
# experiment's size and cost 1-2% at 64 experts. Every tail instead of any
# padding cost 16% there (tails of 10 to 30 rows).
TAIL_ROWS = 32


class ExpertRows(torch.autograd.Function):
    r"""
    ## Forward and backward in one `Function`

    **Groups of experts, one `bmm` each.** One matrix multiplication per
    expert is slower than one `torch.bmm` over the same products, the more so
    the fewer rows they have (`MAX_PADDING`). But `bmm` needs every expert of
    its stack to have the same number of rows. So neighbouring experts are grouped
    (`_expert_groups`): $k$ experts get $m$ *slots* each, in one
    `[k, m, d_model]` tensor. An expert with fewer than $m$ kept rows fills the
    rest of its slots by repeating its last kept row with a gate of zero: such
    padding adds nothing to any output or gradient, but it costs arithmetic.
    An expert with more than $m$ puts the rest, its *tail*, in slots after the
    group's block, multiplied on their own (a group of one expert that adds to
    the weight gradient of the first). $m$ is chosen per group to cost the
    least, counting a tail as its rows plus `TAIL_ROWS`: the counts 548, 491,
    496 and 513 (`bench_layer.py` at the experiment's size) make a block of 496
    rows each, five of them padding for the expert of 491, and tails of 52 and
    17 rows. A group grows while padding every expert to its busiest stays
    within `MAX_PADDING`, an eighth, of its kept rows: the experiment's four
    experts share one `bmm` while their counts are within about an eighth of
    one another, and so do neighbours of about equal counts among many
    experts. Otherwise each expert is a group of one, with no padding at all.
    Dropped tokens are never computed.

    The slots' scaled outputs are collected in one `[n_slots + 1, d_model]`
    tensor whose last row is zero, and each token reads its own row there (a
    dropped token the zero row): its output is exactly zero, even where an
    expert overflows in float16. Reading rows by index (a gather) is two to
    five times faster on the CPU than writing them to their tokens
    (`index_copy_`); the input's gradient goes back the same way, and so
    does the gates' (a token's gate has the gradient of its slot, zero if
    dropped), so the gates are taken in the tokens' order and gathered here,
    with no autograd node of their own.

    Small groups are packed, in order, into chunks whose hidden layer stays
    under `PACK_ELEMENTS` (`_chunks`): the element-wise work (activation,
    dropout, gates, gathers) runs once per chunk, only the products once per
    group. No group's hidden layer exceeds `CHUNK_ELEMENTS`: an expert with
    more rows than that is cut over several chunks, its weight gradient
    summed over them.

    The weight gradients and the hidden layer kept for backward are written
    into memory kept from the last step when nobody holds it any more
    (`reusable_memory`), and the values that never leave the `Function` into
    a work space kept likewise (`work_space`): only the output and the input's
    gradient are new memory at each step.

    Written as one autograd `Function` so that backward keeps only what it
    needs: the input $x$ and the tokens' gates (the caller's tensors, kept
    anyway; the gates for a backward that is itself differentiated, below),
    the slots' map and gates (and, with biases, each slot's expert), and the
    hidden layer.
    For ReLU that is its output, whose sign is the derivative; for other
    activations the pre-activation, from which backward recomputes the rest. The gathered input is gathered again rather
    than kept. So the saved activations are about those of the dense FFN
    (dropped tokens have none; padding adds at most `MAX_PADDING`).

    **Backward.** The gate $s_k$ multiplies row $k$'s whole gradient, so we
    scale the output's gradient $g_k$ once, where it enters, on the narrow
    `[slots, d_model]` tensor: everything computed from it, $W_2$'s gradient
    $a^\top (s g)$, the hidden layer's $(s g) W_2^\top$, $W_1$'s and the
    input's, carries the factor, and a padding slot's gradient (gate zero) is
    zero. The gate's own gradient needs the expert's unscaled output $u_k$,
    but not as a tensor:

    $$\frac{\partial L}{\partial s_k} = g_k \cdot u_k
      = \frac{\big(W_2^{(e)} s_k g_k\big) \cdot a_k + s_k g_k \cdot b_2^{(e)}}{s_k},$$

    and $W_2^{(e)} s_k g_k$ is computed for $a_k$'s gradient anyway. A gate is
    never zero on a kept row: it is the largest of $N$ probabilities, at least
    $1/N$ (or exactly 1 with `scale_by_gate=False`).

    For ReLU the dot product over the $d_{ff}$ hidden features can be taken over
    the $d_{model}$ input features instead. ReLU is positively homogeneous,
    $\mathrm{relu}(z) = \mathrm{relu}'(z)\, z$, so with $z_k = W_1^{(e)\top} x_k + b_1^{(e)}$,
    $\delta_k$ the hidden layer's gradient (that of $a_k$ through ReLU and
    dropout, whose mask is linear too) and $\delta x_k = W_1^{(e)} \delta_k$
    the input's, both computed anyway,

    $$\big(W_2^{(e)} s_k g_k\big) \cdot a_k = \delta_k \cdot z_k
      = x_k \cdot \delta x_k + \delta_k \cdot b_1^{(e)}.$$

    With $d_{ff} = 4 d_{model}$ that reads a quarter of the numbers.
    """

    @staticmethod
    def forward(ctx, x, rows, scale, expert, w1, b1, w2, b2, sizes, activation, p, memory):
        groups, n_slots = _expert_groups(sizes, w1.shape[-1])
        chunks = _chunks(groups, w1.shape[-1])
        # Where each kept row sits among the slots, the token and the gate of each slot
        # (padding slots: the last row of their expert in the block, with a gate of zero),
        # and for each token the slot it reads (`n_slots`, the zero row, if dropped)
        slot_of_row, slot_token, slot_scale = _slots(rows, scale.index_select(0, rows), sizes, groups, n_slots)
        source = _token_sources(rows, slot_of_row, x.shape[0], n_slots)
        # The slots' scaled outputs and a last row of zeros: `[n_slots + 1, d_model]`
        d_model = w2.shape[-1]
        u = work_space(memory, "narrow", n_slots + 1, d_model, x)
        u[n_slots].zero_()
        hidden, masks = [], []
        for c0, c1, chunk_groups in chunks:
            # The chunk's tokens, slot by slot: `[c1 - c0, d_model]`
            xc = torch.index_select(x, 0, slot_token[c0:c1], out=work_space(memory, "x", c1 - c0, x.shape[1], x))
            # $W_1^\top x + b_1$, each group of $k$ experts in one product: `[c1 - c0, d_hidden]`
            h = reusable_memory(memory, f"hidden {len(hidden)}", (c1 - c0, w1.shape[-1]), xc)
            for e0, e1, m, s0, _ in chunk_groups:
                a, b = s0 - c0, s0 - c0 + (e1 - e0) * m
                _batched_linear_into(h[a:b].view(e1 - e0, m, -1), xc[a:b].view(e1 - e0, m, -1), w1[e0:e1],
                                     None if b1 is None else b1[e0:e1])
            # The activation: in place for ReLU, whose output is all backward needs;
            # other activations keep their input $h$ for backward
            act = h.relu_() if activation == "relu" else activate(h, activation)
            hidden.append(h)
            # Expert dropout; for ReLU its output still tells the derivative (zero where either zeroed).
            # A unit is kept with probability $1 - p$, where a uniform draw from $[0, 1)$ is at
            # least $p$: on the CPU `uniform_` and the comparison take half the time of
            # `bernoulli_` (1.7 against 3.3 ms on `[2100, 256]`; the whole layer at the
            # experiment's size with an expert dropout of 0.1, 0.89 of its time before)
            if p > 0:
                mask = torch.empty_like(act).uniform_().ge_(p)
                act = act.mul_(mask).div_(1 - p)
                if activation != "relu":
                    masks.append(mask.bool())
            # $u = W_2^\top a + b_2$, each group in one product, then scaled by the slots' gates
            for e0, e1, m, s0, _ in chunk_groups:
                a, b = s0 - c0, s0 - c0 + (e1 - e0) * m
                _batched_linear_into(u[s0:s0 + b - a].view(e1 - e0, m, -1), act[a:b].view(e1 - e0, m, -1),
                                     w2[e0:e1], None if b2 is None else b2[e0:e1])
            u[c0:c1].mul_(slot_scale[c0:c1, None])
        # The expert of each slot, for the biases' gradients: `[n_slots]`
        # (a padding slot repeats a row of its own expert)
        slot_expert = None if b2 is None else expert.index_select(0, slot_token)
        ctx.save_for_backward(x, scale, slot_token, slot_scale, source, slot_expert, w1, b1, w2, b2, *hidden, *masks)
        ctx.chunks, ctx.n_slots, ctx.activation, ctx.p, ctx.memory = chunks, n_slots, activation, p, memory
        # Each token reads its slot's row of `u` (a gather)
        return torch.index_select(u, 0, source)

    @staticmethod
    def backward(ctx, grad_out):
        # A backward that is to be differentiated in its turn (`create_graph=True`) takes the slow way
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_out)
        x, _, slot_token, slot_scale, source, slot_expert, w1, b1, w2, b2, *rest = ctx.saved_tensors
        chunks, n_slots, p = ctx.chunks, ctx.n_slots, ctx.p
        hidden, masks = rest[:len(chunks)], rest[len(chunks):]
        relu = ctx.activation == "relu"
        d_model, d_ff = x.shape[1], w2.shape[1]
        # The input's gradient of every slot, and a row of zeros for the dropped tokens
        dx = work_space(ctx.memory, "narrow", n_slots + 1, d_model, x)
        dx[n_slots].zero_()
        # The gates' gradient of every slot, and a zero for the dropped tokens
        grad_slot_scale = slot_scale.new_empty(n_slots + 1)
        grad_slot_scale[n_slots] = 0
        # The weight gradients, in reused memory; each expert's is written by the
        # first group of its rows, or zeroed when it has no kept token
        grad_w1 = reusable_memory(ctx.memory, "w1", w1.shape, w1)
        grad_w2 = reusable_memory(ctx.memory, "w2", w2.shape, w2)
        for e in set(range(w1.shape[0])) - {e for *_, groups in chunks for e0, e1, *_ in groups for e in range(e0, e1)}:
            grad_w1[e].zero_()
            grad_w2[e].zero_()
        grad_b1 = torch.zeros_like(b1) if b1 is not None else None
        grad_b2 = torch.zeros_like(b2) if b2 is not None else None
        for i, (c0, c1, chunk_groups) in enumerate(chunks):
            s = slot_scale[c0:c1, None]
            # The output's gradient on the chunk's slots, times the gates: `[c1 - c0, d_model]`
            g = torch.index_select(grad_out, 0, slot_token[c0:c1],
                                   out=work_space(ctx.memory, "g", c1 - c0, d_model, grad_out)).mul_(s)
            # $W_2 (s g)$, each group in one product: `[c1 - c0, d_ff]`
            ga = work_space(ctx.memory, "ga", c1 - c0, d_ff, grad_out)
            for e0, e1, m, s0, _ in chunk_groups:
                a, b = s0 - c0, s0 - c0 + (e1 - e0) * m
                torch.bmm(g[a:b].view(e1 - e0, m, -1), w2[e0:e1].transpose(1, 2), out=ga[a:b].view(e1 - e0, m, -1))
            # Through the activation: `[c1 - c0, d_hidden]`
            if relu:
                act = hidden[i]
                # ReLU's own backward kernel, in place: `ga` where `a > 0`, else 0
                gh = torch.ops.aten.threshold_backward.grad_input(ga, act, 0, grad_input=ga)
                if p > 0:
                    gh.div_(1 - p)
            else:
                # Recompute the activation (and its dropout) from the pre-activation
                with torch.enable_grad():
                    h = hidden[i].detach().requires_grad_()
                    act = activate(h, ctx.activation)
                    if masks:
                        act = act * masks[i] / (1 - p)
                # The gates' gradient times the gates, $(W_2 s g) \cdot a$ for each slot (the bias's part below)
                grad_s = torch.mul(ga, act, out=work_space(ctx.memory, "product", c1 - c0, d_ff, ga)).sum(-1)
                (gh,) = torch.autograd.grad(act, h, ga)
            # The chunk's input again (cheaper than keeping it)
            xc = torch.index_select(x, 0, slot_token[c0:c1], out=work_space(ctx.memory, "x", c1 - c0, d_model, x))
            for e0, e1, m, s0, first in chunk_groups:
                k, a, b = e1 - e0, s0 - c0, s0 - c0 + (e1 - e0) * m
                gk, ghk = g[a:b].view(k, m, -1), gh[a:b].view(k, m, -1)
                # $W_2$'s gradient $a^\top (s g)$, $W_1$'s $x^\top g_h$, the input's $g_h W_1^\top$
                _bmm_into(grad_w2[e0:e1], act[a:b].detach().view(k, m, -1).transpose(1, 2), gk, first)
                _bmm_into(grad_w1[e0:e1], xc[a:b].view(k, m, -1).transpose(1, 2), ghk, first)
                torch.bmm(ghk, w1[e0:e1].transpose(1, 2), out=dx[s0:s0 + b - a].view(k, m, -1))
            if relu:
                # The gates' gradient times the gates, $x \cdot \delta x$ for each slot (the ReLU identity above)
                grad_s = torch.mul(xc, dx[c0:c1], out=work_space(ctx.memory, "product", c1 - c0, d_model, xc)).sum(-1)
            if b2 is not None:
                # The biases' part of the gates' gradient, $s g \cdot b_2^{(e)}$ (and for ReLU
                # $\delta \cdot b_1^{(e)}$): the dot products of every row with the biases of
                # every expert of the chunk, experts `e0` to `e1 - 1` (its groups are in slot
                # order, and a tail may follow a later expert), in two thin products,
                # `[c1 - c0, e1 - e0]`, and each row's own column; the biases' gradients,
                # the sums of $s g$ and $\delta$ over each expert's rows
                e0 = min(group[0] for group in chunk_groups)
                e1 = max(group[1] for group in chunk_groups)
                se = slot_expert[c0:c1] - e0 if e0 else slot_expert[c0:c1]
                by_expert = torch.mm(g, b2[e0:e1].t())
                if relu:
                    by_expert.addmm_(gh, b1[e0:e1].t())
                grad_s += by_expert.gather(1, se[:, None]).view(-1)
                grad_b2[e0:e1].index_add_(0, se, g)
                grad_b1[e0:e1].index_add_(0, se, gh)
            # (padding slots divide zero by zero; their values are never read)
            torch.div(grad_s, slot_scale[c0:c1], out=grad_slot_scale[c0:c1])
        # Each token reads its slot's gradient (zero if dropped)
        need = ctx.needs_input_grad
        grad_x = torch.index_select(dx, 0, source) if need[0] else None
        grad_scale = torch.index_select(grad_slot_scale, 0, source) if need[2] else None
        return (grad_x, None, grad_scale, None, grad_w1 if need[4] else None, grad_b1 if need[5] else None,
                grad_w2 if need[6] else None, grad_b2 if need[7] else None, None, None, None, None)


def _differentiable_backward(ctx, grad_out):
    r"""
    ### Higher-order gradients

    `ExpertRows.backward` writes into kept memory (`out=`, in place), which
    autograd cannot differentiate. When the backward must itself be
    differentiable (`torch.autograd.grad(..., create_graph=True)`: gradient
    penalties, Hessian-vector products, meta-learning), we compute the layer
    once more from what the forward kept, in operators autograd records, and
    differentiate that: the same slots, groups and products, the same dropout
    masks (for ReLU, where the kept hidden layer is positive; otherwise the
    masks kept), so the same function, only slower.
    """
    x, scale, slot_token, slot_scale, source, _, w1, b1, w2, b2, *rest = ctx.saved_tensors
    chunks, p, activation = ctx.chunks, ctx.p, ctx.activation
    hidden, masks = rest[:len(chunks)], rest[len(chunks):]
    # The slots' tokens and gates, the gates as a function of `scale` (zero in padding, whose kept gate is zero)
    xs = x.index_select(0, slot_token)
    gate = torch.where(slot_scale != 0, scale.index_select(0, slot_token), 0)
    outputs = []
    for i, (c0, _, groups) in enumerate(chunks):
        for e0, e1, m, s0, _ in groups:
            k, a = e1 - e0, s0 - c0
            # $W_1^\top x + b_1$, the activation and its dropout, $W_2^\top a + b_2$: `[k, m, .]`
            h = torch.bmm(xs[s0:s0 + k * m].view(k, m, -1), w1[e0:e1])
            act = activate(h if b1 is None else h + b1[e0:e1, None], activation)
            if p > 0:
                kept = hidden[i][a:a + k * m] > 0 if activation == "relu" else masks[i][a:a + k * m]
                act = act * kept.view(k, m, -1) / (1 - p)
            y = torch.bmm(act, w2[e0:e1])
            outputs.append((y if b2 is None else y + b2[e0:e1, None]).reshape(k * m, -1))
    # The slots' scaled outputs, a row of zeros for the dropped tokens, each token's row
    scaled = [torch.cat(outputs) * gate[:, None]] if outputs else []
    u = torch.cat(scaled + [xs.new_zeros(1, w2.shape[-1])])
    out = u.index_select(0, source)
    # The gradients of the inputs that need one, as functions of `grad_out` and the inputs
    need = ctx.needs_input_grad
    inputs = {i: t for i, t in zip((0, 2, 4, 5, 6, 7), (x, scale, w1, b1, w2, b2)) if need[i] and t is not None}
    grads = torch.autograd.grad(out, list(inputs.values()), grad_out, create_graph=True, allow_unused=True)
    found = dict(zip(inputs, grads))
    return tuple(found.get(i) for i in range(12))


def _expert_groups(sizes: list[int], d_hidden: int,
                   threads: int | None = None) -> tuple[list[tuple[int, int, int, int, bool]], int]:
    """
    The groups of experts, and the number of slots they take. Each group is
    `(e0, e1, m, s0, first)`: experts `e0` to `e1 - 1`, `m` slots each, from
    slot `s0` on; `first` says the group holds the first rows of its experts
    (otherwise it is one expert's next rows: the cut of a long run, or a tail).
    Neighbouring experts are grouped while padding them all to the busiest
    stays within `MAX_PADDING` of the rows and the hidden layer within
    `CHUNK_ELEMENTS`; the group's block then takes `_block_rows` rows of each
    expert, and the tails follow it. An expert with more rows than the limit is
    cut into several groups of one expert. Experts without rows are in no group.

    A group of several experts holds a multiple of `threads` experts (torch's
    threads, `torch.get_num_threads()`, unless given). On the CPU `torch.bmm`
    hands the experts of a batch out to the threads, one product per thread at
    a time (MKL's batched GEMM), while a single product uses all threads. A
    batch of 3 on 2 threads thus takes as long as a batch of 4: measured on a
    2-core AVX-512 CPU, a batch of 3 or 5 experts of 512 rows of
    $128 \times 256$, or of 64 rows of $512 \times 2048$, costs 20 to 36% more
    per expert than one of 2, 4 or 6, or than one expert alone (at 32 rows of
    $256 \times 1024$, where a call's fixed cost weighs more, it did not). So
    a group that would end with a remainder gives it back to the next group,
    and where fewer experts than threads would be grouped, each runs alone.
    """
    threads = torch.get_num_threads() if threads is None else threads
    step = max(1, CHUNK_ELEMENTS // d_hidden)
    groups, s0, e0 = [], 0, 0
    while e0 < len(sizes):
        n = sizes[e0]
        if n == 0:
            e0 += 1
            continue
        if n > step:
            # A long run, cut
            for a in range(0, n, step):
                groups.append((e0, e0 + 1, min(step, n - a), s0, a == 0))
                s0 += min(step, n - a)
            e0 += 1
            continue
        # Grow a group from `e0` while the next expert fits
        e1, m, n_rows = e0 + 1, n, n
        while e1 < len(sizes) and sizes[e1] > 0:
            m_next, k_next = max(m, sizes[e1]), e1 + 1 - e0
            padding = m_next * k_next - n_rows - sizes[e1]
            if m_next * k_next > step or padding > MAX_PADDING * (n_rows + sizes[e1]):
                break
            e1, m, n_rows = e1 + 1, m_next, n_rows + sizes[e1]
        # A whole number of rounds of the threads (or one expert alone)
        if e1 - e0 > 1 and (e1 - e0) % threads:
            e1 = e0 + max(1, (e1 - e0) // threads * threads)
        # The block, `m` rows of each expert, then the tails of those with more
        m = _block_rows(sizes[e0:e1])
        groups.append((e0, e1, m, s0, True))
        s0 += (e1 - e0) * m
        for e in range(e0, e1):
            if sizes[e] > m:
                groups.append((e, e + 1, sizes[e] - m, s0, False))
                s0 += sizes[e] - m
        e0 = e1
    return groups, s0


def _block_rows(sizes: list[int]) -> int:
    r"""
    The rows per expert of a group's `bmm` block that cost the least: one of
    the group's counts $n_e$, the $m$ that minimises the padding
    $\sum_e \max(m - n_e, 0)$ plus `TAIL_ROWS` for each expert with a tail
    ($n_e > m$); of equal costs the largest (the fewest calls).
    """
    return min(sorted(set(sizes), reverse=True),
               key=lambda m: sum(max(m - n, 0) + (TAIL_ROWS if n > m else 0) for n in sizes))


def _chunks(groups: list[tuple[int, int, int, int, bool]], d_hidden: int) -> list[tuple[int, int, list]]:
    """
    The groups packed, in order, into chunks `(first slot, end slot, groups)`
    whose hidden layer stays within `PACK_ELEMENTS` (a group larger than that
    is a chunk of its own): the element-wise work runs once per chunk, only the
    products once per group.
    """
    step = max(1, PACK_ELEMENTS // d_hidden)
    chunks = []
    for group in groups:
        e0, e1, m, s0, _ = group
        s1 = s0 + (e1 - e0) * m
        if chunks and s1 - chunks[-1][0] <= step:
            chunks[-1] = (chunks[-1][0], s1, chunks[-1][2] + [group])
        else:
            chunks.append((s0, s1, [group]))
    return chunks


def _slots(rows: torch.Tensor, scale: torch.Tensor, sizes: list[int], groups: list, n_slots: int):
    """
    * `slot_of_row`: `[n_rows]`, the slot of each kept row (`None` when the slots are the rows)
    * `slot_token`: `[n_slots]`, the token in each slot (a padding slot repeats the last row of its expert's block)
    * `slot_scale`: `[n_slots]`, the gate of each slot (zero for padding)

    Each group takes, for each of its experts, a run of its next rows into a
    run of slots (and pads the run to `m` slots); an expert's rows are
    consecutive in `rows`, from `start[e]` on. Every run moves by a constant,
    its first slot minus its first row: each map is one `repeat_interleave`
    of the runs' shifts (and, where there is padding, one more of which slots
    hold a kept row).
    """
    start, done = [0] * len(sizes), [0] * len(sizes)
    for e in range(1, len(sizes)):
        start[e] = start[e - 1] + sizes[e - 1]
    # The runs in slot order, `(slots, row - slot, 1)` for kept rows and `(slots, row, 0)`
    # for padding; the kept runs in row order, `(row, rows, slot - row)`
    slot_runs, row_runs = [], []
    for e0, e1, m, s0, _ in groups:
        for e in range(e0, e1):
            slot, row = s0 + (e - e0) * m, start[e] + done[e]
            n = min(m, sizes[e] - done[e])
            slot_runs.append((n, row - slot, 1))
            row_runs.append((row, n, slot - row))
            if n < m:
                slot_runs.append((m - n, row + n - 1, 0))
            done[e] += n
    padded = len(slot_runs) > len(row_runs)
    if not padded and all(shift == 0 for *_, shift in row_runs):
        # The slots are the rows
        return None, rows, scale
    row_runs.sort()
    k = len(slot_runs)
    # All the runs' numbers in one tensor (one copy to make), then cut
    runs = torch.tensor([r[i] for i in range(3) for r in slot_runs] + [r[i] for i in (1, 2) for r in row_runs],
                        device=rows.device)
    lengths, offsets, real = runs[:k], runs[k:2 * k], runs[2 * k:3 * k]
    row_lengths, shifts = runs[3 * k:3 * k + len(row_runs)], runs[3 * k + len(row_runs):]
    # Each slot's row: `slot + (row - slot)` in a kept run; in padding the
    # slot is multiplied by 0 first, leaving the run's one row
    slot_row = torch.arange(n_slots, device=rows.device)
    if padded:
        is_real = real.repeat_interleave(lengths, output_size=n_slots)
        slot_row.mul_(is_real)
    slot_row += offsets.repeat_interleave(lengths, output_size=n_slots)
    # Each slot's gate, zero in padding
    slot_scale = scale.index_select(0, slot_row)
    if padded:
        slot_scale = slot_scale * is_real
    # Each kept row's slot
    slot_of_row = torch.arange(len(rows), device=rows.device) + shifts.repeat_interleave(row_lengths,
                                                                                          output_size=len(rows))
    return slot_of_row, rows.index_select(0, slot_row), slot_scale


def _token_sources(rows: torch.Tensor, slot_of_row: torch.Tensor, n_tokens: int, n_slots: int) -> torch.Tensor:
    """
    `[n_tokens]`: for each token, its slot (its row of the experts' output),
    or `n_slots` for a token not in `rows` (a dropped one).
    """
    source = rows.new_full((n_tokens,), n_slots) if len(rows) < n_tokens else rows.new_empty(n_tokens)
    if slot_of_row is None:
        slot_of_row = torch.arange(len(rows), device=rows.device)
    return source.scatter_(0, rows, slot_of_row)


def _batched_linear_into(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """`out = x @ w (+ b)` for a stack of experts, `[k, m, .]`, written into `out`."""
    if b is None:
        torch.bmm(x, w, out=out)
    else:
        torch.baddbmm(b[:, None, :], x, w, out=out)


def _bmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool) -> None:
    """`out = a @ b` for the first block of the experts' rows, `out += a @ b` for the next."""
    if first:
        torch.bmm(a, b, out=out)
    else:
        out.baddbmm_(a, b)
