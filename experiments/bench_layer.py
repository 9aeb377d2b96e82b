"""
Benchmark one Switch feed-forward layer against the layers people would use instead, and against its limit.

Candidates, all with the same weights, run interleaved in one process (each round times every
candidate once, in a rotating order), float32, forward + backward, dropout 0, train mode:

* `ours`: `labml_nn_switch.SwitchFeedForward` (capacity factor 1.25, dropping on), plus
  0.01 times its load-balancing loss, as training adds it;
* `dense`: the FLOP-matched dense FFN (same d_model and d_ff, every token): the layer's limit;
* `seed`: labml_nn's `SwitchFeedForward` (`labml-nn`), plus its load-balancing loss as its
  experiment computes it;
* `hf`: Hugging Face's `SwitchTransformersSparseMLP` (`transformers`), given all tokens as one
  sequence so that its capacity is ours (it computes no auxiliary loss here).

Install them with `pip install -e ".[bench]"`. Before timing, the weights of `seed` and `hf` are
copied from `ours`, checked equal, and the outputs compared (`hf` on every token, `seed` on the
tokens of experts within capacity: it drops at random and passes dropped tokens through).
For each round and candidate we take the ratio of its time to `dense`'s in the same round and
report the median and the spread (min and max) of these paired ratios, which cancels most of the
drift of a shared machine. 31 rounds by default: with fewer, a handful of slow rounds moves the
median from one run to the next. We also count the minor page faults per step and the bytes of
activations saved for backward (beyond the parameters and the input).

Nothing is set in the environment: run it as a user would.

    python experiments/bench_layer.py                       # the table, experiments/results/bench_layer.{json,md}
    python experiments/bench_layer.py --sweep tokens        # 1k..32k tokens at d_model 256, d_ff 1024, 8 experts
    python experiments/bench_layer.py --sweep experts       # 1..256 experts at 8192 tokens
    python experiments/bench_layer.py --sizes 2048,128,256,4 --bf16   # under bfloat16 autocast
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from labml_nn_switch import FeedForward, SwitchFeedForward
from machine import machine_meta

SIZES = [(2048, 128, 256, 4), (4096, 512, 2048, 8), (4096, 512, 2048, 64), (16384, 256, 1024, 32)]
SWEEPS = {
    "tokens": [(t, 256, 1024, 8) for t in (1024, 2048, 4096, 8192, 16384, 32768)],
    "experts": [(8192, 256, 1024, n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256)],
}
CANDIDATES = ["ours", "dense", "seed", "hf"]
CAPACITY_FACTOR = 1.25
RESULTS = Path(__file__).resolve().parent / "results"


class Seed(nn.Module):
    """labml_nn's layer with the load-balancing loss its experiment adds."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int):
        super().__init__()
        from labml_nn.transformers.feed_forward import FeedForward as SeedFFN
        from labml_nn.transformers.switch import SwitchFeedForward as SeedSwitch
        self.layer = SeedSwitch(capacity_factor=CAPACITY_FACTOR, drop_tokens=True, is_scale_prob=True,
                                n_experts=n_experts, d_model=d_model,
                                expert=SeedFFN(d_model, d_ff, dropout=0.0, bias1=False, bias2=False))

    def forward(self, x):
        out, counts, prob_sum, _, _ = self.layer(x)
        n = x.shape[0] * x.shape[1]
        return out, self.layer.n_experts * (counts / n * prob_sum / n).sum()


class HF(nn.Module):
    """Hugging Face's layer; all tokens as one sequence, so its per-sequence capacity is ours."""

    def __init__(self, d_model: int, d_ff: int, n_experts: int, capacity: int):
        super().__init__()
        from transformers.models.switch_transformers.configuration_switch_transformers import \
            SwitchTransformersConfig
        from transformers.models.switch_transformers.modeling_switch_transformers import \
            SwitchTransformersSparseMLP
        config = SwitchTransformersConfig(d_model=d_model, d_ff=d_ff, num_experts=n_experts, expert_capacity=capacity,
                                          router_bias=False, router_jitter_noise=0.0, router_dtype="float32",
                                          dense_act_fn="relu", dropout_rate=0.0)
        self.layer = SwitchTransformersSparseMLP(config)

    def forward(self, x):
        return self.layer(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)


