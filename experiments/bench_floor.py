"""
The floor under any Switch layer that multiplies each expert's tokens by its own weights on this machine.

A Switch layer does the arithmetic of one dense FFN, but as $N$ products per weight matrix, one
per expert, each over about $T / N$ rows, with $N$ times the weights to read and $N$ weight
gradients to write. This script times those products alone, with everything else taken away:

* `dense`: the dense FFN's forward and backward, exactly as `bench_layer.py` times it (its
  activation and stand-in loss included);
* `bmm`: the six products of an FFN's forward and backward (two forward, two for the input's
  gradients, two for the weights') for $N$ experts of exactly $T / N$ rows each: perfect
  balance, no router, no gathers, no activation, buffers made once, one `torch.bmm` per product
  for all experts (the fastest way we measured);
* `loop`: the same products, one `torch.mm` per expert.

The ratio to `dense` of the faster of the two is a lower bound for the ratio of any layer built
on these products (ours, Hugging Face's, labml_nn's) at that size: a layer also routes, gathers,
activates, and sees imbalance. With `--anchors seed hf`, those two layers (as `bench_layer.py`
builds and times them) run in the same rounds, and the floor's time over theirs says how far
ahead of them any layer on these products could be in that run. Run interleaved in one process;
medians of the paired ratios with their min and max. Nothing is set in the environment.

    python experiments/bench_floor.py                   # bench_layer.py's four sizes
    python experiments/bench_floor.py --anchors seed hf # and the floor against labml_nn's and HF's layers
    python experiments/bench_floor.py --sweep experts   # 1..256 experts at 8192 tokens
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from labml_nn_switch import FeedForward
from bench_layer import RESULTS, SIZES, SWEEPS, build, forward, make_input, parse_size, spread
from machine import machine_meta


def products(n_tokens: int, d_model: int, d_ff: int, n_experts: int):
    """The two ways to run the six products of $N$ balanced experts, on buffers made once."""
    m = n_tokens // n_experts
    g = torch.Generator().manual_seed(0)
    x, grad_y = torch.randn(n_experts, m, d_model, generator=g), torch.randn(n_experts, m, d_model, generator=g)
    w1, w2 = torch.randn(n_experts, d_model, d_ff, generator=g), torch.randn(n_experts, d_ff, d_model, generator=g)
    h, grad_h, y, grad_x = (torch.empty(n_experts, m, d_ff), torch.empty(n_experts, m, d_ff),
                            torch.empty(n_experts, m, d_model), torch.empty(n_experts, m, d_model))
    grad_w1, grad_w2 = torch.empty_like(w1), torch.empty_like(w2)

    def bmm():
        torch.bmm(x, w1, out=h)
        torch.bmm(h, w2, out=y)
        torch.bmm(grad_y, w2.transpose(1, 2), out=grad_h)
        torch.bmm(h.transpose(1, 2), grad_y, out=grad_w2)
        torch.bmm(x.transpose(1, 2), grad_h, out=grad_w1)
        torch.bmm(grad_h, w1.transpose(1, 2), out=grad_x)

    def loop():
        for e in range(n_experts):
            torch.mm(x[e], w1[e], out=h[e])
            torch.mm(h[e], w2[e], out=y[e])
        for e in range(n_experts):
            torch.mm(grad_y[e], w2[e].t(), out=grad_h[e])
            torch.mm(h[e].t(), grad_y[e], out=grad_w2[e])
            torch.mm(x[e].t(), grad_h[e], out=grad_w1[e])
            torch.mm(grad_h[e], w1[e].t(), out=grad_x[e])

    return {"bmm": bmm, "loop": loop}


def time_size(size, *, rounds: int, warmup: int, anchors: list[str]) -> dict:
    # The dense FFN alone: no Switch layer's bank of weights in this process, unless `anchors`
    # asks for the layers people would use instead (`bench_layer.py`'s, same weights, same loss)
    torch.manual_seed(0)
    dense = FeedForward(d_model=size[1], d_ff=size[2], dropout=0.0).train()
    layers = {"dense": dense}
    if anchors:
        built = build(size, candidates=["ours", "dense", *anchors])
        layers.update({name: built[name] for name in anchors})
        del built
    x = make_input(size).requires_grad_()

    def runner(name, module):
        def run():
            for p in module.parameters():
                p.grad = None
            x.grad = None
            forward(name, module, x)[1].backward()
        return run

    runs = {**{name: runner(name, module) for name, module in layers.items()}, **products(*size)}
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            runs[name]()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    row = {"tokens": size[0], "d_model": size[1], "d_ff": size[2], "n_experts": size[3],
           "dense_ms": statistics.median(times["dense"]) * 1e3}
    # Round by round, the faster of the two ways of running the products
    floor = [min(b, lo) for b, lo in zip(times["bmm"], times["loop"])]
    to_dense = {name: [t / d for t, d in zip(times[name], times["dense"])] for name in ["bmm", "loop", *anchors]}
    to_dense["floor"] = [f / d for f, d in zip(floor, times["dense"])]
    for name, ratios in to_dense.items():
        ratios.sort()
        row[name] = {"ratio_to_dense": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1]}
    # The floor's time over each anchor's in the same round: the most any layer could be ahead of it
    for anchor in anchors:
        ratios = sorted(f / t for f, t in zip(floor, times[anchor]))
        row[f"floor_to_{anchor}"] = {"ratio": statistics.median(ratios), "ratio_min": ratios[0],
                                     "ratio_max": ratios[-1]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=None)
    parser.add_argument("--sweep", choices=sorted(SWEEPS), default=None)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default=None, help="the JSON to write (Markdown beside it)")
    parser.add_argument("--anchors", nargs="*", choices=["seed", "hf"], default=[],
                        help="also time these layers (bench_layer.py's) in the same rounds, and the floor against them")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    sizes = args.sizes or (SWEEPS[args.sweep] if args.sweep else SIZES)
    out = RESULTS / f"bench_floor{'_' + args.sweep if args.sweep else ''}.json" if args.out is None else args.out
    columns = ["bmm", "loop", "floor", *args.anchors]
    rows = []
    for size in sizes:
        row = time_size(size, rounds=args.rounds, warmup=args.warmup, anchors=args.anchors)
        rows.append(row)
        print(f"{size}: dense {row['dense_ms']:.1f} ms  "
              + "  ".join(f"{k}/dense {spread(row[k])}" for k in columns)
              + "".join(f"  floor/{a} {spread(row[f'floor_to_{a}'], 'ratio')}" for a in args.anchors))
    meta = {**machine_meta(torch.device("cpu")), "rounds": args.rounds, "warmup": args.warmup,
            "command": " ".join(["python experiments/bench_floor.py"] + sys.argv[1:])}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    head = ("| tokens, d_model, d_ff, experts | dense ms | " + " | ".join(f"{k} / dense" for k in columns)
            + "".join(f" | floor / {a}" for a in args.anchors) + " |")
    named = ", ".join(f"`{a}`" for a in args.anchors)
    layers = f", and those of the layers {named} as `bench_layer.py` times them" if args.anchors else ""
    lines = [f"The six products of an FFN for balanced experts, alone, against the dense FFN's whole forward and "
             f"backward{layers}; median of "
             f"{args.rounds} interleaved rounds of the paired ratios (min–max); {meta['device']}, "
             f"{meta['threads']} threads, torch {meta['torch']}. Command: `{meta['command']}`.", "",
             head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        cells = [f"{row['tokens']}, {row['d_model']}, {row['d_ff']}, {row['n_experts']}", f"{row['dense_ms']:.0f}"]
        cells += [spread(row[k]) for k in columns]
        cells += [spread(row[f"floor_to_{a}"], "ratio") for a in args.anchors]
        lines.append("| " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
