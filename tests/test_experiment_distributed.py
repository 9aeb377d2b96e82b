"""
The experiment on several processes: torchrun (as `python -m torch.distributed.run`) starts
2 CPU processes that talk over gloo on loopback, running the real command line in a
temporary folder. One 2-process run of 10 steps is shared by the tests below.
"""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labml_nn_switch import cli
from labml_nn_switch import experiment as ex
from labml_nn_switch.checkpoint import find_checkpoint, load_checkpoint
from labml_nn_switch.configs import ConfigError, explicit_settings
from labml_nn_switch.sharded_checkpoint import load_sharded
from labml_nn_switch.switch import SwitchConfig
from shared_text import SHAKESPEARE, needs_text

REPO = Path(__file__).resolve().parents[1]

# A model small enough for a few seconds of CPU; dropout and jitter, so that resuming needs every rank's RNG
TINY = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, n_experts=4, seq_len=32, batch_size=8,
            optimizer='adam', learning_rate=3e-3, warmup=5, log_interval=5, eval_interval=5, eval_batches=2,
            sample_length=20, checkpoint_interval=10, dropout=0.1, expert_dropout=0.1, jitter_eps=0.05,
            data=str(SHAKESPEARE))
SETTINGS = [f'{k}={v}' for k, v in TINY.items()]

pytestmark = needs_text


