"""
---
title: The experiment's command line
summary: >
  `python -m labml_nn_switch.experiment train|sample`: a labml run from key=value settings,
  resuming a run into the same labml run, one-line errors, exit statuses, and several
  processes under torchrun.
---

# The command line

```shell
python -m labml_nn_switch.experiment train [key=value ...] [--data PATH] [--resume [RUN]]
python -m labml_nn_switch.experiment sample [--prompt TEXT] [--checkpoint PATH] [--length N] ...
```

`train --help` lists every [setting](configs.py) with its default and meaning, and
the presets. What the command does, and what it answers:

| what happens | what it prints | exit status |
|---|---|---|
| training ends | the sample and the checkpoint | 0 |
| a setting, the data or a checkpoint is wrong | one line `error: ...` | 2 |
| Ctrl-C (`SIGINT`) during training | one line: the checkpoint of this step, how to resume | 130 |
| `SIGTERM` during training | the same line | 143 |

## Resuming

`--resume` takes the latest checkpoint of any run; `--resume RUN` that of a run
folder, or a checkpoint file. (`--resume` takes the next word as the run: put
`key=value` settings before it, or name the run, `--resume latest steps=8000`.)
The checkpoint holds the run's settings; only those in `RESUMABLE` may change
(`steps=8000`, to train on). A checkpoint in a run's folder under `logs/`
continues **that labml run**: the same run folder and uuid, `log.jsonl` appended
to, the step axis continuing where it stopped, and *resumed at step N* as the
run's comment. (labml 0.5 writes `run.pid` when a run starts and refuses to start
a run whose folder has one; `release_run` removes it when the process that wrote
it has ended.) A checkpoint from elsewhere starts a new run whose comment names it.
"""

import argparse
import contextlib
import datetime
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from labml import experiment, lab, tracker

from labml_nn_switch import experiment as experiment_module
from labml_nn_switch import process_group as PG
from labml_nn_switch.checkpoint import CheckpointError, find_checkpoint, latest_checkpoint, load_checkpoint
from labml_nn_switch.configs import (PRESETS, ConfigError, Configs, defaults, explicit_settings, parse_setting,
                                     setting_notes, settings, switch_config)
from labml_nn_switch.data import DataError, find_text_file, load_text, split_text
from labml_nn_switch.experiment import build_model
from labml_nn_switch.sharded_checkpoint import load_sharded
from labml_nn_switch.tracking import use_labml_settings, writers
from labml_nn_switch.trainer import Interrupted, TrainResult, checkpoint_settings, generate, train
from labml_nn_switch.watchdog import RankStopped

# The name of the experiment: its runs go to `logs/switch_shakespeare/<run uuid>/`
EXPERIMENT_NAME = 'switch_shakespeare'
# The errors a user can fix: one line each, exit status 2
USER_ERRORS = (ConfigError, DataError, CheckpointError)
# Settings that may change when a run is resumed (the rest must match the checkpoint)
RESUMABLE = {'steps', 'log_interval', 'eval_interval', 'checkpoint_interval', 'data', 'download', 'device',
             'precision', 'sample_prompt', 'sample_length', 'temperature', 'ep', 'dist_timeout'}


def labml_root():
    """
    labml's folders (`logs/`, `data/`) and the app's address, all from the `.labml.yaml`
    of the working directory (see [tracking.py](tracking.py)). A bad setting is a `ConfigError`.
    """
    try:
        use_labml_settings()
    except ValueError as e:
        raise ConfigError(str(e)) from None


def runs_dir() -> Path:
    """The folder of this experiment's runs, `logs/switch_shakespeare/`."""
    return Path(lab.get_experiments_path()) / EXPERIMENT_NAME


