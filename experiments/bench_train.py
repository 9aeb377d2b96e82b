"""
Benchmark one full training step of the experiment's model, Switch vs its FLOP-matched dense twin.

The model and the step are the experiment's own (`AutoregressiveModel`, `train_step`), at the
sizes of its `labml` preset (d_model 128, 4 heads, d_ff 256, 6 layers, 4 experts, capacity
factor 1.2, seq_len 64, batch 32). A step is forward, loss, backward, gradient clipping and
the Adam update. The models run interleaved in one process, in rotating order; we report the median of
`--repeats` steps after `--warmup`, tokens/s and each model's share of dense's tokens/s (the median of
the paired per-round ratios, with their min and max). Nothing is set in the environment.

With `--experts`, the Switch model is also timed with other numbers of experts, all else equal. With
one expert every token goes to the same FFN as in the dense model, so that its gap to dense is what
routing and dispatch cost on their own: the router, the sort, the gathers and the gate.

With `--layers`, each Switch layer's feed-forward part is also timed alone against the dense
twin's, forward and backward, on the very inputs the two models give them after the timed steps:
the routing is the model's own (uneven, tokens dropped at capacity factor 1.2) and the experts have
biases, as the preset has; `bench_layer.py` times random, nearly balanced inputs without biases.

With `--processes N`, the whole measurement runs in N fresh processes, one after the other, and
the table gives each process's median ratio and the median over them. Whatever stays fixed for a
process's whole life (where its tensors land in memory, for one) is the same in all its rounds, so
the paired ratios within one process cannot show it: on a shared 2-core machine one process's
median moved between 0.81 and 0.86 from one process to the next, with the same code.

    python experiments/bench_train.py                  # writes experiments/results/bench_train.{json,md}
    python experiments/bench_train.py --layers         # and the layers alone, bench_train_layers.{json,md}
    python experiments/bench_train.py --experts 1 2    # and the Switch model with 1 and 2 experts beside them
    python experiments/bench_train.py --processes 6    # six fresh processes, their medians side by side
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_layer import forward
from labml_nn_switch.configs import adam, defaults, explicit_settings, switch_config
from labml_nn_switch.experiment import build_model, train_step
from machine import machine_meta

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"
N_VOCAB = 65  # Tiny Shakespeare's characters


def build(kind: str, device: torch.device):
    """
    The experiment's model (its own `build_model`, the `labml` preset's settings) and its Adam, constant
    rate. `kind` is `switch`, `dense`, or `switch-N`: the preset's Switch model with `N` experts.
    """
    torch.manual_seed(0)
    model_kind, _, n_experts = kind.partition("-")
    overrides = {"preset": "labml", "model": model_kind, **({"n_experts": int(n_experts)} if n_experts else {})}
    settings = {**defaults(), **explicit_settings(overrides)}
    model = build_model(settings, switch=switch_config(settings), n_vocab=N_VOCAB).to(device)
    optimizer = adam(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler, settings


def time_layers(runs: dict, x: torch.Tensor, rounds: int) -> list[dict]:
    """Each layer's FFN, Switch and dense, on the inputs its own model gives it: forward + backward of `bench_layer`'s loss."""
    inputs = {}
    for kind, (model, *_) in runs.items():
        model.train()
        hooks = [layer.feed_forward.register_forward_pre_hook(
            lambda m, a, key=(kind, i): inputs.__setitem__(key, a[0].detach().clone()))
            for i, layer in enumerate(model.transformer.layers)]
        with torch.no_grad():
            model(x)
        for hook in hooks:
            hook.remove()
    rows = []
    for i in range(len(runs["switch"][0].transformer.layers)):
        times = {kind: [] for kind in runs}
        for r in range(rounds + 3):
            for kind in (list(runs) if r % 2 else list(runs)[::-1]):
                ff = runs[kind][0].transformer.layers[i].feed_forward
                z = inputs[(kind, i)].requires_grad_()
                start = time.perf_counter()
                _, loss = forward("ours" if kind == "switch" else "dense", ff, z)
                loss.backward()
                if r >= 3:
                    times[kind].append(time.perf_counter() - start)
                ff.zero_grad(set_to_none=True)
        paired = sorted(s / d for s, d in zip(times["switch"], times["dense"]))
        with torch.no_grad():
            routing = runs["switch"][0].transformer.layers[i].feed_forward(inputs[("switch", i)])[1]
        rows.append({"layer": i, "switch_ms": statistics.median(times["switch"]) * 1e3,
                     "dense_ms": statistics.median(times["dense"]) * 1e3, "ratio": statistics.median(paired),
                     "min": paired[0], "max": paired[-1], "tokens_per_expert": routing.counts.tolist(),
                     "capacity": routing.capacity})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--layers", action="store_true", help="also time each layer's FFN alone, on the model's inputs")
    parser.add_argument("--experts", type=int, nargs="*", default=[],
                        help="also time the Switch model with these numbers of experts (1: routing's cost alone)")
    parser.add_argument("--processes", type=int, default=1,
                        help="run the whole measurement in this many fresh processes, one after the other")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    if args.processes > 1:
        if args.layers:
            parser.error("--layers times one process's layers; run it without --processes")
        return across_processes(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = device.type == "cuda"
    kinds = ["switch", "dense"] + [f"switch-{n}" for n in args.experts]
    runs = {kind: build(kind, device) for kind in kinds}
    settings = runs["switch"][3]
    seq_len, batch_size = settings["seq_len"], settings["batch_size"]
    g = torch.Generator().manual_seed(0)
    data = torch.randint(N_VOCAB, (seq_len + 1, batch_size), generator=g).to(device)
    x, y = data[:-1], data[1:]
    times = {kind: [] for kind in kinds}
    for i in range(args.warmup + args.repeats):
        # Rotate the order, so that no model always runs after the same one
        for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            model, optimizer, scheduler, settings = runs[kind]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(model, optimizer, scheduler, x, y, lb_alpha=settings["lb_alpha"],
                       z_loss_coef=settings["z_loss_coef"], grad_clip=settings["grad_clip"], autocast=autocast)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times[kind].append(time.perf_counter() - start)
    tokens = seq_len * batch_size
    result = {}
    for kind, t in times.items():
        # Paired: dense's time over this model's in the same round is its share of dense's tokens/s
        paired = sorted(d / s for s, d in zip(t, times["dense"]))
        result[kind] = {"ms": statistics.median(t) * 1e3, "tokens_per_s": tokens / statistics.median(t),
                        "of_dense": statistics.median(paired), "min": paired[0], "max": paired[-1],
                        "n_experts": None if kind == "dense" else runs[kind][3]["n_experts"]}
    ratio, low, high = (result["switch"][k] for k in ("of_dense", "min", "max"))
    print(f"one training step, labml preset ({tokens} tokens), {device}, median of {args.repeats}")
    for kind, r in result.items():
        print(f"  {kind:<10} {r['ms']:8.2f} ms  {r['tokens_per_s']:10.0f} tokens/s  "
              f"of dense {r['of_dense']:.3f} ({r['min']:.2f}–{r['max']:.2f})")
    print(f"  switch / dense tokens/s: {ratio:.3f} ({low:.2f}–{high:.2f})")
    meta = {**machine_meta(device), "autocast_bf16": autocast,
            "repeats": args.repeats, "warmup": args.warmup,
            "command": "python experiments/bench_train.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": result, "switch_over_dense_tokens_per_s": ratio,
                                    "min": low, "max": high}, indent=2) + "\n")
    table = (f"One training step of the `labml` preset ({tokens} tokens), median of {args.repeats} interleaved "
             f"steps; {meta['device']} ({meta['threads']} threads), torch {meta['torch']}. "
             f"Command: `{meta['command'].strip()}`.\n\n"
             "| model | ms per step | tokens/s | tokens/s / dense's (min–max) |\n|---|---|---|---|\n"
             + "".join(f"| {kind} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | "
                       f"{r['of_dense']:.2f} ({r['min']:.2f}–{r['max']:.2f}) |\n" for kind, r in result.items())
             + f"\nSwitch / dense tokens/s, median of the paired ratios: **{ratio:.2f}** "
               f"(min {low:.2f}, max {high:.2f})\n")
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if args.layers:
        rows = time_layers({kind: runs[kind] for kind in ("switch", "dense")}, x, args.repeats)
        out = args.out.with_name(args.out.stem + "_layers.json")
        out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        table = (f"Each layer's feed-forward part alone, forward + backward of a stand-in loss, on the inputs its "
                 f"own model gives it (`labml` preset: biases, capacity factor 1.2); median of {args.repeats} "
                 f"interleaved rounds of the paired ratios; {meta['device']} ({meta['threads']} threads), torch "
                 f"{meta['torch']}. Command: `{meta['command'].strip()}`.\n\n"
                 "| layer | tokens per expert (capacity) | switch ms | dense ms | switch / dense |\n|---|---|---|---|---|\n"
                 + "".join(f"| {r['layer']} | {', '.join(map(str, r['tokens_per_expert']))} ({r['capacity']}) | "
                           f"{r['switch_ms']:.2f} | {r['dense_ms']:.2f} | {r['ratio']:.2f} ({r['min']:.2f}–{r['max']:.2f}) |\n"
                           for r in rows))
        out.with_suffix(".md").write_text(table)
        for r in rows:
            print(f"  layer {r['layer']}: switch {r['switch_ms']:.2f} ms, dense {r['dense_ms']:.2f} ms, "
                  f"ratio {r['ratio']:.2f} ({r['min']:.2f}–{r['max']:.2f}), counts {r['tokens_per_expert']}")
        print(f"wrote {out} and {out.with_suffix('.md')}")


def across_processes(args) -> None:
    """`--processes`: this script once per process, in turn, and their medians side by side."""
    child = [sys.executable, __file__, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
             "--device", args.device] + (["--threads", str(args.threads)] if args.threads else []) \
        + (["--experts", *map(str, args.experts)] if args.experts else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / f"process{i}.json"
            subprocess.run(child + ["--out", str(out)], check=True, stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text()))
            print(f"process {i + 1}: switch / dense tokens/s {runs[-1]['switch_over_dense_tokens_per_s']:.3f}")
    kinds = list(runs[0]["results"])
    per_process = {kind: [r["results"][kind]["of_dense"] for r in runs] for kind in kinds}
    ratios = sorted(per_process["switch"])
    ratio = statistics.median(ratios)
    print(f"  switch / dense tokens/s over {args.processes} processes: median {ratio:.3f} "
          f"({ratios[0]:.2f}–{ratios[-1]:.2f})")
    meta = {**runs[0]["meta"], "processes": args.processes,
            "command": "python experiments/bench_train.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "processes": runs, "switch_over_dense_tokens_per_s": ratio,
                                    "min": ratios[0], "max": ratios[-1]}, indent=2) + "\n")
    table = (f"One training step of the `labml` preset, in {args.processes} fresh processes one after the other, "
             f"each the median of {args.repeats} interleaved steps; {meta['device']} ({meta['threads']} threads), "
             f"torch {meta['torch']}. Command: `{meta['command'].strip()}`.\n\n"
             "| model | ms per step, each process | tokens/s / dense's, each process | median over processes |\n"
             "|---|---|---|---|\n"
             + "".join(f"| {kind} | {', '.join(format(r['results'][kind]['ms'], '.1f') for r in runs)} | "
                       f"{', '.join(format(v, '.2f') for v in per_process[kind])} | "
                       f"{statistics.median(per_process[kind]):.2f} |\n" for kind in kinds)
             + f"\nSwitch / dense tokens/s, median over the processes of each one's median of paired ratios: "
               f"**{ratio:.2f}** (min {ratios[0]:.2f}, max {ratios[-1]:.2f})\n")
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
