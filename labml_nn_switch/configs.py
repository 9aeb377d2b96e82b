r"""
---
title: The experiment's settings and presets
summary: >
  Every setting of the Tiny Shakespeare experiment in one labml Configs class (the Switch
  layer's options taken from SwitchConfig), the named presets, and the objects labml
  computes from the settings: device, data, model, optimiser, schedule.
---

# Settings and presets

Every setting of the [experiment](experiment.py) is declared once, in `Configs`
below, with its type, its default and a note (`train --help` prints them). The
Switch layer's options are not repeated here: they are the fields of
[`SwitchConfig`](switch.py), which `SwitchSettings` turns into labml settings, and
`Configs` extends it. Every setting can be overridden from the command line as
`key=value`; a *preset* is a named set of such overrides.

Checking the settings follows the same rule: the Switch options and the sizes are
checked by the classes that take them (`SwitchConfig`, the layers, the builder),
by building the model once on PyTorch's `meta` device, which allocates nothing;
`check_settings` checks only the settings that no class takes.
"""

import dataclasses
import functools
import inspect
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from labml.configs import BaseConfigs, option

from labml_nn_switch import process_group as PG
from labml_nn_switch.expert_parallel import ExpertParallelSwitchFeedForward, expert_parallel_groups
from labml_nn_switch.data import CharText, WindowSampler, char_dataset, fixed_windows, load_text
from labml_nn_switch.experiment import AutoregressiveModel, build_model
from labml_nn_switch.switch import SwitchConfig


class ConfigError(ValueError):
    """
    A setting the user can fix (an unknown key, a value out of range). The command line
    prints its message as one line, without a traceback, and exits with status 2.
    """


# ## The Switch options, as labml settings
#
# labml reads a `Configs` class's annotated attributes. `SwitchSettings` is a
# `BaseConfigs` class made from `SwitchConfig`'s fields: each field's name, type
# and default, unchanged. The experiment's `Configs` extends it, so a Switch
# option is overridden like any other setting (`capacity_factor=1.0`), and
# `switch_config` turns the values back into the one `SwitchConfig`.
SwitchSettings = type('SwitchSettings', (BaseConfigs,), {
    '__module__': __name__,
    '__doc__': "The fields of `SwitchConfig`, as labml settings.",
    '__annotations__': {f.name: f.type for f in dataclasses.fields(SwitchConfig)},
    **{f.name: f.default for f in dataclasses.fields(SwitchConfig) if f.default is not dataclasses.MISSING},
})


def switch_config(values: Mapping[str, Any]) -> SwitchConfig:
    """
    The Switch layers' configuration from the values of the settings. `SwitchConfig`
    checks every field as it is made.
    """
    return SwitchConfig(**{f.name: values[f.name] for f in dataclasses.fields(SwitchConfig)})


# What the choice settings may be (each used where it is decided, below)
MODELS = ('switch', 'dense')
SCHEDULES = ('noam', 'adam')
PRECISIONS = ('auto', 'float32', 'bfloat16')


