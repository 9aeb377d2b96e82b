"""
Expert × data parallelism on CPU: gloo process groups of 2 and 4 spawned processes on loopback.

A small pool of worker processes (one per rank) is started once per world size; each
test sends it a function to run on every rank and collects what each rank returns. The
checks run inside the workers against the single-process layer with the same weights.
"""

import functools
import inspect
import os
import queue
import re
import signal
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labml_nn_switch import SwitchFeedForward, build_transformer
from labml_nn_switch import expert_parallel as EP
from labml_nn_switch import gradient_sync as GS
from labml_nn_switch import process_group as PG
from labml_nn_switch import sharded_checkpoint as SC
from labml_nn_switch import watchdog as WD
from test_switch import make_layer

# How long one task may take on a rank before the test fails (a bug must not hang the suite)
TASK_TIMEOUT = 60


# ## The pool of ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environ(rank: int, world_size: int, port: int) -> None:
    """What torchrun would set."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # Two shared cores: one thread per rank
    torch.set_num_threads(1)


def _worker(rank: int, world_size: int, port: int, tasks, results) -> None:
    _environ(rank, world_size, port)
    try:
        launch = PG.init_from_env(backend="gloo", timeout=timedelta(seconds=TASK_TIMEOUT))
        results.put((rank, True, (launch.rank, launch.world_size, launch.local_rank, str(launch.device))))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            results.put((rank, True, fn(*args)))
        except BaseException:
            results.put((rank, False, traceback.format_exc()))
    PG.shutdown()


class World:
    """`size` ranks waiting for tasks; `run(fn, *args)` runs `fn(*args)` on each and returns their results."""

    def __init__(self, size: int):
        self.size = size
        self.procs = []
        self._start()

    def _start(self):
        ctx = mp.get_context("spawn")
        port = _free_port()
        self.tasks = [ctx.Queue() for _ in range(self.size)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(r, self.size, port, self.tasks[r], self.results), daemon=True)
                      for r in range(self.size)]
        for p in self.procs:
            p.start()
        # Starting W processes that each import torch takes a while on two shared cores
        self.launch = self._collect("init_from_env", timeout=300)

    def _collect(self, what: str, timeout: float = TASK_TIMEOUT + 30) -> list:
        out, errors = [None] * self.size, []
        for _ in range(self.size):
            try:
                rank, ok, value = self.results.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise AssertionError(f"{what}: a rank did not answer within {timeout} s") from None
            if ok:
                out[rank] = value
            else:
                errors.append(f"--- rank {rank} ---\n{value}")
        if errors:
            # A failed task may leave the others' collectives broken: start afresh next time
            self.close()
            raise AssertionError(f"{what} failed:\n" + "\n".join(errors))
        return out

    def run(self, fn, *args) -> list:
        if not self.procs:
            self._start()
        for q in self.tasks:
            q.put((fn, args))
        return self._collect(fn.__name__)

    def close(self):
        for q in self.tasks:
            try:
                q.put(None)
            except (ValueError, OSError):
                pass
        # A few seconds for all to leave, then the stragglers are killed
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(timeout=max(deadline - time.monotonic(), 0))
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        self.procs = []


_WORLDS: dict[int, World] = {}


@pytest.fixture(scope="module")
def worlds():
    """`worlds(n)`: the pool of `n` ranks, started on first use and shared by the module's tests."""
    def get(n: int) -> World:
        if n not in _WORLDS:
            _WORLDS[n] = World(n)
        return _WORLDS[n]
    yield get
    for w in _WORLDS.values():
        w.close()
    _WORLDS.clear()


# (world size W, expert-parallel degree E): expert parallelism, expert × data, pure data parallelism
LAYOUTS = [(4, 4), (4, 2), (2, 1)]
layouts = pytest.mark.parametrize("layout", LAYOUTS, ids=lambda wl: f"W{wl[0]}-E{wl[1]}")


