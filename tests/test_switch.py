"""The Switch layer against an independent, obvious per-expert loop, and its documented rules."""

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labml_nn_switch import (SwitchConfig, SwitchFeedForward, expert_rows, load_balancing_loss, plan_dispatch,
                             router_z_loss)
from labml_nn_switch.feed_forward import ACTIVATIONS, Experts, activate
from labml_nn_switch.switch import EXPERT_MAJOR_BELOW, softmax_over_experts


def reference_switch(ff: SwitchFeedForward, x: torch.Tensor) -> torch.Tensor:
    """
    The slow reference: route each token, walk the tokens one by one in priority
    order filling each expert up to its capacity, then run each expert on its
    tokens in a Python loop. Written from the paper, sharing no code with the layer.
    """
    d_model = x.shape[-1]
    xf = x.reshape(-1, d_model)
    n_tokens = xf.shape[0]
    probs = torch.softmax(xf @ ff.router.weight.to(xf.dtype).T, dim=-1)
    gate, expert = probs.max(dim=-1)
    capacity = ff.capacity(n_tokens)
    if ff.config.batch_prioritized:
        priority = sorted(range(n_tokens), key=lambda t: -gate[t].item())
    else:
        priority = list(range(n_tokens))
    kept = {e: [] for e in range(ff.config.n_experts)}
    for t in priority:
        e = int(expert[t])
        if capacity is None or len(kept[e]) < capacity:
            kept[e].append(t)
    out = torch.zeros_like(xf)
    ex = ff.experts
    for e, tokens in kept.items():
        if not tokens:
            continue
        idx = torch.tensor(tokens)
        h = xf[idx] @ ex.w1[e]
        if ex.b1 is not None:
            h = h + ex.b1[e]
        y = activate(h, ex.activation) @ ex.w2[e]
        if ex.b2 is not None:
            y = y + ex.b2[e]
        g = gate[idx, None] if ff.config.scale_by_gate else gate[idx, None] / gate[idx, None].detach()
        out = out.index_put((idx,), y * g)
    return out.reshape(x.shape)


@pytest.mark.parametrize("n_experts", [1, 4, EXPERT_MAJOR_BELOW - 1, EXPERT_MAJOR_BELOW, 40])
def test_router_layout_follows_the_expert_count_and_routes_alike(n_experts):
    # Few experts: logits stored expert-major (a transposed view); many: token-major.
    # Either way the values, the probabilities and the top-1 (ties to the first
    # expert) are those of the plain row-wise computation.
    ff = make_layer(dtype=torch.float32, n_experts=n_experts)
    x = torch.randn(50, 8)
    x[:5] = 0.0  # all logits equal: a tie, which must go to expert 0
    logits = ff.router(x)
    assert logits.shape == (50, n_experts)
    assert (logits.stride(0) == 1 and n_experts > 1) == (1 < n_experts < EXPERT_MAJOR_BELOW)
    torch.testing.assert_close(logits, x @ ff.router.weight.T, atol=1e-5, rtol=1e-5)
    probs = softmax_over_experts(logits)
    expected = torch.softmax(logits.contiguous(), dim=-1)
    torch.testing.assert_close(probs, expected)
    assert torch.equal(probs.max(dim=-1).indices, expected.max(dim=-1).indices)
    assert (probs.max(dim=-1).indices[:5] == 0).all()


def make_layer(*, dtype=torch.float64, seed=0, **kwargs) -> SwitchFeedForward:
    torch.manual_seed(seed)
    options = dict(d_model=8, d_ff=16, n_experts=4, expert_dropout=0.0, bias=True)
    options.update(kwargs)
    ff = SwitchFeedForward(**options).to(dtype)
    # Non-zero biases and a sharper router, so that every term is exercised
    with torch.no_grad():
        for b in (ff.experts.b1, ff.experts.b2):
            if b is not None:
                b.normal_()
        ff.router.weight.mul_(20)
    return ff


def grads(module: torch.nn.Module, x: torch.Tensor, out: torch.Tensor, g: torch.Tensor) -> dict:
    """Gradients of `(out * g).sum()` with respect to `x` and every parameter."""
    names = [n for n, _ in module.named_parameters()]
    if not out.requires_grad:  # every token dropped: the output is a constant zero
        return dict.fromkeys(["x"] + names)
    tensors = torch.autograd.grad((out * g).sum(), [x] + [p for _, p in module.named_parameters()],
                                  allow_unused=True)
    return dict(zip(["x"] + names, tensors))


def assert_matches_reference(ff: SwitchFeedForward, x: torch.Tensor, *, atol: float) -> None:
    x = x.clone().requires_grad_()
    out, result = ff(x)
    expected = reference_switch(ff, x)
    torch.testing.assert_close(out, expected, atol=atol, rtol=atol)
    g = torch.randn_like(out)
    got, want = grads(ff, x, out, g), grads(ff, x, expected, g)
    for name in want:
        like = x if name == "x" else dict(ff.named_parameters())[name]
        w = want[name] if want[name] is not None else torch.zeros_like(like)
        torch.testing.assert_close(got[name] if got[name] is not None else torch.zeros_like(like), w, atol=atol, rtol=atol, msg=lambda m: f"gradient of {name}: {m}")