class Configs(SwitchSettings):
    """
    ## Configs

    The experiment's own settings; with the Switch options inherited from
    `SwitchSettings`. The defaults are labml_nn's model sizes and optimiser with the
    paper's Switch options (`SwitchConfig`'s defaults); the presets below change them.
    """
    # A named set of overrides applied first (`labml`, `fast`, `quick`); recorded for the record
    preset: str = ''
    # A text file to train on; empty for Tiny Shakespeare from labml's data folder
    data: str = ''
    # Whether Tiny Shakespeare may be downloaded when it is not in the data folder
    download: bool = True

    # `switch`, or `dense` for the FLOP-matched dense baseline
    model: str = 'switch'
    # Number of transformer layers
    n_layers: int = 6
    # Width of the model (a token's features)
    d_model: int = 128
    # Attention heads
    n_heads: int = 4
    # Hidden size of the feed-forward network (each expert's)
    d_ff: int = 256
    # Number of experts in each Switch layer
    n_experts: int = 4
    # Dropout in attention, on residual connections and in a dense model's feed-forward network
    dropout: float = 0.0
    # alpha, the weight of the load-balancing loss
    lb_alpha: float = 0.01
    # beta, the weight of the router z-loss (0 turns it off)
    z_loss_coef: float = 0.0

    # Characters per sequence
    seq_len: int = 64
    # Sequences per batch
    batch_size: int = 32
    # Optimiser steps to train for
    steps: int = 5000
    # The schedule: `noam` (warm-up, then decay as 1/sqrt(step)) or `adam` (warm-up, then constant)
    optimizer: str = 'noam'
    # The peak learning rate for `adam`; the factor of the Noam schedule for `noam`
    learning_rate: float = 1.0
    # Warm-up steps
    warmup: int = 2000
    # Adam's beta_1 (this and the next two are PyTorch's defaults)
    adam_beta1: float = 0.9
    # Adam's beta_2
    adam_beta2: float = 0.999
    # Adam's epsilon
    adam_eps: float = 1e-8
    # Gradients are clipped to this norm (0 turns clipping off)
    grad_clip: float = 1.0
    # Seed of the weights, dropout, jitter and data order
    seed: int = 0

    # Track training metrics every this many steps
    log_interval: int = 10
    # Evaluate every this many steps (and at the end)
    eval_interval: int = 250
    # Fixed validation batches per evaluation
    eval_batches: int = 8
    # Save a checkpoint every this many steps (and at the end; 0: only at the end)
    checkpoint_interval: int = 500
    # `auto` (a GPU when there is one), `cpu`, `cuda`, `cuda:1`, ...
    device: str = 'auto'
    # Under torchrun: the expert-parallel degree E, the processes of an expert group, each holding
    # n_experts / E experts of every layer (0: all the processes, one copy of each expert; 1: every
    # process holds every expert, pure data parallelism)
    ep: int = 0
    # Under torchrun: seconds a collective waits for the other processes before the run ends with an
    # error naming the process that stopped answering
    dist_timeout: float = 180.0
    # `auto` (bf16 autocast on a GPU, float32 on a CPU), `float32` or `bfloat16`
    precision: str = 'auto'
    # Text to continue at the end of training
    sample_prompt: str = 'It is'
    # Characters to generate at the end of training
    sample_length: int = 200
    # Temperature of sampling (0 picks the most likely character)
    temperature: float = 0.8

    # Objects computed from the settings above, by the `@option` functions below
    torch_device: torch.device
    dataset: CharText
    net: AutoregressiveModel
    optim: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: WindowSampler
    valid_batches: list


# ### Presets
#
# A preset is a named set of overrides, not a copy of code.
#
# * `labml` is labml_nn's Switch Transformer experiment
#   (`labml_nn/transformers/switch/experiment.py` and the optimiser configs it uses),
#   value for value: 6 layers of width 128, 4 experts of `d_ff` 256 with biases,
#   capacity factor 1.2 in training *and* evaluation, no dropout, the Noam schedule
#   with factor 1 and 2,000 warm-up steps, Adam with $\beta = (0.9, 0.999)$ and
#   $\epsilon = 10^{-8}$, gradients clipped at 1. (What labml_nn's model does
#   differently is listed on the Results page.)
# * `fast` is `labml` with half the warm-up, the Transformer paper's Adam
#   ($\beta_2 = 0.98$, $\epsilon = 10^{-9}$) and evaluation capacity factor 2.0: the
#   same model reaches a lower loss sooner.
# * `quick` is small enough to learn visibly in a few minutes on a laptop's CPU.
PRESETS: dict[str, dict[str, Any]] = {
    'labml': dict(model='switch', n_layers=6, d_model=128, n_heads=4, d_ff=256, n_experts=4, bias=True,
                  dropout=0.0, expert_dropout=0.0, capacity_factor=1.2, eval_capacity_factor=1.2, drop_tokens=True,
                  scale_by_gate=True, jitter_eps=0.0, lb_alpha=0.01, z_loss_coef=0.0, seq_len=64, batch_size=32,
                  optimizer='noam', learning_rate=1.0, warmup=2000, adam_beta1=0.9, adam_beta2=0.999,
                  adam_eps=1e-8, grad_clip=1.0),
}
PRESETS['fast'] = {**PRESETS['labml'], 'warmup': 1000, 'adam_beta2': 0.98, 'adam_eps': 1e-9,
                   'eval_capacity_factor': 2.0}
PRESETS['quick'] = dict(n_layers=2, d_model=64, n_heads=4, d_ff=128, n_experts=4, expert_dropout=0.0,
                        capacity_factor=1.2, eval_capacity_factor=2.0, seq_len=64, batch_size=16, optimizer='adam',
                        learning_rate=3e-3, warmup=50, adam_beta2=0.98, adam_eps=1e-9, steps=1500,
                        eval_interval=100, checkpoint_interval=500)


# ## Settings from the command line

def settings() -> dict[str, type]:
    """
    Every plain setting (`int`, `float`, `str`, `bool`) and its type, read off
    `Configs` and the classes it extends: the Switch options first.
    """
    out = {}
    for cls in reversed(Configs.__mro__):
        for key, kind in cls.__dict__.get('__annotations__', {}).items():
            if kind in (int, float, str, bool) and not key.startswith('_'):
                out[key] = kind
    return out


def defaults() -> dict[str, Any]:
    """Every setting's default value."""
    return {key: getattr(Configs, key).value for key in settings()}