# ## Building blocks run on every rank

D_MODEL = 8


def _copy_into(ep: EP.ExpertParallelSwitchFeedForward, ff: SwitchFeedForward) -> None:
    """Give the expert-parallel layer `ff`'s router and its slice of `ff`'s experts."""
    first, last = ep.expert_slice
    with torch.no_grad():
        ep.router.weight.copy_(ff.router.weight)
        for name, p in ep.experts.named_parameters():
            p.copy_(getattr(ff.experts, name)[first:last])


def _close(a, b, *, dtype, what: str):
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def _layer_matches_single(ep_degree: int, case: dict) -> dict:
    """
    The expert-parallel layer on this rank's shard against the single-process layer on
    every shard with the same weights: outputs, routing results, gradients of inputs,
    router and experts (summed over the tokens of the expert group).
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    groups = EP.expert_parallel_groups(ep_degree)
    dtype = case["dtype"]
    n_experts = case.get("experts_per_rank", 1) * 4
    options = case.get("options", {})
    ff = make_layer(n_experts=n_experts, dtype=dtype, d_model=D_MODEL, **options)
    ep = EP.ExpertParallelSwitchFeedForward(ff.config, groups=groups).to(dtype)
    _copy_into(ep, ff)
    assert ep.experts.w1.shape[0] == n_experts // ep_degree
    if case.get("eval"):
        ff.eval(), ep.eval()
    # The same global batch and output gradients on every rank
    sizes = [(r + 1 if case.get("uneven") else 2) for r in range(world_size)]
    torch.manual_seed(1)
    x_global = torch.randn(6, sum(sizes), D_MODEL, dtype=dtype)
    if case.get("all_to_zero"):
        # Every token chooses expert 0
        x_global = x_global.abs() + 0.1
        with torch.no_grad():
            for layer in (ff, ep):
                layer.router.weight.zero_()
                layer.router.weight[0] = 1.0
    g_global = torch.randn_like(x_global)
    xs, gs = list(x_global.split(sizes, dim=1)), list(g_global.split(sizes, dim=1))

    def objective(out, result, g):
        return (out * g).sum() + 0.3 * result.load_balancing_loss + 0.1 * result.z_loss

    # Expert-parallel, this rank's shard
    x = xs[rank].clone().requires_grad_()
    out, result = ep(x)
    objective(out, result, gs[rank]).backward()
    # Single process, the shards of this rank's expert group: the sum of their objectives
    members = dist.get_process_group_ranks(groups.expert_group)
    refs = {r: xs[r].clone().requires_grad_() for r in members}
    ref_out = {r: ff(refs[r]) for r in members}
    sum(objective(*ref_out[r], gs[r]) for r in members).backward()
    want_out, want = ref_out[rank]

    # The output and the routing result are those of the single-process layer on this shard
    _close(out, want_out, dtype=dtype, what="output")
    _close(result.load_balancing_loss, want.load_balancing_loss, dtype=dtype, what="load-balancing loss")
    _close(result.z_loss, want.z_loss, dtype=dtype, what="z-loss")
    assert torch.equal(result.tokens_per_expert, want.tokens_per_expert)
    assert int(result.n_dropped) == int(want.n_dropped) and result.capacity == want.capacity
    # Gradients: the input, and this rank's experts summed over its expert group's tokens
    _close(x.grad, refs[rank].grad, dtype=dtype, what="input gradient")
    first, last = ep.expert_slice
    for name, p in ep.experts.named_parameters():
        _close(p.grad, getattr(ff.experts, name).grad[first:last], dtype=dtype, what=f"gradient of expert {name}")

    # Without dropping, also the single-process layer on the whole global batch
    dropped = torch.tensor(int(result.n_dropped))
    dist.all_reduce(dropped)
    if int(dropped) == 0:
        whole, _ = ff(x_global)
        _close(out, whole.split(sizes, dim=1)[rank], dtype=dtype, what="output against the global batch")
    return {"dropped": int(dropped)}


CASES = {
    # float64 runs the local experts with padded bmm
    "f64-drops": dict(dtype=torch.float64, options=dict(capacity_factor=1.0)),
    "f64-drops-2-experts-per-rank": dict(dtype=torch.float64, experts_per_rank=2, options=dict(capacity_factor=1.0)),
    "f64-priority-drops": dict(dtype=torch.float64, options=dict(capacity_factor=0.5, batch_prioritized=True)),
    "f64-no-drops-large-capacity": dict(dtype=torch.float64, options=dict(capacity_factor=8.0)),
    "f64-dropless": dict(dtype=torch.float64, experts_per_rank=2, options=dict(drop_tokens=False)),
    "f64-swiglu-no-bias-unscaled": dict(dtype=torch.float64, options=dict(activation="swiglu", bias=False,
                                                                          scale_by_gate=False, capacity_factor=1.0)),
    "f64-uneven-shards": dict(dtype=torch.float64, uneven=True, options=dict(capacity_factor=0.5)),
    "f64-all-to-expert-0": dict(dtype=torch.float64, all_to_zero=True, options=dict(capacity_factor=1.0)),
    "f64-eval-capacity": dict(dtype=torch.float64, eval=True, options=dict(capacity_factor=0.25,
                                                                          eval_capacity_factor=1.0)),
    # float32 runs them with grouped_mm (where torch has it)
    "f32-drops": dict(dtype=torch.float32, experts_per_rank=2, options=dict(capacity_factor=1.0)),
    "f32-dropless": dict(dtype=torch.float32, options=dict(drop_tokens=False)),
    "f32-all-to-expert-0": dict(dtype=torch.float32, all_to_zero=True, options=dict(capacity_factor=1.0)),
}
# The cases where tokens must be dropped, and where none may be
DROPS = {"f64-drops", "f64-drops-2-experts-per-rank", "f64-priority-drops", "f64-swiglu-no-bias-unscaled",
         "f64-uneven-shards", "f64-all-to-expert-0", "f32-drops", "f32-all-to-expert-0"}
NO_DROPS = {"f64-no-drops-large-capacity", "f64-dropless", "f32-dropless"}


@layouts
@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_single_process(worlds, layout, name):
    world_size, ep_degree = layout
    results = worlds(world_size).run(_layer_matches_single, ep_degree, CASES[name])
    if name in DROPS:
        assert results[0]["dropped"] > 0, "the case is meant to drop tokens"
    if name in NO_DROPS:
        assert results[0]["dropped"] == 0


def _build(groups, seed: int, *, dtype=torch.float64, n_experts: int = 4):
    """A two-layer Switch Transformer from `seed`: single-process (`groups=None`) or expert-parallel."""
    torch.manual_seed(seed)
    layer = SwitchFeedForward if groups is None else functools.partial(EP.ExpertParallelSwitchFeedForward,
                                                                        groups=groups)
    model = build_transformer(n_layers=2, d_model=D_MODEL, n_heads=2, d_ff=16, n_experts=n_experts, dropout=0.0,
                              expert_dropout=0.0, capacity_factor=1.0, bias=True, switch_layer=layer).to(dtype)
    with torch.no_grad():
        for block in model.layers:
            # A sharp router: uneven loads, dropped tokens
            block.feed_forward.router.weight.mul_(10)
    return model


def _loss_of(model, x):
    out, routing = model(x)
    return out.square().mean() + 0.01 * routing.load_balancing_loss


def _model_steps_match_single(ep_degree: int) -> dict:
    """
    Built from the same seed, the expert-parallel model holds the single-process model's
    weights (and leaves the same random state). Two optimiser steps through DDP with
    `sync_expert_gradients` and `clip_grad_norm_` equal the single-process model's on the
    mean of the shard losses; the copies of each expert stay bit-identical.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dtype = torch.float64
    groups = EP.expert_parallel_groups(ep_degree)
    ref = _build(None, 0)
    after_ref = torch.rand(3)
    model = _build(groups, 0)
    after_ep = torch.rand(3)
    assert torch.equal(after_ref, after_ep), "building drew a different amount of random numbers"
    # The same initial weights: replicated ones whole, experts by slice
    experts = EP.expert_parameters(model)
    for name, value in model.state_dict().items():
        want = ref.state_dict()[name]
        if name in experts:
            first, last = experts[name][1].expert_slice
            want = want[first:last]
        assert torch.equal(value, want), f"initial {name}"
    ddp = GS.data_parallel(model)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    norms = []
    for i in range(2):
        torch.manual_seed(100 + i)
        x_global = torch.randn(5, 2 * world_size, D_MODEL, dtype=dtype)
        # Single process: the mean of the shard losses
        ref_opt.zero_grad()
        (sum(_loss_of(ref, x) for x in x_global.chunk(world_size, dim=1)) / world_size).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        ref_opt.step()
        # Expert × data parallel: this rank's shard
        opt.zero_grad()
        _loss_of(ddp, PG.shard_batch(x_global)).backward()
        GS.sync_expert_gradients(model)
        norm = GS.clip_grad_norm_(model, 0.05)
        _close(norm, ref_norm.to(norm.dtype), dtype=dtype, what="gradient norm")
        for name, p in model.named_parameters():
            want = dict(ref.named_parameters())[name].grad
            if name in experts:
                want = want[slice(*experts[name][1].expert_slice)]
            _close(p.grad, want, dtype=dtype, what=f"gradient of {name}")
        opt.step()
        norms.append(float(ref_norm))
    # The copies of each expert, bit for bit: gathered over the replica group
    for name, (p, layer) in experts.items():
        copies = [torch.empty_like(p) for _ in range(groups.n_replicas)]
        dist.all_gather(copies, p.detach(), group=groups.replica_group)
        assert all(torch.equal(c, copies[0]) for c in copies), f"copies of {name} differ"
    # And the replicated parameters on every rank
    for name, p in model.named_parameters():
        if name not in experts:
            copies = [torch.empty_like(p) for _ in range(world_size)]
            dist.all_gather(copies, p.detach())
            assert all(torch.equal(c, copies[0]) for c in copies), f"replicas of {name} differ"
    return {"norms": norms}


