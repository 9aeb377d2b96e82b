"""
Benchmark one Switch feed-forward layer against its physical limit and against today's baseline.

Candidates, run interleaved (A B C A B C ...) in one process so that machine drift hits all alike:

* `switch`: our `SwitchFeedForward` (train mode, capacity factor 1.25, dropping on);
* `dense`: the FLOP-matched dense FFN (same d_model and d_ff, every token): the limit;
* `loop`: a per-expert Python loop in the style of the seed implementation (labml_nn)
  and of Hugging Face's SwitchTransformers: the baseline users have today.

All use dropout 0 and float32 on the CPU (plus bf16 autocast on a GPU when there is one).
We report the median of `--repeats` runs after `--warmup`, forward and forward+backward,
tokens/s and ratios to `dense` and to `loop`, and the peak memory of each candidate's
forward+backward beyond its parameters, the input and their gradients, measured in a fresh process
per candidate (VmHWM after resetting it through /proc/self/clear_refs; the allocator's
peak statistics on a GPU).

    python experiments/bench_layer.py                 # all sizes, writes experiments/results/bench_layer.{json,md}
    python experiments/bench_layer.py --sizes 2048,128,256,4 --repeats 20

Large fresh allocations can cost more in page faults than in arithmetic on this kind
of machine; we run with transparent huge pages for PyTorch's CPU allocator
(`THP_MEM_ALLOC_ENABLE=1`, set before torch is imported; `--no-thp` turns it off).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if "--no-thp" not in sys.argv:
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from labml_nn_switch import FeedForward, SwitchFeedForward  # noqa: E402
from machine import machine_meta  # noqa: E402

DEFAULT_SIZES = [(2048, 128, 256, 4), (4096, 512, 2048, 8), (4096, 512, 2048, 64), (16384, 256, 1024, 32)]
RESULTS = Path(__file__).resolve().parent / "results" / "bench_layer.json"


class SeedLoopSwitch(nn.Module):
    """
    The per-expert loop of the seed implementation (labml_nn's `SwitchFeedForward`),
    with its token dropping made deterministic (first come, first served) and the
    dropped tokens' output set to zero, so it computes what ours does. Like the seed
    it also gives what the load-balancing loss needs; we return that loss.
    """

    def __init__(self, *, d_model: int, d_ff: int, n_experts: int, capacity_factor: float):
        super().__init__()
        self.n_experts = n_experts
        self.capacity_factor = capacity_factor
        self.experts = nn.ModuleList([FeedForward(d_model=d_model, d_ff=d_ff, dropout=0.0)
                                      for _ in range(n_experts)])
        self.switch = nn.Linear(d_model, n_experts, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq_len, batch_size, d_model = x.shape
        x = x.reshape(-1, d_model)
        route_prob = torch.softmax(self.switch(x), dim=-1)
        route_prob_max, routes = torch.max(route_prob, dim=-1)
        indexes_list = [torch.eq(routes, i).nonzero(as_tuple=True)[0] for i in range(self.n_experts)]
        final_output = x.new_zeros(x.shape)
        counts = x.new_tensor([len(indexes_list[i]) for i in range(self.n_experts)])
        capacity = int(self.capacity_factor * len(x) / self.n_experts)
        indexes_list = [idx[:capacity] for idx in indexes_list]
        expert_output = [self.experts[i](x[indexes_list[i], :]) for i in range(self.n_experts)]
        for i in range(self.n_experts):
            final_output[indexes_list[i], :] = expert_output[i]
        final_output = final_output * route_prob_max.view(-1, 1)
        # The seed's experiment computes the load-balancing loss from these
        load_balancing_loss = self.n_experts * (counts / len(x) * route_prob.sum(0) / len(x)).sum()
        return final_output.view(seq_len, batch_size, d_model), load_balancing_loss


def build(name: str, size: tuple[int, int, int, int], device: torch.device) -> nn.Module:
    """One candidate, in train mode, dropout 0."""
    _, d_model, d_ff, n_experts = size
    if name == "switch":
        module = SwitchFeedForward(d_model=d_model, d_ff=d_ff, n_experts=n_experts, capacity_factor=1.25,
                                   expert_dropout=0.0)
    elif name == "dense":
        module = FeedForward(d_model=d_model, d_ff=d_ff, dropout=0.0)
    elif name == "loop":
        module = SeedLoopSwitch(d_model=d_model, d_ff=d_ff, n_experts=n_experts, capacity_factor=1.25)
    else:
        raise ValueError(f"unknown candidate {name!r}")
    return module.to(device).train()


def make_input(size, device, seed=0) -> torch.Tensor:
    """`[seq_len, batch_size, d_model]` with seq_len 256 (tokens / 256 sequences)."""
    n_tokens, d_model, _, _ = size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(256, n_tokens // 256, d_model, generator=g).to(device)


def step(module: nn.Module, x: torch.Tensor, backward: bool, autocast: bool) -> None:
    """One forward (and backward) pass; the Switch candidates add $0.01$ times their load-balancing loss."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = module(x)
    aux = 0.0
    if isinstance(out, tuple):
        out, extra = out
        aux = 0.01 * (extra.load_balancing_loss if hasattr(extra, "load_balancing_loss") else extra)
    if backward:
        (out.float().square().mean() + aux).backward()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(size, names, *, device, backward, autocast, warmup, repeats) -> dict[str, list[float]]:
    """Seconds per call of each candidate, A B C A B C ..."""
    modules = {name: build(name, size, device) for name in names}
    x = make_input(size, device).requires_grad_(backward)
    for _ in range(warmup):
        for name in names:
            step(modules[name], x, backward, autocast)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            for p in modules[name].parameters():
                p.grad = None
            x.grad = None
            sync(device)
            start = time.perf_counter()
            step(modules[name], x, backward, autocast)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _vm_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure_peak_memory_here(name: str, size, device_name: str) -> int:
    """
    Peak bytes of one forward+backward beyond the parameters, the input, and the
    gradients the backward leaves behind (of the parameters and the input), as in
    training with `zero_grad(set_to_none=True)`: the gradients are allocated by
    the backward and then are the gradients, not extra. Run in a fresh process
    (see `peak_memory`).
    """
    device = torch.device(device_name)
    torch.manual_seed(0)
    module = build(name, size, device)
    x = make_input(size, device).requires_grad_()

    def grad_bytes() -> int:
        grads = [p.grad for p in module.parameters() if p.grad is not None] + [x.grad]
        return sum(g.numel() * g.element_size() for g in grads if g is not None)

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(module, x, True, autocast=True)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base - grad_bytes()
    base = _vm_rss_bytes()
    # Reset the high-water mark of the resident set to the current size
    Path("/proc/self/clear_refs").write_text("5")
    step(module, x, True, autocast=False)
    return _vm_hwm_bytes() - base - grad_bytes()


def peak_memory(name: str, size, device: torch.device) -> int:
    """
    Run `measure_peak_memory_here` in a fresh Python process. There, every allocation of
    64 KiB or more gets its own mapping that is unmapped when freed (a fixed
    `MALLOC_MMAP_THRESHOLD_`: glibc otherwise raises the threshold after the first free
    and keeps freed memory resident), and no huge pages (they would round sizes up to
    2 MiB), so the resident set follows the live tensors.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", THP_MEM_ALLOC_ENABLE="0")
    out = subprocess.run([sys.executable, __file__, "--measure-memory", name, ",".join(map(str, size)),
                          "--device", str(device), "--no-thp"], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def run_size(size, *, device, autocast, warmup, repeats, memory: bool) -> dict:
    names = ["switch", "dense", "loop"]
    row = {"tokens": size[0], "d_model": size[1], "d_ff": size[2], "n_experts": size[3], "autocast_bf16": autocast}
    for mode, backward in (("forward", False), ("forward_backward", True)):
        times = time_interleaved(size, names, device=device, backward=backward, autocast=autocast,
                                 warmup=warmup, repeats=repeats)
        med = {name: median_ms(t) for name, t in times.items()}
        row[mode] = {name: {"ms": med[name], "tokens_per_s": size[0] / med[name] * 1e3,
                            "ratio_to_dense": med[name] / med["dense"], "ratio_to_loop": med[name] / med["loop"]}
                     for name in names}
    if memory:
        mem = {name: peak_memory(name, size, device) for name in names}
        row["peak_memory_bytes"] = mem
        row["peak_memory_ratio_to_dense"] = {name: mem[name] / mem["dense"] for name in names}
    return row


def print_row(row: dict) -> None:
    size = f"tokens {row['tokens']}, d_model {row['d_model']}, d_ff {row['d_ff']}, experts {row['n_experts']}"
    print(f"\n{size}{', bf16 autocast' if row['autocast_bf16'] else ''}")
    print(f"  {'candidate':<8} {'mode':<17} {'ms':>9} {'tokens/s':>12} {'/dense':>8} {'/loop':>8} {'peak MiB':>9} {'mem/dense':>9}")
    for mode in ("forward", "forward_backward"):
        for name, r in row[mode].items():
            mem = row.get("peak_memory_bytes", {}).get(name)
            mem_s = f"{mem / 2**20:9.1f}" if mem is not None and mode == "forward_backward" else f"{'':>9}"
            ratio = row.get("peak_memory_ratio_to_dense", {}).get(name)
            ratio_s = f"{ratio:9.2f}" if ratio is not None and mode == "forward_backward" else f"{'':>9}"
            print(f"  {name:<8} {mode:<17} {r['ms']:9.2f} {r['tokens_per_s']:12.0f} {r['ratio_to_dense']:8.2f} "
                  f"{r['ratio_to_loop']:8.2f} {mem_s} {ratio_s}")


def profile_table(size, device: torch.device, *, steps: int = 10, rows: int = 15) -> str:
    """
    Where the time of our layer's forward+backward goes, from `torch.profiler`: the
    operators with the most time of their own, and the dense FFN's matmul time for scale.
    """
    from torch.profiler import ProfilerActivity, profile
    x = make_input(size, device).requires_grad_()
    tables = []
    for name in ("switch", "dense"):
        module = build(name, size, device)
        for _ in range(3):
            step(module, x, True, autocast=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                for p in module.parameters():
                    p.grad = None
                step(module, x, True, autocast=False)
        tables.append(f"{name}, {steps} forward+backward passes:\n\n"
                      + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n\n".join(tables)


def markdown_table(rows: list[dict], meta: dict) -> str:
    """The figures as a Markdown table, for the site's Performance page."""
    lines = [f"Forward+backward, median of {meta['repeats']} interleaved runs; {meta['device']} "
             f"({meta['threads']} threads), torch {meta['torch']}, huge pages "
             f"{'on' if meta['thp_mem_alloc'] else 'off'}. Command: `{meta['command'].strip()}`.",
             "",
             "| tokens, d_model, d_ff, experts | switch ms | dense ms | loop ms | switch / dense | loop / dense "
             "| switch / loop | memory switch / dense | memory loop / dense |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fb = row["forward_backward"]
        mem = row.get("peak_memory_ratio_to_dense", {})
        lines.append(
            f"| {row['tokens']}, {row['d_model']}, {row['d_ff']}, {row['n_experts']}"
            f"{' (bf16)' if row['autocast_bf16'] else ''} "
            f"| {fb['switch']['ms']:.1f} | {fb['dense']['ms']:.1f} | {fb['loop']['ms']:.1f} "
            f"| {fb['switch']['ratio_to_dense']:.2f} | {fb['loop']['ratio_to_dense']:.2f} "
            f"| {fb['switch']['ratio_to_loop']:.2f} "
            f"| {mem.get('switch', float('nan')):.2f} | {mem.get('loop', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def parse_size(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4 or parts[0] % 256:
        raise argparse.ArgumentTypeError(f"size must be tokens,d_model,d_ff,n_experts with tokens a multiple "
                                         f"of 256, got {text!r}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_size, nargs="*", default=DEFAULT_SIZES)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--no-thp", action="store_true", help="do not set THP_MEM_ALLOC_ENABLE=1")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing, write torch.profiler tables of switch and dense per size "
                             "to OUT's folder as bench_layer_profile.txt")
    parser.add_argument("--measure-memory", nargs=2, metavar=("CANDIDATE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_memory:
        name, size = args.measure_memory
        print(measure_peak_memory_here(name, parse_size(size), args.device))
        return
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    device = torch.device(args.device)
    if args.profile:
        text = "\n\n".join(f"## tokens, d_model, d_ff, experts = {size}\n\n{profile_table(size, device)}"
                             for size in args.sizes)
        path = args.out.with_name("bench_layer_profile.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(text + f"\n\nwrote {path}")
        return
    rows = []
    for size in args.sizes:
        for autocast in ([False, True] if device.type == "cuda" else [False]):
            row = run_size(size, device=device, autocast=autocast, warmup=args.warmup, repeats=args.repeats,
                           memory=not args.no_memory)
            print_row(row)
            rows.append(row)
    meta = {**machine_meta(device),
            "repeats": args.repeats, "warmup": args.warmup,
            "command": "python experiments/bench_layer.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown_table(rows, meta))
    print(f"\nwrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