def build(size, *, candidates=CANDIDATES) -> dict[str, nn.Module]:
    """Every candidate, train mode, the anchors' weights copied from ours and checked equal."""
    n_tokens, d_model, d_ff, n_experts = size
    torch.manual_seed(0)
    ours = SwitchFeedForward(d_model=d_model, d_ff=d_ff, n_experts=n_experts, capacity_factor=CAPACITY_FACTOR,
                             expert_dropout=0.0)
    modules = {"ours": ours, "dense": FeedForward(d_model=d_model, d_ff=d_ff, dropout=0.0)}
    w1, w2, router = ours.experts.w1.detach(), ours.experts.w2.detach(), ours.router.weight.detach()
    if "seed" in candidates:
        seed = Seed(d_model, d_ff, n_experts)
        with torch.no_grad():
            seed.layer.switch.weight.copy_(router)
            seed.layer.switch.bias.zero_()
            for e, expert in enumerate(seed.layer.experts):
                expert.layer1.weight.copy_(w1[e].T)
                expert.layer2.weight.copy_(w2[e].T)
        assert torch.equal(seed.layer.switch.weight, router)
        assert all(torch.equal(ex.layer1.weight.T, w1[e]) and torch.equal(ex.layer2.weight.T, w2[e])
                   for e, ex in enumerate(seed.layer.experts))
        modules["seed"] = seed
    if "hf" in candidates:
        hf = HF(d_model, d_ff, n_experts, ours.capacity(n_tokens))
        with torch.no_grad():
            hf.layer.router.classifier.weight.copy_(router)
            for e in range(n_experts):
                hf.layer.experts[f"expert_{e}"].wi.weight.copy_(w1[e].T)
                hf.layer.experts[f"expert_{e}"].wo.weight.copy_(w2[e].T)
        assert torch.equal(hf.layer.router.classifier.weight, router)
        assert all(torch.equal(hf.layer.experts[f"expert_{e}"].wi.weight.T, w1[e])
                   and torch.equal(hf.layer.experts[f"expert_{e}"].wo.weight.T, w2[e]) for e in range(n_experts))
        modules["hf"] = hf
    return {name: modules[name].train() for name in candidates}


def make_input(size, seed=0) -> torch.Tensor:
    """`[seq_len, batch_size, d_model]`, 256 positions per sequence (fewer tokens: one sequence)."""
    n_tokens, d_model, _, _ = size
    g = torch.Generator().manual_seed(seed)
    seq_len = min(256, n_tokens)
    return torch.randn(seq_len, n_tokens // seq_len, d_model, generator=g)


def forward(name: str, module: nn.Module, x: torch.Tensor):
    """The output and the loss to back-propagate: a stand-in task loss plus the layer's $0.01 \\times$ auxiliary loss."""
    out = module(x)
    aux = 0.0
    if name == "ours":
        out, result = out
        aux = 0.01 * result.load_balancing_loss
    elif name == "seed":
        out, lb = out
        aux = 0.01 * lb
    return out, out.float().square().mean() + aux


def check_outputs(modules: dict[str, nn.Module], x: torch.Tensor) -> None:
    """`hf` must agree with `ours` on every token; `seed` on the tokens of experts within capacity."""
    with torch.no_grad():
        ours, result = modules["ours"](x)
        ours = ours.reshape(-1, x.shape[-1])
        if "hf" in modules:
            torch.testing.assert_close(modules["hf"](x).reshape(ours.shape), ours, atol=1e-5, rtol=1e-4)
        if "seed" in modules:
            seed = modules["seed"](x)[0].reshape(ours.shape)
            expert = torch.softmax(x.reshape(-1, x.shape[-1]) @ modules["ours"].router.weight.T, -1).argmax(-1)
            fits = (result.counts <= result.capacity)[expert]
            torch.testing.assert_close(seed[fits], ours[fits], atol=1e-5, rtol=1e-4)


def saved_activation_bytes(name: str, module: nn.Module, x: torch.Tensor, autocast: bool) -> int:
    """Bytes of the distinct storages autograd saves for backward, beyond the parameters and the input."""
    exclude = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in exclude:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, loss = forward(name, module, x)
    del loss
    return sum(seen.values())


def time_size(size, *, candidates, rounds: int, warmup: int, autocast: bool) -> dict:
    """Interleaved rounds; per candidate the times, page faults, and paired ratios to `dense`."""
    modules = build(size, candidates=candidates)
    x = make_input(size).requires_grad_()
    check_outputs(modules, x.detach())
    times = {name: [] for name in candidates}
    faults = {name: [] for name in candidates}
    for r in range(warmup + rounds):
        # Rotate the order so that no candidate always runs after the same one
        for name in candidates[r % len(candidates):] + candidates[:r % len(candidates)]:
            module = modules[name]
            for p in module.parameters():
                p.grad = None
            x.grad = None
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                _, loss = forward(name, module, x)
            loss.backward()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
                faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    memory = {name: saved_activation_bytes(name, modules[name], x, autocast) for name in candidates}
    row = {"tokens": size[0], "d_model": size[1], "d_ff": size[2], "n_experts": size[3], "bf16_autocast": autocast,
           "candidates": {}}
    for name in candidates:
        ratios = sorted(t / d for t, d in zip(times[name], times["dense"]))
        row["candidates"][name] = {
            "ms": statistics.median(times[name]) * 1e3,
            "ratio_to_dense": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1],
            "page_faults": statistics.median(faults[name]),
            "saved_bytes": memory[name], "saved_ratio_to_dense": memory[name] / memory["dense"],
        }
        for anchor in ("seed", "hf"):
            if anchor in candidates and name == "ours":
                paired = sorted(t / a for t, a in zip(times["ours"], times[anchor]))
                row["candidates"]["ours"][f"ratio_to_{anchor}"] = statistics.median(paired)
                row["candidates"]["ours"][f"ratio_to_{anchor}_min"] = paired[0]
                row["candidates"]["ours"][f"ratio_to_{anchor}_max"] = paired[-1]
    return row