@layouts
def test_training_steps_match_single_process(worlds, layout):
    world_size, ep_degree = layout
    results = worlds(world_size).run(_model_steps_match_single, ep_degree)
    # Clipping was active (norms above 0.05), and every rank saw the same norms
    assert all(r == results[0] for r in results)
    assert min(results[0]["norms"]) > 0.05


# ## No full bank of experts on any rank

def _allocations(ep_degree: int, n_experts: int) -> dict:
    """
    The bytes of expert parameters a rank holds, and the largest tensor made while
    building the model (a full bank of experts would be the largest by far).
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (list, tuple)) else [out]:
                if torch.is_tensor(t) and t.device.type != "meta":
                    Largest.largest = max(Largest.largest, t.numel() * t.element_size())
            return out

    groups = EP.expert_parallel_groups(ep_degree)
    with Largest():
        torch.manual_seed(0)
        model = build_transformer(n_layers=1, d_model=16, n_heads=2, d_ff=256, n_experts=n_experts,
                                  switch_layer=functools.partial(EP.ExpertParallelSwitchFeedForward, groups=groups))
    expert_bytes = sum(p.numel() * p.element_size() for p, _ in EP.expert_parameters(model).values())
    return {"expert_bytes": expert_bytes, "largest": Largest.largest}


def test_expert_memory_per_rank_scales_as_n_over_e(worlds):
    n_experts = 8
    # One expert: w1 [16, 256] and w2 [256, 16], float32
    one_expert = 2 * 16 * 256 * 4
    for ep_degree in (1, 2, 4):
        results = worlds(4).run(_allocations, ep_degree, n_experts)
        for r in results:
            assert r["expert_bytes"] == n_experts // ep_degree * one_expert
            # Nothing bigger than one rank's w1 was ever made: never the bank of all N
            assert r["largest"] <= n_experts // ep_degree * one_expert // 2


# ## Sharded checkpoints

def _train_and_save(ep_degree: int, folder: str) -> dict:
    """Two steps on (W, E), then a sharded checkpoint; returns the single-process-layout state for comparison."""
    groups = EP.expert_parallel_groups(ep_degree)
    model = _build(groups, 0)
    ddp = GS.data_parallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(2):
        torch.manual_seed(100 + i)
        opt.zero_grad()
        _loss_of(ddp, PG.shard_batch(torch.randn(5, 8, D_MODEL, dtype=torch.float64))).backward()
        GS.sync_expert_gradients(model)
        opt.step()
    SC.save_sharded(Path(folder) / "step_2", model, opt, extra={"step": 2}, rank_extra={"rank": dist.get_rank()})
    # For the comparisons: the whole model gathered here (a test's luxury)
    return _gathered(model, opt)


def _gathered(model, opt) -> dict:
    """Every parameter and Adam moment of the model in the single-process layout, by name."""
    experts = EP.expert_parameters(model)
    out = {}
    state = opt.state_dict()["state"]
    for i, (name, p) in enumerate(model.named_parameters()):
        tensors = {"param": p.detach(), **{k: v for k, v in state[i].items() if k != "step"}}
        for k, t in tensors.items():
            if name in experts:
                group = experts[name][1].groups.expert_group
                parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
                dist.all_gather(parts, t.contiguous(), group=group)
                t = torch.cat(parts)
            out[f"{name}.{k}"] = t.clone()
        out[f"{name}.step"] = state[i]["step"].clone()
    return out


def _load_and_compare(ep_degree: int, folder: str, want: dict) -> dict:
    """Load into a model of another seed on (W', E'): the same parameters and moments; one more step runs."""
    groups = EP.expert_parallel_groups(ep_degree)
    model = _build(groups, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    extra, rank_extra = SC.load_sharded(Path(folder) / "step_2", model, opt)
    got = _gathered(model, opt)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    ddp = GS.data_parallel(model)
    opt.zero_grad()
    _loss_of(ddp, PG.shard_batch(torch.randn(5, 8, D_MODEL, dtype=torch.float64))).backward()
    GS.sync_expert_gradients(model)
    opt.step()
    return {"extra": extra, "rank_extra": rank_extra}


def _failing_save(folder: str) -> str:
    """A save during which rank 1 fails while writing its file."""
    from torch.distributed.checkpoint import FileSystemWriter
    model = _build(EP.expert_parallel_groups(2), 0)
    write_data = FileSystemWriter.write_data

    def broken(self, plan, planner):
        if dist.get_rank() == 1:
            raise OSError("disk full (simulated)")
        return write_data(self, plan, planner)

    FileSystemWriter.write_data = broken
    try:
        SC.save_sharded(Path(folder) / "step_4", model)
    except BaseException as e:  # every rank learns that the save failed (DCP raises a BaseException)
        return type(e).__name__ + ": " + str(e)
    finally:
        FileSystemWriter.write_data = write_data
    return "saved"


@pytest.mark.slow
def test_sharded_checkpoint_reshards(worlds, tmp_path):
    """Saved on (W=4, E=2): loads bit for bit on (4, 2), (2, 2), (4, 4) and in one process; a crashed save leaves it whole."""
    folder = str(tmp_path)
    want = worlds(4).run(_train_and_save, 2, folder)[0]
    # The same world: parameters, moments and the per-rank values back, bit for bit
    same = worlds(4).run(_load_and_compare, 2, folder, want)
    assert [r["rank_extra"] for r in same] == [{"rank": r} for r in range(4)]
    assert all(r["extra"] == {"step": 2} for r in same)
    # Another degree on as many ranks: the same tensors, and each rank's own values
    other = worlds(4).run(_load_and_compare, 4, folder, want)
    assert [r["rank_extra"] for r in other] == [{"rank": r} for r in range(4)]
    # Fewer ranks: the same tensors; no per-rank values (there is no "same rank")
    other = worlds(2).run(_load_and_compare, 2, folder, want)
    assert all(r["extra"] == {"step": 2} and r["rank_extra"] is None for r in other)
    # One process, no process group: the ordinary model and optimiser
    model = _build(None, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    extra, rank_extra = SC.load_sharded(tmp_path / "step_2", model, opt)
    assert extra == {"step": 2} and rank_extra is None
    state = opt.state_dict()["state"]
    for i, (name, p) in enumerate(model.named_parameters()):
        assert torch.equal(p, want[f"{name}.param"]), name
        assert torch.equal(state[i]["exp_avg"], want[f"{name}.exp_avg"]), name
        assert torch.equal(state[i]["exp_avg_sq"], want[f"{name}.exp_avg_sq"]), name
    # A save that fails midway: every rank hears of it, nothing under the checkpoint's name
    messages = worlds(4).run(_failing_save, folder)
    assert all("disk full (simulated)" in m for m in messages), messages
    assert not (tmp_path / "step_4").exists() and (tmp_path / "step_4.partial").is_dir()
    assert not SC.is_sharded_checkpoint(tmp_path / "step_4.partial")
    # The previous checkpoint still loads, and a new save replaces the leftovers
    worlds(4).run(_load_and_compare, 2, folder, want)
    worlds(2).run(_save_again, folder)
    assert SC.is_sharded_checkpoint(tmp_path / "step_4") and not (tmp_path / "step_4.partial").exists()


def _save_again(folder: str) -> None:
    SC.save_sharded(Path(folder) / "step_4", _build(EP.expert_parallel_groups(2), 0))


# ## Errors before the first step

def _errors() -> dict:
    """The errors a misconfiguration raises, as messages."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    messages = {}
    for ep_degree in (3, 0):
        try:
            EP.expert_parallel_groups(ep_degree)
        except ValueError as e:
            messages[f"ep{ep_degree}"] = str(e)
    # n_experts not divisible by the degree
    try:
        EP.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=world_size + 1)
    except ValueError as e:
        messages["divisible"] = str(e)
    # Ranks disagreeing on the configuration
    try:
        EP.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=world_size,
                                           capacity_factor=1.0 + rank)
    except ValueError as e:
        messages["disagree"] = str(e)
    # A batch that does not split evenly
    try:
        PG.shard_batch(torch.zeros(3, world_size + 1))
    except ValueError as e:
        messages["shard"] = str(e)
    # The process group still works after all that
    t = torch.ones(1)
    dist.all_reduce(t)
    messages["alive"] = int(t)
    return messages


