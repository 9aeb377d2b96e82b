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

from labml_nn_switch import cli
from labml_nn_switch import configs
from labml_nn_switch import experiment as ex
from labml_nn_switch.checkpoint import checkpoints_in, find_checkpoint, load_checkpoint
from labml_nn_switch.routing_result import router_z_loss
from labml_nn_switch.switch import SwitchConfig
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
    result = cli.run_train(tiny(steps=30), labml_writers={'file'})
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
    result = cli.run_train(tiny(steps=10, model='dense'), labml_writers=set())
    state = load_checkpoint(result.checkpoint)
    assert state['step'] == 10 and state['settings']['model'] == 'dense'
    # The Switch options are stored as the `SwitchConfig`, and rebuild it
    switch = SwitchConfig(**state['switch'])
    assert switch.d_model == TINY['d_model'] and 'capacity_factor' not in state['settings']
    # A model rebuilt from the checkpoint takes its weights exactly
    model = ex.build_model(state['settings'], switch=switch, n_vocab=len(state['itos']))
    model.load_state_dict(state['model'])
    # Sampling from the checkpoint: the prompt comes back first, then `length` characters, the same for a seed
    kwargs = dict(checkpoint=str(result.run_dir), prompt='It is', length=15, temperature=1.0, seed=3)
    text = cli.run_sample(**kwargs)
    assert text.startswith('It is') and len(text) == len('It is') + 15
    assert cli.run_sample(**kwargs) == text
    # `sample` on the command line finds the latest checkpoint by itself
    assert cli.main(['sample', '--prompt', 'It is', '--length', '5']) == 0


def _train_to(steps: int, resume=None, **overrides):
    result = cli.run_train(tiny(steps=steps, checkpoint_interval=10, dropout=0.1, expert_dropout=0.1,
                                jitter_eps=0.05, **overrides), resume=resume, labml_writers={'file'})
    return result, load_checkpoint(result.checkpoint)


@needs_text
def test_resume_gives_identical_parameters_in_the_same_labml_run(workdir):
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
    # The resumed run is the same labml run: one folder, its log continued, the step axis joined
    assert resumed_result.run_dir == first.run_dir
    assert [s for s, _ in read_tracked(first.run_dir)['loss.valid']] == [10, 20]
    assert 'resumed at step 10' in (first.run_dir / 'run.yaml').read_text()
    statuses = [json.loads(line)['status'] for line in (first.run_dir / 'run_log.jsonl').read_text().splitlines()]
    assert statuses == ['completed', 'completed']
    # Its two checkpoints, steps 10 and 20
    assert [p.name for p in checkpoints_in(first.run_dir / 'checkpoints')] == ['step_00000010.pt', 'step_00000020.pt']


