"""
---
title: Switch Transformer on Tiny Shakespeare
summary: >
  Train a character-level autoregressive Switch Transformer (or its FLOP-matched dense twin)
  on Tiny Shakespeare, tracked with labml, with resumable checkpoints and sampling.
---

# Switch Transformer on Tiny Shakespeare

This module trains a character-level language model on Tiny Shakespeare with the
[Switch Transformer](transformer.py) of this package, and its FLOP-matched dense
twin for comparison. It is also the experiment's command line:

```shell
python -m labml_nn_switch.experiment train preset=quick          # a few minutes on a CPU
python -m labml_nn_switch.experiment train preset=labml model=dense steps=2000
python -m labml_nn_switch.experiment train --resume               # continue the latest run
python -m labml_nn_switch.experiment sample --prompt "It is"       # from the latest checkpoint
torchrun --standalone --nproc-per-node 2 -m labml_nn_switch.experiment train preset=quick
```

The last line trains on two processes (two GPUs with NCCL, or two CPU processes with
gloo): each holds half of every layer's experts and takes half of every batch (see
*Several processes* below, and [`distributed.py`](distributed.py)).

Every setting is a key of `Configs` (below) and can be overridden as `key=value`;
a *preset* is a named set of such overrides.

## What comes from labml, and what is ours

[labml](https://github.com/labmlai/labml) 0.5.x tracks the experiment:
`experiment.create` / `configs` / `start` for the run and its configuration,
`labml.configs.BaseConfigs` and `@option` for the settings and the objects computed
from them, `tracker` for every metric, and `monit` for the progress of the loop.
Its writers are the screen and its local files (`logs/<name>/<run>/`); the labml app
is added only when you configure a URL (`labml_app_url` in the environment, or
`app_url` in `.labml.yaml`), so nothing reaches the network by default.

From labml-helpers we use `TextDataset` (the character vocabulary, in
[`data.py`](data.py)). Its `training_loop` and `metrics.accuracy` call labml
functions that 0.5 removed (`experiment.save_checkpoint`, `tracker.set_queue`), so
the loop, the accuracy and the [checkpoints](checkpoint.py) are written here;
so is the learning-rate schedule (labml-helpers' `NoamOpt` reads labml's global step,
which a checkpoint would not restore).
"""

import argparse
import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

# Large tensors on huge pages: PyTorch's CPU allocator asks for them when
# `THP_MEM_ALLOC_ENABLE=1` is set before torch is loaded. A fresh gradient of
# all experts (`[n_experts, d_model, d_ff]`) is allocated every step, and on
# 4 KiB pages its page faults can cost more than its arithmetic. (Set it to 0
# to turn it off; it does nothing if torch was imported before this module.)
os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')

import torch  # noqa: E402
import torch.nn.functional as F
from labml import experiment, lab, monit, tracker
from labml.configs import BaseConfigs, option
from torch import nn

from labml_nn_switch import distributed as D
from labml_nn_switch.checkpoint import (CHECKPOINT_FILE, find_checkpoint, latest_checkpoint, load_checkpoint,
                                        rng_state, save_checkpoint, set_rng_state)
from labml_nn_switch.data import (DataError, WindowSampler, char_dataset, find_text_file, fixed_windows, load_text,
                                  split_text)
from labml_nn_switch.switch import SwitchConfig
from labml_nn_switch.transformer import SwitchTransformer, TransformerRouting, build_transformer

# The name of the experiment: its runs go to `logs/switch_shakespeare/<run uuid>/`
EXPERIMENT_NAME = 'switch_shakespeare'


class ConfigError(ValueError):
    """
    A setting the user can fix (an unknown key, a value out of range). The command line
    prints its message as one line, without a traceback, and exits with status 2.
    """


class AutoregressiveModel(nn.Module):
    """
    ## The model

    Token embeddings plus learned position embeddings, the transformer with a causal
    mask (a character sees only the characters before it), and a linear layer that
    gives the logits of the next character.
    """

    def __init__(self, *, n_vocab: int, d_model: int, max_len: int, transformer: SwitchTransformer):
        """
        * `n_vocab` is the number of distinct characters
        * `d_model` is the width of the model
        * `max_len` is the longest sequence the position embeddings cover
        * `transformer` is a Switch (or dense) transformer from
          [`build_transformer`](transformer.py)
        """
        super().__init__()
        # Character embeddings
        self.embed = nn.Embedding(n_vocab, d_model)
        # Learned position embeddings, `[max_len, 1, d_model]`
        self.positions = nn.Parameter(torch.zeros(max_len, 1, d_model))
        #
        self.transformer = transformer
        # The readout: `d_model` to one logit per character
        self.readout = nn.Linear(d_model, n_vocab)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, TransformerRouting]:
        """
        * `x` is the characters, `[seq_len, batch_size]`

        Returns the logits `[seq_len, batch_size, n_vocab]` and the routing statistics
        of every Switch layer.
        """
        # Embed, `[seq_len, batch_size, d_model]`
        h = self.embed(x) + self.positions[:x.shape[0]]
        # The transformer, causal: position $t$ attends to positions $\le t$
        h, routing = self.transformer(h, is_causal=True)
        # Logits
        return self.readout(h), routing


