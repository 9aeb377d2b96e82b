"""The notebook: its .ipynb is the .py's conversion, it runs end to end with a few steps and
makes the site's page with its outputs, and without the text it says where to put it."""

import importlib.util
import re

import jupytext
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError

from shared_text import REPO, SHAKESPEARE, needs_text

spec = importlib.util.spec_from_file_location('run_notebook', REPO / 'experiments' / 'run_notebook.py')
run_notebook = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebook)


def test_ipynb_is_generated_from_the_py():
    source = jupytext.read(run_notebook.SOURCE)
    notebook = nbformat.read(run_notebook.NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in source.cells], \
        'experiments/switch_shakespeare.ipynb is out of step: run python experiments/run_notebook.py sync'
    # Committed without outputs
    assert not any(c.get('outputs') for c in notebook.cells)
    assert run_notebook.repository().count('/') == 1


@pytest.mark.slow
@needs_text
def test_notebook_runs_and_makes_its_page(tmp_path):
    nb = run_notebook.execute({'STEPS': 20, 'DATA': str(SHAKESPEARE)}, tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs]
    text = ''.join(o.get('text', '') for o in outputs)
    # It trained (a run folder with a checkpoint), sampled after the prompt, plotted and showed the routing
    assert len(list(tmp_path.glob('logs/switch_shakespeare/*/checkpoints/step_*.pt'))) == 1
    assert re.search(r'^ROMEO:', text, re.M)
    assert any('image/png' in o.get('data', {}) for o in outputs)
    routing = [o['data']['text/html'] for o in outputs if 'text/html' in o.get('data', {})
               and 'class="rv"' in o['data']['text/html']]
    assert len(routing) == 1 and routing[0].count('class="rv-layer"') == 2
    # The page: the notebook's Markdown, its outputs, the plot beside it, a Colab button
    page = tmp_path / 'site' / 'notebook.md'
    page.parent.mkdir()
    run_notebook.write_page(nb, page)
    markdown = page.read_text()
    assert 'colab.research.google.com/github/' in markdown and 'switch_shakespeare.ipynb' in markdown
    assert '<div class="rv" id="notebook-routing">' in markdown
    images = re.findall(r'!\[[^\]]*\]\((notebook_files/[^)]+)\)', markdown)
    assert images and all((page.parent / i).is_file() for i in images)


@pytest.mark.slow
def test_notebook_without_the_text_says_where_to_put_it(tmp_path):
    with pytest.raises(CellExecutionError) as e:
        run_notebook.execute({'STEPS': 20, 'DOWNLOAD': False}, tmp_path)
    message = str(e.value)
    assert 'SystemExit' in message and 'Put tiny_shakespeare.txt at' in message
    assert str(tmp_path / 'data' / 'tiny_shakespeare.txt') in message
