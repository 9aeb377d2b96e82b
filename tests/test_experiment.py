"""The Tiny Shakespeare experiment: real training steps, tracked metrics, exact resume, and clear errors."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labml_nn_switch import experiment as ex
from labml_nn_switch.checkpoint import load_checkpoint
from labml_nn_switch.transformer import build_transformer
from shared_text import SHAKESPEARE, needs_text

REPO = Path(__file__).resolve().parents[1]

# A model small enough for a few seconds of CPU
TINY = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, n_experts=4, seq_len=32, batch_size=8,
            optimizer='adam', learning_rate=3e-3, warmup=5, log_interval=5, eval_interval=10, eval_batches=2,
            sample_length=20)


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores are shared with other work; one thread also keeps float sums in a fixed order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Runs write labml's logs/ and data/ under a temporary working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny(**overrides):
    return {**TINY, 'data': str(SHAKESPEARE), **overrides}


def read_tracked(run_dir: Path) -> dict:
    """The metrics labml's file writer wrote (its thread may still be finishing)."""
    log = run_dir / 'log.jsonl'
    for _ in range(100):
        if log.is_file() and log.stat().st_size:
            break
        time.sleep(0.05)
    tracked = {}
    for line in log.read_text().splitlines():
        for key, values in json.loads(line)['track'].items():
            tracked.setdefault(key, []).extend(values)
    return tracked


@needs_text
def test_training_lowers_the_loss_and_tracks_every_metric(workdir):
    result = ex.run_train(tiny(steps=30), labml_writers={'file'})
    history = result.history
    # An evaluation every 10 steps; the loss falls well below guessing (log of ~65 characters)
    assert [h['step'] for h in history] == [10, 20, 30]
    assert history[-1]['loss.valid'] < history[0]['loss.valid']
    assert history[-1]['loss.valid'] < math.log(65) - 0.8
    # Utilisation per layer: 2 layers x 4 experts, rows summing to one
    assert len(history[-1]['route_fraction']) == 2
    assert all(abs(sum(row) - 1) < 1e-5 and len(row) == 4 for row in history[-1]['route_fraction'])
    # Every metric reached labml's log
    tracked = read_tracked(result.run_dir)
    expected = {'loss.train', 'accuracy.train', 'lb_loss.train', 'z_loss.train', 'dropped.train', 'max_prob.train',
                'tokens_per_sec', 'loss.valid', 'accuracy.valid', 'dropped.valid', 'lr'}
    expected |= {f'route.{s}.{l}' for s in ('min', 'max', 'std') for l in (0, 1)}
    assert expected <= set(tracked), expected - set(tracked)
    # Logged at the steps where they were saved
    assert [step for step, _ in tracked['loss.valid']] == [10, 20, 30]
    # The configs labml recorded include the explicit settings
    assert 'n_experts' in (result.run_dir / 'configs.yaml').read_text()


@needs_text
def test_checkpoint_round_trips_and_samples(workdir):
    result = ex.run_train(tiny(steps=10, model='dense'), labml_writers=set())
    state = load_checkpoint(result.checkpoint)
    assert state['step'] == 10 and state['config']['model'] == 'dense'
    # A model rebuilt from the checkpoint's settings takes its weights exactly
    model = ex.build_model(state['config'], n_vocab=len(state['itos']))
    model.load_state_dict(state['model'])
    # Sampling from the checkpoint: the prompt comes back first, then `length` characters, the same for a seed
    kwargs = dict(checkpoint=str(result.run_dir), prompt='It is', length=15, temperature=1.0, seed=3)
    text = ex.run_sample(**kwargs)
    assert text.startswith('It is') and len(text) == len('It is') + 15
    assert ex.run_sample(**kwargs) == text
    # `sample` on the command line finds the latest checkpoint by itself
    assert ex.main(['sample', '--prompt', 'It is', 'length=5']) == 0


def _train_to(steps: int, resume=None, **overrides):
    result = ex.run_train(tiny(steps=steps, checkpoint_interval=10, dropout=0.1, expert_dropout=0.1,
                               jitter_eps=0.05, **overrides), resume=resume, labml_writers=set())
    return result, load_checkpoint(result.checkpoint)


@needs_text
def test_resume_gives_identical_parameters(workdir):
    """Train 2N steps straight; train N, stop, resume for N more: the same parameters, bit for bit."""
    torch.use_deterministic_algorithms(True)
    try:
        _, straight = _train_to(20)
        first, _ = _train_to(10)
        resumed_result, resumed = _train_to(20, resume=str(first.run_dir))
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed['step'] == straight['step'] == 20
    for name, value in straight['model'].items():
        assert torch.equal(value, resumed['model'][name]), name
    # The optimiser's moments and the data order match too, and so does the record of evaluations
    for a, b in zip(straight['optimizer']['state'].values(), resumed['optimizer']['state'].values()):
        assert torch.equal(a['exp_avg'], b['exp_avg']) and torch.equal(a['exp_avg_sq'], b['exp_avg_sq'])
    assert straight['sampler'] == resumed['sampler']
    assert straight['history'] == resumed_result.history == resumed['history']


