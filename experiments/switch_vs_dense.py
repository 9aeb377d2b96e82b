r"""
Switch Transformer vs its FLOP-matched dense twin on Tiny Shakespeare, and a sweep over
the number of experts.

The paper's claim under test (Fedus et al. 2021, section 2 and figure 4): at equal FLOPs
per token, more experts reach a lower loss at the same step. A top-1 Switch layer runs
one expert of width `d_ff` per token, so a Switch model with any number of experts
does the FLOPs of the dense model with one FFN of the same `d_ff` (plus a router of
`d_model x n_experts`, here under 0.1% of the layer).

Every run is one of the experiment's presets (`--preset`, by default `quick`: 2 layers,
d_model 64, 4 heads, d_ff 128, seq_len 64, batch 16, Adam 3e-3; `labml` is labml_nn's
own size and recipe) for the same number of steps, seeds 0, 1, 2. A seed
fixes the initial weights and the order of the training windows, so seed k of every
model sees the same batches in the same order. Validation is on the same fixed 8
batches (8,192 characters) of the held-out 10% each time, with `model.eval()`.

    python experiments/switch_vs_dense.py                  # train all runs, write results and plots
    python experiments/switch_vs_dense.py --plot-only      # redraw from the saved results
    python experiments/switch_vs_dense.py --steps 300 --seeds 0 --experts 1,4 --out /tmp/study
    python experiments/switch_vs_dense.py --preset labml --name labml_sweep --steps 2000 \
        --eval-interval 200 --experts 1,2,4,8,16,32 --jobs 2 --plots valid_loss,experts_sweep

Results: `experiments/results/switch_vs_dense.json` (its table in `.md` beside it), and the plots
`valid_loss.png`, `experts_sweep.png` and `utilisation.png` beside it. Each finished
run is also written at once to `NAME_runs/`, and a study started again with the same
name skips the runs found there: an interrupted study loses at most the runs under way.

Over seeds we report the mean, the sample standard deviation and a 95% confidence
interval $\bar x \pm t_{0.975,\,n-1}\, s/\sqrt{n}$ (Student's t, $n$ seeds); the
difference from dense is paired by seed, and its interval is that of the per-seed
differences.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(spec: dict) -> dict:
    """
    Train one model and return its record. Runs in a worker process (one torch thread).
    """
    import torch
    torch.set_num_threads(spec.pop('threads'))
    from labml_nn_switch import cli
    from labml_nn_switch.checkpoint import load_checkpoint

    start = time.time()
    result = cli.run_train({'preset': spec['preset'], **spec['overrides']}, labml_writers={'file'})
    seconds = time.time() - start
    state = load_checkpoint(result.checkpoint)
    n_params = sum(v.numel() for v in state['model'].values())
    history = [{k: (_round(v) if k != 'route_fraction' else [[round(f, 4) for f in row] for row in v])
                for k, v in h.items()} for h in result.history]
    return {**spec['key'], 'params': n_params, 'seconds': round(seconds, 1), 'history': history}


# Student's t quantile $t_{0.975,\,\nu}$ for $\nu = n - 1$ degrees of freedom (a 95% two-sided
# interval); from the standard table, so that the study needs no scipy. From 11 seeds on we
# use the normal quantile 1.96, which is at most 12% narrower.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def ci95(values: list[float]) -> float:
    """Half-width of the 95% confidence interval of the mean of `values` (0 for one value)."""
    if len(values) < 2:
        return 0.0
    return T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def run_file(runs_dir: Path, key: dict) -> Path:
    """Where one finished run is kept, e.g. `switch-4_seed1.json`."""
    return runs_dir / f"{group_name(key)}_seed{key['seed']}.json"


def _round(v):
    return round(v, 5) if isinstance(v, float) else v


def specs(args) -> list[dict]:
    """Every run of the study: switch (each expert count) and dense, for each seed."""
    out = []
    common = {'steps': args.steps, 'eval_interval': args.eval_interval, 'data': str(args.data),
              'checkpoint_interval': 0, 'sample_length': 0}
    for seed in args.seeds:
        out.append({'key': {'model': 'dense', 'n_experts': 0, 'seed': seed},
                    'overrides': {**common, 'model': 'dense', 'seed': seed}})
        for n in args.experts:
            out.append({'key': {'model': 'switch', 'n_experts': n, 'seed': seed},
                        'overrides': {**common, 'model': 'switch', 'n_experts': n, 'seed': seed}})
    return out


def group_name(run: dict) -> str:
    return 'dense' if run['model'] == 'dense' else f"switch-{run['n_experts']}"


def summarise(runs: list[dict]) -> dict:
    """Per model: final validation loss mean, sample std, min and max over seeds, and more."""
    groups = {}
    for r in runs:
        groups.setdefault(group_name(r), []).append(r)
    summary = {}
    for name, rs in groups.items():
        final = [r['history'][-1]['loss.valid'] for r in rs]
        best = [min(h['loss.valid'] for h in r['history']) for r in rs]
        summary[name] = {
            'n_experts': rs[0]['n_experts'], 'params': rs[0]['params'], 'seeds': len(rs),
            'final_valid_loss_mean': statistics.mean(final),
            'final_valid_loss_std': statistics.stdev(final) if len(final) > 1 else 0.0,
            'final_valid_loss_ci95': ci95(final),
            'final_valid_loss_min': min(final), 'final_valid_loss_max': max(final),
            'best_valid_loss_mean': statistics.mean(best),
            'final_valid_accuracy_mean': statistics.mean(r['history'][-1]['accuracy.valid'] for r in rs),
            'final_train_loss_mean': statistics.mean(r['history'][-1]['loss.train'] for r in rs),
            'seconds_mean': statistics.mean(r['seconds'] for r in rs),
        }
        if 'dense' in groups and name != 'dense':
            # Paired by seed: the same initial data order
            dense = {r['seed']: r['history'][-1]['loss.valid'] for r in groups['dense']}
            diffs = [r['history'][-1]['loss.valid'] - dense[r['seed']] for r in rs if r['seed'] in dense]
            summary[name]['minus_dense_mean'] = statistics.mean(diffs)
            summary[name]['minus_dense_ci95'] = ci95(diffs)
            summary[name]['minus_dense_per_seed'] = diffs
    return summary


def markdown_table(summary: dict) -> str:
    """The table of the results page."""
    order = sorted(summary, key=lambda n: (n != 'dense', summary[n]['n_experts']))
    lines = ['| model | experts | parameters | seeds | final valid loss (mean ± 95% CI) | std | min – max | '
             'vs dense (paired mean ± 95% CI) | valid accuracy | seconds/run |',
             '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for n in order:
        s = summary[n]
        vs = f"{s['minus_dense_mean']:+.4f} ± {s['minus_dense_ci95']:.4f}" if 'minus_dense_mean' in s else '—'
        lines.append(f"| {n} | {s['n_experts'] or '—'} | {s['params']:,} | {s['seeds']} | "
                     f"{s['final_valid_loss_mean']:.4f} ± {s['final_valid_loss_ci95']:.4f} | "
                     f"{s['final_valid_loss_std']:.4f} | "
                     f"{s['final_valid_loss_min']:.4f} – {s['final_valid_loss_max']:.4f} | {vs} | "
                     f"{s['final_valid_accuracy_mean']:.3f} | {s['seconds_mean']:.0f} |")
    return '\n'.join(lines)


def plot(results: dict, out: Path, *, prefix: str = '', which: tuple = ('valid_loss', 'experts_sweep', 'utilisation')):
    """Up to three small plots for the results page, `{prefix}{name}.png`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = results['runs']
    groups = {}
    for r in runs:
        groups.setdefault(group_name(r), []).append(r)

    def curves(rs, key='loss.valid'):
        steps = [h['step'] for h in rs[0]['history']]
        values = [[h[key] for h in r['history']] for r in rs]
        mean = [statistics.mean(v) for v in zip(*values)]
        return steps, mean, [min(v) for v in zip(*values)], [max(v) for v in zip(*values)]

    # 1. Validation loss vs step: switch (4 experts) vs dense, mean and min-max over seeds
    if 'valid_loss' in which:
        _plot_valid_loss(plt, groups, curves, out / f'{prefix}valid_loss.png')
    switch = sorted((g for g in groups if g != 'dense'), key=lambda g: groups[g][0]['n_experts'])
    cmap = plt.get_cmap('viridis')
    if 'experts_sweep' in which:
        _plot_sweep(plt, results, groups, switch, cmap, curves, out / f'{prefix}experts_sweep.png')
    if 'utilisation' in which:
        _plot_utilisation(plt, groups, switch, cmap, out / f'{prefix}utilisation.png')


