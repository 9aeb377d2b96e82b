"""
Per-rank memory and step time of expert × data parallelism at a fixed global batch.

    python experiments/bench_parallel.py                 # W = 1, 2, 4 with E = W, and W = 4 with E = 2
    python experiments/bench_parallel.py --layouts 1:1,4:2 --steps 20

For each layout (W ranks, expert-parallel degree E) the script launches W processes
with `torch.distributed.run` (gloo on CPUs, NCCL on GPUs), builds the same two-layer
Switch Transformer on every rank (each rank materialising only its N / E experts), and
runs training steps (forward, backward, DDP + expert gradient sync, clipping, Adam) on
its 1 / W of the same global batch. Rank 0 prints one JSON line per layout:

* `expert_mb`, `param_mb`: the expert parameters and all parameters one rank holds;
* `state_mb`: parameters, gradients and Adam's two moments on one rank;
* `rss_mb`: the growth of a rank's peak resident memory from before building the
  model to the end (the largest over ranks; includes activations and buffers);
* `step_ms`: the median step time over `--steps` steps after `--warmup`, with the
  interquartile range; `speedup` is W = 1's median over this one's, in the same run.

On a machine with fewer cores than ranks, the ranks share them: the step time then
measures the overhead of the exchanges, not a speed-up.
"""

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MODEL = dict(n_layers=2, d_model=128, n_heads=4, d_ff=512, n_experts=8)


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rank_main(args) -> None:
    """One rank of one layout (run under torch.distributed.run)."""
    sys.path.insert(0, str(REPO))
    from labml_nn_switch import build_transformer
    from labml_nn_switch import expert_parallel as EP
    from labml_nn_switch import gradient_sync as GS
    from labml_nn_switch import process_group as PG

    torch.set_num_threads(args.threads)
    launch = PG.init_from_env()
    before = peak_rss_mb()
    torch.manual_seed(0)
    layer = (functools.partial(EP.ExpertParallelSwitchFeedForward, groups=EP.expert_parallel_groups(args.ep))
             if launch.distributed else None)
    model = build_transformer(**MODEL, capacity_factor=1.25, expert_dropout=0.0, dropout=0.0,
                              **({"switch_layer": layer} if layer else {})).to(launch.device)
    ddp = GS.data_parallel(model, device=launch.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    experts = EP.expert_parameters(model)
    mb = 1 / 2 ** 20
    expert_mb = sum(p.numel() * p.element_size() for p, _ in experts.values()) * mb
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) * mb
    generator = torch.Generator().manual_seed(1)
    times = []
    for step in range(args.warmup + args.steps):
        # The same global batch on every rank; each keeps its 1 / W
        x = torch.randn(args.seq_len, args.batch, MODEL["d_model"], generator=generator).to(launch.device)
        x = PG.shard_batch(x)
        if launch.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out, routing = ddp(x)
        (out.square().mean() + 0.01 * routing.load_balancing_loss).backward()
        GS.sync_expert_gradients(model)
        GS.clip_grad_norm_(model, 1.0)
        opt.step()
        if launch.device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    # Parameters, gradients and Adam's two moments
    state_mb = 4 * param_mb
    rss = PG.gather_objects(peak_rss_mb() - before)
    # The slowest rank sets the pace
    step_times = PG.gather_objects(times)
    if PG.is_main_process():
        per_step = [max(ts) for ts in zip(*step_times)]
        q = statistics.quantiles(per_step, n=4)
        print(json.dumps({"world_size": launch.world_size, "ep": args.ep, "expert_mb": round(expert_mb, 3),
                          "param_mb": round(param_mb, 3), "state_mb": round(state_mb, 3),
                          "rss_mb": round(max(rss), 1), "step_ms": round(1e3 * statistics.median(per_step), 2),
                          "step_ms_iqr": [round(1e3 * q[0], 2), round(1e3 * q[2], 2)]}), flush=True)
    PG.shutdown()
    # Leave without running the interpreter's exit: with torch 2.13 and gloo, about one rank exit in
    # ten aborted there ("terminate called without an active exception", no Python frame left),
    # after every result was written. Everything is measured and printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default="1:1,2:2,4:4,4:2", help="W:E pairs, comma-separated")
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_parallel.json")
    parser.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ep", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        return rank_main(args)
    rows = []
    # The machine's load: other work on the same cores slows every layout, the larger W most
    load_before = os.getloadavg()
    for layout in args.layouts.split(","):
        world_size, ep = (int(v) for v in layout.split(":"))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world_size),
               __file__, "--rank", "--ep", str(ep), "--batch", str(args.batch), "--seq-len", str(args.seq_len),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"W={world_size}, E={ep} failed:\n{proc.stderr[-3000:]}")
        row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["world_size"] == 1), None)
    for r in rows:
        if base:
            r["speedup"] = round(base["step_ms"] / r["step_ms"], 2)
            r["expert_mb_ratio"] = round(r["expert_mb"] / base["expert_mb"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": MODEL, "global_batch": args.batch, "seq_len": args.seq_len, "threads_per_rank": args.threads,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "loadavg_1_5_15_before_after": [load_before, os.getloadavg()]}
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print("W  E  expert MB/rank  params MB/rank  peak RSS growth MB  step ms (IQR)  speed-up vs W=1")
    for r in rows:
        print(f"{r['world_size']:<2} {r['ep']:<2} {r['expert_mb']:>14} {r['param_mb']:>15} {r['rss_mb']:>19} "
              f"{r['step_ms']:>8} {r['step_ms_iqr']}  {r.get('speedup', '')}")


if __name__ == "__main__":
    main()
