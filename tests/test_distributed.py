"""
Expert parallelism on CPU: gloo process groups of 2 and 4 spawned processes on loopback.

A small pool of worker processes (one per rank) is started once per world size; each
test sends it a function to run on every rank and collects what each rank returns. The
checks run inside the workers against the single-process layer with the same weights.
"""

import copy
import inspect
import os
import queue
import re
import socket
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labml_nn_switch import SwitchFeedForward, build_transformer
from labml_nn_switch import distributed as D
from test_switch import make_layer

# How long one task may take on a rank before the test fails (a bug must not hang the suite)
TASK_TIMEOUT = 60


# ## The pool of ranks

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, tasks, results) -> None:
    # What torchrun would set
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # Two shared cores: one thread per rank
    torch.set_num_threads(1)
    try:
        launch = D.init_from_env(backend="gloo", timeout=timedelta(seconds=TASK_TIMEOUT))
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
    D.shutdown()


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
        self.launch = self._collect("init_from_env")

    def _collect(self, what: str) -> list:
        out, errors = [None] * self.size, []
        for _ in range(self.size):
            try:
                rank, ok, value = self.results.get(timeout=TASK_TIMEOUT + 30)
            except queue.Empty:
                self.close()
                raise AssertionError(f"{what}: a rank did not answer within {TASK_TIMEOUT + 30} s") from None
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
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self.procs = []


@pytest.fixture(scope="module", params=[2, 4], ids=lambda n: f"world{n}")
def world(request):
    w = World(request.param)
    yield w
    w.close()


# ## Building blocks run on every rank

D_MODEL = 8


def _make_switch(*, n_experts: int, dtype: torch.dtype, seed: int = 0, **options) -> SwitchFeedForward:
    """The single-process layer of test_switch.py, the same on every rank: biases, a sharp router (uneven loads)."""
    return make_layer(n_experts=n_experts, dtype=dtype, seed=seed, d_model=D_MODEL, **options)