def spread(c: dict, key: str = "ratio_to_dense") -> str:
    lo, hi = (c["ratio_min"], c["ratio_max"]) if key == "ratio_to_dense" else (c[f"{key}_min"], c[f"{key}_max"])
    return f"{c[key]:.2f} ({lo:.2f}–{hi:.2f})"


def markdown(rows: list[dict], meta: dict) -> str:
    """The table for the Performance page."""
    names = [n for n in CANDIDATES if n in rows[0]["candidates"]]
    head = ("| tokens, d_model, d_ff, experts | dense ms | " + " | ".join(f"{n} / dense" for n in names if n != "dense")
            + (" | ours / seed" if "seed" in names else "") + (" | ours / hf" if "hf" in names else "")
            + " | saved activations ours / dense | page faults per step (" + ", ".join(names) + ") |")
    lines = [f"Forward+backward, float32{', bf16 autocast' if rows[0]['bf16_autocast'] else ''}; "
             f"median of {meta['rounds']} interleaved rounds of the paired ratios (min–max in brackets); "
             f"{meta['device']}, {meta['threads']} threads, torch {meta['torch']}. Command: `{meta['command']}`.",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        c = row["candidates"]
        cells = [f"{row['tokens']}, {row['d_model']}, {row['d_ff']}, {row['n_experts']}", f"{c['dense']['ms']:.0f}"]
        cells += [spread(c[n]) for n in names if n != "dense"]
        cells += [spread(c["ours"], f"ratio_to_{a}") for a in ("seed", "hf") if a in names]
        cells += [f"{c['ours']['saved_ratio_to_dense']:.2f}", ", ".join(f"{c[n]['page_faults']:.0f}" for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ratio_ticks(low: float, high: float) -> list[float]:
    """The ratios to label on a log axis from `low` to `high`: powers of two and the 1.5 target, quarters when narrow."""
    ticks = (0.25, 0.5, 1, 1.5, 2, 4, 8, 16, 32) if high / low > 6 else (0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4)
    return [t for t in ticks if low <= t <= high]


def plot(rows: list[dict], key: str, path: Path, device: str) -> None:
    """Ratio to dense against the swept quantity, one line per candidate, titled with the `device` (needs the `plots` extra)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs = [row[key] for row in rows]
    for name in rows[0]["candidates"]:
        ys = [row["candidates"][name]["ratio_to_dense"] for row in rows]
        lo = [row["candidates"][name]["ratio_min"] for row in rows]
        hi = [row["candidates"][name]["ratio_max"] for row in rows]
        ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.axhline(1.5, color="grey", linestyle=":", linewidth=1)
    # Ratios on a log axis: a spread of 20 x for a slow anchor leaves ours readable
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator(ratio_ticks(*ax.get_ylim())))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel({"n_experts": "experts (8192 tokens)", "tokens": "tokens (8 experts)"}[key])
    ax.set_ylabel("time / dense FFN")
    ax.set_title(f"forward+backward, d_model 256, d_ff 1024, float32\n{device}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_size(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a size is tokens,d_model,d_ff,n_experts, all >= 1, got {text!r}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None)
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default=None)
    parser.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=CANDIDATES)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast")
    parser.add_argument("--out", type=Path, default=None, help="the JSON to write (Markdown beside it)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    candidates = ["ours", "dense"] + [c for c in args.candidates if c not in ("ours", "dense")]
    sizes = args.sizes or (SWEEPS[args.sweep] if args.sweep else SIZES)
    stem = f"bench_layer_{args.sweep}" if args.sweep else "bench_layer" + ("_bf16" if args.bf16 else "")
    out = args.out or RESULTS / f"{stem}.json"
    rows = []
    for size in sizes:
        row = time_size(size, candidates=candidates, rounds=args.rounds, warmup=args.warmup, autocast=args.bf16)
        print(json.dumps({k: v for k, v in row.items() if k != "candidates"}))
        for name, c in row["candidates"].items():
            print(f"  {name:<6} {c['ms']:9.1f} ms  /dense {spread(c)}  faults {c['page_faults']:.0f}  "
                  f"saved/dense {c['saved_ratio_to_dense']:.2f}"
                  + "".join(f"  /{a} {spread(c, f'ratio_to_{a}')}" for a in ("seed", "hf") if f"ratio_to_{a}" in c))
        rows.append(row)
    meta = {**machine_meta(torch.device("cpu")), "rounds": args.rounds, "warmup": args.warmup,
            "command": " ".join(["python experiments/bench_layer.py"] + sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, meta))
    written = [out, out.with_suffix(".md")]
    if args.sweep:
        key = "n_experts" if args.sweep == "experts" else "tokens"
        plot(rows, key, out.with_suffix(".png"), meta["device"])
        written.append(out.with_suffix(".png"))
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