CASES = [
    dict(n_experts=1),
    dict(n_experts=3),
    dict(n_experts=4, capacity_factor=1.0),
    dict(n_experts=4, capacity_factor=0.5),
    dict(n_experts=4, capacity_factor=0.5, batch_prioritized=True),
    dict(n_experts=4, drop_tokens=False),
    dict(n_experts=8, capacity_factor=2.0),
    dict(n_experts=4, activation="swiglu", bias=False),
    dict(n_experts=4, activation="gelu", scale_by_gate=False, capacity_factor=0.75),
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_matches_loop_reference_float64(options):
    # float64 takes the padded (bmm) path
    ff = make_layer(**options)
    x = torch.randn(12, 3, 8, dtype=torch.float64)
    assert_matches_reference(ff, x, atol=1e-10)


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_matches_loop_reference_float32(options):
    # float32 on the CPU takes the grouped_mm path where torch has it
    ff = make_layer(dtype=torch.float32, **options)
    x = torch.randn(12, 3, 8)
    assert_matches_reference(ff, x, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_experts_without_tokens(dtype):
    # 16 experts and 6 tokens: most experts receive nothing
    ff = make_layer(dtype=dtype, n_experts=16, capacity_factor=4.0)
    x = torch.randn(3, 2, 8, dtype=dtype)
    _, result = ff(x)
    assert (result.tokens_per_expert == 0).sum() >= 10
    assert_matches_reference(ff, x, atol=1e-10 if dtype == torch.float64 else 2e-5)
    # An expert without tokens gets an exactly zero gradient
    out, result = ff(x)
    out.square().sum().backward()
    empty = result.tokens_per_expert == 0
    assert torch.all(ff.experts.w1.grad[empty] == 0)


def test_grouped_and_padded_paths_agree():
    ff = make_layer(dtype=torch.float32, n_experts=5, capacity_factor=1.0)
    x = torch.randn(20, 2, 8)
    out, result = ff(x)
    plan_args = dict(n_experts=5, capacity=result.capacity)
    probs = torch.softmax(ff.router(x.reshape(-1, 8)), -1)
    gate, expert = probs.max(-1)
    plan = plan_dispatch(expert, gate, **plan_args)
    padded = ff._run_padded(x.reshape(-1, 8), plan, result.capacity)
    grouped = ff._run_grouped(x.reshape(-1, 8), plan)
    keep = plan.keep[:, None]
    torch.testing.assert_close(torch.where(keep, padded, 0.0), torch.where(keep, grouped, 0.0), atol=1e-5, rtol=1e-5)


def route_all_to_expert_zero(ff: SwitchFeedForward, x: torch.Tensor) -> None:
    """Set the router so that expert 0 wins for every token of `x` (whose features are positive)."""
    with torch.no_grad():
        ff.router.weight.zero_()
        ff.router.weight[0] = 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dropped_tokens_output_zero_in_position_order(dtype):
    ff = make_layer(dtype=dtype, n_experts=4, capacity_factor=1.0)
    # 8 positions x 2 sequences = 16 tokens; capacity 16 / 4 * 1.0 = 4
    x = torch.rand(8, 2, 8, dtype=dtype) + 0.1
    route_all_to_expert_zero(ff, x)
    out, result = ff(x)
    assert result.capacity == 4
    assert int(result.n_dropped) == 12
    assert result.tokens_per_expert.tolist() == [16, 0, 0, 0]
    # Position-major order: positions 0 and 1 of both sequences are kept, the rest dropped
    kept = out.abs().sum(-1) > 0
    assert kept[:2].all()
    assert not kept[2:].any()
    # The kept tokens' outputs are the expert's output times the gate
    torch.testing.assert_close(out, reference_switch(ff, x))


def test_batch_prioritized_drops_least_confident():
    ff = make_layer(n_experts=2, capacity_factor=1.0)
    n_tokens = 10
    # Two features: the first votes for expert 0 with a strength that varies by token
    x = torch.zeros(n_tokens, 8, dtype=torch.float64)
    strength = torch.tensor([0.3, 2.0, 0.1, 1.5, 0.9, 0.2, 3.0, 0.4, 1.1, 0.05], dtype=torch.float64)
    x[:, 0] = strength
    with torch.no_grad():
        ff.router.weight.zero_()
        ff.router.weight[0, 0] = 1.0
    ff.config = dataclasses.replace(ff.config, batch_prioritized=True)
    out, result = ff(x)
    # capacity 10 / 2 = 5; all tokens choose expert 0; the 5 strongest are kept
    assert result.capacity == 5
    kept = (out.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert kept == sorted(torch.argsort(strength, descending=True)[:5].tolist())
    # Without prioritisation the first five positions are kept
    ff.config = dataclasses.replace(ff.config, batch_prioritized=False)
    out, _ = ff(x)
    assert (out.abs().sum(-1) > 0).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]


def test_dropless_keeps_every_token():
    ff = make_layer(n_experts=4, drop_tokens=False)
    x = torch.rand(8, 2, 8, dtype=torch.float64) + 0.1
    route_all_to_expert_zero(ff, x)
    out, result = ff(x)
    assert int(result.n_dropped) == 0
    assert (out.abs().sum(-1) > 0).all()
    assert ff.capacity(16) is None


def test_capacity_formula_train_eval_and_minimum():
    ff = make_layer(n_experts=4, capacity_factor=1.25, eval_capacity_factor=2.0)
    assert ff.capacity(1000) == math.floor(1000 / 4 * 1.25)
    ff.eval()
    assert ff.capacity(1000) == math.floor(1000 / 4 * 2.0)
    ff = make_layer(n_experts=4, min_capacity=7)
    assert ff.capacity(8) == 7


def test_load_balancing_and_z_loss_by_hand():
    # Two experts, four tokens, logits chosen by hand
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.5, 0.0]], dtype=torch.float64)
    probs = torch.softmax(logits, -1)
    # p_0 of each token: 1 / (1 + e^{-(l0 - l1)})
    p0 = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(3.0)), 1 / (1 + math.exp(-0.5))]
    # Tokens 0, 1, 3 choose expert 0; token 2 chooses expert 1: f = (3/4, 1/4)
    P0 = sum(p0) / 4
    P1 = 1 - P0
    expected = 2 * (0.75 * P0 + 0.25 * P1)
    counts = torch.tensor([3, 1])
    assert load_balancing_loss(probs, counts).item() == pytest.approx(expected, rel=1e-12)
    lse = [math.log(math.exp(a) + math.exp(b)) for a, b in logits.tolist()]
    assert router_z_loss(logits).item() == pytest.approx(sum(v * v for v in lse) / 4, rel=1e-12)


