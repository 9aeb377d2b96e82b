# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Switch Transformer on Tiny Shakespeare
#
# This notebook trains a small character-level [Switch Transformer](https://arxiv.org/abs/2101.03961)
# on Tiny Shakespeare with `labml_nn_switch`, plots its losses, samples text from it, and shows which
# expert each character was routed to.
#
# It is kept as `experiments/switch_shakespeare.py` (the source, in jupytext's percent format) and
# `experiments/switch_shakespeare.ipynb`, generated from it with
# `jupytext --to ipynb experiments/switch_shakespeare.py`.

# %% [markdown]
# ## Settings
#
# `REPOSITORY` is where Colab installs the package from. **It is a placeholder: set it to the
# repository's address** before you run the notebook on Colab. Outside Colab, install the package
# yourself first (`pip install -e ".[notebook]"` in a clone).

# %% tags=["parameters"]
# PLACEHOLDER: the repository labml_nn_switch is published at
REPOSITORY = 'https://github.com/OWNER/labml_nn_switch'
# Training steps (the `quick` preset trains 1,500)
STEPS = 1500
# Tiny Shakespeare: a path, or '' for `data/tiny_shakespeare.txt` (downloaded there when missing)
DATA = ''
# Whether the text may be downloaded when it is not there
DOWNLOAD = True

# %% [markdown]
# ## Install (on Colab)
#
# Colab comes with PyTorch, matplotlib and Jupyter; this adds `labml_nn_switch` and labml.

# %%
import subprocess
import sys

if 'google.colab' in sys.modules:
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet',
                    f'labml_nn_switch[plots] @ git+{REPOSITORY}'], check=True)

# %% [markdown]
# ## The text
#
# The experiment reads Tiny Shakespeare from labml's data folder, `data/` beside the nearest
# `.labml.yaml` (else the working directory), and downloads it there when it is missing.

# %%
import os
from pathlib import Path

from labml import lab

from labml_nn_switch.cli import labml_root
from labml_nn_switch.data import DataError, find_text_file

labml_root()
try:
    DATA_FILE = find_text_file(DATA or None, data_dir=lab.get_data_path(), allow_download=DOWNLOAD)
except DataError as e:
    # One message that says where the file goes, not a traceback
    raise SystemExit(f'No Tiny Shakespeare to train on: {e}. Put tiny_shakespeare.txt at '
                     f'{Path(lab.get_data_path()) / "tiny_shakespeare.txt"}, or set DATA in the '
                     f'settings cell to its path.') from None
print(f'Tiny Shakespeare: {os.path.relpath(DATA_FILE)} ({DATA_FILE.stat().st_size:,} bytes)')

# %% [markdown]
# ## Train
#
# The `quick` preset: 2 layers, `d_model` 64, 4 experts per Switch layer, 1,024 characters a
# batch, Adam at $3 \cdot 10^{-3}$. labml tracks the run in `logs/switch_shakespeare/<run>/`,
# and the checkpoint goes in its `checkpoints/`.

# %%
from labml_nn_switch.cli import run_train

result = run_train({'preset': 'quick', 'steps': STEPS, 'data': str(DATA_FILE)})

# %% [markdown]
# ## Losses
#
# The training loss as labml logged it (the mean of every 10 steps), and the validation loss at
# every evaluation.

# %%
import matplotlib.pyplot as plt

from labml_nn_switch.routing_view import read_labml_log

logged = read_labml_log(result.run_dir)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(*zip(*logged['loss.train']), label='training')
ax.plot([h['step'] for h in result.history], [h['loss.valid'] for h in result.history], 'o-', label='validation')
ax.set_xlabel('step')
ax.set_ylabel('cross-entropy (nats per character)')
ax.legend()
plt.show()

# %% [markdown]
# ## Sample
#
# 300 characters after a prompt, drawn at temperature 0.8 from the last checkpoint.

# %%
from labml_nn_switch.cli import run_sample

print(run_sample(checkpoint=str(result.checkpoint), prompt='ROMEO:', length=300, temperature=0.8, seed=0))

# %% [markdown]
# ## The routing
#
# A passage of held-out text, each character coloured by the expert it was routed to (pick the
# Switch layer), with the tokens that did not fit in their expert struck through; below it, each
# expert's favourite characters, its share of the tokens over training, and how sure the router is.
# The same view is on the site's *Routing* page (`python -m labml_nn_switch.routing_view`).

# %%
from IPython.display import HTML

from labml_nn_switch import routing_view

trained = routing_view.load_trained(str(result.checkpoint))
view = routing_view.analyse(trained, text=DATA_FILE.read_text(encoding='utf-8'))
HTML(routing_view.render(view, uid='notebook-routing'))
