"""
The distribution stands alone: `python -m build` makes a wheel and an sdist
with the assets; the wheel installed into a fresh virtual environment, which
has no torch, builds a two-module sample package with `mkdocs build --strict`.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from literate_testing import MINI_CONFIG, mkdocs_build, read_literate_page, write_project

pytestmark = pytest.mark.slow

DIST = Path(__file__).resolve().parents[1]

SAMPLE = {
    "docs/index.md": "# Sample\n",
    "sample/__init__.py": '''
        """
        ---
        title: Sample package
        ---

        A sample: see [the model](model.py) and $\\frac{a}{b}$.
        """

        from .model import scale
        ''',
    "sample/model.py": '''
        """
        # The model

        $$
        y = \\alpha x
        $$
        """


        # Multiply by $\\alpha$
        def scale(x, alpha=2.0):
            return alpha * x
        ''',
}


def run(*cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, DIST)
    return out


def test_build_makes_a_wheel_and_an_sdist_with_the_assets(dist):
    wheel, = dist.glob("mkdocs_literate-*.whl")
    sdist, = dist.glob("mkdocs_literate-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("mkdocs_literate/plugin.py", "mkdocs_literate/assets/literate.css",
                 "mkdocs_literate/assets/katex/katex.min.js", "mkdocs_literate/assets/katex/katex.min.css"):
        assert part in names
    assert any(n.endswith("entry_points.txt") for n in names)
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert any(m.endswith("mkdocs_literate/assets/literate.css") for m in members)
    assert any(m.endswith("README.md") for m in members) and any(m.endswith("LICENSE") for m in members)


def test_wheel_in_a_fresh_venv_without_torch_builds_a_sample_site(dist, tmp_path):
    wheel, = dist.glob("mkdocs_literate-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[material]")
    # Nothing of torch came with it.
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0

    project = tmp_path / "project"
    config = write_project(project, SAMPLE, MINI_CONFIG)
    result = mkdocs_build(config, project / "site", python=str(python))
    assert result.returncode == 0, result.stdout + result.stderr

    index = read_literate_page(project / "site" / "sample" / "index.html")
    assert r"\(\frac{a}{b}\)" in index.formulas
    assert "A sample: see" in index.notes_text
    assert [text for _, text in index.code] == ["from .model import scale"]
    model = read_literate_page(project / "site" / "sample" / "model" / "index.html")
    assert any("y = \\alpha x" in f and f.startswith("\\[") for f in model.formulas)
    assert "Multiply by" in model.notes_text
    assert [text for _, text in model.code] == [
        "def scale(x, alpha=2.0):", "    return alpha * x"]
    # Typeset in the build (by the wheel's own KaTeX, in V8): the site has
    # KaTeX's stylesheet, not its script.
    assert (project / "site" / "assets" / "literate" / "katex" / "katex.min.css").is_file()
    assert not (project / "site" / "assets" / "literate" / "katex" / "katex.min.js").exists()
    assert 'class="katex-display"' in (project / "site" / "sample" / "model" / "index.html").read_text()