def _shards(global_x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Rank `r`'s part of the batch: `sizes[r]` sequences along dim 1."""
    return list(global_x.split(sizes, dim=1))


def _close(a, b, *, dtype, what: str):
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def _layer_matches_single(case: dict) -> dict:
    """
    The expert-parallel layer on this rank's shard against the single-process layer on
    every shard with the same weights: outputs, routing results, gradients of inputs,
    router and experts, and the gradients after `sync_gradients`.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dtype = case["dtype"]
    n_experts = case.get("experts_per_rank", 1) * world_size
    options = case.get("options", {})
    ff = _make_switch(n_experts=n_experts, dtype=dtype, **options)
    ep = D.ExpertParallelSwitchFeedForward.from_switch(ff)
    assert ep.experts.w1.shape[0] == n_experts // world_size
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
    xs, gs = _shards(x_global, sizes), _shards(g_global, sizes)

    def objective(out, result, g):
        return (out * g).sum() + 0.3 * result.load_balancing_loss + 0.1 * result.z_loss

    # Count the calls of the grouped kernel
    grouped_calls = []
    forward_grouped = ep.experts.forward_grouped
    ep.experts.forward_grouped = lambda *a, **k: grouped_calls.append(1) or forward_grouped(*a, **k)
    # Expert-parallel, this rank's shard
    x = xs[rank].clone().requires_grad_()
    out, result = ep(x)
    objective(out, result, gs[rank]).backward()
    # Single process, every shard: the sum of the ranks' objectives
    refs = [xr.clone().requires_grad_() for xr in xs]
    ref_out = [ff(xr) for xr in refs]
    sum(objective(o, res, g) for (o, res), g in zip(ref_out, gs)).backward()
    want_out, want = ref_out[rank]

    # The output and the routing result are those of the single-process layer on this shard
    _close(out, want_out, dtype=dtype, what="output")
    _close(result.load_balancing_loss, want.load_balancing_loss, dtype=dtype, what="load-balancing loss")
    _close(result.z_loss, want.z_loss, dtype=dtype, what="z-loss")
    assert torch.equal(result.tokens_per_expert, want.tokens_per_expert)
    assert int(result.n_dropped) == int(want.n_dropped) and result.capacity == want.capacity
    # Gradients: the input, this rank's experts, and the router summed over ranks
    _close(x.grad, refs[rank].grad, dtype=dtype, what="input gradient")
    first, last = ep.expert_slice
    for name, p in ep.experts.named_parameters():
        _close(p.grad, getattr(ff.experts, name).grad[first:last], dtype=dtype, what=f"gradient of expert {name}")
    router_sum = ep.router.weight.grad.clone()
    dist.all_reduce(router_sum)
    _close(router_sum, ff.router.weight.grad, dtype=dtype, what="router gradient, summed")
    # After `sync_gradients`: the gradient of the mean of the ranks' objectives
    D.sync_gradients(ep)
    _close(ep.router.weight.grad, ff.router.weight.grad / world_size, dtype=dtype, what="synced router gradient")
    _close(ep.experts.w1.grad, ff.experts.w1.grad[first:last] / world_size, dtype=dtype, what="synced expert gradient")

    # Without dropping, also the single-process layer on the whole global batch
    dropped = torch.tensor(int(result.n_dropped))
    dist.all_reduce(dropped)
    if int(dropped) == 0:
        whole, _ = ff(x_global)
        _close(out, _shards(whole, sizes)[rank], dtype=dtype, what="output against the global batch")
    return {"dropped": int(dropped), "grouped": bool(grouped_calls)}


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


@pytest.mark.parametrize("name", list(CASES))
def test_layer_matches_single_process(world, name):
    results = world.run(_layer_matches_single, CASES[name])
    dropped = results[0]["dropped"]
    if name in DROPS:
        assert dropped > 0, "the case is meant to drop tokens"
    if name in NO_DROPS:
        assert dropped == 0
    # float32 runs the local experts with grouped_mm (where torch has it), float64 never
    grouped = [r["grouped"] for r in results]
    if CASES[name]["dtype"] == torch.float64:
        assert not any(grouped)
    elif hasattr(torch.nn.functional, "grouped_mm"):
        assert any(grouped)


def _model_step_matches_single(seed: int) -> dict:
    """
    Two optimiser steps of a two-layer Switch Transformer: expert-parallel on shards with
    `sync_gradients` and `clip_grad_norm_`, against the single-process model on the mean of
    the shard losses with torch's clipping. Then a checkpoint: gathered, restored into a
    fresh model and optimiser, and a third step from each.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    dtype = torch.float64
    torch.manual_seed(seed)
    ref = build_transformer(n_layers=2, d_model=D_MODEL, n_heads=2, d_ff=16, n_experts=2 * world_size, dropout=0.0,
                            expert_dropout=0.0, capacity_factor=1.0).to(dtype)
    with torch.no_grad():
        for layer in ref.layers:
            layer.feed_forward.router.weight.mul_(10)
    ep = D.expert_parallel(copy.deepcopy(ref))
    assert len(D.expert_parallel_layers(ep)) == 2
    assert all(isinstance(layer.feed_forward, D.ExpertParallelSwitchFeedForward) for layer in ep.layers)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    ep_opt = torch.optim.Adam(ep.parameters(), lr=1e-2)

    def loss_of(model, x):
        out, routing = model(x)
        return out.square().mean() + 0.01 * routing.load_balancing_loss

    def step(i):
        torch.manual_seed(100 + i)
        xs = list(torch.randn(5, 2 * world_size, D_MODEL, dtype=dtype).chunk(world_size, dim=1))
        # Single process: the mean of the shard losses
        ref_opt.zero_grad()
        (sum(loss_of(ref, x) for x in xs) / world_size).backward()
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        ref_opt.step()
        # Expert-parallel: this rank's shard
        ep_opt.zero_grad()
        loss_of(ep, D.shard_batch(torch.cat(xs, dim=1))).backward()
        D.sync_gradients(ep)
        ep_norm = D.clip_grad_norm_(ep, 0.05)
        ep_opt.step()
        _close(ep_norm, ref_norm.to(ep_norm.dtype), dtype=dtype, what="gradient norm")
        return float(ref_norm)

    norms = [step(0), step(1)]
    # The same parameters and optimiser state as the single-process run, in its layout
    full = D.full_state_dict(ep)
    assert full.keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        _close(full[k], v, dtype=dtype, what=f"parameter {k} after two steps")
    full_opt = D.full_optimizer_state_dict(ep, ep_opt)
    ref_opt_state = ref_opt.state_dict()["state"]
    for i, s in ref_opt_state.items():
        for k, v in s.items():
            _close(full_opt["state"][i][k], v, dtype=dtype, what=f"optimiser state {i}.{k}")

    # A checkpoint through a file, restored into a fresh model (other initial weights)
    rng = D.gather_objects(torch.get_rng_state())
    assert len(rng) == world_size
    path = D.broadcast_object(f"/tmp/ep-test-{os.getpid()}.pt" if D.is_main_process() else None)
    if D.is_main_process():
        torch.save({"model": full, "optimizer": full_opt}, path)
    dist.barrier()
    state = torch.load(path, weights_only=True)
    dist.barrier()
    if D.is_main_process():
        os.unlink(path)
    torch.manual_seed(seed + 7)
    fresh = D.expert_parallel(build_transformer(n_layers=2, d_model=D_MODEL, n_heads=2, d_ff=16,
                                                n_experts=2 * world_size, dropout=0.0, expert_dropout=0.0,
                                                capacity_factor=1.0).to(dtype))
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    D.load_full_state_dict(fresh, state["model"])
    D.load_full_optimizer_state_dict(fresh, fresh_opt, state["optimizer"])
    for (k, a), b in zip(ep.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    # A third step from the original and from the restored: identical
    torch.manual_seed(200)
    x = D.shard_batch(torch.randn(5, 2 * world_size, D_MODEL, dtype=dtype))
    for model, opt in ((ep, ep_opt), (fresh, fresh_opt)):
        opt.zero_grad()
        loss_of(model, x).backward()
        D.sync_gradients(model)
        D.clip_grad_norm_(model, 0.05)
        opt.step()
    for (k, a), b in zip(ep.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after resuming"
    # The gathered checkpoint also loads into an ordinary single-process model, which agrees
    single = copy.deepcopy(ref)
    single.load_state_dict(D.full_state_dict(ep))
    ep.eval(), single.eval()
    with torch.no_grad():
        _close(ep(x)[0], single(x)[0], dtype=dtype, what="single-process model from the checkpoint")
    return {"norms": norms}


def test_training_steps_and_checkpoint_match_single_process(world):
    results = world.run(_model_step_matches_single, 0)
    # Clipping was active (norms above 0.05), and every rank saw the same norms
    assert all(r == results[0] for r in results)
    assert min(results[0]["norms"]) > 0.05


def _errors() -> dict:
    """The errors a misconfiguration raises, as messages."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    messages = {}
    # n_experts not divisible by the world size
    try:
        D.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=world_size + 1)
    except ValueError as e:
        messages["divisible"] = str(e)
    # Ranks disagreeing on the configuration
    try:
        D.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=world_size,
                                          capacity_factor=1.0 + rank)
    except ValueError as e:
        messages["disagree"] = str(e)
    # Ranks holding different models
    torch.manual_seed(0)
    model = build_transformer(n_layers=1 + (rank == 1), d_model=D_MODEL, n_heads=2, d_ff=16, n_experts=world_size)
    try:
        D.expert_parallel(model)
    except ValueError as e:
        messages["layers"] = str(e)
    # A batch that does not split evenly
    try:
        D.shard_batch(torch.zeros(3, world_size + 1))
    except ValueError as e:
        messages["shard"] = str(e)
    # The process group still works after all that
    t = torch.ones(1)
    dist.all_reduce(t)
    messages["alive"] = int(t)
    return messages


def test_clear_errors(world):
    n = world.size
    for messages in world.run(_errors):
        assert f"n_experts={n + 1} is not divisible by the world size {n}" in messages["divisible"]
        assert "capacity_factor" in messages["disagree"] and "rank 1: 2.0" in messages["disagree"]
        assert "layers.1.feed_forward" in messages["layers"] and "<missing>" in messages["layers"]
        assert f"a batch of {n + 1} along dim=1" in messages["shard"]
        assert messages["alive"] == n


def _helpers() -> dict:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    out = {"main": D.is_main_process(), "launch": D.init_from_env().rank}
    # shard_batch: block `rank` of the batch dimension
    batch = torch.arange(4 * 2 * world_size).view(4, 2 * world_size)
    assert torch.equal(D.shard_batch(batch), batch[:, 2 * rank:2 * rank + 2])
    assert torch.equal(D.shard_batch(batch.t(), dim=0), batch.t()[2 * rank:2 * rank + 2])
    out["gathered"] = D.gather_objects({"rank": rank})
    out["broadcast"] = D.broadcast_object(f"from {rank}")
    out["mean"] = float(D.mean_over_ranks(torch.tensor(float(rank))))
    out["sum"] = D.sum_over_ranks(torch.tensor([rank, 1])).tolist()
    # AllToAll: rank r sends (s + r) % 3 rows to rank s, each row naming (sender, receiver, index)
    send = [(s + rank) % 3 for s in range(world_size)]
    recv = [(rank + s) % 3 for s in range(world_size)]
    rows = torch.tensor([[rank, s, i] for s in range(world_size) for i in range(send[s])], dtype=torch.float64)
    x = rows.clone().requires_grad_()
    y = D.all_to_all(x, send_splits=send, recv_splits=recv)
    expected = torch.tensor([[s, rank, i] for s in range(world_size) for i in range(recv[s])], dtype=torch.float64)
    assert torch.equal(y.detach(), expected.view(-1, 3))
    # The gradient goes back to the sender: d(sum y^2)/dx = 2x
    y.square().sum().backward()
    assert torch.equal(x.grad, 2 * rows)
    return out


def test_helpers(world):
    n = world.size
    # What init_from_env found in each worker
    assert world.launch == [(r, n, r, "cpu") for r in range(n)]
    results = world.run(_helpers)
    assert [r["main"] for r in results] == [True] + [False] * (n - 1)
    assert [r["launch"] for r in results] == list(range(n))
    for r in results:
        assert r["gathered"] == [{"rank": i} for i in range(n)]
        assert r["broadcast"] == "from 0"
        assert r["mean"] == pytest.approx((n - 1) / 2)
        assert r["sum"] == [n * (n - 1) // 2, n]


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
        D.ExpertParallelSwitchFeedForward(d_model=D_MODEL, d_ff=16, n_experts=4)
    with pytest.raises(RuntimeError, match="init_from_env"):
        D.expert_parallel(build_transformer(n_layers=1, d_model=D_MODEL, n_heads=2, d_ff=16, n_experts=4))


def test_single_process_helpers_are_no_ops(single_process):
    launch = D.init_from_env()
    assert (launch.rank, launch.world_size, launch.distributed) == (0, 1, False)
    assert not dist.is_initialized()
    assert D.is_main_process()
    batch = torch.randn(4, 6)
    assert D.shard_batch(batch) is batch
    assert D.gather_objects(3) == [3] and D.broadcast_object("x") == "x"
    torch.manual_seed(0)
    model = build_transformer(n_layers=1, d_model=D_MODEL, n_heads=2, d_ff=16, n_experts=4, expert_dropout=0.0)
    out, routing = model(torch.randn(3, 2, D_MODEL))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    D.sync_gradients(model)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    # Clipping equals torch's on an ordinary model
    norm = D.clip_grad_norm_(model, 0.1)
    torch.testing.assert_close(norm.float(), torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    torch.testing.assert_close(D.full_state_dict(model), model.state_dict())


def test_documented_arguments_exist():
    # The house rule of tests/test_model.py: every `* `name`:` bullet of __init__ names an argument, and all are named
    documented = set()
    for line in (inspect.getdoc(D.ExpertParallelSwitchFeedForward.__init__) or "").splitlines():
        m = re.match(r"\* ((?:`\w+`(?:, )?)+)", line.strip())
        if m:
            documented.update(re.findall(r"`(\w+)`", m.group(1)))
    params = set(inspect.signature(D.ExpertParallelSwitchFeedForward.__init__).parameters) - {"self"}
    assert documented == params
    # It takes every option of the single-process layer, and a process group
    assert params == set(inspect.signature(SwitchFeedForward.__init__).parameters) - {"self"} | {"group"}