class Configs(BaseConfigs):
    """
    ## Configs

    The defaults are the configuration of labml's original Switch Transformer
    experiment (the `labml` preset below). Every value can be overridden from the
    command line as `key=value`.
    """
    # A named set of overrides applied first (`quick`, `labml`); recorded here for the record
    preset: str = ''
    # A text file to train on; empty for Tiny Shakespeare from labml's data folder
    data: str = ''
    # Whether Tiny Shakespeare may be downloaded when it is not in the data folder
    download: bool = True

    # `switch`, or `dense` for the FLOP-matched dense baseline
    model: str = 'switch'
    # Number of transformer layers
    n_layers: int = 6
    # Width of the model
    d_model: int = 128
    # Attention heads
    n_heads: int = 4
    # Hidden size of the feed-forward network (each expert's)
    d_ff: int = 256
    # Number of experts in each Switch layer
    n_experts: int = 4
    # The feed-forward activation (`relu`, `gelu`, `silu`, `reglu`, `geglu`, `swiglu`)
    activation: str = 'relu'
    # Dropout in attention, residual connections and the feed-forward networks
    dropout: float = 0.0
    # Dropout inside the experts (the paper uses a higher rate there when fine-tuning)
    expert_dropout: float = 0.0
    # Expert capacity factor while training, and while evaluating
    capacity_factor: float = 1.2
    eval_capacity_factor: float = 2.0
    # Whether tokens over capacity are dropped (their feed-forward output is zero)
    drop_tokens: bool = True
    # Whether the most confident tokens get capacity first (else: in order of position)
    batch_prioritized: bool = False
    # Multiplicative jitter $\epsilon$ on the router input while training
    jitter_eps: float = 0.0
    # $\alpha$, the weight of the load-balancing loss
    lb_alpha: float = 0.01
    # $\beta$, the weight of the router z-loss (0 turns it off)
    z_loss_coef: float = 0.0

    # Characters per sequence, and sequences per batch
    seq_len: int = 64
    batch_size: int = 32
    # Optimiser steps to train for
    steps: int = 5000
    # `noam` (warm-up then $1/\sqrt{step}$ decay), or `adam` (warm-up then constant)
    optimizer: str = 'noam'
    # The peak learning rate for `adam`; the factor of the Noam schedule for `noam`
    learning_rate: float = 1.0
    # Warm-up steps
    warmup: int = 1000
    # Gradients are clipped to this norm (0 turns clipping off)
    grad_clip: float = 1.0
    # Seed of the weights, dropout, jitter and data order
    seed: int = 0

    # Track training metrics every `log_interval` steps
    log_interval: int = 10
    # Evaluate every `eval_interval` steps (and at the end), on `eval_batches` fixed batches
    eval_interval: int = 250
    eval_batches: int = 8
    # Save a checkpoint every `checkpoint_interval` steps (and at the end; 0: only at the end)
    checkpoint_interval: int = 500
    # `auto` (a GPU when there is one), `cpu`, `cuda`, `cuda:1`, ...
    device: str = 'auto'
    # `auto` (bf16 autocast on a GPU, float32 on a CPU), `float32` or `bfloat16`
    precision: str = 'auto'
    # Text generated at the end of training
    sample_prompt: str = 'It is'
    sample_length: int = 200
    # Temperature of sampling (0 picks the most likely character)
    temperature: float = 0.8

    # Objects computed from the settings above, by the `@option` functions below
    torch_device: torch.device
    dataset: Any
    net: AutoregressiveModel
    optim: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: WindowSampler
    valid_batches: list


# The settings that are plain values (they go into checkpoints and onto the command line)
SETTINGS: dict[str, type] = {k: t for k, t in Configs.__annotations__.items() if t in (int, float, str, bool)}

# ### Presets
#
# A preset is a named set of overrides, not a copy of code. `labml` is the
# configuration of labml's original Switch Transformer experiment; `quick` is
# small enough to learn visibly in a few minutes on a laptop's CPU.
PRESETS: dict[str, dict[str, Any]] = {
    'labml': dict(model='switch', n_layers=6, d_model=128, n_heads=4, d_ff=256, n_experts=4,
                  capacity_factor=1.2, drop_tokens=True, dropout=0.0, seq_len=64, batch_size=32,
                  optimizer='noam', learning_rate=1.0, warmup=1000, steps=5000),
    'quick': dict(n_layers=2, d_model=64, n_heads=4, d_ff=128, n_experts=4, seq_len=64, batch_size=16,
                  optimizer='adam', learning_rate=3e-3, warmup=50, steps=1500,
                  log_interval=10, eval_interval=100, eval_batches=8, checkpoint_interval=500),
}

# The values some settings must take
CHOICES: dict[str, tuple[str, ...]] = {
    'model': ('switch', 'dense'),
    'optimizer': ('adam', 'noam'),
    'activation': ('relu', 'gelu', 'silu', 'reglu', 'geglu', 'swiglu'),
    'precision': ('auto', 'float32', 'bfloat16'),
}


# ### Computed configs
#
# labml computes these on first use, from the settings they read.

