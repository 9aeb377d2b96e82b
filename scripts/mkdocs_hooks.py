"""
An mkdocs hook: the study's plots, `experiments/results/*.png`, become site files under
`study/` (the Results page shows `study/valid_loss.png`), read from where the study
writes them; nothing is copied into `docs/`.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / 'experiments' / 'results'


def on_files(files, config):
    """Add every plot of the results folder as `study/<name>.png`."""
    for plot in sorted(RESULTS.glob('*.png')):
        files.append(File.generated(config, f'study/{plot.name}', abs_src_path=str(plot)))
    return files
