"""
Benchmark one full training step of the experiment's model, Switch vs its FLOP-matched dense twin.

The model and the step are the experiment's own (`AutoregressiveModel`, `train_step`), at the
sizes of its `labml` preset (d_model 128, 4 heads, d_ff 256, 6 layers, 4 experts, capacity
factor 1.2, seq_len 64, batch 32). A step is forward, loss, backward, gradient clipping and
the Adam update. The two models run interleaved in one process; we report the median of
`--repeats` steps after `--warmup`, tokens/s and the ratio switch / dense (the median of the
paired per-round ratios, with their min and max). Nothing is set in the environment.

    python experiments/bench_train.py                  # writes experiments/results/bench_train.{json,md}
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from labml_nn_switch.configs import adam, defaults, explicit_settings, switch_config
from labml_nn_switch.experiment import build_model, train_step
from machine import machine_meta

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train.json"
N_VOCAB = 65  # Tiny Shakespeare's characters


def build(kind: str, device: torch.device):
    """The experiment's model (its own `build_model`, the `labml` preset's settings) and its Adam, constant rate."""
    torch.manual_seed(0)
    settings = {**defaults(), **explicit_settings({"preset": "labml", "model": kind})}
    model = build_model(settings, switch=switch_config(settings), n_vocab=N_VOCAB).to(device)
    optimizer = adam(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = device.type == "cuda"
    kinds = ["switch", "dense"]
    runs = {kind: build(kind, device) for kind in kinds}
    settings = runs["switch"][3]
    seq_len, batch_size = settings["seq_len"], settings["batch_size"]
    g = torch.Generator().manual_seed(0)
    data = torch.randint(N_VOCAB, (seq_len + 1, batch_size), generator=g).to(device)
    x, y = data[:-1], data[1:]
    times = {kind: [] for kind in kinds}
    for i in range(args.warmup + args.repeats):
        for kind in kinds:
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
    result = {kind: {"ms": statistics.median(t) * 1e3, "tokens_per_s": tokens / statistics.median(t)}
              for kind, t in times.items()}
    # Paired: dense time over switch time in the same round is switch's share of dense's tokens/s
    paired = sorted(d / s for s, d in zip(times["switch"], times["dense"]))
    ratio, low, high = statistics.median(paired), paired[0], paired[-1]
    print(f"one training step, labml preset ({tokens} tokens), {device}, median of {args.repeats}")
    for kind, r in result.items():
        print(f"  {kind:<7} {r['ms']:8.2f} ms  {r['tokens_per_s']:10.0f} tokens/s")
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
             "| model | ms per step | tokens/s |\n|---|---|---|\n"
             + "".join(f"| {kind} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} |\n" for kind, r in result.items())
             + f"\nSwitch / dense tokens/s, median of the paired ratios: **{ratio:.2f}** "
               f"(min {low:.2f}, max {high:.2f})\n")
    args.out.with_suffix(".md").write_text(table)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