@option(Configs.torch_device)
def _torch_device(c: Configs) -> torch.device:
    """
    The device: with `device=auto`, a GPU when there is one (under torchrun, the GPU of
    this process's local rank).
    """
    # `auto` takes the device `init_from_env` chose for this process
    if c.device == 'auto':
        return D.init_from_env().device
    #
    return torch.device(c.device)


@option(Configs.dataset)
def _dataset(c: Configs):
    """
    The text and its character vocabulary (see [`data.py`](data.py)).
    """
    return char_dataset(load_text(Path(c.data)))


def build_model(settings: dict[str, Any], *, n_vocab: int) -> AutoregressiveModel:
    """
    The model from the settings: `model=switch` builds Switch layers, `model=dense` the
    dense twin with one feed-forward network of the same `d_ff` per layer. A top-1
    Switch layer runs one expert per token, so both do the same FLOPs per token (plus
    the router's tiny `d_model x n_experts` matrix). Training and sampling both build
    the model here, training from its `Configs`, sampling from a checkpoint's settings.
    """
    s = settings
    # The Switch layers' one configuration, from the settings that name its fields
    config = SwitchConfig(**{f.name: s[f.name] for f in dataclasses.fields(SwitchConfig) if f.name in s})
    # The transformer
    transformer = build_transformer(config, kind=s['model'], n_layers=s['n_layers'], n_heads=s['n_heads'],
                                    dropout=s['dropout'])
    # With embeddings and readout
    return AutoregressiveModel(n_vocab=n_vocab, d_model=s['d_model'], max_len=s['seq_len'], transformer=transformer)


@option(Configs.net)
def _net(c: Configs) -> AutoregressiveModel:
    """
    The model (see `build_model`), with its weights seeded by `seed`, on the device.
    With several processes, each keeps only its share of the experts.
    """
    # The same seed gives the same weights (in every process)
    torch.manual_seed(c.seed)
    # Built from the settings
    model = build_model({k: getattr(c, k) for k in SETTINGS}, n_vocab=c.dataset.n_tokens).to(c.torch_device)
    # Several processes: each keeps its $N / W$ experts per layer, and rank 0's copy of the rest
    if D.init_from_env().distributed:
        model = D.expert_parallel(model)
    #
    return model


@option(Configs.optim)
def _optim(c: Configs) -> torch.optim.Optimizer:
    """
    Adam, as in the paper's baselines and labml's experiment; the schedule sets its rate.
    """
    return torch.optim.Adam(c.net.parameters(), lr=c.learning_rate, betas=(0.9, 0.98), eps=1e-9)


