r"""
---
title: The training loop
summary: >
  The loop around the training step: tracked metrics, evaluation, sampling, checkpoints
  that resume exactly, and a clean stop on Ctrl-C or SIGTERM with a checkpoint at the
  current step.
---

# The training loop

The [training step](experiment.py) does one optimiser step; this module runs it
`steps` times and does what a run needs around it:

* every `log_interval` steps, the tracked metrics go to labml;
* every `eval_interval` steps, an **evaluation** on the fixed validation batches;
* every `checkpoint_interval` steps, a **checkpoint** with everything a resumed run
  needs (see `save_state` below), written by [`checkpoint.py`](checkpoint.py);
* at the end, a **sample** of generated text.

## Stopping cleanly

Ctrl-C sends `SIGINT`, a scheduler or `kill` sends `SIGTERM`. During the loop both
only *ask* to stop: the step in progress finishes, a checkpoint of that step is
saved, and `train` raises `Interrupted`, which the [command line](cli.py) turns
into one line saying how to resume, and the exit status $128 + \text{signal}$
(130 for `SIGINT`, 143 for `SIGTERM`, as a shell reports a process killed by
them). Nothing is lost but the time of the step. A second signal stops at once
(the checkpoints already written are complete: they are written atomically).
labml records the run as *interrupted*.
"""

import dataclasses
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from labml import monit, tracker
from torch import nn

from labml_nn_switch import process_group as PG
from labml_nn_switch.checkpoint import (CheckpointError, rng_state, save_checkpoint, save_sharded_checkpoint,
                                        set_rng_state)
from labml_nn_switch.configs import Configs, ConfigError, switch_config, values_of
from labml_nn_switch.experiment import compute_loss, step_metrics, train_step
from labml_nn_switch.gradient_sync import data_parallel
from labml_nn_switch.sharded_checkpoint import load_sharded


@torch.no_grad()
def evaluate(model: nn.Module, batches: list, *, device: torch.device, autocast: bool) -> dict[str, Any]:
    """
    ## Evaluation

    `model.eval()` turns off dropout and jitter, and the Switch layers use their
    evaluation capacity factor. Returns the mean loss and accuracy over the fixed
    validation batches, the routing metrics, and the fraction of tokens routed to each
    expert of each layer (for the utilisation plots). With several processes each
    evaluates its share of every batch, and the results are of the whole batches.
    """
    # Evaluation mode
    model.eval()
    # Sums over batches
    ce, accuracy, routes, dropped = 0.0, 0.0, None, 0.0
    for data, target in batches:
        # This process's share of the batch
        data, target = (PG.shard_batch(t).to(device) for t in (data, target))
        # The loss without the auxiliary terms
        result = compute_loss(model, data, target, lb_alpha=0.0, z_loss_coef=0.0, autocast=autocast)
        ce += result.ce.item()
        accuracy += result.accuracy.item()
        # Tokens routed to each expert, summed over batches, `[n_layers, n_experts]`
        if result.routing.layers:
            counts = torch.stack([r.tokens_per_expert.float() for r in result.routing.layers])
            routes = counts if routes is None else routes + counts
            dropped += sum(float(r.dropped_fraction) for r in result.routing.layers) / len(result.routing.layers)
    # Means over batches, then over the processes (their shards are the same size)
    n = len(batches)
    ce, accuracy, dropped = PG.mean_over_ranks(torch.tensor([ce, accuracy, dropped], dtype=torch.float64,
                                                           device=device) / n).tolist()
    out = {'loss.valid': ce, 'accuracy.valid': accuracy}
    if routes is not None:
        out['dropped.valid'] = dropped
        # The counts of all processes
        routes = PG.sum_over_ranks(routes).cpu()
        # Fractions: each row sums to one
        out['route_fraction'] = (routes / routes.sum(dim=1, keepdim=True)).tolist()
    #
    return out


@torch.no_grad()
def generate(model: nn.Module, itos: list[str], prompt: str, *, length: int, seq_len: int,
             temperature: float, device: torch.device, seed: int = 0) -> str:
    """
    ## Sampling

    Extend `prompt` by `length` characters, one at a time, feeding the model at most
    the last `seq_len` characters. A generator of its own (seeded by `seed`) draws the
    characters, so sampling does not disturb the training random state.
    """
    # Characters to numbers
    stoi = {s: i for i, s in enumerate(itos)}
    unknown = sorted(set(prompt) - set(stoi))
    if unknown:
        raise ConfigError(f'prompt has characters that are not in the vocabulary: {"".join(unknown)!r}')
    # An empty prompt starts at a new line
    ids = [stoi[s] for s in (prompt or '\n')]
    # Evaluation mode
    model.eval()
    # The sampling generator
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(length):
        # The context, `[min(len, seq_len), 1]`
        x = torch.tensor(ids[-seq_len:], device=device)[:, None]
        # The logits of the next character, `[n_vocab]`
        logits = model(x)[0][-1, 0].float()
        # The most likely character, or a sample at this temperature
        if temperature <= 0:
            ids.append(int(logits.argmax()))
        else:
            ids.append(int(torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=g)))
    #
    return ''.join(itos[i] for i in ids)


