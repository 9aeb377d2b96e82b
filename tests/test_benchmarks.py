"""The benchmark scripts run end to end on a tiny size and write their results (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(EXPERIMENTS / script), *args], check=True, capture_output=True, text=True,
                   timeout=300)


def test_bench_layer_writes_every_candidate_and_ratio(tmp_path):
    out = tmp_path / "layer.json"
    run("bench_layer.py", "--sizes", "256,16,32,4", "--repeats", "2", "--warmup", "1", "--out", str(out))
    row = json.loads(out.read_text())["results"][0]
    for mode in ("forward", "forward_backward"):
        assert set(row[mode]) == {"switch", "dense", "loop"}
        assert row[mode]["dense"]["ratio_to_dense"] == 1.0
        assert all(r["ms"] > 0 for r in row[mode].values())
    assert set(row["peak_memory_bytes"]) == {"switch", "dense", "loop"}
    assert "| 256, 16, 32, 4 |" in out.with_suffix(".md").read_text()


def test_bench_train_writes_the_ratio(tmp_path):
    out = tmp_path / "train.json"
    run("bench_train.py", "--repeats", "1", "--warmup", "0", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["switch_over_dense_tokens_per_s"] > 0
    assert "Switch / dense tokens/s" in out.with_suffix(".md").read_text()


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
