"""The benchmark scripts run end to end on a tiny size and write their results (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from shared_text import SHAKESPEARE, needs_text

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def run(script: str, *args: str) -> None:
    done = subprocess.run([sys.executable, str(EXPERIMENTS / script), *args], capture_output=True, text=True,
                          timeout=300)
    # On failure, say what the script said
    assert done.returncode == 0, (f"{script} exited with {done.returncode}:\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def installed_anchors() -> list[str]:
    """The anchors whose packages are installed (the `bench` extra): `seed` (labml-nn), `hf` (transformers)."""
    import importlib.util
    return [name for name, module in (("seed", "labml_nn"), ("hf", "transformers"))
            if importlib.util.find_spec(module) is not None]


def test_bench_layer_writes_every_candidate_and_ratio(tmp_path):
    # The anchors come from the `bench` extra; without it, ours against dense alone
    anchors = installed_anchors()
    out = tmp_path / "layer.json"
    run("bench_layer.py", "--sizes", "256,12,20,4", "--rounds", "2", "--warmup", "1", "--out", str(out),
        "--candidates", "ours", "dense", *anchors)
    row = json.loads(out.read_text())["results"][0]
    assert set(row["candidates"]) == {"ours", "dense", *anchors}
    dense = row["candidates"]["dense"]
    assert dense["ratio_to_dense"] == 1.0 and dense["saved_ratio_to_dense"] == 1.0
    assert all(c["ms"] > 0 and c["ratio_min"] <= c["ratio_to_dense"] <= c["ratio_max"]
               for c in row["candidates"].values())
    for anchor in anchors:
        assert row["candidates"]["ours"][f"ratio_to_{anchor}"] > 0
    assert "| 256, 12, 20, 4 |" in out.with_suffix(".md").read_text()


def test_bench_floor_writes_both_ways_and_the_lower(tmp_path):
    out = tmp_path / "floor.json"
    run("bench_floor.py", "--sizes", "256,12,20,4", "512,8,16,8", "--rounds", "3", "--warmup", "1", "--out", str(out))
    rows = json.loads(out.read_text())["results"]
    assert [(r["tokens"], r["n_experts"]) for r in rows] == [(256, 4), (512, 8)]
    for row in rows:
        assert all(row[k]["ratio_min"] <= row[k]["ratio_to_dense"] <= row[k]["ratio_max"] for k in ("bmm", "loop"))
        # The floor is, round by round, the faster of the two
        assert row["floor"]["ratio_max"] <= max(row["bmm"]["ratio_max"], row["loop"]["ratio_max"])
        assert row["floor"]["ratio_min"] == min(row["bmm"]["ratio_min"], row["loop"]["ratio_min"])
    assert "| 512, 8, 16, 8 |" in out.with_suffix(".md").read_text()


def test_bench_floor_sets_the_floor_against_the_anchors(tmp_path):
    anchors = installed_anchors()
    if not anchors:
        pytest.skip("the anchors come from the `bench` extra")
    out = tmp_path / "floor.json"
    run("bench_floor.py", "--sizes", "256,12,20,4", "--rounds", "3", "--warmup", "1", "--out", str(out),
        "--anchors", *anchors)
    row = json.loads(out.read_text())["results"][0]
    for anchor in anchors:
        assert row[anchor]["ratio_min"] <= row[anchor]["ratio_to_dense"] <= row[anchor]["ratio_max"]
        # Round by round floor/anchor = (floor/dense) / (anchor/dense): never below the floor's
        # smallest ratio to dense over the anchor's largest
        floor_to = row[f"floor_to_{anchor}"]
        assert floor_to["ratio_min"] <= floor_to["ratio"] <= floor_to["ratio_max"]
        assert floor_to["ratio_min"] >= row["floor"]["ratio_min"] / row[anchor]["ratio_max"] * (1 - 1e-9)
    table = out.with_suffix(".md").read_text()
    assert all(f"| floor / {a}" in table for a in anchors) and "| 256, 12, 20, 4 |" in table


def test_bench_train_writes_the_ratio(tmp_path):
    out = tmp_path / "train.json"
    run("bench_train.py", "--repeats", "2", "--warmup", "0", "--layers", "--experts", "1", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["switch_over_dense_tokens_per_s"] == result["results"]["switch"]["of_dense"] > 0
    # The preset's model, its one-expert twin, and dense, each as a share of dense's tokens/s
    assert {k: r["n_experts"] for k, r in result["results"].items()} == {"switch": 4, "dense": None, "switch-1": 1}
    assert all(r["min"] <= r["of_dense"] <= r["max"] for r in result["results"].values())
    assert result["results"]["dense"]["of_dense"] == 1.0
    table = out.with_suffix(".md").read_text()
    assert "Switch / dense tokens/s" in table and "| switch-1 |" in table
    # Each of the six layers alone, with the routing its model gave it (every token counted once)
    layers = json.loads((tmp_path / "train_layers.json").read_text())["results"]
    assert [r["layer"] for r in layers] == list(range(6))
    for r in layers:
        assert sum(r["tokens_per_expert"]) == 64 * 32 and len(r["tokens_per_expert"]) == 4
        assert r["switch_ms"] > 0 and r["dense_ms"] > 0 and r["min"] <= r["ratio"] <= r["max"]
    assert "| 5 |" in (tmp_path / "train_layers.md").read_text()


def test_bench_train_across_processes_gives_each_median(tmp_path):
    out = tmp_path / "train.json"
    run("bench_train.py", "--repeats", "2", "--warmup", "0", "--processes", "2", "--experts", "1", "--out", str(out))
    result = json.loads(out.read_text())
    # Two processes, each with its own paired ratios; the headline is the median of their medians
    runs = result["processes"]
    assert len(runs) == 2 and result["meta"]["processes"] == 2
    ratios = sorted(r["results"]["switch"]["of_dense"] for r in runs)
    assert result["switch_over_dense_tokens_per_s"] == pytest.approx(sum(ratios) / 2)
    assert (result["min"], result["max"]) == (ratios[0], ratios[1])
    assert all(set(r["results"]) == {"switch", "dense", "switch-1"} for r in runs)
    table = out.with_suffix(".md").read_text()
    assert "in 2 fresh processes" in table and "| switch-1 |" in table
    # The switch row gives each process's ratio, in the order they ran
    each = ", ".join(format(r["results"]["switch"]["of_dense"], ".2f") for r in runs)
    assert any(line.startswith("| switch |") and f"| {each} |" in line for line in table.splitlines())


@pytest.mark.slow
def test_bench_parallel_measures_every_layout(tmp_path):
    out = tmp_path / "parallel.json"
    run("bench_parallel.py", "--layouts", "1:1,2:2", "--steps", "2", "--warmup", "0", "--batch", "4",
        "--seq-len", "8", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [(r["world_size"], r["ep"]) for r in rows] == [(1, 1), (2, 2)]
    # Half the experts on each of two processes
    assert rows[1]["expert_mb"] == rows[0]["expert_mb"] / 2 and rows[1]["expert_mb_ratio"] == 0.5
    assert all(r["step_ms"] > 0 for r in rows)


@pytest.mark.slow
@needs_text
def test_switch_vs_dense_keeps_finished_runs_and_reports_paired_intervals(tmp_path):
    args = ["--steps", "4", "--eval-interval", "2", "--seeds", "0,1", "--experts", "2", "--out", str(tmp_path),
            "--name", "tiny", "--data", str(SHAKESPEARE), "--plots", "experts_sweep"]
    run("switch_vs_dense.py", *args)
    results = json.loads((tmp_path / "tiny.json").read_text())
    assert len(results["runs"]) == 4 and len(list((tmp_path / "tiny_runs").glob("*.json"))) == 4
    switch = results["summary"]["switch-2"]
    diffs = switch["minus_dense_per_seed"]
    # The paired interval is Student's t (1 degree of freedom) over the two per-seed differences
    assert switch["minus_dense_ci95"] == pytest.approx(12.706 * abs(diffs[0] - diffs[1]) / 2)
    assert "| switch-2 | 2 |" in (tmp_path / "tiny.md").read_text()
    # Started again: the finished runs are read back, not trained again, and give the same summary
    (tmp_path / "tiny.json").unlink()
    (tmp_path / "tiny_runs" / "dense_seed1.json").unlink()
    run("switch_vs_dense.py", *args)
    again = json.loads((tmp_path / "tiny.json").read_text())
    assert again["summary"]["switch-2"] == switch


def test_sweep_plots_label_readable_ratios(tmp_path):
    sys.path.insert(0, str(EXPERIMENTS))
    from bench_layer import plot, ratio_ticks
    # A narrow axis gets quarters; a wide one (a slow anchor's spread) powers of two and the 1.5 target
    assert ratio_ticks(0.8, 1.6) == [1, 1.25, 1.5]
    assert ratio_ticks(0.4, 22.0) == [0.5, 1, 1.5, 2, 4, 8, 16]
    rows = [{"n_experts": n, "candidates": {name: {"ratio_to_dense": r * n ** 0.2, "ratio_min": r, "ratio_max": r * n}
                                            for name, r in (("ours", 1.0), ("seed", 1.2))}} for n in (1, 4, 16)]
    pytest.importorskip("matplotlib")
    plot(rows, "n_experts", tmp_path / "sweep.png", "some CPU")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