# ## Several processes
#
# `torchrun --nproc-per-node W -m labml_nn_switch.experiment train ... ep=E` starts $W$
# processes (*ranks*), each running `run_train` below, in expert groups of $E$
# ([expert_parallel.py](expert_parallel.py) explains the layer and draws the groups).
# What changes, compared with one process:
#
# * **The model.** Every rank builds it from the same seed, each Switch layer with only
#   its $N / E$ experts: the weights are those the single process would hold, and no
#   rank ever holds all the experts. A dense model is simply replicated.
# * **The data.** Every rank draws the same global batch of `batch_size` sequences from
#   the same seeded sampler and keeps its own $1 / W$ of it (`shard_batch`), so the
#   ranks see different data, the data order is that of one process, and it resumes
#   exactly, on any $W$ that divides `batch_size`. Evaluation batches are split the same way.
# * **The step.** The loss of each rank is over its shard; DDP averages the replicated
#   gradients during the backward pass, `sync_expert_gradients` averages each
#   expert's over its copies, and `clip_grad_norm_` clips the norm of the whole model
#   ([gradient_sync.py](gradient_sync.py)). Dropout and jitter are seeded with
#   `seed + 1 + rank`: each rank draws its own noise, and rank 0 starts as a single
#   process would.
# * **Capacity.** Each rank applies the capacity to its own tokens
#   ([expert_parallel.py](expert_parallel.py) explains why), so a run on $W$ processes
#   drops tokens as $W$ single-process layers on $1 / W$ of the batch would.
# * **Writing.** Rank 0 alone writes labml's logs; the other ranks run labml's
#   `experiment.evaluate()`, which records nothing. The metrics are of the global
#   batch (`step_metrics`), so every rank computes them.
# * **Checkpoints.** Every rank writes its own experts and Adam moments into a sharded
#   checkpoint, a folder `step_<step>.dcp` ([sharded_checkpoint.py](sharded_checkpoint.py)):
#   nothing is gathered. It resumes on any number of processes and any `ep=` that
#   fit `n_experts` and `batch_size` (each rank reading its slices; its own random
#   state back only on as many processes), and `sample` reads it in one process.
# * **Faults.** A collective waits `dist_timeout` seconds (default 3 minutes) for the
#   other ranks; then the run ends with one line per live rank naming the collective
#   and the rank that stopped answering ([watchdog.py](watchdog.py)), and the last
#   checkpoint resumes.
# * **Files.** Rank 0 decides which files: it finds (or downloads) the text, and finds
#   the checkpoint to resume, and sends the paths to the others (`on_main_process`),
#   so that all go the same way, or stop with the same error. Every process then reads
#   them from that path (on several machines: a shared file system).
# * **Stopping.** Ctrl-C in a terminal signals torchrun and every process: they agree
#   to stop at the same step (`stop_signal` in [`trainer.py`](trainer.py)), all take
#   part in saving it, and rank 0 prints how to resume; torchrun then reports the
#   stop in its own words and exits with status 1.
# * **Lockstep.** The ranks communicate inside every forward and backward pass, so
#   every rank runs every step, evaluation, save and sample, even where rank 0 alone
#   uses the result.
#
# NCCL runs it on GPUs (one per process, the GPU of its local rank), gloo on CPUs
# (where no GPU is visible: `CUDA_VISIBLE_DEVICES= torchrun ...` hides them).

def on_main_process(fn: Callable[[], Any]) -> Any:
    """
    `fn()` on rank 0 alone, its result given to every process. An error the user can
    fix that it raises is raised in every process, so that all stop together (and none
    waits for the others in a collective). Just `fn()` in a single process.
    """
    result, error = None, None
    # Rank 0 does the work
    if PG.is_main_process():
        try:
            result = fn()
        except USER_ERRORS as e:
            error = e
    # The others get its answer
    result, error = PG.broadcast_object((result, error))
    if error is not None:
        raise error
    #
    return result


def find_resume(resume: str) -> Path:
    """
    The checkpoint to resume: of a run folder or checkpoint file, or the latest of any run.
    """
    path = latest_checkpoint(runs_dir()) if resume == 'latest' else find_checkpoint(Path(resume))
    if path is None:
        raise ConfigError(f'no checkpoint to resume from in {str(runs_dir() if resume == "latest" else resume)!r}')
    return path


