"""
---
title: The routing made visible
summary: >
  Which expert each character of a Shakespeare passage is sent to, layer by layer, with the
  dropped ones marked; each expert's favourite characters, its share of the tokens over
  training and the router's confidence. One command writes it as an HTML fragment.
---

# The routing made visible

A Switch layer sends every token to one expert. Which one, for a character-level model of
Shakespeare? This module takes a trained checkpoint of the [experiment](experiment.py) and
shows it:

* **a passage** of held-out text with each character coloured by the expert the router chose
  for it, one panel per Switch layer, and the tokens that did not fit in their expert's
  capacity (*dropped*: they skip the feed-forward network) struck through;
* **per expert**: its share of the tokens, which characters it prefers, its mean gate
  $p_{i^*}(x)$ and how many of its tokens it dropped, over all of the held-out text;
* **utilisation over training**: the share of each expert at every evaluation of the run
  (kept in its checkpoint), and the least and most used expert's share of every training
  batch (from the run's labml log, `logs/<experiment>/<run>/log.jsonl`);
* **gate confidence**: the distribution of $p_{i^*}(x)$, per expert.

```shell
python -m labml_nn_switch.routing_view --checkpoint logs/switch_shakespeare/<run> --out experiments/results/routing
```

writes `routing.json` (the numbers) and `routing.html`, a fragment with no outside
reference (its own CSS, inline SVG charts, no script) that the site's *Routing* page
includes and a notebook displays. Layers are switched by radio buttons and CSS, so it works
offline, without JavaScript, and in the theme's light and dark palettes.

The model runs in evaluation mode (no jitter, no dropout), in batches of the training's
shape (`batch_size` windows of `seq_len` characters, each window routed with no memory of
the one before), and with the capacity factor of *training* by default, so that the
dropping is what training saw. `--capacity-factor` changes it.
"""

import argparse
import dataclasses
import html
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import matplotlib
import torch
from labml import lab
from matplotlib.figure import Figure

from labml_nn_switch import cli
from labml_nn_switch.data import find_text_file, load_text, split_text
from labml_nn_switch.switch import SwitchFeedForward


class ViewError(ValueError):
    """Something the user can fix; the command prints it as one line and exits with 2."""


# ## Load the trained model

@dataclass
class Trained:
    """A trained model and what its checkpoint says about it."""
    # In evaluation mode, on the CPU
    model: torch.nn.Module
    # The settings it was trained with (`n_experts`, `seq_len`, `batch_size`, `capacity_factor`, ...)
    settings: dict[str, Any]
    # The characters of its vocabulary
    itos: list[str]
    # The step of the checkpoint, and the evaluations up to it
    step: int
    history: list[dict[str, Any]]
    # The checkpoint file
    path: Path

    @property
    def run_dir(self) -> Path:
        """The run's folder (`logs/<experiment>/<run>/`), where labml's log is."""
        return self.path.parent.parent if self.path.parent.name == 'checkpoints' else self.path.parent


def load_trained(checkpoint: Optional[str]) -> Trained:
    """
    The model of a checkpoint: a file or a run folder, or the newest run's when `None`
    (found and built as `sample` does).
    """
    model, state, settings, path = cli.load_trained(checkpoint)
    # A dense model has nothing to show
    if settings['model'] != 'switch':
        raise ViewError(f'{path} holds a {settings["model"]!r} model: it has no Switch layers to show')
    return Trained(model=model.eval(), settings=settings, itos=state['itos'], step=state['step'],
                   history=state.get('history', []), path=path)


# ## Route a text