# ## Checkpoints
#
# What a resumed run needs to continue exactly as if it had never stopped: the
# weights and the optimiser's moments, the schedule's step, the data order, every
# process's random state, and the record of evaluations. And what sampling needs
# to rebuild the model without the data: the settings, the Switch layers'
# `SwitchConfig` (as a dictionary) and the vocabulary.

def save_state(conf: Configs, folder: Path, *, step: int, history: list, losses: list) -> Optional[Path]:
    """
    Save a checkpoint of `step` into `folder`. Every process takes part: in a single
    process, one file; with several, a sharded checkpoint to which each process writes
    its own experts and their Adam moments (nothing is gathered), with its random state.
    Rank 0 gets the path.
    """
    # The Switch options as the `SwitchConfig`; the other settings beside it
    switch = dataclasses.asdict(switch_config(values_of(conf)))
    settings = {k: v for k, v in values_of(conf).items() if k not in switch}
    # Everything a resumed run needs besides the weights, the moments and the random states
    state = {'step': step, 'settings': settings, 'switch': switch, 'itos': conf.dataset.itos,
             'scheduler': conf.scheduler.state_dict(), 'sampler': conf.sampler.state_dict(),
             'history': history, 'losses': losses}
    if PG.init_from_env().distributed:
        return save_sharded_checkpoint(folder, step, state, model=conf.net, optimizer=conf.optim,
                                       rank_state=rng_state())
    return save_checkpoint(folder, step, {**state, 'model': conf.net.state_dict(),
                                          'optimizer': conf.optim.state_dict(), 'rng_ranks': [rng_state()],
                                          'world_size': 1})


def load_state(conf: Configs, state: dict) -> tuple[int, list, list]:
    """
    Continue from a checkpoint's `state`. A sharded checkpoint loads on any number of
    processes whose expert-parallel degree divides `n_experts`, or in one: each process
    reads its slices. Each process takes its random state back when the checkpoint
    was saved by as many processes; otherwise (there is no "same process") it seeds
    its generators from the seed, its rank and the step. Returns the step, the
    evaluations so far and the training losses since the last one.
    """
    launch = PG.init_from_env()
    if 'sharded' in state:
        _, rng = load_sharded(state['sharded'], conf.net, conf.optim)
    else:
        if launch.world_size > 1:
            raise CheckpointError(f'a checkpoint of one process is a single file; resume it in one process '
                                  f'(this run has {launch.world_size})')
        conf.net.load_state_dict(state['model'])
        conf.optim.load_state_dict(state['optimizer'])
        rng = state['rng_ranks'][0]
    conf.scheduler.load_state_dict(state['scheduler'])
    conf.sampler.load_state_dict(state['sampler'])
    # This process's random state, or a fresh one of its own
    if rng is not None:
        set_rng_state(rng)
    else:
        torch.manual_seed(conf.seed + 1 + launch.rank + launch.world_size * state['step'])
    #
    return state['step'], state['history'], state['losses']


def checkpoint_settings(state: dict, path: Path) -> dict[str, Any]:
    """
    The settings a checkpoint was trained with, the Switch options included; a
    `CheckpointError` naming the file if it lacks them.
    """
    missing = [k for k in ('settings', 'switch', 'itos') if k not in state]
    missing += [] if 'model' in state or 'sharded' in state else ['model']
    if missing:
        raise CheckpointError(f'checkpoint {str(path)!r} is not a checkpoint of this experiment (no {missing[0]!r})')
    return {**state['settings'], **state['switch']}


# ## Stop requests

@dataclass
class StopRequest:
    """The signal that asked the loop to stop, if one did."""
    signum: Optional[int] = None