def release_run(run_dir: Path):
    """
    Remove the `run.pid` a finished or killed process left in its run folder, so that
    labml starts the run again; refuse if that process is still running.
    """
    pid_file = run_dir / 'run.pid'
    if not pid_file.is_file():
        return
    pid = int(pid_file.read_text().strip() or 0)
    if pid and pid != os.getpid():
        try:
            # Signal 0 checks that the process exists, and sends nothing
            os.kill(pid, 0)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise ConfigError(f'run {str(run_dir)!r} is still running (process {pid})') from None
        else:
            raise ConfigError(f'run {str(run_dir)!r} is still running (process {pid}); stop it first, '
                              f'or delete {str(pid_file)!r} if it is not') from None
    pid_file.unlink()


def check_text(text: str, seq_len: int):
    """
    The text must hold at least one window of `seq_len + 1` characters in each split.
    """
    for name, split in zip(('train', 'valid'), split_text(text)):
        if seq_len + 1 > len(split):
            raise ConfigError(f'seq_len={seq_len} is larger than the {name} text ({len(split)} characters)')


def run_train(overrides: dict[str, Any], *, resume: Optional[str] = None,
              labml_writers: Optional[set[str]] = None) -> TrainResult:
    """
    ## Run an experiment

    * `overrides` are `key=value` settings (strings or values), including `preset`
    * `resume` is a run folder or checkpoint file to continue from, or `'latest'`
    * `labml_writers` replaces the default writers (tests and studies pass fewer)

    Under torchrun every process runs this (see *Several processes* above).
    """
    # This process's place: rank 0 of 1, or one of torchrun's processes
    launch = PG.init_from_env()
    # labml's folders (`logs/` and `data/`)
    labml_root()
    # Continue a run: its checkpoint holds its settings
    state, path = None, None
    if resume:
        # Rank 0 finds the checkpoint (for `latest`, the newest it sees); every process loads it
        path = on_main_process(lambda: find_resume(resume))
        state = load_checkpoint(path)
        saved = checkpoint_settings(state, path)
        # Each process of the run saved its random state: the same number must continue it
        # A single file holds one process's model; a sharded checkpoint loads on any number of processes
        if 'sharded' not in state and launch.world_size > 1:
            raise ConfigError(f'the checkpoint {str(path)!r} was saved by one process; resume it in one '
                              f'(this run has {launch.world_size})')
        # Only a few settings may change
        for k, v in overrides.items():
            v = parse_setting(k, v)
            if k not in RESUMABLE and v != saved.get(k):
                raise ConfigError(f'cannot change {k} when resuming (the checkpoint has {k}={saved.get(k)!r})')
        overrides = {**saved, **overrides}
    # The checked settings, the same in every process
    explicit = explicit_settings(overrides, world_size=launch.world_size)
    try:
        PG.check_same_on_all_ranks(explicit, what='the settings')
    except ValueError as e:
        raise ConfigError(str(e)) from None
    values = {**defaults(), **explicit}
    # Several processes run where `init_from_env` put them: the GPU of their local rank, or the CPU
    if launch.distributed and values['device'] not in ('auto', launch.device.type):
        raise ConfigError(f'device={values["device"]!r} with {launch.world_size} processes: each uses '
                          f'{launch.device.type} here (device=auto); to train on CPUs on a machine with GPUs, '
                          f'hide them: CUDA_VISIBLE_DEVICES= torchrun ...')
    # Find (or download) the text, on rank 0 alone, and check that it is long enough
    text_path = on_main_process(lambda: find_text_file(values['data'] or None, data_dir=lab.get_data_path(),
                                                       allow_download=values['download']))
    text = load_text(text_path)
    check_text(text, values['seq_len'])
    explicit['data'] = str(text_path)
    # A resumed run must see the same characters, and not go backwards
    if state is not None:
        if sorted(set(text)) != state['itos']:
            raise ConfigError(f'data={str(text_path)!r} has a different vocabulary from the checkpoint')
        if values['steps'] < state['step']:
            raise ConfigError(f'steps={values["steps"]} is less than the checkpoint\'s step ({state["step"]})')
    # A checkpoint in a run folder of this experiment continues that labml run
    uuid, comment = None, ''
    if path is not None:
        run = path.resolve().parent.parent
        if run.parent == runs_dir().resolve():
            uuid, comment = run.name, f'resumed at step {state["step"]}'
        else:
            comment = f'resumed from {path} at step {state["step"]}'
    # The labml experiment: rank 0 records it; the other processes run one that writes nothing
    if PG.is_main_process():
        if uuid:
            release_run(runs_dir() / uuid)
        experiment.create(uuid=uuid, name=EXPERIMENT_NAME, python_file=experiment_module.__file__, comment=comment,
                          writers=labml_writers if labml_writers is not None else writers())
    else:
        experiment.evaluate()
    # The run's folder, as rank 0 named it
    run_dir = PG.broadcast_object(runs_dir() / experiment.get_uuid())
    # Per-layer metrics are tracked but not printed. (We don't call `tracker.reset()`: in labml
    # 0.5.3 a second call fails, as it consumes labml's default indicator settings.)
    tracker.set_scalar('route.*', is_print=False)
    tracker.set_scalar('lr', is_print=False)
    # The configs, with the explicit settings
    conf = Configs()
    experiment.configs(conf, explicit)
    # Run it
    stopped = None
    try:
        with experiment.start():
            try:
                result = train(conf, run_dir=run_dir, state=state, checkpoint=path)
            except Interrupted as e:
                # labml records a run that ends in a `KeyboardInterrupt` as interrupted (any other error: crashed)
                stopped = e
                raise KeyboardInterrupt from None
    except RankStopped as e:
        # A process stopped answering: every process still running says so (rank 0 may be the one
        # that stopped), and leaves at once, without waiting for it
        print(f'error: {e}', file=sys.stderr, flush=True)
        os._exit(1)
    except KeyboardInterrupt:
        if stopped is None:
            raise
        raise stopped from None
    # Show the sample, once
    if PG.is_main_process():
        print(f'\n--- sample ---\n{result.sample}\n---')
        print(f'checkpoint: {result.checkpoint}')
    #
    return result


