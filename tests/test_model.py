"""Attention, the FFN, the transformer stack and the dense baseline; the copyability of the model files."""

import ast
import math
from pathlib import Path

import pytest
import torch

from labml_nn_switch import (FeedForward, MultiHeadAttention, SwitchFeedForward, SwitchTransformer,
                             build_transformer, subsequent_mask)

PACKAGE = Path(__file__).resolve().parents[1] / "labml_nn_switch"


def attention_by_formula(mha: MultiHeadAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_k)) V per head, written out."""
    seq_len, batch_size, d_model = x.shape
    h, d_k = mha.n_heads, mha.d_k
    q = mha.query(x).view(seq_len, batch_size, h, d_k)
    k = mha.key(x).view(seq_len, batch_size, h, d_k)
    v = mha.value(x).view(seq_len, batch_size, h, d_k)
    scores = torch.einsum("ibhd,jbhd->ijbh", q, k) / math.sqrt(d_k)
    if mask is not None:
        scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    attn = torch.softmax(scores, dim=1)
    out = torch.einsum("ijbh,jbhd->ibhd", attn, v).reshape(seq_len, batch_size, d_model)
    return mha.output(out)


def test_attention_matches_formula():
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_heads=4, dropout=0.0).double()
    x = torch.randn(7, 3, 16, dtype=torch.float64)
    torch.testing.assert_close(mha(query=x, key=x, value=x), attention_by_formula(mha, x, None))
    mask = subsequent_mask(7)
    torch.testing.assert_close(mha(query=x, key=x, value=x, mask=mask), attention_by_formula(mha, x, mask))
    torch.testing.assert_close(mha(query=x, key=x, value=x, is_causal=True), attention_by_formula(mha, x, mask))


def test_subsequent_mask_shape_and_values():
    mask = subsequent_mask(4)
    assert mask.shape == (4, 4, 1)
    assert mask[:, :, 0].tolist() == [[True, False, False, False], [True, True, False, False],
                                      [True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("how", ["mask", "is_causal"])
@pytest.mark.parametrize("kind", ["switch", "dense"])
def test_causal_model_ignores_future_tokens(how, kind):
    # With position-order dropping, a future token cannot take an earlier token's
    # expert slot either: the whole Switch Transformer stays causal.
    torch.manual_seed(0)
    options = dict(capacity_factor=1.0, expert_dropout=0.0) if kind == "switch" else {}
    model = build_transformer(kind=kind, n_layers=2, d_model=16, n_heads=4, d_ff=32, n_experts=4, dropout=0.0,
                              **options).double()
    seq_len = 10
    x = torch.randn(seq_len, 2, 16, dtype=torch.float64)
    args = dict(mask=subsequent_mask(seq_len)) if how == "mask" else dict(is_causal=True)
    y, routing = model(x, **args)
    if kind == "switch":
        # the test means something only if some tokens are dropped
        assert sum(int(r.n_dropped) for r in routing.layers) > 0
    for t in (3, 7):
        changed = x.clone()
        changed[t:] = torch.randn_like(changed[t:])
        y2, _ = model(changed, **args)
        torch.testing.assert_close(y2[:t], y[:t])
        assert not torch.allclose(y2[t:], y[t:])


def test_feed_forward_formula_and_gated_variant():
    torch.manual_seed(0)
    ff = FeedForward(d_model=6, d_ff=10, dropout=0.0, bias=True).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    expected = torch.relu(x @ ff.layer1.weight.T + ff.layer1.bias) @ ff.layer2.weight.T + ff.layer2.bias
    torch.testing.assert_close(ff(x), expected)
    glu = FeedForward(d_model=6, d_ff=10, dropout=0.0, activation="swiglu", bias=False).double()
    assert glu.layer1.weight.shape == (20, 6)
    a, b = (x @ glu.layer1.weight.T).chunk(2, dim=-1)
    torch.testing.assert_close(glu(x), (torch.nn.functional.silu(a) * b) @ glu.layer2.weight.T)


def test_truncated_normal_init_scale():
    torch.manual_seed(0)
    ff = SwitchFeedForward(d_model=256, d_ff=512, n_experts=4, init_scale=0.1)
    w = ff.experts.w1
    std = math.sqrt(0.1 / 256)
    assert w.abs().max() <= 2 * std + 1e-7
    # A normal truncated at 2 sigma has standard deviation 0.88 sigma
    assert w.std().item() == pytest.approx(0.88 * std, rel=0.05)
    assert ff.router.weight.abs().max() <= 2 * std + 1e-7


def test_dense_baseline_has_the_same_active_flops():
    switch = build_transformer(kind="switch", n_layers=2, d_model=32, n_heads=4, d_ff=64, n_experts=8)
    dense = build_transformer(kind="dense", n_layers=2, d_model=32, n_heads=4, d_ff=64)
    s_ff, d_ff = switch.layers[0].feed_forward, dense.layers[0].feed_forward
    assert isinstance(s_ff, SwitchFeedForward) and isinstance(d_ff, FeedForward)
    # One expert's weights have the shapes of the dense FFN's: the same FLOPs per token
    assert s_ff.experts.w1.shape[1:] == d_ff.layer1.weight.T.shape
    assert s_ff.experts.w2.shape[1:] == d_ff.layer2.weight.T.shape
    # N times the FFN parameters
    n_switch = sum(p.numel() for p in s_ff.experts.parameters())
    n_dense = sum(p.numel() for p in d_ff.parameters())
    assert n_switch == 8 * n_dense


def test_layers_start_from_different_weights():
    model = build_transformer(n_layers=3, d_model=16, n_heads=2, d_ff=32, n_experts=2)
    w = [layer.feed_forward.experts.w1 for layer in model.layers]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])


def test_transformer_sums_per_layer_losses_and_trains():
    torch.manual_seed(0)
    model = build_transformer(n_layers=3, d_model=16, n_heads=2, d_ff=32, n_experts=4)
    x = torch.randn(8, 2, 16)
    y, routing = model(x, is_causal=True)
    assert y.shape == x.shape
    assert len(routing.layers) == 3
    torch.testing.assert_close(routing.load_balancing_loss, sum(r.load_balancing_loss for r in routing.layers))
    torch.testing.assert_close(routing.z_loss, sum(r.z_loss for r in routing.layers))
    (y.square().mean() + 0.01 * routing.load_balancing_loss).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    dense = build_transformer(kind="dense", n_layers=2, d_model=16, n_heads=2, d_ff=32)
    _, routing = dense(x)
    assert routing.layers == [] and routing.load_balancing_loss.item() == 0.0


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind='moe'"):
        build_transformer(kind="moe", n_layers=1, d_model=8, n_heads=2, d_ff=8)
    # The dense model takes the same configuration, checked the same way
    with pytest.raises(ValueError, match="capacity_factor=0.0"):
        build_transformer(kind="dense", n_layers=1, d_model=8, n_heads=2, d_ff=8, capacity_factor=0.0)
    with pytest.raises(ValueError, match="n_heads=3"):
        MultiHeadAttention(d_model=8, n_heads=3)
    with pytest.raises(ValueError, match="n_layers=0"):
        build_transformer(n_layers=0, d_model=8, n_heads=2, d_ff=8)
    with pytest.raises(ValueError, match="need at least one layer"):
        SwitchTransformer([])


def test_modules_name_the_input_that_does_not_fit():
    attention = MultiHeadAttention(d_model=8, n_heads=2)
    x = torch.randn(3, 2, 8)
    with pytest.raises(ValueError, match=r"key must be .* d_model=8, got shape \[3, 2, 6\]"):
        attention(query=x, key=torch.randn(3, 2, 6), value=x)
    with pytest.raises(ValueError, match=r"query must be .* got shape \[3, 8\]"):
        attention(query=torch.randn(3, 8), key=x, value=x)
    with pytest.raises(ValueError, match="7 features .* d_model=8"):
        FeedForward(d_model=8, d_ff=16)(torch.randn(3, 2, 7))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (relative imports as '.name')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("name, allowed", [
    ("feed_forward.py", {"torch", "math"}),
    # The names bare: the fallback import of flat copies side by side
    ("expert_rows.py", {"torch", "math", ".feed_forward", "feed_forward"}),
    ("switch.py", {"torch", "dataclasses", "fractions", "functools", ".feed_forward", "feed_forward",
                   ".expert_rows", "expert_rows", ".routing_result", "routing_result"}),
    ("routing_result.py", {"torch"}),
    ("mha.py", {"torch"}),
    ("transformer.py", {"torch", "collections", "functools", ".feed_forward", ".mha", ".routing_result", ".switch"}),
])
def test_model_files_import_only_torch_and_each_other(name, allowed):
    # Only torch, the standard library's math/dataclasses/collections/functools, and sibling model files
    assert imported_modules(PACKAGE / name) <= allowed


def test_documented_arguments_exist():
    # Every `* `name`:` bullet of an __init__ docstring names a real argument
    import inspect
    import re
    import labml_nn_switch as lib
    for cls in (lib.FeedForward, lib.Experts, lib.MultiHeadAttention, lib.Router, lib.SwitchFeedForward,
                lib.SwitchTransformerLayer, lib.SwitchTransformer):
        doc = inspect.getdoc(cls.__init__) or ""
        documented = set()
        for line in doc.splitlines():
            m = re.match(r"\* ((?:`\w+`(?:, )?)+)", line.strip())
            if m:
                documented.update(re.findall(r"`(\w+)`", m.group(1)))
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert documented == params, f"{cls.__name__}: documented {sorted(documented)} vs arguments {sorted(params)}"


def test_public_api_is_what_init_imports():
    # `__all__` lists exactly the names `__init__` imports, each from the module that defines it.
    import labml_nn_switch
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imported = {alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert sorted(labml_nn_switch.__all__) == sorted(imported)
    for name, module in imported.items():
        assert getattr(labml_nn_switch, name).__module__ == f"labml_nn_switch.{module}"