def test_load_balancing_counts_before_dropping():
    # Every token goes to expert 0; capacity keeps only a quarter of them.
    ff = make_layer(n_experts=4, capacity_factor=1.0)
    x = torch.rand(8, 2, 8, dtype=torch.float64) + 0.1
    route_all_to_expert_zero(ff, x)
    _, result = ff(x)
    probs = torch.softmax(x.reshape(-1, 8) @ ff.router.weight.T, -1)
    # f = (1, 0, 0, 0) although only 4 of 16 tokens were kept
    expected = 4 * probs[:, 0].mean()
    torch.testing.assert_close(result.load_balancing_loss, expected)
    assert result.route_fraction.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert result.dropped_fraction.item() == pytest.approx(0.75)


def test_uniform_routing_gives_loss_one():
    probs = torch.full((8, 4), 0.25)
    assert load_balancing_loss(probs, torch.tensor([2, 2, 2, 2])).item() == pytest.approx(1.0)


def test_jitter_only_in_training_and_never_changes_input():
    ff = make_layer(dtype=torch.float32, jitter_eps=0.1)
    x = torch.randn(6, 2, 8)
    x_before = x.clone()
    clean = x.reshape(-1, 8) @ ff.router.weight.T
    ff.train()
    noisy = ff.router(x.reshape(-1, 8))
    assert not torch.allclose(noisy, clean)
    ff(x)
    assert torch.equal(x, x_before)
    # The noise is multiplicative on the input: logits stay within what U[0.9, 1.1] allows
    bound = (x.reshape(-1, 8).abs() * 0.1) @ ff.router.weight.abs().T
    assert torch.all((noisy - clean).abs() <= bound + 1e-5)
    ff.eval()
    torch.testing.assert_close(ff.router(x.reshape(-1, 8)), clean)
    torch.testing.assert_close(ff(x)[0], ff(x)[0])


def test_router_float32_under_bf16_autocast():
    ff = make_layer(dtype=torch.float32)
    x = torch.randn(6, 2, 8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = ff.router(x.reshape(-1, 8))
        out, result = ff(x)
        # An ordinary linear layer under the same autocast computes in bfloat16
        assert F.linear(x, ff.router.weight).dtype == torch.bfloat16
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, x.reshape(-1, 8) @ ff.router.weight.T)
    assert result.max_prob.dtype == torch.float32
    assert result.load_balancing_loss.dtype == torch.float32
    # The experts ran in bfloat16 and still agree with float32 to bfloat16 precision
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ff(x)[0], atol=0.1, rtol=0.05)


def test_scale_by_gate_false_keeps_router_gradient():
    ff = make_layer(scale_by_gate=False, drop_tokens=False)
    x = torch.randn(5, 2, 8, dtype=torch.float64)
    out, _ = ff(x)
    out.sum().backward()
    assert ff.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_experts=0), "n_experts=0"),
    (dict(capacity_factor=0.0), "capacity_factor=0.0"),
    (dict(capacity_factor=-1.0), "capacity_factor=-1.0"),
    (dict(eval_capacity_factor=0), "eval_capacity_factor=0"),
    (dict(jitter_eps=1.5), "jitter_eps=1.5"),
    (dict(expert_dropout=1.0), "expert_dropout=1.0"),
    (dict(d_model=0), "d_model=0"),
    (dict(init_scale=0.0), "init_scale=0.0"),
    (dict(init_scale=-1.0), "init_scale=-1.0"),
    (dict(capacity_factor=math.inf), "capacity_factor=inf"),
    (dict(eval_capacity_factor=math.nan), "eval_capacity_factor=nan"),
    (dict(min_capacity=2.5), "min_capacity=2.5"),
    (dict(min_capacity=-1), "min_capacity=-1"),
    (dict(n_experts=True), "n_experts=True"),
    (dict(drop_tokens="yes"), "drop_tokens='yes'"),
    (dict(activation="tanh"), "activation='tanh'"),
    (dict(d_ff=0), "d_ff=0"),
])
def test_bad_configuration_names_argument_and_value(kwargs, name):
    options = dict(d_model=8, d_ff=16, n_experts=4)
    options.update(kwargs)
    with pytest.raises(ValueError, match=name.replace("(", r"\(").replace(")", r"\)")):
        SwitchFeedForward(**options)


def test_config_is_one_checked_object():
    config = SwitchConfig(d_model=8, d_ff=16, n_experts=4, capacity_factor=1.0)
    ff = SwitchFeedForward(config)
    assert ff.config is config
    # Keywords on top of a config make a changed copy; the original stays as it was
    assert SwitchFeedForward(config, capacity_factor=2.0).config.capacity_factor == 2.0
    assert config.capacity_factor == 1.0
    with pytest.raises(ValueError, match="capacity_factor=0"):
        SwitchFeedForward(config, capacity_factor=0)
    with pytest.raises(TypeError, match="SwitchConfig"):
        SwitchFeedForward({"d_model": 8})


@pytest.mark.parametrize("n_tokens, n_experts, factor, expected", [
    (35, 3, 1.2, 14),      # 35 * 6/5 / 3 = 14 exactly; 35 * 1.2 in floating point is 41.999...
    (10, 3, 1.0, 3),
    (100, 8, 1.25, 15),
    (7, 4, 0.3, 0),
    (0, 4, 1.25, 0),
])
def test_capacity_is_exact(n_tokens, n_experts, factor, expected):
    config = SwitchConfig(d_model=4, d_ff=4, n_experts=n_experts, capacity_factor=factor, eval_capacity_factor=factor)
    assert config.capacity(n_tokens, training=True) == expected
    assert config.capacity(n_tokens, training=False) == expected


