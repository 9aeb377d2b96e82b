"""
---
title: labml_nn_switch
summary: >
  An annotated, literate PyTorch implementation of the Switch Transformer:
  the library, the site generator that renders it, and a Tiny Shakespeare experiment.
---

# Switch Transformer, annotated

This package is three things at once: a library you can import or copy, the
text of this site, and an experiment. Read the modules in this order:

1. [Multi-head attention](mha.py)
2. [The feed-forward network, the expert](feed_forward.py)
3. [The Switch layer: routing, capacity, losses, dispatch](switch.py)
4. [Transformer layers and the dense baseline](transformer.py)
5. [The Tiny Shakespeare experiment](experiment.py): its [settings](configs.py),
   [training loop](trainer.py), [command line](cli.py), [data](data.py) and
   [checkpoints](checkpoint.py)
6. [Expert parallelism over several processes](distributed.py)
7. [The routing made visible](routing_view.py): what a trained router does

The public API is re-exported here:

```python
from labml_nn_switch import SwitchFeedForward

ff = SwitchFeedForward(d_model=512, d_ff=2048, n_experts=8)
y, routing = ff(x)                 # x: [seq_len, batch_size, 512]
loss = task_loss + 1e-2 * routing.load_balancing_loss
```
"""

import importlib
from typing import TYPE_CHECKING

# The public API, by the module that defines each name. The names are imported
# on first use (PEP 562), so that importing a part that needs no torch, such as
# the site generator in `literate/`, does not load torch and the model.
_EXPORTS = {
    "FeedForward": "feed_forward",
    "Experts": "feed_forward",
    "MultiHeadAttention": "mha",
    "subsequent_mask": "mha",
    "Router": "switch",
    "RoutingResult": "switch",
    "DispatchPlan": "switch",
    "SwitchConfig": "switch",
    "SwitchFeedForward": "switch",
    "load_balancing_loss": "switch",
    "plan_dispatch": "switch",
    "router_z_loss": "switch",
    "SwitchTransformer": "transformer",
    "SwitchTransformerLayer": "transformer",
    "TransformerRouting": "transformer",
    "build_transformer": "transformer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import `name` from its module the first time it is asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


# For type checkers, editors and the site's name links: the same names, imported eagerly
if TYPE_CHECKING:
    from .feed_forward import Experts, FeedForward
    from .mha import MultiHeadAttention, subsequent_mask
    from .switch import (DispatchPlan, Router, RoutingResult, SwitchConfig, SwitchFeedForward, load_balancing_loss,
                         plan_dispatch, router_z_loss)
    from .transformer import SwitchTransformer, SwitchTransformerLayer, TransformerRouting, build_transformer