class Interrupted(Exception):
    """
    Training stopped on a signal, after saving a checkpoint of `step`.
    """

    def __init__(self, *, signum: int, step: int, checkpoint: Optional[Path]):
        super().__init__(f'stopped by {signal.Signals(signum).name} at step {step}')
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_status(self) -> int:
        """$128 + $ the signal's number, as a shell reports it."""
        return 128 + self.signum


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """
    While inside, `SIGINT` and `SIGTERM` set `request.signum` instead of stopping
    the process; a second one raises `KeyboardInterrupt` at once. The previous
    handlers come back on leaving. (Python lets only the main thread set handlers;
    elsewhere this does nothing.)
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        # A second signal: don't wait for the step
        if request.signum is not None:
            raise KeyboardInterrupt
        request.signum = signum

    # A signal the process was told to ignore (`SIGINT` in a shell's background job) stays ignored
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_signal(request: StopRequest, device: torch.device) -> Optional[int]:
    """
    The signal to stop on, if any process received one. With several processes they
    must stop at the same step (they run every step together), so they agree first.
    """
    if not PG.init_from_env().distributed:
        return request.signum
    # How many processes received each signal; `SIGTERM` (a scheduler's) wins over `SIGINT`
    kinds = (signal.SIGTERM, signal.SIGINT)
    got = PG.sum_over_ranks(torch.tensor([float(request.signum == s) for s in kinds], device=device)).tolist()
    return next((s for s, n in zip(kinds, got) if n > 0), None)


# ## The loop

@dataclass
class TrainResult:
    """
    What a run leaves behind: its folder, its last checkpoint, and the evaluations
    (one dictionary per evaluation: step, training and validation loss, ...).
    """
    run_dir: Path
    checkpoint: Optional[Path]
    history: list[dict[str, Any]] = field(default_factory=list)
    sample: str = ''


def train(conf: Configs, *, run_dir: Path, state: Optional[dict] = None,
          checkpoint: Optional[Path] = None) -> TrainResult:
    """
    Train from step 0, or from a checkpoint's `state` (read from `checkpoint`), to
    `conf.steps`. With several processes every process runs this, in lockstep; only
    rank 0 writes.
    """
    # This process's rank, of `world_size`
    launch = PG.init_from_env()
    # Build the model, optimiser, schedule and data order (labml computes them now)
    model, optim, scheduler, sampler = conf.net, conf.optim, conf.scheduler, conf.sampler
    # With several processes, DDP averages the replicated parameters' gradients during the backward pass
    ddp = data_parallel(model, device=conf.torch_device)
    # bf16 autocast on a GPU
    autocast = conf.precision == 'bfloat16' or (conf.precision == 'auto' and conf.torch_device.type == 'cuda')
    # Where checkpoints go
    folder = run_dir / 'checkpoints'
    # Continue exactly where the checkpoint stopped
    if state is not None:
        step, history, losses = load_state(conf, state)
    # ... or start from scratch, with dropout and jitter seeded differently in each process
    else:
        step, history, losses = 0, [], []
        torch.manual_seed(conf.seed + 1 + launch.rank)
    # The tracker counts optimiser steps
    tracker.set_global_step(step)
    # The clock of the tokens/s metric
    tokens, train_time = 0, 0.0
    with stop_requests() as request:
        for _ in monit.loop(range(step, conf.steps)):
            # The next global batch, `[seq_len, batch_size]` (the same in every process), and this process's share
            data, target = (PG.shard_batch(t).to(conf.torch_device) for t in sampler.next_batch())
            # One step, timed
            start = time.perf_counter()
            result = train_step(ddp, optim, scheduler, data, target, lb_alpha=conf.lb_alpha,
                                z_loss_coef=conf.z_loss_coef, grad_clip=conf.grad_clip, autocast=autocast)
            step += 1
            # This step's metrics over the global batch (labml averages them until the next `save`)
            metrics = step_metrics(result, 'train')
            tracker.add(metrics)
            losses.append(metrics['loss.train'])
            # The tokens of all processes
            tokens += data.numel() * launch.world_size
            train_time += time.perf_counter() - start
            # Write the tracked metrics every `log_interval` steps
            if step % conf.log_interval == 0 or step == conf.steps:
                tracker.save(step, {'tokens_per_sec': tokens / max(train_time, 1e-9),
                                    'lr': scheduler.get_last_lr()[0]})
                tokens, train_time = 0, 0.0
            # Evaluate every `eval_interval` steps and at the end
            if step % conf.eval_interval == 0 or step == conf.steps:
                valid = evaluate(model, conf.valid_batches, device=conf.torch_device, autocast=autocast)
                tracker.save(step, {k: v for k, v in valid.items() if k != 'route_fraction'})
                history.append({'step': step, 'loss.train': sum(losses) / max(len(losses), 1), **valid})
                losses = []
                tracker.new_line()
            # Save a checkpoint every `checkpoint_interval` steps and at the end
            saved = (conf.checkpoint_interval > 0 and step % conf.checkpoint_interval == 0) or step == conf.steps
            if saved:
                checkpoint = save_state(conf, folder, step=step, history=history, losses=losses)
            # Asked to stop: save this step (unless just saved) and leave
            signum = stop_signal(request, conf.torch_device)
            if signum is not None:
                if not saved:
                    checkpoint = save_state(conf, folder, step=step, history=history, losses=losses)
                raise Interrupted(signum=signum, step=step, checkpoint=checkpoint)
    # A sample of what the model learned (every process runs the model: its layers communicate)
    sample = generate(model, conf.dataset.itos, conf.sample_prompt, length=conf.sample_length,
                      seq_len=conf.seq_len, temperature=conf.temperature, device=conf.torch_device, seed=conf.seed)
    #
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint, history=history, sample=sample)