@needs_text
@pytest.mark.slow
def test_killed_run_resumes_from_the_command_line(workdir):
    """Kill a training process with SIGKILL at an arbitrary moment, `--resume` it, and compare."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    settings = [f'{k}={v}' for k, v in tiny(checkpoint_interval=5).items()]
    command = [sys.executable, '-m', 'labml_nn_switch.experiment', 'train', *settings]
    # Start a long run; kill it as soon as its first checkpoint is there
    proc = subprocess.Popen([*command, 'steps=100000'], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(workdir.glob('logs/*/*/checkpoints/step_*.pt')) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (run,) = workdir.glob('logs/*/*/')
    killed_at = load_checkpoint(find_checkpoint(run))['step']
    target = killed_at + 10
    # Resume the latest run to `target`, then train another run straight to `target`
    subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', f'steps={target}', '--resume'],
                   cwd=workdir, env=env, check=True, capture_output=True)
    subprocess.run([*command, f'steps={target}'], cwd=workdir, env=env, check=True, capture_output=True)
    finals = [load_checkpoint(find_checkpoint(p)) for p in workdir.glob('logs/*/*/')]
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


@pytest.mark.parametrize("z_loss_coef", [0.0, 1e-3])
def test_the_z_loss_is_computed_with_a_graph_only_when_it_is_in_the_loss(z_loss_coef):
    # The step logs the z-loss either way; with a zero coefficient it is computed for
    # the log alone, without a graph, and the loss is the same as without it
    torch.manual_seed(0)
    model = ex.AutoregressiveModel(n_vocab=10, d_model=16, max_len=12,
                                   transformer=build_transformer(n_layers=2, d_model=16, n_heads=2, d_ff=32,
                                                                 n_experts=2, dropout=0.0, expert_dropout=0.0))
    x = torch.randint(10, (12, 3))
    result = ex.compute_loss(model, x, x, lb_alpha=0.01, z_loss_coef=z_loss_coef, autocast=False)
    layers = result.routing.layers
    assert all(("z" in r._losses) == bool(z_loss_coef) for r in layers)
    metrics = ex.step_metrics(result, "train")
    assert all("z" in r._losses for r in layers)
    assert all(r._losses["z"].requires_grad == bool(z_loss_coef) for r in layers)
    z_loss = sum(router_z_loss(r.logits) for r in layers)
    assert math.isclose(metrics["z_loss.train"], float(z_loss), rel_tol=1e-5)
    expected = result.ce + 0.01 * sum(r.load_balancing_loss for r in layers) + z_loss_coef * z_loss
    torch.testing.assert_close(result.loss, expected)


def test_presets_are_overrides():
    quick = configs.explicit_settings({'preset': 'quick', 'steps': '7', 'model': 'dense', 'drop_tokens': 'false'})
    # The user's values win over the preset's, converted to the setting's type
    assert quick['steps'] == 7 and quick['model'] == 'dense' and quick['drop_tokens'] is False
    assert quick['d_model'] == configs.PRESETS['quick']['d_model']
    # Every preset names real settings with valid values, and differs from the defaults
    for name, overrides in configs.PRESETS.items():
        explicit = configs.explicit_settings({'preset': name})
        assert any(configs.defaults()[k] != v for k, v in explicit.items() if k != 'preset'), name


def test_labml_preset_is_labml_nns_configuration():
    """labml_nn/transformers/switch/experiment.py, with its NLPAutoRegressionConfigs and OptimizerConfigs."""
    labml = configs.explicit_settings({'preset': 'labml'})
    assert {k: labml[k] for k in labml if k != 'preset'} == dict(
        model='switch', n_layers=6, d_model=128, n_heads=4, d_ff=256, n_experts=4, bias=True, dropout=0.0,
        expert_dropout=0.0, capacity_factor=1.2, eval_capacity_factor=1.2, drop_tokens=True, scale_by_gate=True,
        jitter_eps=0.0, lb_alpha=0.01, z_loss_coef=0.0, seq_len=64, batch_size=32, optimizer='noam',
        learning_rate=1.0, warmup=2000, adam_beta1=0.9, adam_beta2=0.999, adam_eps=1e-8, grad_clip=1.0)
    # ... and the optimiser and schedule built from it: Noam with factor 1, d_model 128, warm-up 2000
    conf = configs.Configs()
    conf._set_values(labml)
    conf.net = torch.nn.Linear(1, 1)
    optim, scheduler = conf.optim, conf.scheduler
    group = optim.param_groups[0]
    assert group['betas'] == (0.9, 0.999) and group['eps'] == 1e-8
    rate = [group['lr']]
    for _ in range(2999):
        optim.step()
        scheduler.step()
        rate.append(group['lr'])
    for step in (1, 1000, 2000, 3000):
        assert math.isclose(rate[step - 1], 128 ** -0.5 * min(step ** -0.5, step * 2000 ** -1.5), rel_tol=1e-9)
    assert max(range(3000), key=rate.__getitem__) == 1999


def test_help_shows_every_setting_with_its_default_and_meaning(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(['train', '--help'])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for key, value in configs.defaults().items():
        assert f'  {key} ({type(value).__name__}, default {value!r})' in out, key
    # The notes come from the comments in Configs and SwitchConfig
    assert 'The capacity factor in training (the paper uses 1.0 to 1.25)' in out
    assert 'Warm-up steps' in out and 'labml: model=switch' in out


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert 'Traceback' not in err
    assert len(err.splitlines()) == 1, err
    assert err.startswith('error: ')
    return err


@pytest.mark.parametrize('settings, says', [
    (['nosuchkey=1'], "unknown setting 'nosuchkey'"),
    (['steps=-1'], 'steps=-1 must not be negative'),
    (['steps=abc'], "steps='abc' is not a valid int"),
    (['model=moe'], "model='moe' must be one of switch, dense"),
    (['preset=huge'], "preset='huge' is unknown"),
    (['d_model=30', 'n_heads=4'], 'n_heads must be >= 1 and divide d_model, got n_heads=4, d_model=30'),
    (['capacity_factor=0'], 'capacity_factor must be a finite number in (0.0, inf), got capacity_factor=0.0'),
    (['activation=tanh'], "activation='tanh' is not one of"),
    (['expert_dropout=1'], 'expert_dropout must be a finite number in [0.0, 1.0)'),
    (['capacity_factor=nan'], 'capacity_factor=nan must be a finite number'),
    (['steps'], "expected key=value, got 'steps'"),
])
def test_bad_settings_give_one_clear_error(workdir, capsys, settings, says):
    assert cli.main(['train', *settings]) == 2
    assert says in _error_line(capsys)
    # Nothing was started
    assert not (workdir / 'logs').exists()


def test_missing_and_empty_data_files(workdir, capsys):
    assert cli.main(['train', '--data', str(workdir / 'nope.txt')]) == 2
    assert f"data file '{workdir / 'nope.txt'}' does not exist" in _error_line(capsys)
    assert cli.main(['train', f'data={workdir / "nope.txt"}']) == 2
    assert 'nope.txt' in _error_line(capsys)
    (workdir / 'empty.txt').write_text('')
    assert cli.main(['train', f'data={workdir / "empty.txt"}']) == 2
    assert 'is empty' in _error_line(capsys)


def test_seq_len_longer_than_the_text(workdir, capsys):
    (workdir / 'short.txt').write_text('To be, or not to be: that is the question. ' * 10)
    assert cli.main(['train', f'data={workdir / "short.txt"}', 'seq_len=500']) == 2
    assert 'seq_len=500 is larger than the train text (387 characters)' in _error_line(capsys)


def test_offline_without_the_file_says_where_to_put_it(workdir, capsys, monkeypatch):
    # A URL that refuses connections at once stands in for being offline
    monkeypatch.setattr('labml_nn_switch.data.TINY_SHAKESPEARE_URL', 'http://127.0.0.1:9/input.txt')
    assert cli.main(['train', 'preset=quick']) == 2
    err = _error_line(capsys)
    assert str(workdir / 'data' / 'tiny_shakespeare.txt') in err and 'pass data=PATH' in err
    # No partial download is left behind
    assert not list((workdir / 'data').glob('*'))


def test_resume_without_a_checkpoint(workdir, capsys):
    assert cli.main(['train', '--resume']) == 2
    assert 'no checkpoint to resume from' in _error_line(capsys)


def test_command_line_error_has_no_traceback(workdir):
    """The real entry point: exit status 2 and a single line on stderr."""
    proc = subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', 'steps=-5'], cwd=workdir,
                          env={**os.environ, 'PYTHONPATH': str(REPO)}, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == 'error: steps=-5 must not be negative'


@needs_text
@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130),
                                            pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)])
def test_a_signal_saves_the_current_step_and_says_how_to_resume(workdir, signum, status):
    """A real process, a real signal: a checkpoint at the step it stopped, one line, 128 + the signal."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(REPO)}
    settings = [f'{k}={v}' for k, v in tiny(checkpoint_interval=5).items()]
    # As a process started from a terminal: a shell's background job (`nohup make test &`) starts its
    # children with SIGINT ignored, and the trainer keeps an ignored signal ignored
    proc = subprocess.Popen([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', *settings, 'steps=100000'],
                            cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))
    # Signal it once it is training: after its first checkpoint
    deadline = time.time() + 120
    while not list(workdir.glob('logs/*/*/checkpoints/step_*.pt')) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status
    # One line on stderr, no traceback: where the checkpoint of the last step is and how to resume
    (line,) = err.strip().splitlines()
    (run,) = workdir.glob('logs/*/*/')
    checkpoint = find_checkpoint(run)
    step = load_checkpoint(checkpoint)['step']
    assert line == (f'stopped by {signal.Signals(signum).name} at step {step}: saved {checkpoint}; '
                    f'resume with: python -m labml_nn_switch.experiment train --resume {run}')
    assert 0 < step < 100000
    # labml recorded the run as interrupted
    assert json.loads((run / 'run_log.jsonl').read_text().splitlines()[-1])['status'] == 'interrupted'
    # The command it printed resumes it, in the same run
    resumed = subprocess.run([sys.executable, '-m', 'labml_nn_switch.experiment', 'train', f'steps={step + 5}',
                              '--resume', str(run)], cwd=workdir, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(find_checkpoint(run))['step'] == step + 5


@needs_text
@pytest.mark.parametrize('damage, says', [
    (lambda b: b'', 'is empty (0 bytes)'),
    pytest.param(lambda b: b[:len(b) // 3], 'is truncated or not a checkpoint', marks=pytest.mark.slow),
    pytest.param(lambda b: b'not a checkpoint\n' * 50, 'is truncated or not a checkpoint', marks=pytest.mark.slow),
])
def test_a_damaged_checkpoint_is_one_line_and_the_previous_one_resumes(workdir, capsys, damage, says):
    result = cli.run_train(tiny(steps=10, checkpoint_interval=5), labml_writers=set())
    previous, latest = checkpoints_in(result.run_dir / 'checkpoints')
    latest.write_bytes(damage(latest.read_bytes()))
    capsys.readouterr()
    assert cli.main(['train', 'steps=15', '--resume', str(result.run_dir)]) == 2
    assert _error_line(capsys) == (f'error: checkpoint {str(latest)!r} {says}'
                                   + ('' if says.startswith('is empty') else f' ({_reason(latest)})')
                                   + f'; the previous one is {str(previous)!r}')
    # The previous checkpoint, written atomically and kept, resumes
    assert cli.main(['train', 'steps=15', '--resume', str(previous)]) == 0
    assert load_checkpoint(find_checkpoint(result.run_dir))['step'] == 15


def _reason(path: Path) -> str:
    """The first line of what torch.load says about a damaged file."""
    try:
        torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001
        return str(e).strip().splitlines()[0]
    raise AssertionError(f'{path} loads')