@option(Configs.scheduler)
def _scheduler(c: Configs) -> torch.optim.lr_scheduler.LambdaLR:
    r"""
    The learning-rate schedule, as a factor of `learning_rate` at optimiser step $s$
    (counting from 1):

    * `noam`: $d_{model}^{-0.5} \min(s^{-0.5}, s \cdot w^{-1.5})$ with $w$ warm-up steps
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
    return WindowSampler(c.dataset.text_to_i(c.dataset.train), seq_len=c.seq_len, batch_size=c.batch_size,
                         seed=c.seed)


@option(Configs.valid_batches)
def _valid_batches(c: Configs) -> list:
    """
    The fixed validation batches.
    """
    return fixed_windows(c.dataset.text_to_i(c.dataset.valid), seq_len=c.seq_len, batch_size=c.batch_size,
                         n_batches=c.eval_batches)


# ## The loss and the metrics

@dataclass
class StepResult:
    """
    What a forward pass gives: the cross-entropy, the accuracy, the total loss and
    the routing statistics of every Switch layer.
    """
    ce: torch.Tensor
    accuracy: torch.Tensor
    loss: torch.Tensor
    routing: TransformerRouting


def compute_loss(model: nn.Module, data: torch.Tensor, target: torch.Tensor, *,
                 lb_alpha: float, z_loss_coef: float, autocast: bool) -> StepResult:
    r"""
    ### The loss

    $$\mathcal{L} = \mathcal{L}_{CE}
      + \alpha \sum_{l=1}^{L} N \sum_{i=1}^{N} f_{l,i} P_{l,i}
      + \beta \sum_{l=1}^{L} \frac{1}{T} \sum_{x} \Big(\log \sum_j e^{h_j(x)}\Big)^2$$

    the cross-entropy of the next character, plus $\alpha$ times the load-balancing
    loss of every Switch layer $l$ ($f_{l,i}$ is the fraction of tokens routed to
    expert $i$, $P_{l,i}$ the mean router probability of expert $i$), plus $\beta$ times
    the router z-loss (averaged over the $T$ tokens $x$ of the batch, $h(x)$ the router
    logits). A dense model has no Switch layers, and only the cross-entropy.

    * `data` and `target` are `[seq_len, batch_size]`
    * `autocast` runs the forward pass in bf16 (the router stays float32 inside the layer)
    """
    # The forward pass, under bf16 autocast on a GPU
    with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits, routing = model(data)
    # Cross-entropy in float32 over all `seq_len * batch_size` positions
    ce = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
    # The fraction of characters predicted right
    accuracy = (logits.argmax(dim=-1) == target).float().mean()
    # The total loss
    loss = ce + lb_alpha * routing.load_balancing_loss + z_loss_coef * routing.z_loss
    #
    return StepResult(ce=ce, accuracy=accuracy, loss=loss, routing=routing)


def step_metrics(result: StepResult, suffix: str) -> dict[str, float]:
    """
    ### The metrics of a step

    The cross-entropy, the accuracy and the two auxiliary losses, and (for a Switch
    model) the routing metrics below, all of the *global* batch. With several processes
    each computed them on its own shard; the shards are the same size, so the mean over
    the processes is the mean over the global batch. Every process must call this (it
    communicates), and every process gets the same numbers.
    """
    # This process's means, `[4]`
    local = torch.stack([result.ce.detach().float(), result.accuracy.float(),
                         result.routing.load_balancing_loss.detach().float(), result.routing.z_loss.detach().float()])
    # Averaged over the processes (one all-reduce)
    ce, accuracy, lb_loss, z_loss = D.mean_over_ranks(local).tolist()
    #
    return {f'loss.{suffix}': ce, f'accuracy.{suffix}': accuracy, f'lb_loss.{suffix}': lb_loss,
            f'z_loss.{suffix}': z_loss, **routing_metrics(result.routing, suffix)}


def routing_metrics(routing: TransformerRouting, suffix: str) -> dict[str, float]:
    """
    ### Routing metrics

    Per layer $l$: the smallest, largest and standard deviation of the fraction of
    tokens routed to each expert (perfect balance is $1/N$ for all, a std of 0); over
    all layers: the fraction of tokens dropped for capacity and the mean probability
    of the chosen expert. Of the global batch: the token counts are summed over the
    processes, the fractions averaged.
    """
    # A dense model routes nothing
    if not routing.layers:
        return {}
    # Tokens routed to each expert of each layer, summed over the processes, `[n_layers, n_experts]`
    counts = D.sum_over_ranks(torch.stack([r.tokens_per_expert.float() for r in routing.layers]))
    # The fraction routed to each expert
    fraction = counts / counts.sum(dim=1, keepdim=True)
    metrics = {}
    for l, f in enumerate(fraction):
        # Their spread
        metrics[f'route.min.{l}'] = f.min().item()
        metrics[f'route.max.{l}'] = f.max().item()
        metrics[f'route.std.{l}'] = f.std(unbiased=False).item()
    # Dropped tokens and gate probabilities, averaged over layers, then over the processes
    local = torch.stack([torch.stack([r.dropped_fraction.float() for r in routing.layers]).mean(),
                         torch.stack([r.max_prob.float().mean() for r in routing.layers]).mean()])
    metrics[f'dropped.{suffix}'], metrics[f'max_prob.{suffix}'] = D.mean_over_ranks(local).tolist()
    #
    return metrics


# ## The training step
#
# One optimiser step, and nothing else: the loop around it does the logging,
# evaluation and checkpoints.

def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
               data: torch.Tensor, target: torch.Tensor, *,
               lb_alpha: float, z_loss_coef: float, grad_clip: float, autocast: bool) -> StepResult:
    """
    * `data` and `target` are `[seq_len, batch_size]` characters, `target` one ahead
    """
    # Training mode: dropout and router jitter on, the training capacity factor
    model.train()
    # The loss of this batch
    result = compute_loss(model, data, target, lb_alpha=lb_alpha, z_loss_coef=z_loss_coef, autocast=autocast)
    # Clear the previous gradients
    optimizer.zero_grad(set_to_none=True)
    # Back-propagate (through the all-to-alls, with several processes)
    result.loss.backward()
    # Average the gradients over the processes (nothing to do in a single process)
    D.sync_gradients(model)
    # Clip the gradient norm of the whole model, whose experts may be spread over the processes
    if grad_clip > 0:
        D.clip_grad_norm_(model, grad_clip)
    # Update the parameters
    optimizer.step()
    # Advance the learning-rate schedule
    scheduler.step()
    #
    return result


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
        data, target = (D.shard_batch(t).to(device) for t in (data, target))
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
    ce, accuracy, dropped = D.mean_over_ranks(torch.tensor([ce, accuracy, dropped], dtype=torch.float64,
                                                           device=device) / n).tolist()
    out = {'loss.valid': ce, 'accuracy.valid': accuracy}
    if routes is not None:
        out['dropped.valid'] = dropped
        # The counts of all processes
        routes = D.sum_over_ranks(routes).cpu()
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


# ## The training loop

@dataclass
class TrainResult:
    """
    What a run leaves behind: its folder, its last checkpoint, and the evaluations
    (one dictionary per evaluation: step, training and validation loss, ...).
    """
    run_dir: Path
    checkpoint: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    sample: str = ''


def train(conf: Configs, *, run_dir: Path, state: Optional[dict] = None) -> TrainResult:
    """
    Train from step 0, or from a checkpoint's `state`, to `conf.steps`. With several
    processes every process runs this, in lockstep; only rank 0 writes.
    """
    # This process's rank, of `world_size`
    launch = D.init_from_env()
    # Build the model, optimiser, schedule and data order (labml computes them now)
    model, optim, scheduler, sampler = conf.net, conf.optim, conf.scheduler, conf.sampler
    # bf16 autocast on a GPU
    autocast = conf.precision == 'bfloat16' or (conf.precision == 'auto' and conf.torch_device.type == 'cuda')
    # Where checkpoints go
    checkpoint = run_dir / 'checkpoints' / CHECKPOINT_FILE
    # Start from scratch: no step done, no evaluation, no training losses since the last one
    step, history, losses = 0, [], []
    # ... or continue exactly where the checkpoint stopped
    if state is not None:
        # The checkpoint holds the whole model: each process takes its experts and the rest
        D.load_full_state_dict(model, state['model'])
        # Likewise the optimiser's moments
        D.load_full_optimizer_state_dict(model, optim, state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        sampler.load_state_dict(state['sampler'])
        # This process's random state (older checkpoints hold only one)
        set_rng_state(state['rng_ranks'][launch.rank] if 'rng_ranks' in state else state['rng'])
        step, history, losses = state['step'], state['history'], state['losses']
    else:
        # Seed dropout and jitter (the weights were seeded when built), differently in each process
        torch.manual_seed(conf.seed + 1 + launch.rank)
    # The tracker counts optimiser steps
    tracker.set_global_step(step)

    def save():
        # The whole model and the optimiser's state, the experts gathered from every process
        model_state, optim_state = D.full_state_dict(model), D.full_optimizer_state_dict(model, optim)
        # Every process's random state, in rank order
        rngs = D.gather_objects(rng_state())
        # Rank 0 writes everything a resumed run needs
        if D.is_main_process():
            save_checkpoint(checkpoint, {
                'step': step, 'config': {k: getattr(conf, k) for k in SETTINGS},
                'model': model_state, 'optimizer': optim_state, 'scheduler': scheduler.state_dict(),
                'sampler': sampler.state_dict(), 'rng': rng_state(), 'rng_ranks': rngs,
                'world_size': launch.world_size, 'itos': conf.dataset.itos, 'history': history, 'losses': losses,
            })

    # The clock of the tokens/s metric
    tokens, train_time = 0, 0.0
    for _ in monit.loop(range(step, conf.steps)):
        # The next global batch, `[seq_len, batch_size]` (the same in every process), and this process's share
        data, target = (D.shard_batch(t).to(conf.torch_device) for t in sampler.next_batch())
        # One step, timed
        start = time.perf_counter()
        result = train_step(model, optim, scheduler, data, target, lb_alpha=conf.lb_alpha,
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
        if (conf.checkpoint_interval > 0 and step % conf.checkpoint_interval == 0) or step == conf.steps:
            save()
    # A sample of what the model learned (every process runs the model: its layers communicate)
    sample = generate(model, conf.dataset.itos, conf.sample_prompt, length=conf.sample_length,
                      seq_len=conf.seq_len, temperature=conf.temperature, device=conf.torch_device, seed=conf.seed)
    #
    return TrainResult(run_dir=run_dir, checkpoint=checkpoint, history=history, sample=sample)


# ## Settings from the command line

def convert(key: str, value: Any) -> Any:
    """
    Turn a `key=value` string into the setting's type (`int`, `float`, `bool`, `str`);
    values that already have the type pass through.
    """
    # Unknown keys are the most common typo
    if key not in SETTINGS:
        raise ConfigError(f'unknown config key {key!r} (known: {", ".join(SETTINGS)})')
    kind = SETTINGS[key]
    # Already the right type (a bool is not accepted as an int)
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # Parse strings
    text = str(value).strip()
    try:
        if kind is bool:
            return {'true': True, '1': True, 'yes': True, 'false': False, '0': False, 'no': False}[text.lower()]
        number = kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f'{key}={value!r} is not a valid {kind.__name__}') from None
    # `nan` and `inf` parse as floats but are no use as settings
    if kind is float and not math.isfinite(number):
        raise ConfigError(f'{key}={value!r} must be a finite number')
    #
    return number


def check(values: dict[str, Any], *, world_size: int = 1):
    """
    Check that the values make sense together, before anything is built.
    `world_size` is the number of processes the run is split over.
    """
    # Counts and sizes must be positive
    for key in ('n_layers', 'd_model', 'n_heads', 'd_ff', 'n_experts', 'seq_len', 'batch_size',
                'log_interval', 'eval_interval', 'eval_batches'):
        if values[key] <= 0:
            raise ConfigError(f'{key}={values[key]} must be positive')
    # These may be zero
    for key in ('steps', 'warmup', 'checkpoint_interval', 'sample_length', 'lb_alpha', 'z_loss_coef',
                'grad_clip', 'jitter_eps', 'temperature'):
        if values[key] < 0:
            raise ConfigError(f'{key}={values[key]} must not be negative')
    # Probabilities
    for key in ('dropout', 'expert_dropout'):
        if not 0 <= values[key] < 1:
            raise ConfigError(f'{key}={values[key]} must be in [0, 1)')
    # Rates and capacity factors
    for key in ('learning_rate', 'capacity_factor', 'eval_capacity_factor'):
        if values[key] <= 0:
            raise ConfigError(f'{key}={values[key]} must be positive')
    # Named choices
    for key, choices in CHOICES.items():
        if values[key] not in choices:
            raise ConfigError(f'{key}={values[key]!r} must be one of {", ".join(choices)}')
    # Heads split the width evenly
    if values['d_model'] % values['n_heads']:
        raise ConfigError(f'd_model={values["d_model"]} is not divisible by n_heads={values["n_heads"]}')
    # A device that exists
    device = values['device']
    if device != 'auto':
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ConfigError(f'device={device!r} is not a device (auto, cpu, cuda, cuda:N)') from None
        if kind == 'cuda' and not torch.cuda.is_available():
            raise ConfigError(f'device={device!r} but CUDA is not available here')
    # Several processes: each takes an equal share of every batch
    if values['batch_size'] % world_size:
        raise ConfigError(f'batch_size={values["batch_size"]} is not divisible by the number of processes '
                          f'({world_size}): each process takes an equal share of every batch')
    # ... and of every Switch layer's experts
    if values['model'] == 'switch' and values['n_experts'] % world_size:
        raise ConfigError(f'n_experts={values["n_experts"]} is not divisible by the number of processes '
                          f'({world_size}): each process holds an equal share of the experts')


def resolve(overrides: dict[str, Any], *, world_size: int = 1) -> dict[str, Any]:
    """
    The explicit settings of a run: the preset's overrides, then the user's, checked
    together with the defaults (for a run on `world_size` processes).
    """
    # The preset first, if one is named
    preset = str(overrides.get('preset', '') or '')
    if preset and preset not in PRESETS:
        raise ConfigError(f'preset={preset!r} is unknown (known: {", ".join(PRESETS)})')
    explicit = {**PRESETS.get(preset, {}), **overrides}
    # Each value in its type
    explicit = {k: convert(k, v) for k, v in explicit.items()}
    # Checked together with the defaults
    check({**{k: getattr(Configs, k).value for k in SETTINGS}, **explicit}, world_size=world_size)
    #
    return explicit


def check_text(text: str, values: dict[str, Any]):
    """
    The text must hold at least one window of `seq_len + 1` characters in each split.
    """
    seq_len = values['seq_len']
    for name, split in zip(('train', 'valid'), split_text(text)):
        if seq_len + 1 > len(split):
            raise ConfigError(f'seq_len={seq_len} is larger than the {name} text ({len(split)} characters)')


def labml_root():
    """
    Put labml's `logs/` and `data/` folders in the project: the folder of the nearest
    `.labml.yaml` above the working directory, else the working directory.
    """
    # Look upwards for labml's settings file
    cwd = Path.cwd().resolve()
    root = next((p for p in (cwd, *cwd.parents) if (p / '.labml.yaml').is_file()), cwd)
    # Tell labml
    lab.configure({'path': str(root)})


def writers() -> set[str]:
    """
    The screen and labml's local files; the labml app only when a URL is configured.
    """
    app_url = lab.get_info()['configs'].get('app_url') or os.environ.get('labml_app_url')
    return {'screen', 'file', 'app'} if app_url else {'screen', 'file'}


# ## Several processes
#
# `torchrun --nproc-per-node W -m labml_nn_switch.experiment train ...` starts $W$
# processes (*ranks*), each running `run_train` below; [`distributed.py`](distributed.py)
# explains the layer. What changes, compared with one process:
#
# * **The model.** Every rank builds it from the same seed; `expert_parallel` then
#   keeps $N / W$ experts of every Switch layer on each rank and copies rank 0's
#   other weights to all. A dense model is simply replicated.
# * **The data.** Every rank draws the same global batch of `batch_size` sequences from
#   the same seeded sampler and keeps its own $1 / W$ of it (`shard_batch`), so the
#   ranks see different data, the data order is that of one process, and it resumes
#   exactly. Evaluation batches are split the same way.
# * **The step.** The loss of each rank is over its shard; `sync_gradients` averages
#   the gradients (DDP's job) and `clip_grad_norm_` clips the norm of the whole model.
#   Dropout and jitter are seeded with `seed + 1 + rank`: each rank draws its own
#   noise, and rank 0 starts as a single process would.
# * **Capacity.** Each rank applies the capacity to its own tokens (`distributed.py`
#   explains why), so a run on $W$ processes drops tokens as $W$ single-process
#   layers on $1 / W$ of the batch would.
# * **Writing.** Rank 0 alone writes labml's logs and the checkpoints; the other ranks
#   run labml's `experiment.evaluate()`, which records nothing. The metrics are of
#   the global batch (`step_metrics`), so every rank computes them.
# * **Checkpoints.** Every rank takes part in `save()` (the experts and their Adam
#   moments are gathered into the single-process layout, with every rank's random
#   state), rank 0 writes. So a checkpoint from $W$ processes also loads into one
#   ordinary model to `sample`; it *resumes* on $W$ processes, each taking its
#   experts and its own random state back.
# * **Files.** Rank 0 decides which files: it finds (or downloads) the text, and finds
#   the checkpoint to resume, and sends the paths to the others (`on_main_process`),
#   so that all go the same way, or stop with the same error. Every process then reads
#   them from that path (on several machines: a shared file system).
# * **Lockstep.** The ranks communicate inside every forward and backward pass, so
#   every rank runs every step, evaluation, save and sample, even where rank 0 alone
#   uses the result.
#
# NCCL runs it on GPUs (one per process, the GPU of its local rank), gloo on CPUs
# (where no GPU is visible: `CUDA_VISIBLE_DEVICES= torchrun ...` hides them).

def on_main_process(fn: Callable[[], Any]) -> Any:
    """
    `fn()` on rank 0 alone, its result given to every process. A `ConfigError` or
    `DataError` it raises is raised in every process, so that all stop together
    (and none waits for the others in a collective). Just `fn()` in a single process.
    """
    result, error = None, None
    # Rank 0 does the work
    if D.is_main_process():
        try:
            result = fn()
        except (ConfigError, DataError) as e:
            error = e
    # The others get its answer
    result, error = D.broadcast_object((result, error))
    if error is not None:
        raise error
    #
    return result


def find_resume(resume: str) -> Path:
    """
    The checkpoint to resume: of a run folder or checkpoint file, or the latest of any run.
    """
    # The newest of any run, or the one named
    path = (latest_checkpoint(lab.get_experiments_path() / EXPERIMENT_NAME) if resume == 'latest'
            else find_checkpoint(Path(resume)))
    # None: say where we looked
    if path is None:
        where = lab.get_experiments_path() / EXPERIMENT_NAME if resume == 'latest' else resume
        raise ConfigError(f'no checkpoint to resume from in {str(where)!r}')
    #
    return path


# Settings that may change when a run is resumed (the rest must match the checkpoint)
RESUMABLE = {'steps', 'log_interval', 'eval_interval', 'checkpoint_interval', 'data', 'download', 'device',
             'precision', 'sample_prompt', 'sample_length', 'temperature'}


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
    launch = D.init_from_env()
    # Continue a run: its checkpoint holds its settings
    state = None
    if resume:
        # labml's folders, to find the runs
        labml_root()
        # Rank 0 finds the checkpoint (for `latest`, the newest it sees); every process loads it
        state = load_checkpoint(on_main_process(lambda: find_resume(resume)))
        # Each process of the run saved its random state: the same number must continue it
        if state.get('world_size', 1) != launch.world_size:
            raise ConfigError(f'the checkpoint was saved by {state.get("world_size", 1)} process(es); resume it on '
                              f'as many (this run has {launch.world_size})')
        # Only a few settings may change
        overrides = {k: convert(k, v) for k, v in overrides.items()}
        for k, v in overrides.items():
            if k not in RESUMABLE and v != state['config'][k]:
                raise ConfigError(f'cannot change {k} when resuming (the checkpoint has {k}={state["config"][k]!r})')
        overrides = {**state['config'], **overrides}
    # The checked settings
    explicit = resolve(overrides, world_size=launch.world_size)
    # Every process must have been given the same settings
    try:
        D.check_same_on_all_ranks(explicit, what='the settings')
    except ValueError as e:
        raise ConfigError(str(e)) from None
    # labml's folders (`logs/` and `data/`)
    labml_root()
    values = {**{k: getattr(Configs, k).value for k in SETTINGS}, **explicit}
    # Several processes run where `init_from_env` put them: the GPU of their local rank, or the CPU
    if launch.distributed and values['device'] not in ('auto', launch.device.type):
        raise ConfigError(f'device={values["device"]!r} with {launch.world_size} processes: each uses '
                          f'{launch.device.type} here (device=auto); to train on CPUs on a machine with GPUs, '
                          f'hide them: CUDA_VISIBLE_DEVICES= torchrun ...')
    # Find (or download) the text, on rank 0 alone, and check that it is long enough
    path = on_main_process(lambda: find_text_file(values['data'] or None, data_dir=lab.get_data_path(),
                                                  allow_download=values['download']))
    text = load_text(path)
    check_text(text, values)
    explicit['data'] = str(path)
    # A resumed run must see the same characters, and not go backwards
    if state is not None:
        if sorted(set(text)) != state['itos']:
            raise ConfigError(f'data={str(path)!r} has a different vocabulary from the checkpoint')
        if values['steps'] < state['step']:
            raise ConfigError(f'steps={values["steps"]} is less than the checkpoint\'s step ({state["step"]})')
    # The labml experiment: rank 0 records it; the other processes run one that writes nothing
    comment = f'resumed from step {state["step"]}' if state else ''
    if D.is_main_process():
        experiment.create(name=EXPERIMENT_NAME, python_file=__file__, comment=comment,
                          writers=labml_writers if labml_writers is not None else writers())
    else:
        experiment.evaluate()
    # The run's folder, as rank 0 named it
    run_dir = D.broadcast_object(lab.get_experiments_path() / EXPERIMENT_NAME / experiment.get_uuid())
    # Per-layer metrics are tracked but not printed. (We don't call `tracker.reset()`: in labml
    # 0.5.3 a second call fails, as it consumes labml's default indicator settings.)
    tracker.set_scalar('route.*', is_print=False)
    tracker.set_scalar('lr', is_print=False)
    # The configs, with the explicit settings
    conf = Configs()
    experiment.configs(conf, explicit)
    # Run it
    with experiment.start():
        result = train(conf, run_dir=run_dir, state=state)
    # Show the sample, once
    if D.is_main_process():
        print(f'\n--- sample ---\n{result.sample}\n---')
        print(f'checkpoint: {result.checkpoint}')
    #
    return result


def run_sample(*, checkpoint: Optional[str], prompt: str, length: int, temperature: float, seed: int,
               device: str = 'auto') -> str:
    """
    ## Sample from a checkpoint

    Rebuilds the model from the settings saved in the checkpoint (no data file needed).
    """
    # Find the checkpoint: a given path, or the latest of any run
    labml_root()
    path = (find_checkpoint(Path(checkpoint)) if checkpoint
            else latest_checkpoint(lab.get_experiments_path() / EXPERIMENT_NAME))
    if path is None:
        where = checkpoint or str(lab.get_experiments_path() / EXPERIMENT_NAME)
        raise ConfigError(f'no checkpoint found in {where!r}; train first, or pass checkpoint=PATH')
    state = load_checkpoint(path)
    # The model, built as in training
    model = build_model(state['config'], n_vocab=len(state['itos']))
    # Its trained weights
    model.load_state_dict(state['model'])
    # On the device
    torch_device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device)
    model.to(torch_device)
    # Generate
    return generate(model, state['itos'], prompt, length=length, seq_len=state['config']['seq_len'],
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


def main(argv: Optional[list[str]] = None) -> int:
    """
    `python -m labml_nn_switch.experiment train [key=value ...] [--data PATH] [--resume [RUN]]`
    and `python -m labml_nn_switch.experiment sample --prompt TEXT [checkpoint=PATH] [length=N]`.
    Errors the user can fix print one line and return 2.
    """
    parser = argparse.ArgumentParser(prog='python -m labml_nn_switch.experiment',
                                     description='Switch Transformer on Tiny Shakespeare')
    commands = parser.add_subparsers(dest='command', required=True)
    # `train`
    p = commands.add_parser('train', help='train a model', epilog=f'presets: {", ".join(PRESETS)}; '
                            f'config keys: {", ".join(SETTINGS)}')
    p.add_argument('settings', nargs='*', metavar='key=value', help='config overrides, e.g. preset=quick steps=200')
    p.add_argument('--data', help='the text file to train on (as data=PATH)')
    p.add_argument('--resume', nargs='?', const='latest', metavar='RUN',
                   help='continue a run folder or checkpoint (the latest run if none is named)')
    # `sample`
    p = commands.add_parser('sample', help='generate text from a checkpoint')
    p.add_argument('settings', nargs='*', metavar='key=value',
                   help='checkpoint=PATH, length=N, temperature=T, seed=S, device=D')
    p.add_argument('--prompt', default='It is', help='the text to continue')
    args = parser.parse_args(argv)
    try:
        # Under torchrun, `train` joins the other processes first (nothing to join in a single process)
        if args.command == 'train':
            D.init_from_env()
        # `--resume steps=10`: the optional RUN of `--resume` took a setting
        if getattr(args, 'resume', None) and '=' in args.resume and not Path(args.resume).exists():
            args.settings.insert(0, args.resume)
            args.resume = 'latest'
        settings = parse_pairs(args.settings)
        if args.command == 'train':
            # `--data` and `resume=` are spellings of the same options
            if args.data is not None:
                settings['data'] = args.data
            resume = settings.pop('resume', None) or args.resume
            # Rank 0 prints; the other processes' screen output (labml's banner, progress) goes nowhere
            with open(os.devnull, 'w') as devnull, \
                    contextlib.redirect_stdout(sys.stdout if D.is_main_process() else devnull):
                run_train(settings, resume=resume)
        else:
            # `sample` takes a few settings of its own
            known = {'checkpoint', 'length', 'temperature', 'seed', 'device'}
            unknown = sorted(set(settings) - known)
            if unknown:
                raise ConfigError(f'unknown sample setting {unknown[0]!r} (known: {", ".join(sorted(known))})')
            text = run_sample(checkpoint=settings.get('checkpoint'), prompt=args.prompt,
                              length=_number('length', settings.get('length', '200'), int),
                              temperature=_number('temperature', settings.get('temperature', '0.8'), float),
                              seed=_number('seed', settings.get('seed', '0'), int),
                              device=settings.get('device', 'auto'))
            print(text)
    except (ConfigError, DataError) as e:
        # One line, no traceback. With several processes every one raised the same error: rank 0 prints it
        if D.is_main_process():
            print(f'error: {e}', file=sys.stderr)
        # ... before any of them exits (torchrun stops the others as soon as one exits)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        return 2
    finally:
        # Leave the process group, if torchrun started this process
        D.shutdown()
    return 0


def _number(key: str, value: str, kind: Callable) -> Any:
    """
    A non-negative number from the command line, or one clear error.
    """
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(f'{key}={value!r} is not a valid {kind.__name__}') from None
    if number < 0 or (isinstance(number, float) and not math.isfinite(number)):
        raise ConfigError(f'{key}={value!r} must not be negative')
    return number


#
if __name__ == '__main__':
    # Run through the package's module (not `__main__`), so there is one `Configs` class
    from labml_nn_switch.experiment import main as _main

    sys.exit(_main())