def load_trained(checkpoint: Optional[str]) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any], Path]:
    """
    ## A trained model from a checkpoint

    `checkpoint` is a checkpoint file or a run folder, or `None` for the latest of any
    run. Rebuilds the model from the settings and the `SwitchConfig` saved in the
    checkpoint (no data file needed), with its trained weights, on the CPU. Returns the
    model, the checkpoint's state, its settings and its path.
    """
    # Find the checkpoint: a given path, or the latest of any run
    labml_root()
    path = find_checkpoint(Path(checkpoint)) if checkpoint else latest_checkpoint(runs_dir())
    if path is None:
        raise ConfigError(f'no checkpoint found in {checkpoint or str(runs_dir())!r}; train first, or pass '
                          f'--checkpoint PATH')
    state = load_checkpoint(path)
    saved = checkpoint_settings(state, path)
    # The model, built as in training, with its trained weights
    model = build_model(saved, switch=switch_config(saved), n_vocab=len(state['itos']))
    # A sharded checkpoint of several processes: this one process reads every slice
    if 'sharded' in state:
        load_sharded(state['sharded'], model)
    else:
        model.load_state_dict(state['model'])
    return model, state, saved, path


def run_sample(*, checkpoint: Optional[str], prompt: str, length: int, temperature: float, seed: int,
               device: str = 'auto') -> str:
    """
    ## Sample from a checkpoint
    """
    model, state, saved, _ = load_trained(checkpoint)
    # On the device
    torch_device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device)
    model.to(torch_device)
    # Generate
    return generate(model, state['itos'], prompt, length=length, seq_len=saved['seq_len'],
                    temperature=temperature, device=torch_device, seed=seed)


# ## The command line

def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """
    `['steps=200', 'model=dense']` to `{'steps': '200', 'model': 'dense'}`.
    """
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition('=')
        if not eq or not key:
            raise ConfigError(f'expected key=value, got {pair!r}')
        out[key.strip()] = value
    return out


def settings_help() -> str:
    """
    `train --help`'s list: every setting with its type, default and note, then the presets.
    """
    notes, values = setting_notes(), defaults()
    lines = ['settings (key=value):']
    for key, kind in settings().items():
        lines.append(f'  {key} ({kind.__name__}, default {values[key]!r})')
        lines.append(f'      {notes.get(key, "")}')
    lines.append('presets (preset=NAME, then your settings):')
    for name, overrides in PRESETS.items():
        lines.append(f'  {name}: ' + ' '.join(f'{k}={v}' for k, v in overrides.items()))
    return '\n'.join(lines)