def test_clear_errors(worlds):
    n = 4
    for messages in worlds(n).run(_errors):
        assert messages["ep3"].startswith("ep=3 must be a positive divisor of the number of processes (4)")
        assert messages["ep0"].startswith("ep=0 must be")
        assert f"n_experts={n + 1} is not divisible by the expert-parallel degree ep={n}" in messages["divisible"]
        assert "capacity_factor" in messages["disagree"] and "rank 1: 2.0" in messages["disagree"]
        assert f"a batch of {n + 1} along dim=1" in messages["shard"]
        assert messages["alive"] == n


def _helpers() -> dict:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    out = {"main": PG.is_main_process(), "launch": PG.init_from_env().rank}
    batch = torch.arange(4 * 2 * world_size).view(4, 2 * world_size)
    assert torch.equal(PG.shard_batch(batch), batch[:, 2 * rank:2 * rank + 2])
    assert torch.equal(PG.shard_batch(batch.t(), dim=0), batch.t()[2 * rank:2 * rank + 2])
    out["gathered"] = PG.gather_objects({"rank": rank})
    out["broadcast"] = PG.broadcast_object(f"from {rank}")
    out["mean"] = float(PG.mean_over_ranks(torch.tensor(float(rank))))
    out["sum"] = PG.sum_over_ranks(torch.tensor([rank, 1])).tolist()
    # The groups of (W=4, E=2): expert groups {0, 1}, {2, 3}; replica groups {0, 2}, {1, 3}
    groups = EP.expert_parallel_groups(2)
    out["expert_group"] = dist.get_process_group_ranks(groups.expert_group)
    out["replica_group"] = dist.get_process_group_ranks(groups.replica_group)
    # The global load balance: every rank sends all its tokens to expert `rank`,
    # each rank is as unbalanced as can be, the global batch is balanced
    torch.manual_seed(0)
    ff = SwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=world_size)
    with torch.no_grad():
        ff.router.weight.zero_()
        ff.router.weight[rank] = 1.0
    _, result = ff(torch.ones(6, D_MODEL))
    out["local_balance"] = float(result.load_balancing_loss)
    out["global_balance"] = EP.global_load_balance([result]).tolist()
    return out