def _plot_valid_loss(plt, groups, curves, path):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    # Dense, 4 experts (the labml preset's count) and the most experts run
    most = max((g for g in groups if g != 'dense'), key=lambda g: groups[g][0]['n_experts'], default=None)
    main = [n for n in dict.fromkeys(('dense', 'switch-4', most)) if n in groups]
    for ax, zoom in zip(axes, (False, True)):
        for name, color in zip(main, ('tab:gray', 'tab:blue', 'tab:orange')):
            steps, mean, lo, hi = curves(groups[name])
            if zoom:
                keep = [i for i, s in enumerate(steps) if s >= steps[-1] / 2]
                steps, mean, lo, hi = ([xs[i] for i in keep] for xs in (steps, mean, lo, hi))
            ax.plot(steps, mean, color=color, label=f'{name} (mean of {len(groups[name])} seeds)')
            ax.fill_between(steps, lo, hi, color=color, alpha=0.25, linewidth=0)
        ax.set_xlabel('step')
        ax.set_ylabel('validation loss (nats/char)')
        ax.grid(alpha=0.3)
        ax.set_title('second half, zoomed' if zoom else 'validation loss, band = min–max over seeds')
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_sweep(plt, results, groups, switch, cmap, curves, path):
    # 2. The experts sweep: curves, the final loss against the number of experts, and
    #    (with a dense model) each expert count's paired difference from dense
    paired = 'dense' in groups
    fig, axes = plt.subplots(1, 3 if paired else 2, figsize=(15 if paired else 10, 3.8), dpi=100)
    for i, name in enumerate(switch):
        steps, mean, lo, hi = curves(groups[name])
        keep = [j for j, s in enumerate(steps) if s >= steps[-1] / 3]
        axes[0].plot([steps[j] for j in keep], [mean[j] for j in keep], color=cmap(i / max(1, len(switch) - 1)),
                     label=name)
    if 'dense' in groups:
        steps, mean, lo, hi = curves(groups['dense'])
        keep = [j for j, s in enumerate(steps) if s >= steps[-1] / 3]
        axes[0].plot([steps[j] for j in keep], [mean[j] for j in keep], color='black', linestyle='--',
                     label='dense')
    axes[0].set_xlabel('step')
    axes[0].set_ylabel('validation loss (mean over seeds)')
    axes[0].set_title('last two thirds of training')
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    s = results['summary']
    xs = [s[n]['n_experts'] for n in switch]
    axes[1].errorbar(xs, [s[n]['final_valid_loss_mean'] for n in switch],
                     yerr=[s[n]['final_valid_loss_ci95'] for n in switch], marker='o', capsize=4, label='switch')
    for n in switch:
        seeds = [r['history'][-1]['loss.valid'] for r in groups[n]]
        axes[1].scatter([s[n]['n_experts']] * len(seeds), seeds, color='tab:blue', alpha=0.35, s=12)
    if 'dense' in s:
        d = s['dense']
        axes[1].axhline(d['final_valid_loss_mean'], color='black', linestyle='--', label='dense (same FLOPs)')
        axes[1].axhspan(d['final_valid_loss_mean'] - d['final_valid_loss_ci95'],
                        d['final_valid_loss_mean'] + d['final_valid_loss_ci95'], color='gray', alpha=0.2)
    axes[1].set_xscale('log', base=2)
    axes[1].set_xticks(xs, [str(x) for x in xs])
    axes[1].set_xlabel('experts per Switch layer')
    axes[1].set_ylabel(f"validation loss at step {results['config']['steps']}")
    axes[1].set_title('mean ± 95% CI (dense: band), dots = seeds')
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    if paired:
        axes[2].errorbar(xs, [s[n]['minus_dense_mean'] for n in switch], yerr=[s[n]['minus_dense_ci95'] for n in switch],
                         marker='o', capsize=4, color='tab:green')
        for n in switch:
            axes[2].scatter([s[n]['n_experts']] * len(s[n]['minus_dense_per_seed']), s[n]['minus_dense_per_seed'],
                            color='tab:green', alpha=0.35, s=12)
        axes[2].axhline(0, color='black', linestyle='--', linewidth=1)
        axes[2].set_xscale('log', base=2)
        axes[2].set_xticks(xs, [str(x) for x in xs])
        axes[2].set_xlabel('experts per Switch layer')
        axes[2].set_ylabel('switch minus dense (same seed)')
        axes[2].set_title('paired difference: mean ± 95% CI, dots = seeds')
        axes[2].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_utilisation(plt, groups, switch, cmap, path):
    # 3. Utilisation per layer over training: the fraction of validation tokens each expert
    #    receives (4 experts, seed 0), and the imbalance for every expert count
    if 'switch-4' in groups:
        r = next(r for r in groups['switch-4'] if r['seed'] == min(x['seed'] for x in groups['switch-4']))
        steps = [h['step'] for h in r['history']]
        n_layers = len(r['history'][0]['route_fraction'])
        fig, axes = plt.subplots(2, n_layers, figsize=(5 * n_layers, 6.4), dpi=100, squeeze=False)
        for layer in range(n_layers):
            ax = axes[0][layer]
            fractions = list(zip(*[h['route_fraction'][layer] for h in r['history']]))
            ax.stackplot(steps, fractions, labels=[f'expert {i}' for i in range(len(fractions))], alpha=0.85)
            ax.axhline(0.25, color='white', linewidth=0.5)
            ax.axhline(0.5, color='white', linewidth=0.5)
            ax.axhline(0.75, color='white', linewidth=0.5)
            ax.set_ylim(0, 1)
            ax.set_title(f'layer {layer}: share of tokens per expert (4 experts, seed {r["seed"]})')
            ax.set_xlabel('step')
            if layer == 0:
                ax.legend(fontsize=7, loc='lower left')
            ax = axes[1][layer]
            for i, name in enumerate(switch):
                if groups[name][0]['n_experts'] < 2:
                    continue
                n = groups[name][0]['n_experts']
                # max share / (1/N): 1 is perfect balance, N means one expert takes everything
                values = [[max(h['route_fraction'][layer]) * n for h in rr['history']] for rr in groups[name]]
                ax.plot(steps, [statistics.mean(v) for v in zip(*values)],
                        color=cmap(i / max(1, len(switch) - 1)), label=name)
            ax.set_ylim(bottom=1)
            ax.set_title(f'layer {layer}: busiest expert\'s share × N (1 = balanced)')
            ax.set_xlabel('step')
            ax.grid(alpha=0.3)
            if layer == 0:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--preset', default='quick', help="the experiment's preset every run starts from")
    parser.add_argument('--steps', type=int, default=1500)
    parser.add_argument('--eval-interval', type=int, default=100)
    parser.add_argument('--seeds', type=lambda s: [int(x) for x in s.split(',')], default=[0, 1, 2])
    parser.add_argument('--experts', type=lambda s: [int(x) for x in s.split(',')], default=[1, 2, 4, 8, 16])
    parser.add_argument('--data', type=Path, default=None,
                        help='the text (default: data/tiny_shakespeare.txt, downloaded there if missing)')
    parser.add_argument('--out', type=Path, default=REPO / 'experiments' / 'results')
    parser.add_argument('--jobs', type=int, default=1, help='runs at a time (each on one thread)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads per run')
    parser.add_argument('--plot-only', action='store_true', help='redraw the plots from the saved JSON (or, for a '
                        'study stopped before its end, from the runs it finished)')
    parser.add_argument('--name', default='switch_vs_dense', help='results go to NAME.json (and NAME_*.png unless '
                        'it is the default name)')
    parser.add_argument('--plots', type=lambda s: tuple(s.split(',')),
                        default=('valid_loss', 'experts_sweep', 'utilisation'))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f'{args.name}.json'
    prefix = '' if args.name == 'switch_vs_dense' else f'{args.name}_'

    if not args.plot_only:
        # The text, found (or downloaded) once, before the runs start
        from labml import lab

        from labml_nn_switch.cli import labml_root
        from labml_nn_switch.data import DataError, find_text_file
        labml_root()
        try:
            args.data = find_text_file(str(args.data or ''), data_dir=lab.get_data_path())
        except DataError as e:
            sys.exit(f'error: {e}')
        runs_dir = args.out / f'{args.name}_runs'
        runs_dir.mkdir(exist_ok=True)
        todo = specs(args)
        # Runs finished by an earlier, interrupted start of the same study are kept, not redone
        pending = [spec for spec in todo if not run_file(runs_dir, spec['key']).exists()]
        for spec in todo:
            spec['threads'] = args.threads
            spec['preset'] = args.preset
        start = time.time()
        runs = [json.loads(run_file(runs_dir, spec['key']).read_text()) for spec in todo if spec not in pending]
        if runs:
            print(f'{len(runs)} runs already done in {runs_dir}', file=sys.stderr)
        # Runs are independent; a pool of `--jobs` processes runs them (labml is one per process)
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, spec) for spec in pending]
            for future in as_completed(futures):
                run = future.result()
                runs.append(run)
                # Written as soon as it is done (atomically), so a crash loses only runs under way
                path_run = run_file(runs_dir, run)
                path_run.with_suffix('.tmp').write_text(json.dumps(run) + '\n')
                path_run.with_suffix('.tmp').replace(path_run)
                print(f"{group_name(run)} seed {run['seed']}: valid loss {run['history'][-1]['loss.valid']:.4f} "
                      f"({run['seconds']:.0f}s)", file=sys.stderr)
        runs.sort(key=lambda r: (r['seed'], r['model'] != 'dense', r['n_experts']))
        results = {
            'config': {'preset': args.preset, 'steps': args.steps, 'eval_interval': args.eval_interval,
                       'seeds': args.seeds, 'experts': args.experts, 'jobs': args.jobs, 'threads': args.threads,
                       'total_seconds': round(time.time() - start), 'torch_threads_per_run': args.threads},
            'runs': runs,
        }
        results['summary'] = summarise(runs)
        path.write_text(json.dumps(results, indent=1) + '\n')
    elif (args.out / f'{args.name}_runs').is_dir() and not path.exists():
        # A study stopped before its end: summarise the runs it finished
        runs = [json.loads(f.read_text()) for f in sorted((args.out / f'{args.name}_runs').glob('*.json'))]
        runs.sort(key=lambda r: (r['seed'], r['model'] != 'dense', r['n_experts']))
        results = {'config': {'preset': args.preset, 'steps': args.steps, 'eval_interval': args.eval_interval,
                              'seeds': sorted({r['seed'] for r in runs}),
                              'experts': sorted({r['n_experts'] for r in runs} - {0}), 'threads': args.threads,
                              'finished_runs_only': True},
                   'runs': runs, 'summary': summarise(runs)}
        path.write_text(json.dumps(results, indent=1) + '\n')
    results = json.loads(path.read_text())
    plot(results, args.out, prefix=prefix, which=args.plots)
    table = markdown_table(results['summary'])
    # The table also goes beside the JSON, for the Results page to include
    path.with_suffix('.md').write_text(table + '\n')
    print(table)


if __name__ == '__main__':
    main()