def non_negative(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind`, not negative."""
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise ValueError(text)
        return value
    parse.__name__ = f'non-negative {kind.__name__}'
    return parse


def main(argv: Optional[list[str]] = None) -> int:
    """
    The command line. Errors the user can fix print one line and return 2; a run stopped
    by a signal returns $128 +$ its number.
    """
    parser = argparse.ArgumentParser(prog='python -m labml_nn_switch.experiment',
                                     description='Switch Transformer on Tiny Shakespeare')
    commands = parser.add_subparsers(dest='command', required=True)
    # `train`
    p = commands.add_parser('train', help='train a model', epilog=settings_help(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('settings', nargs='*', metavar='key=value', help='settings, e.g. preset=quick steps=200')
    p.add_argument('--data', help='the text file to train on (as data=PATH)')
    p.add_argument('--resume', nargs='?', const='latest', metavar='RUN',
                   help='continue a run folder or checkpoint (the latest run if none is named; '
                        'put key=value settings before --resume, or name the run: --resume latest)')
    # `sample`
    p = commands.add_parser('sample', help='generate text from a checkpoint')
    p.add_argument('--prompt', default='It is', help='the text to continue (default: %(default)r)')
    p.add_argument('--checkpoint', help='a run folder or checkpoint file (default: the latest of any run)')
    p.add_argument('--length', type=non_negative(int), default=200, help='characters to generate (default: 200)')
    p.add_argument('--temperature', type=non_negative(float), default=0.8,
                   help='0 picks the most likely character (default: 0.8)')
    p.add_argument('--seed', type=int, default=0, help='seed of the sampling (default: 0)')
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N (default: auto)')
    args = parser.parse_args(argv)
    try:
        if args.command == 'sample':
            print(run_sample(checkpoint=args.checkpoint, prompt=args.prompt, length=args.length,
                             temperature=args.temperature, seed=args.seed, device=args.device))
            return 0
        # Under torchrun, `train` joins the other processes first (nothing to join in a single process),
        # with the timeout of its collectives from the settings
        overrides = parse_pairs(args.settings)
        timeout = parse_setting('dist_timeout', overrides.get('dist_timeout', defaults()['dist_timeout']))
        PG.init_from_env(timeout=datetime.timedelta(seconds=timeout))
        if args.data is not None:
            overrides['data'] = args.data
        # Rank 0 prints; the other processes' screen output (labml's banner, progress) goes nowhere
        with open(os.devnull, 'w') as devnull, \
                contextlib.redirect_stdout(sys.stdout if PG.is_main_process() else devnull):
            run_train(overrides, resume=args.resume)
        return 0
    except USER_ERRORS as e:
        # One line, no traceback. With several processes every one raised the same error: rank 0 prints it
        if PG.is_main_process():
            print(f'error: {e}', file=sys.stderr)
        # ... before any of them exits (torchrun stops the others as soon as one exits)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return 2
    except Interrupted as e:
        # Stopped by a signal, with a checkpoint of this step
        if PG.is_main_process():
            run = e.checkpoint.parent.parent if e.checkpoint else None
            world_size = PG.init_from_env().world_size
            launcher = f'torchrun --nproc-per-node {world_size}' if world_size > 1 else 'python'
            print(f'{e}: saved {e.checkpoint}; resume with: {launcher} -m labml_nn_switch.experiment train '
                  f'--resume {run}', file=sys.stderr)
        return e.exit_status
    except RankStopped as e:
        # A process stopped answering: every process still running says so (rank 0 may be the one
        # that stopped), and leaves at once, without waiting for it
        print(f'error: {e}', file=sys.stderr, flush=True)
        os._exit(1)
    except KeyboardInterrupt:
        # Ctrl-C before the first step: nothing to save
        print('interrupted before training began; nothing was saved', file=sys.stderr)
        return 130
    finally:
        # Leave the process group, if torchrun started this process
        PG.shutdown()