def test_helpers(worlds):
    n = 4
    world = worlds(n)
    # What init_from_env found in each worker
    assert world.launch == [(r, n, r, "cpu") for r in range(n)]
    results = world.run(_helpers)
    assert [r["main"] for r in results] == [True] + [False] * (n - 1)
    assert [r["launch"] for r in results] == list(range(n))
    assert [r["expert_group"] for r in results] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [r["replica_group"] for r in results] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    for r in results:
        assert r["gathered"] == [{"rank": i} for i in range(n)]
        assert r["broadcast"] == "from 0"
        assert r["mean"] == pytest.approx((n - 1) / 2)
        assert r["sum"] == [n * (n - 1) // 2, n]
        # Per rank: f = (1, 0, 0, 0) with P = f nearly, so N f·P is about N; globally uniform: 1
        assert r["local_balance"] > 0.9 * n
        assert r["global_balance"] == [pytest.approx(1.0, abs=0.1)]


# ## A rank that freezes

# The process-group timeout of the test: short, but long enough for two loaded cores to keep up
FROZEN_TIMEOUT = 10


def _frozen_rank(rank: int, world_size: int, port: int, results) -> None:
    """Expert all-to-alls in a loop; rank 1 stops itself (SIGSTOP) at the third step."""
    started = time.monotonic()
    try:
        _environ(rank, world_size, port)
        PG.init_from_env(backend="gloo", timeout=timedelta(seconds=FROZEN_TIMEOUT))
        layer = EP.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=world_size)
        for step in range(100):
            if rank == 1 and step == 3:
                os.kill(os.getpid(), signal.SIGSTOP)
            started = time.monotonic()
            out, _ = layer(torch.randn(4, D_MODEL))
            out.sum().backward()
        results.put((rank, "finished", 0.0))
    except WD.RankStopped as e:
        results.put((rank, str(e), time.monotonic() - started))
    except BaseException:
        results.put((rank, traceback.format_exc(), -1.0))
    # Stay (rank 0 holds the store the others read the heartbeats from) until the test kills us
    time.sleep(300)