def values_of(conf: Configs) -> dict[str, Any]:
    """The value of every setting of a run's `Configs`."""
    return {key: getattr(conf, key) for key in settings()}


def parse_setting(key: str, value: Any) -> Any:
    """
    A `key=value` string (or a value from a preset or a checkpoint) in the setting's
    type; numbers must be finite.
    """
    kinds = settings()
    # Unknown keys are the most common typo
    if key not in kinds:
        raise ConfigError(f'unknown setting {key!r} (train --help lists them)')
    kind = kinds[key]
    # Parse strings; take values of the right type as they are (an int for a float, too)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        try:
            value = {'true': True, 'false': False}[text] if kind is bool else kind(text)
        except (KeyError, ValueError):
            raise ConfigError(f'{key}={value!r} is not a valid {kind.__name__}') from None
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f'{key}={value!r} is not a valid {kind.__name__}')
    # `nan` and `inf` parse as floats but are no use as settings
    if kind is float and not math.isfinite(value):
        raise ConfigError(f'{key}={value!r} must be a finite number')
    #
    return value


def check_settings(values: Mapping[str, Any], *, world_size: int = 1):
    """
    ## Check the settings

    The model's settings are checked by building the model on the `meta` device: every
    check of `SwitchConfig`, the layers and the builder runs, and no memory is taken.
    The rest are checked here: the settings no class takes. `world_size` is the
    number of processes the run is split over.
    """
    # Named choices
    for key, choices in (('model', MODELS), ('optimizer', SCHEDULES), ('precision', PRECISIONS)):
        if values[key] not in choices:
            raise ConfigError(f'{key}={values[key]!r} must be one of {", ".join(choices)}')
    # The model
    try:
        with torch.device('meta'):
            build_model(values, switch=switch_config(values), n_vocab=1)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # Counts that must be positive, and amounts that may be zero
    for key in ('seq_len', 'batch_size', 'log_interval', 'eval_interval', 'eval_batches'):
        if values[key] <= 0:
            raise ConfigError(f'{key}={values[key]} must be positive')
    for key in ('steps', 'warmup', 'checkpoint_interval', 'sample_length', 'lb_alpha', 'z_loss_coef', 'grad_clip',
                'temperature'):
        if values[key] < 0:
            raise ConfigError(f'{key}={values[key]} must not be negative')
    # Adam
    if values['learning_rate'] <= 0 or values['adam_eps'] <= 0:
        raise ConfigError(f'learning_rate={values["learning_rate"]} and adam_eps={values["adam_eps"]} '
                          f'must be positive')
    for key in ('adam_beta1', 'adam_beta2'):
        if not 0 <= values[key] < 1:
            raise ConfigError(f'{key}={values[key]} must be in [0, 1)')
    # A device that exists
    if values['device'] != 'auto':
        try:
            kind = torch.device(values['device']).type
        except RuntimeError:
            raise ConfigError(f'device={values["device"]!r} is not a device (auto, cpu, cuda, cuda:N)') from None
        if kind == 'cuda' and not torch.cuda.is_available():
            raise ConfigError(f'device={values["device"]!r} but CUDA is not available here')
    # Several processes: each takes an equal share of every batch, and of every Switch layer's experts
    if values['batch_size'] % world_size:
        raise ConfigError(f'batch_size={values["batch_size"]} is not divisible by the number of processes '
                          f'({world_size}): each process takes an equal share of every batch')
    if values['ep'] < 0 or world_size % expert_parallel_degree(values, world_size):
        raise ConfigError(f'ep={values["ep"]} must divide the number of processes ({world_size}); '
                          f'0 takes them all')
    ep = expert_parallel_degree(values, world_size)
    if values['model'] == 'switch' and values['n_experts'] % ep:
        raise ConfigError(f'n_experts={values["n_experts"]} is not divisible by the expert-parallel degree '
                          f'({ep}): each process of an expert group holds an equal share of the experts')
    if values['dist_timeout'] <= 0:
        raise ConfigError(f'dist_timeout={values["dist_timeout"]} must be positive (seconds)')


def expert_parallel_degree(values: Mapping[str, Any], world_size: int) -> int:
    """$E$: `ep`, or all `world_size` processes for `ep=0`."""
    return values['ep'] or world_size


def explicit_settings(overrides: Mapping[str, Any], *, world_size: int = 1) -> dict[str, Any]:
    """
    The explicit settings of a run: the preset's overrides, then the user's, each in
    its type, checked together with the defaults.
    """
    # The preset first, if one is named
    preset = str(overrides.get('preset', '') or '')
    if preset and preset not in PRESETS:
        raise ConfigError(f'preset={preset!r} is unknown (known: {", ".join(PRESETS)})')
    explicit = {k: parse_setting(k, v) for k, v in {**PRESETS.get(preset, {}), **overrides}.items()}
    # Checked with the defaults of the rest
    check_settings({**defaults(), **explicit}, world_size=world_size)
    #
    return explicit