@torch.no_grad()
def route(model: torch.nn.Module, ids: torch.Tensor, *, seq_len: int, batch_size: int,
          capacity_factor: float) -> list[dict[str, torch.Tensor]]:
    """
    * `ids` are characters, `[n]`, cut into windows of `seq_len` (the tail that does not
      fill one is left out), `batch_size` windows a batch

    Returns, per Switch layer, `expert`, `kept` and `gate` (its $p_{i^*}(x)$), each
    `[n_windows * seq_len]` in the order of the text.
    """
    # The capacity factor this view routes with (the layers use their evaluation factor)
    for m in model.modules():
        if isinstance(m, SwitchFeedForward):
            m.config = dataclasses.replace(m.config, eval_capacity_factor=capacity_factor)
    # Windows, `[n_windows, seq_len]`
    windows = ids[:len(ids) // seq_len * seq_len].view(-1, seq_len)
    found = []
    for batch in windows.split(batch_size):
        # `[seq_len, batch]`, as the model takes it
        _, routing = model(batch.T.contiguous())
        # A layer's tokens are `[seq_len, batch]` flattened: back to the text's order, `[batch * seq_len]`
        found.append([{k: v.view(seq_len, -1).T.flatten()
                       for k, v in (('expert', r.expert), ('kept', r.kept), ('gate', r.max_prob))}
                      for r in routing.layers])
    # Per layer, the batches one after the other
    n_layers = len(found[0]) if found else 0
    return [{k: torch.cat([b[l][k] for b in found]) for k in ('expert', 'kept', 'gate')} for l in range(n_layers)]


# ## What each expert does

def expert_statistics(text: str, routed: dict[str, torch.Tensor], *, n_experts: int, top: int = 8,
                      min_count: int = 20, bins: int = 20) -> dict[str, Any]:
    r"""
    Of one layer's routing of `text` (`routed` as from `route`):

    * `share[e]`: the fraction of tokens routed to expert $e$
    * `mean_gate[e]`: the mean of $p_{i^*}(x)$ over its tokens
    * `dropped[e]`: the fraction of its tokens that did not fit
    * `prefers[e]`: the `top` characters with the highest $P(e \mid c)$, the fraction of
      character $c$'s occurrences sent to $e$, among characters seen at least `min_count`
      times: `[character, P(e | c), count]`
    * `gate_hist`: a histogram of the gate per expert, `bins` bins over $[0, 1]$
    """
    expert, kept, gate = routed['expert'], routed['kept'], routed['gate'].float()
    # The characters, as numbers, `[n]`
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    c = torch.tensor([index[ch] for ch in text[:len(expert)]])
    # Co-occurrence counts of character and expert, `[n_chars, n_experts]`
    joint = torch.zeros(len(chars), n_experts).index_put_((c, expert), torch.ones(len(c)), accumulate=True)
    per_char = joint.sum(dim=1)
    # $P(e \mid c)$, for the characters seen often enough
    p_e_given_c = joint / per_char.clamp(min=1)[:, None]
    frequent = per_char >= min_count
    per_expert = joint.sum(dim=0)
    stats = {'share': (per_expert / per_expert.sum()).tolist(), 'mean_gate': [], 'dropped': [], 'prefers': [],
             'gate_hist': {'edges': torch.linspace(0, 1, bins + 1).tolist(), 'counts': []}}
    for e in range(n_experts):
        mine = expert == e
        stats['mean_gate'].append(gate[mine].mean().item() if mine.any() else 0.0)
        stats['dropped'].append((~kept[mine]).float().mean().item() if mine.any() else 0.0)
        # Its favourites: highest $P(e \mid c)$ first (to the percent), then the most frequent
        score = torch.where(frequent, (p_e_given_c[:, e] * 100).round() * len(text) + per_char, -1.0)
        best = [i for i in score.argsort(descending=True, stable=True)[:top].tolist() if p_e_given_c[i, e] > 0
                and frequent[i]]
        stats['prefers'].append([[chars[i], round(p_e_given_c[i, e].item(), 3), int(per_char[i])] for i in best])
        stats['gate_hist']['counts'].append(torch.histc(gate[mine], bins=bins, min=0, max=1).int().tolist())
    return stats


# ## Utilisation over training

def read_labml_log(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """
    The scalars of a run's labml log (`log.jsonl`: one JSON object a line, whose `track`
    maps each name to `[[step, [values since the last save]], ...]`), as `(step, mean)`.
    An absent log gives `{}`.
    """
    path = Path(run_dir) / 'log.jsonl'
    series: dict[str, list[tuple[int, float]]] = {}
    if not path.is_file():
        return series
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        try:
            track = json.loads(line).get('track', {}) if line.strip() else {}
        except json.JSONDecodeError as e:
            raise ViewError(f'{path}:{number}: not a JSON line ({e.msg})') from None
        for name, points in track.items():
            for step, values in points:
                values = values if isinstance(values, list) else [values]
                if values:
                    series.setdefault(name, []).append((int(step), sum(values) / len(values)))
    return series


def utilisation(trained: Trained, n_layers: int) -> dict[str, Any]:
    """
    Per layer: each expert's share of the validation tokens at each evaluation (the
    checkpoint's `history`), and the smallest and largest share of an expert in the
    training batches (`route.min.<layer>`, `route.max.<layer>` of the labml log), up to
    the checkpoint's step.
    """
    evaluations = [h for h in trained.history if 'route_fraction' in h]
    # The log up to the checkpoint's step (the run may have gone on after it)
    log = {name: [(s, v) for s, v in points if s <= trained.step]
           for name, points in read_labml_log(trained.run_dir).items()}
    return {
        'eval_steps': [h['step'] for h in evaluations],
        # `[n_layers][n_experts][n_evaluations]`
        'fraction': [[list(f) for f in zip(*(h['route_fraction'][l] for h in evaluations))]
                     for l in range(n_layers)] if evaluations else [[] for _ in range(n_layers)],
        'train_min': [log.get(f'route.min.{l}', []) for l in range(n_layers)],
        'train_max': [log.get(f'route.max.{l}', []) for l in range(n_layers)],
    }


# ## Everything the page shows

def analyse(trained: Trained, *, text: str, offset: Optional[int] = None, length: Optional[int] = None,
            capacity_factor: Optional[float] = None) -> dict[str, Any]:
    """
    The numbers of the view, as plain JSON values: the routing of a passage of the
    validation text (`length` characters from `offset`; by default one training batch's
    worth, from the first blank line), statistics over all of the validation text, and
    utilisation over training.
    """
    config = trained.settings
    seq_len, batch_size, n_experts = config['seq_len'], config['batch_size'], config['n_experts']
    cf = config['capacity_factor'] if capacity_factor is None else capacity_factor
    stoi = {s: i for i, s in enumerate(trained.itos)}
    # The held-out text, in the model's vocabulary
    valid = split_text(text)[1]
    unknown = sorted(set(valid) - set(stoi))
    if unknown:
        raise ViewError(f'the text has characters the model does not know: {"".join(unknown)!r}')
    # The passage: whole windows, starting at a speech
    length = seq_len * batch_size if length is None else length
    if offset is None:
        offset = valid.find('\n\n') + 2 if '\n\n' in valid else 0
    passage = valid[offset:offset + length]
    if len(passage) < seq_len:
        raise ViewError(f'the passage at offset={offset} has {len(passage)} characters, fewer than one window '
                        f'(seq_len={seq_len})')
    passage = passage[:len(passage) // seq_len * seq_len]

    def ids(s: str) -> torch.Tensor:
        return torch.tensor([stoi[ch] for ch in s])

    # Route the passage, and all of the validation text
    shown = route(trained.model, ids(passage), seq_len=seq_len, batch_size=batch_size, capacity_factor=cf)
    everything = route(trained.model, ids(valid), seq_len=seq_len, batch_size=batch_size, capacity_factor=cf)
    return {
        'step': trained.step, 'n_experts': n_experts, 'capacity_factor': cf,
        'settings': {k: config[k] for k in ('preset', 'n_layers', 'd_model', 'd_ff', 'n_experts', 'seq_len',
                                            'batch_size', 'capacity_factor', 'steps')},
        'passage': {'offset': offset, 'text': passage, 'layers': [
            {'expert': r['expert'].tolist(), 'kept': r['kept'].int().tolist(),
             'gate': [round(g, 3) for g in r['gate'].tolist()]} for r in shown]},
        'stats': {'n_tokens': len(everything[0]['expert']),
                  'layers': [expert_statistics(valid, r, n_experts=n_experts) for r in everything]},
        'history': utilisation(trained, len(shown)),
    }


# ## Colours
#
# One hue per expert: eight well-separated hues for up to eight experts, evenly spaced
# hues beyond. Each expert has a light background (dark text on it) for the light
# palette, a dark one (light text) for the dark palette, and a middle tone for lines,
# visible on both. They are CSS variables, so the charts below use them too.

HUES = [210, 28, 130, 340, 270, 55, 180, 0]


def expert_css(n_experts: int) -> str:
    """The CSS variables of the expert colours, light and dark."""
    hues = HUES[:n_experts] if n_experts <= len(HUES) else [round(360 * k / n_experts) for k in range(n_experts)]
    light = ''.join(f'--rv-e{k}:hsl({h} 85% 84%);--rv-l{k}:hsl({h} 70% 48%);' for k, h in enumerate(hues))
    dark = ''.join(f'--rv-e{k}:hsl({h} 50% 30%);' for k, h in enumerate(hues))
    classes = ''.join(f'.rv .e{k}{{background-color:var(--rv-e{k})}}' for k in range(n_experts))
    # The dark palette: mkdocs-material's `slate`, and JupyterLab's dark themes
    return (f'.rv{{{light}--rv-fg:#14141a;--rv-mark:#c00000}}'
            f'[data-md-color-scheme="slate"] .rv,[data-jp-theme-light="false"] .rv'
            f'{{{dark}--rv-fg:#f4f4f8;--rv-mark:#ff8a8a}}{classes}')


# The rest of the style: the layer buttons, the passage, the chips and the charts
STYLE = """
.rv .rv-pick{position:absolute;opacity:0;width:1px;height:1px}
.rv .rv-tab{display:inline-block;padding:.25em .8em;margin:0 .3em .4em 0;border:1px solid currentColor;
 border-radius:1em;cursor:pointer;font-size:.85em;opacity:.7}
.rv .rv-pick:checked+.rv-tab{opacity:1;font-weight:bold;box-shadow:inset 0 0 0 1px currentColor}
.rv .rv-pick:focus-visible+.rv-tab{outline:2px solid var(--rv-l0)}
.rv .rv-layer{display:none}
.rv .rv-text{font-family:var(--md-code-font-family,monospace);font-size:.8em;line-height:1.7;
 white-space:pre-wrap;overflow-wrap:anywhere;margin:.5em 0 1em}
.rv .rv-text span,.rv .rv-chip{color:var(--rv-fg)}
.rv .d{text-decoration:line-through 2px var(--rv-mark);outline:1px dashed var(--rv-mark);outline-offset:-1px}
.rv .rv-nl{opacity:.6}
.rv .rv-chip{display:inline-block;min-width:1.4em;padding:0 .3em;margin:.1em;border-radius:.3em;
 text-align:center;font-family:var(--md-code-font-family,monospace);white-space:nowrap}
.rv .rv-chip small{opacity:.8;margin-left:.2em}
.rv .rv-scroll{overflow-x:auto;max-width:100%}
.rv .rv-scroll table{font-size:.8em}
.rv .rv-prefers td{border-top:0;padding-top:0}
.rv .rv-note{font-size:.8em;opacity:.8}
.rv figure{margin:1em 0}
.rv svg.rv-chart{width:100%;max-width:36rem;height:auto;color:inherit}
"""

# How characters that do not print are shown
VISIBLE = {' ': '\u2423', '\n': '\u21b5', '\t': '\u21e5'}


# ## Charts
#
# matplotlib draws them as SVG with text as text. Drawn with stand-in colours, which are
# then replaced: the ink by `currentColor` (the page's text colour, in either palette),
# expert $k$'s lines by `var(--rv-l<k>)`. Ids get a prefix, so that several charts can
# share a page.

INK = '#123456'


def expert_stand_in(k: int) -> str:
    """The stand-in colour of expert `k`'s lines."""
    return f'#fe{k // 256:02x}{k % 256:02x}'


def svg_chart(fig: Figure, *, prefix: str, label: str) -> str:
    """The figure as an inline SVG element that follows the page's palette."""
    buffer = io.StringIO()
    # Text as text (not glyph outlines), and the same ids for the same figure
    with matplotlib.rc_context({'svg.fonttype': 'none', 'svg.hashsalt': prefix}):
        fig.savefig(buffer, format='svg', transparent=True, bbox_inches='tight', metadata={'Date': None})
    svg = buffer.getvalue()
    # From the `<svg` element on; no fixed size, the view box scales
    svg = svg[svg.index('<svg'):]
    svg = re.sub(r'<svg[^>]*?(viewBox="[^"]*")[^>]*>',
                 lambda m: f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                           f'{m.group(1)} class="rv-chart" role="img" aria-label="{html.escape(label)}">', svg, count=1)
    svg = re.sub(r'<metadata>.*?</metadata>', '', svg, flags=re.S)
    # The palette
    svg = svg.replace(INK, 'currentColor')
    svg = re.sub(r'#fe([0-9a-f]{2})([0-9a-f]{2})', lambda m: f'var(--rv-l{int(m.group(1) + m.group(2), 16)})', svg)
    # Unique ids
    svg = re.sub(r'(id="|url\(#|href="#)', rf'\g<1>{prefix}', svg)
    # No blank lines: the fragment goes into Markdown as one HTML block
    return '\n'.join(line for line in svg.splitlines() if line.strip())


def new_figure(height: float) -> tuple[Figure, Any]:
    """A figure 5 inches wide with one plot, in the ink colour."""
    fig = Figure(figsize=(5, height))
    ax = fig.add_subplot()
    ax.tick_params(colors=INK, labelsize=9)
    for spine in ax.spines.values():
        spine.set_color(INK)
    ax.spines[['top', 'right']].set_visible(False)
    return fig, ax


def utilisation_chart(history: dict[str, Any], layer: int, n_experts: int, *, prefix: str) -> str:
    """Each expert's share of the validation tokens at each evaluation, over the training band."""
    fig, ax = new_figure(2.4)
    # The spread of the training batches: the least and the most used expert
    low, high = history['train_min'][layer], history['train_max'][layer]
    if low and high:
        ax.fill_between([s for s, _ in low], [v for _, v in low], [v for _, v in high], color=INK, alpha=0.15,
                        linewidth=0, label='training: least–most used')
    # Each expert at each evaluation
    for k, fraction in enumerate(history['fraction'][layer]):
        ax.plot(history['eval_steps'], fraction, color=expert_stand_in(k), linewidth=1.8, label=f'expert {k + 1}')
    # Perfect balance
    ax.axhline(1 / n_experts, color=INK, linestyle=':', linewidth=1)
    ax.set_xlabel('step', color=INK, fontsize=9)
    ax.set_ylabel('share of tokens', color=INK, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, frameon=False, labelcolor=INK, ncols=2)
    return svg_chart(fig, prefix=prefix, label=f'layer {layer + 1}: share of each expert over training')


def gate_chart(stats: dict[str, Any], layer: int, *, prefix: str) -> str:
    """The distribution of each expert's gate $p_{i^*}(x)$."""
    fig, ax = new_figure(2.0)
    edges = stats['gate_hist']['edges']
    for k, counts in enumerate(stats['gate_hist']['counts']):
        total = max(sum(counts), 1)
        ax.stairs([c / total for c in counts], edges, color=expert_stand_in(k), linewidth=1.8,
                  label=f'expert {k + 1}')
    ax.set_xlabel('gate $p_{i^*}(x)$ of the chosen expert', color=INK, fontsize=9)
    ax.set_ylabel('fraction of its tokens', color=INK, fontsize=9)
    ax.legend(fontsize=7, frameon=False, labelcolor=INK, ncols=2)
    return svg_chart(fig, prefix=prefix, label=f'layer {layer + 1}: distribution of the gate per expert')


# ## The HTML fragment

def chip(k: int, text: str, note: str = '') -> str:
    """A character (or expert number) on its expert's colour."""
    small = f'<small>{html.escape(note)}</small>' if note else ''
    return f'<span class="rv-chip e{k}">{html.escape(text)}{small}</span>'


def passage_html(text: str, layer: dict[str, list]) -> str:
    """The passage, each character on its expert's colour, dropped ones struck through."""
    out = []
    for ch, e, kept, g in zip(text, layer['expert'], layer['kept'], layer['gate']):
        title = f'expert {e + 1}, gate {g:.2f}' + ('' if kept else ', dropped')
        shown = html.escape(VISIBLE.get(ch, ch) if ch != ' ' else ' ')
        cls = f'e{e}' + ('' if kept else ' d') + (' rv-nl' if ch == '\n' else '')
        out.append(f'<span class="{cls}" title="{title}">{shown}</span>' + ('\n' if ch == '\n' else ''))
    return ''.join(out)


def table_html(stats: dict[str, Any]) -> str:
    """
    Per expert a row of numbers (share, mean gate, dropped), and a row of its favourite
    characters under it, across the table, so that it stays narrow on a phone.
    """
    rows = []
    for k, share in enumerate(stats['share']):
        favourites = ' '.join(chip(k, VISIBLE.get(c, c), f'{p:.0%}') for c, p, _ in stats['prefers'][k])
        rows.append(f'<tr><td>{chip(k, str(k + 1))}</td><td>{share:.1%}</td><td>{stats["mean_gate"][k]:.2f}</td>'
                    f'<td>{stats["dropped"][k]:.1%}</td></tr>'
                    f'<tr class="rv-prefers"><td colspan="4">prefers {favourites or "nothing in particular"}</td></tr>')
    return ('<div class="rv-scroll"><table><thead><tr><th>expert</th><th>tokens</th><th>mean gate</th>'
            '<th>dropped</th></tr></thead><tbody>' + ''.join(rows) + '</tbody></table></div>'
            '<p class="rv-note">Under each expert: the characters it prefers, with the share of each '
            'character\'s occurrences it is sent.</p>')


def render(data: dict[str, Any], *, uid: str = 'rv') -> str:
    """
    The view as one HTML fragment with no blank line (Markdown keeps it as one block):
    style, a radio button per layer, and a panel per layer. `uid` names its ids, so that
    two views can share a page.
    """
    n_experts, layers = data['n_experts'], data['passage']['layers']
    # Show the panel of the checked layer
    show = ''.join(f'#{uid}-{l}:checked~#{uid}-layer-{l}{{display:block}}' for l in range(len(layers)))
    parts = [f'<div class="rv" id="{uid}">',
             '<style>' + expert_css(n_experts) + ' '.join(STYLE.split()) + show + '</style>',
             '<p>Experts: ' + ' '.join(chip(k, str(k + 1)) for k in range(n_experts))
             + ' &nbsp; <span class="rv-chip e0 d">x</span> dropped '
             f'(capacity factor {data["capacity_factor"]:g}). Switch layer:</p>']
    # The layer buttons, the first one on
    for l in range(len(layers)):
        checked = ' checked' if l == 0 else ''
        parts.append(f'<input type="radio" class="rv-pick" name="{uid}" id="{uid}-{l}"{checked}>'
                     f'<label class="rv-tab" for="{uid}-{l}">layer {l + 1}</label>')
    # A panel per layer
    stats = data['stats']['layers']
    for l, layer in enumerate(layers):
        dropped = 1 - sum(layer['kept']) / max(len(layer['kept']), 1)
        parts += [f'<div class="rv-layer" id="{uid}-layer-{l}" data-layer="{l}">',
                  f'<div class="rv-text">{passage_html(data["passage"]["text"], layer)}</div>',
                  f'<p>Switch layer {l + 1}: {dropped:.1%} of this passage dropped. Over all '
                  f'{data["stats"]["n_tokens"]:,} characters of the validation text:</p>',
                  table_html(stats[l]),
                  f'<figure>{utilisation_chart(data["history"], l, n_experts, prefix=f"{uid}-u{l}-")}'
                  '<figcaption>Share of the validation tokens of each expert at each evaluation; shaded: the '
                  'least and the most used expert in the training batches (labml log); dotted: '
                  'perfect balance.</figcaption></figure>',
                  f'<figure>{gate_chart(stats[l], l, prefix=f"{uid}-g{l}-")}'
                  '<figcaption>How sure the router is: the gate of the chosen expert, per expert.</figcaption>'
                  '</figure>',
                  '</div>']
    parts.append('</div>')
    return '\n'.join(parts)


# ## The command line

def main(argv: Optional[list[str]] = None) -> int:
    """
    `python -m labml_nn_switch.routing_view [--checkpoint PATH] [--out DIR] ...`; errors
    the user can fix print one line and return 2.
    """
    parser = argparse.ArgumentParser(prog='python -m labml_nn_switch.routing_view',
                                     description='Show which expert each character is routed to.')
    parser.add_argument('--checkpoint', help='a checkpoint file or run folder (default: the newest run)')
    parser.add_argument('--data', help='the text (default: as the experiment finds it)')
    parser.add_argument('--out', help='the folder to write routing.html and routing.json to '
                                      '(default: the run folder\'s routing/)')
    parser.add_argument('--offset', type=int, help='where the passage starts in the validation text')
    parser.add_argument('--length', type=int, help='characters in the passage (default: one training batch)')
    parser.add_argument('--capacity-factor', type=float, help='default: the training capacity factor')
    args = parser.parse_args(argv)
    try:
        trained = load_trained(args.checkpoint)
        text = load_text(find_text_file(args.data, data_dir=lab.get_data_path(), allow_download=False))
        data = analyse(trained, text=text, offset=args.offset, length=args.length,
                       capacity_factor=args.capacity_factor)
    except (ViewError, *cli.USER_ERRORS) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    # Write the numbers and the fragment
    out = Path(args.out) if args.out else trained.run_dir / 'routing'
    out.mkdir(parents=True, exist_ok=True)
    (out / 'routing.json').write_text(json.dumps(data, separators=(',', ':')) + '\n', encoding='utf-8')
    (out / 'routing.html').write_text(render(data) + '\n', encoding='utf-8')
    print(f'wrote {out / "routing.html"} and routing.json (step {data["step"]}, {len(data["passage"]["text"])} '
          f'characters, {len(data["passage"]["layers"])} Switch layers)')
    return 0


#
if __name__ == '__main__':
    sys.exit(main())
