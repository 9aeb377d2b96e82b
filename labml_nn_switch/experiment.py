"""
---
title: Switch Transformer on Tiny Shakespeare
summary: >
  The experiment's model (a character-level autoregressive Switch Transformer, or its
  FLOP-matched dense twin), its loss and its training step; tracked with labml.
---

# Switch Transformer on Tiny Shakespeare

We train a character-level language model on Tiny Shakespeare with the
[Switch Transformer](transformer.py) of this package, and its FLOP-matched dense
twin for comparison. From the command line:

```shell
python -m labml_nn_switch.experiment train preset=quick          # a few minutes on a CPU
python -m labml_nn_switch.experiment train preset=labml model=dense steps=2000
python -m labml_nn_switch.experiment train --resume               # continue the latest run
python -m labml_nn_switch.experiment sample --prompt "It is"       # from the latest checkpoint
python -m labml_nn_switch.experiment train --help                 # every setting, its default and meaning
torchrun --standalone --nproc-per-node 2 -m labml_nn_switch.experiment train preset=quick
```

The experiment is five short modules, each with one job:

1. this page: **the model, its loss and one training step**;
2. [the settings](configs.py): labml `Configs`, the named presets, and the objects
   built from the settings;
3. [the training loop](trainer.py): evaluation, sampling, checkpoints, and stopping
   cleanly on Ctrl-C;
4. [the command line](cli.py): a labml run from `key=value` settings, resuming, and
   several processes under torchrun;
5. [the data](data.py) and [the checkpoints](checkpoint.py) they use.

## What comes from labml, and what is ours

[labml](https://github.com/labmlai/labml) 0.5.x tracks the experiment:
`experiment.create` / `configs` / `start` for the run and its configuration,
`labml.configs.BaseConfigs` and `@option` for the settings and the objects computed
from them, `tracker` for every metric, and `monit` for the progress of the loop.
Its writers are the screen and its local files (`logs/<name>/<run>/`); the labml app
is added only when you configure a URL, so nothing reaches the network by default.

labml-helpers' `training_loop` and `metrics.accuracy` call labml functions that 0.5
removed (`experiment.save_checkpoint`, `tracker.set_queue`), so the loop, the
accuracy and the [checkpoints](checkpoint.py) are written here; so is the
learning-rate schedule (labml-helpers' `NoamOpt` reads labml's global step, which a
checkpoint would not restore).
"""

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from labml_nn_switch import process_group as PG
from labml_nn_switch.gradient_sync import clip_grad_norm_, sync_expert_gradients
from labml_nn_switch.switch import SwitchConfig
from labml_nn_switch.transformer import SwitchTransformer, TransformerRouting, build_transformer
from labml_nn_switch.watchdog import watch


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


def build_model(settings: Mapping[str, Any], *, switch: SwitchConfig, n_vocab: int,
                switch_layer: Optional[Callable[[SwitchConfig], nn.Module]] = None) -> AutoregressiveModel:
    """
    ## Build the model

    * `settings` are the experiment's [settings](configs.py) (`model`, `n_layers`,
      `n_heads`, `dropout`, `seq_len`), from its `Configs` or from a checkpoint
    * `switch` is the Switch layers' one [`SwitchConfig`](switch.py): sizes, capacity,
      routing, experts
    * `n_vocab` is the number of distinct characters
    * `switch_layer` makes each Switch layer (`None`: `SwitchFeedForward`); under
      torchrun, an [expert-parallel](expert_parallel.py) layer holding this process's experts

    `model=switch` builds Switch layers, `model=dense` the dense twin with one
    feed-forward network of the same `d_ff` per layer. A top-1 Switch layer runs one
    expert per token, so both do the same FLOPs per token (plus the router's tiny
    `d_model x n_experts` matrix). Training and sampling both build the model here.
    """
    # The transformer
    transformer = build_transformer(switch, kind=settings['model'], n_layers=settings['n_layers'],
                                    n_heads=settings['n_heads'], dropout=settings['dropout'],
                                    **({'switch_layer': switch_layer} if switch_layer else {}))
    # With embeddings and readout
    return AutoregressiveModel(n_vocab=n_vocab, d_model=switch.d_model, max_len=settings['seq_len'],
                               transformer=transformer)


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

    $$\begin{aligned}
    \mathcal{L} = \mathcal{L}_{CE}
      &+ \alpha \sum_{l=1}^{L} N \sum_{i=1}^{N} f_{l,i} P_{l,i} \\
      &+ \beta \sum_{l=1}^{L} \frac{1}{T} \sum_{x} \Big(\log \sum_j e^{h_j(x)}\Big)^2
    \end{aligned}$$

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
    # The total loss (the z-loss only when it counts: it is computed when read)
    loss = ce + lb_alpha * routing.load_balancing_loss
    if z_loss_coef:
        loss = loss + z_loss_coef * routing.z_loss
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
    # This process's means, `[4]` (a z-loss not in the loss is computed here, without a graph)
    with torch.no_grad():
        local = torch.stack([result.ce.detach().float(), result.accuracy.float(),
                             result.routing.load_balancing_loss.detach().float(),
                             result.routing.z_loss.detach().float()])
    # Averaged over the processes (one all-reduce)
    ce, accuracy, lb_loss, z_loss = PG.mean_over_ranks(local).tolist()
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
    counts = PG.sum_over_ranks(torch.stack([r.tokens_per_expert.float() for r in routing.layers]))
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
    metrics[f'dropped.{suffix}'], metrics[f'max_prob.{suffix}'] = PG.mean_over_ranks(local).tolist()
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
    * `model` is the model, or its `DistributedDataParallel` wrapper with several
      processes ([gradient_sync.py](gradient_sync.py))
    * `data` and `target` are `[seq_len, batch_size]` characters, `target` one ahead
    """
    # Training mode: dropout and router jitter on, the training capacity factor
    model.train()
    # The loss of this batch
    result = compute_loss(model, data, target, lb_alpha=lb_alpha, z_loss_coef=z_loss_coef, autocast=autocast)
    # Clear the previous gradients
    optimizer.zero_grad(set_to_none=True)
    # Back-propagate (through the all-to-alls, and with DDP averaging the replicated
    # gradients meanwhile, with several processes)
    with watch("the backward pass (the expert all-to-alls, DDP's gradient all-reduce)"):
        result.loss.backward()
    # Average the experts' gradients over their copies (nothing to do in a single process)
    sync_expert_gradients(model)
    # Clip the gradient norm of the whole model, whose experts may be spread over the processes
    if grad_clip > 0:
        clip_grad_norm_(model, grad_clip)
    # Update the parameters
    optimizer.step()
    # Advance the learning-rate schedule
    scheduler.step()
    #
    return result


#
if __name__ == '__main__':
    # The command line is in `cli.py`; it imports this module by its package name, so there is one of each class
    import sys

    from labml_nn_switch.cli import main

    sys.exit(main())