def test_bad_input_names_what_is_wrong():
    ff = make_layer()
    with pytest.raises(ValueError, match="d_model=8"):
        ff(torch.randn(4, 2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="rank 4"):
        ff(torch.randn(4, 2, 1, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="rank 1"):
        ff(torch.randn(8, dtype=torch.float64))
    # Token ids instead of their embeddings: the dtype is named, nothing is computed in integers
    with pytest.raises(TypeError, match="torch.int64"):
        ff(torch.randint(0, 5, (4, 2, 8)))


@settings(max_examples=40, deadline=None)
@given(seq_len=st.integers(1, 9), batch_size=st.integers(1, 4), n_experts=st.integers(1, 9),
       capacity_factor=st.sampled_from([0.25, 0.5, 1.0, 1.25, 2.0]), batch_prioritized=st.booleans(),
       drop_tokens=st.booleans(), seed=st.integers(0, 10_000))
def test_property_matches_reference_and_capacity_invariants(seq_len, batch_size, n_experts, capacity_factor,
                                                            batch_prioritized, drop_tokens, seed):
    ff = make_layer(n_experts=n_experts, capacity_factor=capacity_factor, batch_prioritized=batch_prioritized,
                    drop_tokens=drop_tokens, seed=seed)
    x = torch.randn(seq_len, batch_size, 8, dtype=torch.float64)
    out, result = ff(x)
    torch.testing.assert_close(out, reference_switch(ff, x), atol=1e-10, rtol=1e-10)
    n_tokens = seq_len * batch_size
    counts = result.tokens_per_expert
    assert counts.sum().item() == n_tokens
    # Each expert keeps min(count, C) tokens; the rest are dropped
    capacity = result.capacity
    assert int(result.n_dropped) == int((counts - capacity).clamp(min=0).sum())
    assert int((out.abs().sum(-1) > 0).sum()) <= n_tokens - int(result.n_dropped)
    # Per token, in the tokens' order: the expert is the router's argmax, and the kept
    # tokens of each expert are its first C in priority order (position, or descending gate)
    probs = torch.softmax(ff.router(x.reshape(-1, 8)), dim=-1)
    assert result.expert.tolist() == probs.argmax(dim=-1).tolist()
    torch.testing.assert_close(result.max_prob, probs.max(dim=-1).values)
    kept = torch.zeros(n_tokens, dtype=torch.bool)
    for e in range(n_experts):
        mine = (result.expert == e).nonzero().flatten().tolist()
        if batch_prioritized:
            mine.sort(key=lambda t: -result.max_prob[t].item())
        kept[mine[:capacity]] = True
    assert result.kept.tolist() == kept.tolist()
    # A dropped token's output is zero
    assert (out.reshape(n_tokens, -1)[~result.kept] == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_fullgraph_agrees_with_eager(dtype):
    # fullgraph=True fails on any graph break, so this also shows that a training
    # step with dropping has no data-dependent host synchronisation (no .item(),
    # no nonzero) in either dispatch path (bfloat16 takes grouped_mm, float32 the
    # padded path under compile).
    ff = make_layer(dtype=dtype, n_experts=4, capacity_factor=1.0)
    x = torch.randn(12, 3, 8, dtype=dtype)
    compiled = torch.compile(ff, fullgraph=True)
    x1 = x.clone().requires_grad_()
    out, result = compiled(x1)
    x2 = x.clone().requires_grad_()
    expected, expected_result = ff(x2)
    assert int(result.n_dropped) == int(expected_result.n_dropped) > 0
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (expected * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=tol, rtol=tol)


def sync_free(ff: SwitchFeedForward) -> SwitchFeedForward:
    """Make `ff` take the GPU paths (`grouped_mm` where it can run, padded `bmm` elsewhere) on the CPU too."""
    ff._experts_by_blocks = lambda x: False
    return ff


@settings(max_examples=60, deadline=None)
@given(d_model=st.integers(1, 70), d_ff=st.integers(1, 70), n_experts=st.integers(1, 6),
       n_tokens=st.integers(1, 24), dtype=st.sampled_from(["float32", "float64", "bf16 autocast"]),
       path=st.sampled_from(["blocks", "sync-free"]), activation=st.sampled_from(["relu", "swiglu"]),
       capacity_factor=st.sampled_from([0.5, 1.0, 2.0]), bias=st.booleans(), seed=st.integers(0, 10_000))
def test_property_every_size_dtype_and_path_matches_reference(d_model, d_ff, n_experts, n_tokens, dtype, path,
                                                              activation, capacity_factor, bias, seed):
    # Unaligned sizes (d_model=6, d_ff=90, ...) once failed in `grouped_mm` ("strides should be
    # multiple of 16 bytes"); the sync-free path must fall back to padded buffers for them.
    autocast = dtype == "bf16 autocast"
    ff = make_layer(dtype=torch.float32 if autocast else getattr(torch, dtype), seed=seed, d_model=d_model,
                    d_ff=d_ff, n_experts=n_experts, activation=activation, capacity_factor=capacity_factor,
                    bias=bias)
    if path == "sync-free":
        sync_free(ff)
    x = torch.randn(n_tokens, d_model, dtype=ff.router.weight.dtype)
    if not autocast:
        assert_matches_reference(ff, x, atol=1e-10 if dtype == "float64" else 1e-4)
        return
    # Inputs and weights that bfloat16 holds exactly, so that the difference is the
    # rounding of what the layer computes, relative to each value's own size; with
    # raw float32 inputs, a hidden unit that cancels to near zero (d_ff=1, swiglu)
    # would carry its inputs' rounding as a relative error of any size
    with torch.no_grad():
        for parameter in ff.parameters():
            parameter.copy_(parameter.bfloat16())
    x = x.bfloat16().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, result = ff(x)
    assert out.dtype == torch.bfloat16
    expected = reference_switch(ff, x)
    scale = expected.abs().max().item() + 1e-3
    torch.testing.assert_close(out.float(), expected, atol=0.03 * scale, rtol=0.03)
    out.float().sum().backward()
    assert torch.isfinite(ff.experts.w1.grad).all()


@pytest.mark.parametrize("path", ["blocks", "sync-free"])
def test_unaligned_sizes_from_the_issue(path):
    ff = SwitchFeedForward(d_model=6, d_ff=16, n_experts=4)
    if path == "sync-free":
        sync_free(ff)
    out, _ = ff(torch.randn(10, 6))
    assert out.shape == (10, 6)
    from labml_nn_switch import build_transformer
    model = build_transformer(n_layers=1, d_model=36, n_heads=6, d_ff=90, n_experts=4)
    assert model is not None


@pytest.mark.parametrize("path", ["blocks", "sync-free"])
@pytest.mark.parametrize("shape", [(0, 8), (0, 3, 8)])
def test_zero_tokens_give_empty_output_and_zero_losses(path, shape):
    ff = make_layer(dtype=torch.float32)
    if path == "sync-free":
        sync_free(ff)
    x = torch.randn(*shape).requires_grad_()
    out, result = ff(x)
    assert out.shape == x.shape
    for loss in (result.load_balancing_loss, result.z_loss):
        assert torch.isfinite(loss) and loss.item() == 0.0
    assert result.tokens_per_expert.sum() == 0 and int(result.n_dropped) == 0
    # `task_loss + alpha * lb` stays usable
    (out.sum() + 0.01 * result.load_balancing_loss + 0.001 * result.z_loss).backward()


@pytest.mark.parametrize("path", ["blocks", "sync-free"])
def test_float16_dropped_tokens_are_exactly_zero_when_the_expert_overflows(path):
    ff = make_layer(dtype=torch.float16, n_experts=4, capacity_factor=1.0, bias=False)
    if path == "sync-free":
        sync_free(ff)
    x = torch.rand(8, 2, 8, dtype=torch.float16) + 0.1
    route_all_to_expert_zero(ff, x)
    with torch.no_grad():
        # Expert 0 overflows float16 (its outputs are inf)
        ff.experts.w1[0].fill_(200.0)
        ff.experts.w2[0].fill_(200.0)
    out, result = ff(x)
    assert int(result.n_dropped) == 12
    dropped = out[2:]
    assert torch.equal(dropped, torch.zeros_like(dropped))
    assert torch.isinf(out[:2]).all()


def test_blocks_path_saves_about_what_the_dense_ffn_saves():
    # The CPU path keeps the input and the hidden layer for backward, not copies
    # of the tokens in sorted order or the expert outputs before gating.
    from labml_nn_switch import FeedForward

    def saved_bytes(module, x):
        exclude = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
        seen = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in exclude:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return sum(seen.values())

    x = torch.randn(64, 4, 32, requires_grad=True)
    ff = SwitchFeedForward(d_model=32, d_ff=256, n_experts=4, expert_dropout=0.0, capacity_factor=1.0)
    dense = FeedForward(d_model=32, d_ff=256, dropout=0.0)
    _, result = ff(x)
    # The hidden layer is kept for the kept tokens' slots only: the kept rows and a
    # little padding, a fraction of the dense one's
    sizes = result.counts.clamp(max=result.capacity).tolist()
    groups, n_slots = expert_rows._expert_groups(sizes, 256)
    assert sum(sizes) <= n_slots <= (1 + expert_rows.MAX_PADDING) * sum(sizes) and sum(sizes) < 256
    # ... plus the router's few `[n_tokens, n_experts]` tensors and the slots' `[n_tokens]` maps
    assert saved_bytes(ff, x) <= (n_slots / 256 + 0.07) * saved_bytes(dense, x)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_expert_dropout_gradients_on_the_blocks_path(activation):
    # The blocks path computes its own backward; with dropout on (the same masks on
    # every call, by seeding) its gradients must match finite differences, for the
    # input, the router (through the gates) and the experts, dropped tokens included.
    ff = make_layer(activation=activation, expert_dropout=0.5, capacity_factor=1.0)
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    names = ["router.weight", "experts.w1", "experts.b1", "experts.w2", "experts.b2"]
    params = [dict(ff.named_parameters())[n].detach().clone().requires_grad_() for n in names]

    def f(x, *values):
        torch.manual_seed(3)
        return torch.func.functional_call(ff, dict(zip(names, values)), (x,))[0]

    out = f(x, *params)
    ff.eval()
    assert not torch.allclose(out, ff(x)[0]), "dropout changed nothing"
    ff.train()
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_flat_copy_runs_with_only_torch(tmp_path):
    # The README: "copy switch.py, feed_forward.py, expert_rows.py and routing_result.py into your project"
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    package = Path(__file__).resolve().parents[1] / "labml_nn_switch"
    for name in ("switch.py", "feed_forward.py", "expert_rows.py", "routing_result.py"):
        shutil.copy(package / name, tmp_path / name)
    code = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('labml_nn_switch', 'labml', 'labml_nn', 'labml_helpers', 'transformers'):
            raise ImportError('only torch may be imported: ' + name)
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(tmp_path)!r})
import torch
from switch import SwitchFeedForward
ff = SwitchFeedForward(d_model=6, d_ff=10, n_experts=3)
x = torch.randn(5, 2, 6, requires_grad=True)
out, result = ff(x)
(out.square().sum() + 0.01 * result.load_balancing_loss).backward()
assert x.grad.shape == x.shape and ff.experts.w1.grad is not None
print('ok', sorted(m for m in sys.modules if m.startswith('labml')))
"""
    # -I: no PYTHONPATH, no user site, not the current directory on sys.path
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok []"


@pytest.mark.parametrize("tail_rows", [0, 32])
@pytest.mark.parametrize("chunk", [40, 200, 10_000])
def test_blocks_path_in_small_chunks_matches_reference(monkeypatch, chunk, tail_rows):
    # Experts grouped under the chunk size, one expert per block, and one expert's
    # rows cut into several blocks (its weight gradient summed over them); with
    # free tails, a group's tails in the chunk after its block, or in the next
    monkeypatch.setattr(expert_rows, "CHUNK_ELEMENTS", chunk)
    monkeypatch.setattr(expert_rows, "PACK_ELEMENTS", chunk)
    monkeypatch.setattr(expert_rows, "TAIL_ROWS", tail_rows)
    for options in (dict(n_experts=3), dict(n_experts=1, drop_tokens=False), dict(n_experts=4, activation="gelu")):
        ff = make_layer(**options)
        assert_matches_reference(ff, torch.randn(15, 2, 8, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("tail_rows", [0, 3, 10**9])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("max_padding", [0.0, 100.0])
def test_blocks_path_with_and_without_padded_groups_matches_reference(monkeypatch, max_padding, threads, tail_rows):
    # No padding allowed: only experts with equal runs share a `bmm`. Padding without
    # bound: every run of experts with tokens is one group (of an even number of
    # experts on 2 threads), whose block pads some experts and leaves tails of
    # others (free tails: no padding at all; tails at no price: none), which
    # must add nothing and miss nothing
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(expert_rows, "MAX_PADDING", max_padding)
    monkeypatch.setattr(expert_rows, "TAIL_ROWS", tail_rows)
    for options in CASES:
        ff = make_layer(**options)
        x = torch.randn(15, 2, 8, dtype=torch.float64)
        assert_matches_reference(ff, x, atol=1e-10)
    sizes = [5, 1, 0, 7, 7]
    groups, n_slots = expert_rows._expert_groups(sizes, 16, threads=1)
    assert sorted({e for e0, e1, *_ in groups for e in range(e0, e1)}) == [0, 1, 3, 4]
    # Experts 0 and 1 in one group: padded to 5 rows, or a block of 1 and a tail of 4
    assert n_slots == (sum(sizes) if max_padding == 0 or tail_rows < 4 else 10 + 14)


def test_group_blocks_leave_tails_where_they_cost_less_than_padding(monkeypatch):
    # 100 and 40 rows: a block of 40 each and a tail of 60 (costing 60 + 32 rows)
    # beats padding the second expert by 60; 100 and 90 pad by 10 instead
    monkeypatch.setattr(expert_rows, "MAX_PADDING", 100.0)
    monkeypatch.setattr(expert_rows, "TAIL_ROWS", 32)
    assert expert_rows._expert_groups([100, 40], 16, threads=1) == (
        [(0, 2, 40, 0, True), (0, 1, 60, 80, False)], 140)
    assert expert_rows._expert_groups([100, 90], 16, threads=1) == ([(0, 2, 100, 0, True)], 200)
    # The experiment's counts: a block of 496, padding 5 rows of the second expert, tails of 52 and 17
    assert expert_rows._expert_groups([548, 491, 496, 513], 256, threads=2) == (
        [(0, 4, 496, 0, True), (0, 1, 52, 1984, False), (3, 4, 17, 2036, False)], 2053)
    assert expert_rows._block_rows([548, 491, 496, 513]) == 496


def test_groups_padding_is_bounded_by_the_rows(monkeypatch):
    monkeypatch.setattr(expert_rows, "MAX_PADDING", 1 / 8)
    # An eighth of the rows: 8 and 7 share a `bmm` (1 padding row of 15), 8 and 5 do
    # not (3 of 13); 8, 8 and 6 do (2 of 22), 8, 8 and 5 do not (3 of 21)
    assert expert_rows._expert_groups([8, 7], 16, threads=1) == ([(0, 2, 8, 0, True)], 16)
    assert expert_rows._expert_groups([8, 5], 16, threads=1) == ([(0, 1, 8, 0, True), (1, 2, 5, 8, True)], 13)
    assert expert_rows._expert_groups([8, 8, 6], 16, threads=1) == ([(0, 3, 8, 0, True)], 24)
    assert expert_rows._expert_groups([8, 8, 5], 16, threads=1)[1] == 21
    # The bound holds at any size of the experts: 64 experts of 4,096 tokens at d_ff 2048
    sizes = torch.randint(48, 80, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    groups, n_slots = expert_rows._expert_groups(sizes, 2048, threads=2)
    assert sum(sizes) < n_slots <= (1 + 1 / 8) * sum(sizes)
    for e0, e1, m, *_ in groups:
        assert (e1 - e0) * m - sum(sizes[e0:e1]) <= sum(sizes[e0:e1]) / 8


def test_groups_of_several_experts_are_whole_rounds_of_the_threads(monkeypatch):
    # `bmm` runs the experts of a batch one per thread: 3 experts on 2 threads take
    # two rounds, as 4 do. A group keeps a multiple of the threads, the remainder
    # starts the next group; fewer experts than threads run one by one.
    monkeypatch.setattr(expert_rows, "MAX_PADDING", 1.0)
    sizes = [8, 8, 6, 8, 7]
    assert expert_rows._expert_groups(sizes, 16, threads=1) == ([(0, 5, 8, 0, True)], 40)
    assert expert_rows._expert_groups(sizes, 16, threads=2) == (
        [(0, 4, 8, 0, True), (4, 5, 7, 32, True)], 39)
    assert expert_rows._expert_groups(sizes[:3], 16, threads=2) == (
        [(0, 2, 8, 0, True), (2, 3, 6, 16, True)], 22)
    # The expert given back no longer pads the group
    assert expert_rows._expert_groups([6, 6, 8], 16, threads=2) == (
        [(0, 2, 6, 0, True), (2, 3, 8, 12, True)], 20)
    groups, n_slots = expert_rows._expert_groups(sizes, 16, threads=8)
    assert [g[:3] for g in groups] == [(e, e + 1, n) for e, n in enumerate(sizes)] and n_slots == sum(sizes)
    # The default is torch's own number of threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert expert_rows._expert_groups(sizes, 16) == expert_rows._expert_groups(sizes, 16, threads=2)


def test_groups_are_packed_into_chunks_in_order(monkeypatch):
    monkeypatch.setattr(expert_rows, "PACK_ELEMENTS", 25 * 4)
    groups = [(0, 2, 8, 0, True), (2, 3, 5, 16, True), (3, 4, 9, 21, True), (4, 5, 30, 30, True)]
    # A group larger than the packing limit is a chunk of its own
    assert expert_rows._chunks(groups, 4) == [(0, 21, groups[:2]), (21, 30, groups[2:3]), (30, 60, groups[3:])]


def test_weight_gradient_memory_is_reused_only_when_nobody_holds_it():
    # 16 experts and 12 tokens: most experts get no token, and which ones changes from
    # step to step, so stale values in reused memory would show
    ff = make_layer(dtype=torch.float32, n_experts=16, capacity_factor=4.0)
    w1 = ff.experts.w1

    def expected_w1_grad(x):
        x = x.clone().requires_grad_()
        grad = grads(ff, x, reference_switch(ff, x), torch.ones(6, 2, 8))["experts.w1"]
        assert grad is not None and (grad == 0).all(dim=(1, 2)).sum() >= 4
        return grad

    def step(x):
        out, _ = ff(x)
        out.sum().backward()

    xs = [torch.randn(6, 2, 8) for _ in range(4)]
    step(xs[0])
    held, held_copy = w1.grad, w1.grad.clone()
    # Someone keeps last step's gradient: the next one must not be written over it
    for p in ff.parameters():
        p.grad = None
    step(xs[1])
    assert torch.equal(held, held_copy)
    assert w1.grad.data_ptr() != held.data_ptr()
    torch.testing.assert_close(w1.grad, expected_w1_grad(xs[1]), atol=2e-5, rtol=2e-5)
    # Once nobody holds it, the memory is reused, and the result is still right
    del held
    ptr = w1.grad.data_ptr()
    for p in ff.parameters():
        p.grad = None
    step(xs[2])
    assert w1.grad.data_ptr() == ptr
    torch.testing.assert_close(w1.grad, expected_w1_grad(xs[2]), atol=2e-5, rtol=2e-5)
    # Accumulating over two backward passes (`.grad` kept) adds up, never aliases
    step(xs[3])
    torch.testing.assert_close(w1.grad, expected_w1_grad(xs[2]) + expected_w1_grad(xs[3]), atol=2e-5, rtol=2e-5)


def test_hidden_layer_memory_is_not_shared_by_two_live_graphs():
    # The hidden layer saved for backward lives in kept memory: a second forward pass
    # while the first graph is still alive must not write over it, and after both
    # backward passes the memory is reused again
    ff = make_layer(dtype=torch.float32, n_experts=4, d_ff=64, capacity_factor=4.0)
    xs = [torch.randn(6, 2, 8) for _ in range(3)]
    expected = []
    for x in xs[:2]:
        ff.zero_grad(set_to_none=True)
        out, _ = ff(x)
        (out * out).sum().backward()
        expected.append({name: p.grad.clone() for name, p in ff.named_parameters()})
    # Both forward passes first, then both backward passes: the gradients add up
    ff.zero_grad(set_to_none=True)
    outs = [ff(x)[0] for x in xs[:2]]
    hidden = ff.experts.kept_memory["hidden 0"]
    for out in outs:
        (out * out).sum().backward()
    for name, p in ff.named_parameters():
        torch.testing.assert_close(p.grad, expected[0][name] + expected[1][name], atol=2e-5, rtol=2e-5)
    # No graph holds it now: the next step, whose routing differs, writes into the same
    # memory (grown first if it has more rows), and its gradients are right
    del outs
    for x in (xs[2], torch.randn(12, 2, 8)):
        ptr, size = hidden.data_ptr(), hidden.numel()
        ff.zero_grad(set_to_none=True)
        out, _ = ff(x)
        (out * out).sum().backward()
        hidden = ff.experts.kept_memory["hidden 0"]
        assert hidden.data_ptr() == ptr or hidden.numel() > size
        xr = x.clone().requires_grad_()
        expected = grads(ff, xr, reference_switch(ff, xr), 2 * reference_switch(ff, xr).detach())
        for name, p in ff.named_parameters():
            if expected[name] is not None:
                torch.testing.assert_close(p.grad, expected[name], atol=2e-5, rtol=2e-5)


def test_kept_memory_is_not_pickled():
    ff = make_layer(dtype=torch.float32, n_experts=4, d_ff=64)
    out, _ = ff(torch.randn(16, 2, 8))
    out.sum().backward()
    assert {"w1", "w2"} <= set(ff.experts.kept_memory)
    buffer = io.BytesIO()
    torch.save(ff, buffer)
    copy = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert copy.experts.kept_memory == {}
    assert all(torch.equal(a, b) for a, b in zip(ff.state_dict().values(), copy.state_dict().values()))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_rows_of_experts_with_tails_and_biases_match_each_expert_alone(monkeypatch, activation):
    # Counts 5, 4, 3 in one group with free tails: a block of 3 rows each, then
    # the tails of experts 0 and 1, so the chunk's last group is not its last
    # expert; every output and gradient (biases included) must be each expert's own
    monkeypatch.setattr(expert_rows, "MAX_PADDING", 100.0)
    monkeypatch.setattr(expert_rows, "TAIL_ROWS", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert [g[:3] for g in expert_rows._expert_groups([5, 4, 3], 8)[0]] == [(0, 3, 3), (0, 1, 2), (1, 2, 1)]
    torch.manual_seed(0)
    experts = Experts(n_experts=3, d_model=4, d_ff=8, dropout=0.0, activation=activation, bias=True).double()
    with torch.no_grad():
        experts.b1.normal_()
        experts.b2.normal_()
    # 13 tokens, 6 of them choosing expert 0: its last, token 12, is dropped (in no expert's rows)
    expert = torch.tensor([2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1, 0])
    rows = torch.cat([torch.nonzero(expert == e).flatten()[:n] for e, n in enumerate([5, 4, 3])])
    x = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(13, dtype=torch.float64, requires_grad=True)
    out = expert_rows.forward_rows(experts, x, rows, [5, 4, 3], scale, expert)
    act = ACTIVATIONS[activation]
    w1, b1, w2, b2 = experts.w1[expert], experts.b1[expert], experts.w2[expert], experts.b2[expert]
    alone = scale[:, None] * (torch.einsum("th,thd->td", act(torch.einsum("td,tdh->th", x, w1) + b1), w2) + b2)
    alone = torch.where((torch.arange(13) < 12)[:, None], alone, 0.0)
    torch.testing.assert_close(out, alone)
    g = torch.randn_like(out)
    inputs = [x, scale, experts.w1, experts.b1, experts.w2, experts.b2]
    for got, want in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(alone, inputs, g)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("activation, dropout", [("relu", 0.0), ("relu", 0.5), ("gelu", 0.0), ("swiglu", 0.5)])
@pytest.mark.parametrize("tail_rows", [0, 10**9])
def test_second_derivatives_of_the_blocks_path(monkeypatch, activation, dropout, tail_rows):
    # A gradient penalty or a Hessian-vector product differentiates the backward
    # itself (`create_graph=True`). Counts 5, 4, 3 in one group: a block of 3 rows
    # with tails of 2 and 1 (free tails), or padded to 5 rows (tails never worth
    # it); one token dropped; biases; dropout with the same masks on every call (by
    # seeding). The first derivatives must be the fast backward's, and the second
    # ones finite differences of the first, for the input, the gates and the weights.
    monkeypatch.setattr(expert_rows, "MAX_PADDING", 100.0)
    monkeypatch.setattr(expert_rows, "TAIL_ROWS", tail_rows)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert [g[:3] for g in expert_rows._expert_groups([5, 4, 3], 8)[0]] == (
        [(0, 3, 3), (0, 1, 2), (1, 2, 1)] if tail_rows == 0 else [(0, 3, 5)])
    torch.manual_seed(0)
    experts = Experts(n_experts=3, d_model=4, d_ff=8, dropout=dropout, activation=activation, bias=True).double()
    expert = torch.tensor([2, 0, 1, 0, 2, 1, 0, 0, 1, 2, 0, 1, 0])
    rows = torch.cat([torch.nonzero(expert == e).flatten()[:n] for e, n in enumerate([5, 4, 3])])
    x = torch.randn(13, 4, dtype=torch.float64, requires_grad=True)
    scale = (0.5 + 0.5 * torch.rand(13, dtype=torch.float64)).requires_grad_()
    weights = [getattr(experts, name).detach().clone().normal_().requires_grad_() for name in ("w1", "b1", "w2", "b2")]

    def f(x, scale, w1, b1, w2, b2):
        torch.manual_seed(3)
        return expert_rows.ExpertRows.apply(x, rows, scale, expert, w1, b1, w2, b2, [5, 4, 3], activation, dropout, {})

    inputs = [x, scale, *weights]
    out = f(*inputs)
    g = torch.randn_like(out)
    fast = torch.autograd.grad(out, inputs, g, retain_graph=True)
    differentiable = torch.autograd.grad(out, inputs, g, create_graph=True)
    assert all(d.requires_grad for d in differentiable)
    for a, b in zip(fast, differentiable):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("path", ["blocks", "sync-free"])
def test_second_derivatives_of_the_whole_layer(path):
    # The router included (through the gates) and tokens dropped, on either path
    ff = make_layer(d_model=4, d_ff=6, n_experts=3, capacity_factor=1.0)
    if path == "sync-free":
        sync_free(ff)
    x = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: ff(x)[0], (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("drop_tokens", [True, False])
def test_torch_func_transforms_give_the_gradients_of_autograd(drop_tokens):
    # `torch.func.grad` and `jacrev` cannot run the blocks path's autograd `Function`;
    # inside them the layer takes the sync-free path, with the same gradients
    ff = make_layer(capacity_factor=1.0, drop_tokens=drop_tokens)
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(12, 8, dtype=torch.float64)
    params = dict(ff.named_parameters())

    def loss(params, x):
        out, result = torch.func.functional_call(ff, params, (x,))
        return (out * g).sum() + result.load_balancing_loss

    want = torch.autograd.grad(loss(params, x), [x, *params.values()])
    got = torch.func.grad(loss, argnums=(0, 1))(params, x)
    torch.testing.assert_close(got[1], want[0])
    torch.testing.assert_close(list(got[0].values()), list(want[1:]))
    jacobian = torch.func.jacrev(lambda x: ff(x)[0])(x)
    assert jacobian.shape == (12, 8, 12, 8)
    torch.testing.assert_close(torch.einsum("td,tdse->se", g, jacobian),
                               torch.autograd.grad((ff(x)[0] * g).sum(), x)[0])


@pytest.mark.parametrize("drop_tokens", [False, True])
def test_forward_mode_derivatives_match_reverse_mode(drop_tokens):
    # Inside `forward_ad.dual_level` the layer takes the sync-free path (the blocks
    # path's `Function` has no `jvp`): the tangent $J t$ it carries must satisfy
    # $u \cdot J t = (J^\top u) \cdot t$ with reverse mode's $J^\top u$
    import torch.autograd.forward_ad as fwAD
    ff = make_layer(capacity_factor=1.0, drop_tokens=drop_tokens)
    x, t, u = (torch.randn(12, 8, dtype=torch.float64) for _ in range(3))
    with fwAD.dual_level():
        out, _ = ff(fwAD.make_dual(x, t))
        tangent = fwAD.unpack_dual(out).tangent
    x.requires_grad_(True)
    out_reverse, _ = ff(x)
    torch.testing.assert_close(fwAD.unpack_dual(out).primal, out_reverse.detach())
    vjp, = torch.autograd.grad((out_reverse * u).sum(), x)
    torch.testing.assert_close((u * tangent).sum(), (vjp * t).sum())
    assert tangent.abs().sum() > 0


def test_expert_dropout_keeps_each_unit_with_probability_one_minus_p_and_rescales_it():
    # With identity weights and positive inputs a unit's output is its input, kept
    # and divided by $1 - p$, or zero: the fraction kept must be $1 - p$
    torch.manual_seed(0)
    experts = Experts(n_experts=1, d_model=64, d_ff=64, dropout=0.3).train()
    with torch.no_grad():
        experts.w1.copy_(torch.eye(64))
        experts.w2.copy_(torch.eye(64))
    x = torch.rand(4096, 64) + 0.5
    out = expert_rows.forward_rows(experts, x, torch.arange(4096), [4096], torch.ones(4096),
                                   torch.zeros(4096, dtype=torch.long))
    kept = out != 0
    # 262,144 units: the standard deviation of the fraction is 0.0009
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    torch.testing.assert_close(out[kept], x[kept] / 0.7)