@pytest.mark.slow
def test_a_frozen_rank_ends_the_job_with_a_clear_message():
    world_size = 3
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_frozen_rank, args=(r, world_size, port, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        # The two live ranks report; the frozen one never does
        reports = [results.get(timeout=120) for _ in range(world_size - 1)]
    finally:
        for p in procs:
            p.kill()
            p.join(timeout=10)
    for rank, message, waited in sorted(reports):
        assert rank in (0, 2)
        assert message.startswith(f"rank {rank}: the forward pass's expert all-to-all (expert group of ranks "
                                  f"[0, 1, 2]) failed: rank(s) 1 stopped answering"), message
        # The timeout, then the heartbeats read a few beats apart
        assert FROZEN_TIMEOUT <= waited < FROZEN_TIMEOUT + 4 * WD.BEAT + 5, waited


# ## In a single process (no process group)

@pytest.fixture
def single_process(monkeypatch):
    """The test process itself: no process group, no torchrun variables."""
    if dist.is_initialized():
        pytest.skip("a process group is initialised in the test process")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_no_process_group_is_a_clear_error(single_process):
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        EP.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=4)
    with pytest.raises(RuntimeError, match="init_from_env"):
        EP.expert_parallel_groups(2)


def test_single_process_helpers_are_no_ops(single_process):
    launch = PG.init_from_env()
    assert (launch.rank, launch.world_size, launch.distributed) == (0, 1, False)
    assert not dist.is_initialized()
    assert PG.is_main_process()
    batch = torch.randn(4, 6)
    assert PG.shard_batch(batch) is batch
    assert PG.gather_objects(3) == [3] and PG.broadcast_object("x") == "x"
    torch.manual_seed(0)
    model = build_transformer(n_layers=1, d_model=D_MODEL, n_heads=2, d_ff=16, n_experts=4, expert_dropout=0.0)
    assert GS.data_parallel(model) is model
    out, routing = model(torch.randn(3, 2, D_MODEL))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    GS.sync_expert_gradients(model)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    # Clipping equals torch's on an ordinary model
    norm = GS.clip_grad_norm_(model, 0.1)
    torch.testing.assert_close(norm.float(), torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    # The global balance of one process is its own
    assert EP.global_load_balance(routing.layers).tolist() == pytest.approx(
        [float(r.load_balancing_loss.detach()) for r in routing.layers])


def test_single_process_checkpoint_round_trip_and_crash(single_process, tmp_path, monkeypatch):
    """One process: bit-identical round trip; a crash between writing and renaming leaves the previous one."""
    model = _build(None, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _loss_of(model, torch.randn(5, 2, D_MODEL, dtype=torch.float64)).backward()
    opt.step()
    SC.save_sharded(tmp_path / "step_1", model, opt, extra={"step": 1})
    with pytest.raises(FileExistsError, match="step_1"):
        SC.save_sharded(tmp_path / "step_1", model, opt)
    # Killed just before the rename
    monkeypatch.setattr(SC.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        SC.save_sharded(tmp_path / "step_2", model, opt)
    monkeypatch.undo()
    assert not (tmp_path / "step_2").exists() and (tmp_path / "step_2.partial" / ".metadata").is_file()
    with pytest.raises(FileNotFoundError, match="not a complete sharded checkpoint"):
        SC.load_sharded(tmp_path / "step_2.partial", model)
    fresh = _build(None, 3)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    assert SC.load_sharded(tmp_path / "step_1", fresh, fresh_opt) == ({"step": 1}, None)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    for s, t in zip(opt.state_dict()["state"].values(), fresh_opt.state_dict()["state"].values()):
        assert all(torch.equal(s[k], t[k]) for k in s)
    assert SC.read_extra(tmp_path / "step_1") == ({"step": 1}, 1)


def test_documented_arguments_exist():
    # The house rule of tests/test_model.py: every `* `name`:` bullet of __init__ names an argument, and all are named
    documented = set()
    for line in (inspect.getdoc(EP.ExpertParallelSwitchFeedForward.__init__) or "").splitlines():
        m = re.match(r"\* ((?:`\w+`(?:, )?)+)", line.strip())
        if m:
            documented.update(re.findall(r"`(\w+)`", m.group(1)))
    params = set(inspect.signature(EP.ExpertParallelSwitchFeedForward.__init__).parameters) - {"self"}
    assert documented == params
    # It takes every option of the single-process layer, and the groups
    assert params == set(inspect.signature(SwitchFeedForward.__init__).parameters) - {"self"} | {"groups"}