@needs_text
@pytest.mark.slow
def test_killed_run_resumes_from_the_command_line(workdir):
    """Kill a training process with SIGKILL at an arbitrary moment, `--resume` it, and compare."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    settings = [f'{k}={v}' for k, v in tiny(checkpoint_interval=5).items()]
    cli = [sys.executable, '-m', 'labml_nn_switch.experiment', 'train', *settings]
    # Start a long run; kill it as soon as its first checkpoint is there
    proc = subprocess.Popen([*cli, 'steps=100000'], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(workdir.glob('logs/*/*/checkpoints/checkpoint.pt')) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (checkpoint,) = workdir.glob('logs/*/*/checkpoints/checkpoint.pt')
    killed_at = load_checkpoint(checkpoint)['step']
    target = killed_at + 10
    # Resume the latest run to `target`, then train another run straight to `target`
    subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', '--resume', f'steps={target}'],
                   cwd=workdir, env=env, check=True, capture_output=True)
    subprocess.run([*cli, f'steps={target}'], cwd=workdir, env=env, check=True, capture_output=True)
    finals = [load_checkpoint(p) for p in workdir.glob('logs/*/*/checkpoints/checkpoint.pt')]
    finals = [s for s in finals if s['step'] == target]
    assert len(finals) == 2
    for name, value in finals[0]['model'].items():
        assert torch.equal(value, finals[1]['model'][name]), name


@needs_text
def test_model_is_causal():
    """Changing later characters never changes the logits of earlier positions."""
    torch.manual_seed(0)
    model = ex.AutoregressiveModel(n_vocab=10, d_model=16, max_len=12,
                                   transformer=build_transformer(n_layers=2, d_model=16, n_heads=2, d_ff=32,
                                                                 n_experts=2, dropout=0.0, expert_dropout=0.0,
                                                                 drop_tokens=False)).eval()
    x = torch.randint(10, (12, 3))
    y = x.clone()
    y[7:] = (y[7:] + 1) % 10
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    assert torch.allclose(a[:7], b[:7], atol=1e-6)
    assert not torch.allclose(a[7:], b[7:])


def test_presets_are_overrides():
    labml = ex.resolve({'preset': 'labml'})
    assert {k: labml[k] for k in ('d_model', 'n_heads', 'd_ff', 'n_layers', 'n_experts', 'capacity_factor',
                                  'seq_len', 'batch_size', 'optimizer')} == dict(
        d_model=128, n_heads=4, d_ff=256, n_layers=6, n_experts=4, capacity_factor=1.2, seq_len=64,
        batch_size=32, optimizer='noam')
    # The user's values win over the preset's, converted to the setting's type
    quick = ex.resolve({'preset': 'quick', 'steps': '7', 'model': 'dense', 'drop_tokens': 'false'})
    assert quick['steps'] == 7 and quick['model'] == 'dense' and quick['drop_tokens'] is False
    assert quick['d_model'] == ex.PRESETS['quick']['d_model']


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert 'Traceback' not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith('error: ')
    return err


@pytest.mark.parametrize('settings, says', [
    (['nosuchkey=1'], "unknown config key 'nosuchkey'"),
    (['steps=-1'], 'steps=-1 must not be negative'),
    (['steps=abc'], "steps='abc' is not a valid int"),
    (['model=moe'], "model='moe' must be one of switch, dense"),
    (['preset=huge'], "preset='huge' is unknown"),
    (['d_model=30', 'n_heads=4'], 'd_model=30 is not divisible by n_heads=4'),
    (['steps'], "expected key=value, got 'steps'"),
])
def test_bad_settings_give_one_clear_error(workdir, capsys, settings, says):
    assert ex.main(['train', *settings]) == 2
    assert says in _error_line(capsys)
    # Nothing was started
    assert not (workdir / 'logs').exists()


def test_missing_and_empty_data_files(workdir, capsys):
    assert ex.main(['train', '--data', str(workdir / 'nope.txt')]) == 2
    assert f"data file '{workdir / 'nope.txt'}' does not exist" in _error_line(capsys)
    assert ex.main(['train', f'data={workdir / "nope.txt"}']) == 2
    assert 'nope.txt' in _error_line(capsys)
    (workdir / 'empty.txt').write_text('')
    assert ex.main(['train', f'data={workdir / "empty.txt"}']) == 2
    assert 'is empty' in _error_line(capsys)


def test_seq_len_longer_than_the_text(workdir, capsys):
    (workdir / 'short.txt').write_text('To be, or not to be: that is the question. ' * 10)
    assert ex.main(['train', f'data={workdir / "short.txt"}', 'seq_len=500']) == 2
    assert 'seq_len=500 is larger than the train text (387 characters)' in _error_line(capsys)


def test_offline_without_the_file_says_where_to_put_it(workdir, capsys, monkeypatch):
    # A URL that refuses connections at once stands in for being offline
    monkeypatch.setattr('labml_nn_switch.data.TINY_SHAKESPEARE_URL', 'http://127.0.0.1:9/input.txt')
    assert ex.main(['train', 'preset=quick']) == 2
    err = _error_line(capsys)
    assert str(workdir / 'data' / 'tiny_shakespeare.txt') in err and 'pass data=PATH' in err
    # No partial download is left behind
    assert not list((workdir / 'data').glob('*'))


def test_resume_without_a_checkpoint(workdir, capsys):
    assert ex.main(['train', '--resume']) == 2
    assert 'no checkpoint to resume from' in _error_line(capsys)


def test_command_line_error_has_no_traceback(workdir):
    """The real entry point: exit status 2 and a single line on stderr."""
    proc = subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', 'steps=-5'], cwd=workdir,
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'error: steps=-5 must not be negative'
