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
3. [The Switch layer: routing, capacity, dispatch](switch.py),
   [its losses and statistics](routing_result.py), and
   [its experts on the CPU](expert_rows.py)
4. [Transformer layers and the dense baseline](transformer.py)
5. [The Tiny Shakespeare experiment](experiment.py): its [settings](configs.py),
   [training loop](trainer.py), [command line](cli.py), [data](data.py) and
   [checkpoints](checkpoint.py)
6. Over several processes: [the expert-parallel layer and its groups](expert_parallel.py),
   [launching](process_group.py), [gradient synchronisation](gradient_sync.py),
   [sharded checkpoints](sharded_checkpoint.py) and [the watchdog](watchdog.py)
7. [The routing made visible](routing_view.py): what a trained router does

The public API is re-exported here:

```python
from labml_nn_switch import SwitchFeedForward

ff = SwitchFeedForward(d_model=512, d_ff=2048, n_experts=8)
y, routing = ff(x)                 # x: [seq_len, batch_size, 512]
loss = task_loss + 1e-2 * routing.load_balancing_loss
```
"""

# The public API, re-exported from the modules that define it.
from .feed_forward import Experts, FeedForward
from .mha import MultiHeadAttention, subsequent_mask
from .routing_result import RoutingResult, load_balancing_loss, router_z_loss
from .switch import DispatchPlan, Router, SwitchConfig, SwitchFeedForward, plan_dispatch
from .transformer import SwitchTransformer, SwitchTransformerLayer, TransformerRouting, build_transformer

__all__ = [
    "DispatchPlan", "Experts", "FeedForward", "MultiHeadAttention", "Router", "RoutingResult",
    "SwitchConfig", "SwitchFeedForward", "SwitchTransformer", "SwitchTransformerLayer",
    "TransformerRouting", "build_transformer", "load_balancing_loss", "plan_dispatch",
    "router_z_loss", "subsequent_mask",
]