def torchrun(workdir: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m labml_nn_switch.experiment train ARGS` in `workdir`."""
    # One thread per process: two cores are shared with other work
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(key, None)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', str(nproc),
           '-m', 'labml_nn_switch.experiment', 'train', *args]
    # A bug must fail the test, not hang the suite
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)


def runs(workdir: Path) -> list[Path]:
    """The run folders labml made, oldest first."""
    folder = workdir / 'logs' / cli.EXPERIMENT_NAME
    return sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []


@pytest.fixture(scope='module')
def first(tmp_path_factory):
    """10 steps on 2 processes: the folder, the run, its checkpoint and what the command printed."""
    workdir = tmp_path_factory.mktemp('two_processes')
    proc = torchrun(workdir, *SETTINGS, 'steps=10')
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = runs(workdir)
    return workdir, run, load_checkpoint(find_checkpoint(run)), proc


def full_state(state: dict) -> tuple[dict, dict]:
    """A sharded checkpoint read into an ordinary single-process model and Adam: their state dicts."""
    model = ex.build_model(state['settings'], switch=SwitchConfig(**state['switch']), n_vocab=len(state['itos']))
    optim = torch.optim.Adam(model.parameters())
    load_sharded(state['sharded'], model, optim)
    return model.state_dict(), optim.state_dict()


@pytest.mark.slow
def test_two_processes_train_and_write_one_sharded_checkpoint(first):
    workdir, run, state, proc = first
    # One run folder, one checkpoint in it: a folder with a file per process and the metadata; no download
    (checkpoint,) = (run / 'checkpoints').iterdir()
    assert checkpoint.name == 'step_00000010.dcp' and state['sharded'] == checkpoint
    assert sorted(p.name for p in checkpoint.iterdir()) == ['.metadata', '__0_0.distcp', '__1_0.distcp']
    assert (run / 'log.jsonl').is_file() and not (workdir / 'data').exists()
    # Rank 0 alone printed the sample
    assert proc.stdout.count('--- sample ---') == 1
    assert state['step'] == 10 and state['world_size'] == 2
    # Read in one process: all 4 experts of each layer, and their Adam moments
    model, optim = full_state(state)
    assert model['transformer.layers.0.feed_forward.experts.w1'].shape == (4, 32, 64)
    assert (4, 32, 64) in [tuple(s['exp_avg'].shape) for s in optim['state'].values()]
    # Learning: evaluations every 5 steps, the validation loss falls from about log(65)
    history = state['history']
    assert [h['step'] for h in history] == [5, 10]
    assert history[-1]['loss.valid'] < history[0]['loss.valid'] < math.log(65)
    # Routing over the global batch: rows of fractions summing to one
    assert all(abs(sum(row) - 1) < 1e-5 and len(row) == 4 for row in history[-1]['route_fraction'])


@pytest.mark.slow
def test_resume_on_two_processes_continues_exactly(first):
    """10 steps, resume to 20 on 2 processes == 20 steps straight on 2 processes, bit for bit."""
    workdir, run, _, _ = first
    resumed = torchrun(workdir, 'steps=20', '--resume', str(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = torchrun(workdir, *SETTINGS, 'steps=20')
    assert straight.returncode == 0, straight.stderr[-3000:]
    # The first run, resumed in place (the same labml run), and the straight one
    first_run, straight_run = runs(workdir)
    assert first_run == run
    a, b = (load_checkpoint(find_checkpoint(r)) for r in (first_run, straight_run))
    assert a['step'] == b['step'] == 20
    (model_a, optim_a), (model_b, optim_b) = full_state(a), full_state(b)
    for name, value in model_b.items():
        assert torch.equal(value, model_a[name]), name
    for s, t in zip(optim_a['state'].values(), optim_b['state'].values()):
        assert torch.equal(s['exp_avg'], t['exp_avg']) and torch.equal(s['exp_avg_sq'], t['exp_avg_sq'])
    assert a['sampler'] == b['sampler'] and a['history'] == b['history']
    # The loss kept falling after the resume
    assert [h['step'] for h in a['history']] == [5, 10, 15, 20]
    assert a['history'][-1]['loss.valid'] < a['history'][1]['loss.valid']


@pytest.mark.slow
def test_two_process_checkpoint_samples_in_one_process(first, monkeypatch):
    workdir, run, _, _ = first
    monkeypatch.chdir(workdir)
    # `sample` rebuilds an ordinary model from the checkpoint and reads every slice
    text = cli.run_sample(checkpoint=str(run), prompt='It is', length=15, temperature=1.0, seed=3)
    assert text.startswith('It is') and len(text) == len('It is') + 15


@pytest.mark.slow
def test_two_process_checkpoint_resumes_in_one_process(first, tmp_path, monkeypatch, capsys):
    workdir, run, state, _ = first
    # A copy of the checkpoint, outside the run: a new run continues from it
    copy = tmp_path / 'step_00000010.dcp'
    shutil.copytree(state['sharded'], copy)
    monkeypatch.chdir(workdir)
    assert cli.main(['train', 'steps=15', '--resume', str(copy)]) == 0, capsys.readouterr().err[-3000:]
    resumed = load_checkpoint(find_checkpoint(runs(workdir)[-1]))
    # One process writes a single file, with the weights it continued from and trained on
    assert resumed['step'] == 15 and resumed['world_size'] == 1 and 'sharded' not in resumed
    assert [h['step'] for h in resumed['history']] == [5, 10, 15]
    assert resumed['history'][:2] == state['history']


def test_expert_parallel_degree_is_checked():
    with pytest.raises(ConfigError, match=r'^ep=3 must divide the number of processes \(4\); 0 takes them all$'):
        explicit_settings({'ep': 3}, world_size=4)
    with pytest.raises(ConfigError, match=r'^n_experts=4 is not divisible by the expert-parallel degree \(8\)'):
        explicit_settings({'ep': 8}, world_size=8)
    with pytest.raises(ConfigError, match=r'^dist_timeout=0.0 must be positive'):
        explicit_settings({'dist_timeout': 0}, world_size=2)
    # ep=2 on 4 processes: 4 experts, 2 per process, 2 copies of each
    assert explicit_settings({'ep': 2}, world_size=4) == {'ep': 2}


def test_n_experts_not_divisible_by_the_processes_is_one_clear_error(tmp_path):
    proc = torchrun(tmp_path, *SETTINGS, 'n_experts=3', 'steps=5')
    assert proc.returncode != 0
    # Rank 0 printed it, once; the other rank said nothing
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert errors == ['error: n_experts=3 is not divisible by the expert-parallel degree (2): '
                      'each process of an expert group holds an equal share of the experts']
    # No traceback from our code (torchrun adds its own report of the failed processes)
    assert f'File "{REPO / "labml_nn_switch"}' not in proc.stderr
    # Nothing was started
    assert proc.stdout.strip() == '' and not (tmp_path / 'logs').exists()