def setting_notes() -> dict[str, str]:
    """
    The note of every setting: the comment lines above it in the source of `Configs`
    or `SwitchConfig` (for `train --help`).
    """
    notes = {}
    for cls in (SwitchConfig, Configs):
        comment = []
        for line in inspect.getsource(cls).splitlines():
            line = line.strip()
            if line.startswith('#'):
                comment.append(line.lstrip('# ').replace('$', ''))
                continue
            match = re.match(r'(\w+)\s*:', line)
            if match and comment:
                notes[match.group(1)] = ' '.join(comment)
            comment = []
    return notes


# ## Computed configs
#
# labml computes these on first use, from the settings they read.

@option(Configs.torch_device)
def _torch_device(c: Configs) -> torch.device:
    """
    The device: with `device=auto`, a GPU when there is one (under torchrun, the GPU of
    this process's local rank).
    """
    return PG.init_from_env().device if c.device == 'auto' else torch.device(c.device)


@option(Configs.dataset)
def _dataset(c: Configs) -> CharText:
    """
    The text and its character vocabulary (see [`data.py`](data.py)).
    """
    return char_dataset(load_text(Path(c.data)))


@option(Configs.net)
def _net(c: Configs) -> AutoregressiveModel:
    """
    The model (see [`build_model`](experiment.py)), with its weights seeded by `seed`,
    on the device. With several processes, each builds only its share of the experts
    ([expert_parallel.py](expert_parallel.py)): the same weights the single process
    would hold, without ever holding the others.
    """
    # The same seed gives the same weights (in every process)
    torch.manual_seed(c.seed)
    # Built from the settings
    values = values_of(c)
    launch = PG.init_from_env()
    layer = None
    if launch.distributed:
        groups = expert_parallel_groups(expert_parallel_degree(values, launch.world_size))
        layer = functools.partial(ExpertParallelSwitchFeedForward, groups=groups)
    return build_model(values, switch=switch_config(values), n_vocab=c.dataset.n_tokens,
                       switch_layer=layer).to(c.torch_device)


def adam(parameters, **options) -> torch.optim.Adam:
    """
    `torch.optim.Adam` with `options`, in its fused implementation (one kernel for
    every parameter) where torch has one for the parameters' device, CPU or CUDA:
    on the CPU it takes about a third of the time of the default one, which loops
    over the parameters with several operations each. A Switch model has $N$ times
    the FFN parameters of its dense twin, so the update matters more.
    """
    parameters = list(parameters)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return torch.optim.Adam(parameters, fused=fused, **options)


@option(Configs.optim)
def _optim(c: Configs) -> torch.optim.Optimizer:
    """
    Adam, as in the paper's baselines and labml's experiment; the schedule sets its rate.
    """
    return adam(c.net.parameters(), lr=c.learning_rate, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps)


@option(Configs.scheduler)
def _scheduler(c: Configs) -> torch.optim.lr_scheduler.LambdaLR:
    r"""
    The learning-rate schedule, as a factor of `learning_rate` at optimiser step $s$
    (counting from 1):

    * `noam`: $d_{model}^{-0.5} \min(s^{-0.5}, s \cdot w^{-1.5})$ with $w$ warm-up steps
      (labml_nn's `Noam` optimiser computes the same rate)
    * `adam`: $\min(1, s / w)$, a linear warm-up, then constant

    A `LambdaLR` keeps its step in its `state_dict`, so the schedule resumes exactly.
    """
    # Warm-up steps (at least one, to avoid dividing by zero)
    w = max(1, c.warmup)
    # The factor at step $s$
    if c.optimizer == 'noam':
        def factor(s: int) -> float:
            return c.d_model ** -0.5 * min((s + 1) ** -0.5, (s + 1) * w ** -1.5)
    else:
        def factor(s: int) -> float:
            return min(1.0, (s + 1) / w)
    #
    return torch.optim.lr_scheduler.LambdaLR(c.optim, factor)


@option(Configs.sampler)
def _sampler(c: Configs) -> WindowSampler:
    """
    The seeded, resumable order of training windows (see [`data.py`](data.py)).
    """
    return WindowSampler(c.dataset.encode(c.dataset.train), seq_len=c.seq_len, batch_size=c.batch_size,
                         seed=c.seed)


@option(Configs.valid_batches)
def _valid_batches(c: Configs) -> list:
    """
    The fixed validation batches.
    """
    return fixed_windows(c.dataset.encode(c.dataset.valid), seq_len=c.seq_len, batch_size=c.batch_size,
                         n_batches=c.eval_batches)
