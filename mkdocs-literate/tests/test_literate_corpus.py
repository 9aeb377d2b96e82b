"""
The generator on literate Python written by others: every module of
[labml_nn](https://nn.labml.ai), rendered as it is published, in one real
`mkdocs build`. For each page: every code line once, with its own number;
every word of the notes; every formula intact (typeset by KaTeX, which keeps
its TeX, or shown as TeX); no stray `$`. The formulas KaTeX cannot read (the
authors' TeX errors, or TeX that KaTeX does not support) are counted and
printed, each a build warning that names `path:line`; they do not fail the test.

labml_nn comes with the `corpus` test extra, installed without its
dependencies (torch and more): the test reads its files as text and never
imports them. Without it the test is skipped, except in CI, where that fails.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from literate_testing import CORPUS_CONFIG, check_module, corpus_root, mkdocs_build

pytestmark = pytest.mark.slow


def require_corpus() -> Path:
    root = corpus_root()
    if root is None:
        reason = "labml-nn is not installed (the corpus test extra, installed with --no-deps)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the corpus test must run in CI: {reason}")
        pytest.skip(reason)
    return root




@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus's modules, the pages built from them, and the build's warnings on formulas."""
    package = require_corpus()
    root = tmp_path_factory.mktemp("corpus")
    (root / "docs").mkdir()
    (root / "docs" / "index.md").write_text("# labml_nn\n")
    config = root / "mkdocs.yml"
    config.write_text(CORPUS_CONFIG.format(path=package.as_posix()))
    result = mkdocs_build(config, root / "site", strict=False)
    assert result.returncode == 0, result.stdout + result.stderr
    pages = {}
    for file in sorted(package.rglob("*.py")):
        rel = file.relative_to(package.parent).with_suffix("")
        page = rel.parent if rel.name == "__init__" else rel
        pages[file] = root / "site" / page / "index.html"
    not_typeset = [line for line in (result.stdout + result.stderr).split("\n") if "formula not typeset" in line]
    return pages, not_typeset


def test_every_labml_nn_module_renders_faithfully(corpus):
    corpus, not_typeset = corpus
    failures = {}
    totals = Counter()
    for file, page in corpus.items():
        assert page.is_file(), page
        result = check_module(file, page)
        totals.update(modules=1, code_lines=result["code_lines"], formulas=result["formulas"],
                      missing_code=len(result["missing_code"]),
                      missing_words=sum(result["missing_words"].values()),
                      broken=len(result["broken"]))
        problems = {k: v for k, v in result.items()
                    if k not in ("code_lines", "formulas") and v}
        if problems:
            failures[file.name if file.name != "__init__.py" else file.parent.name] = problems
    print("corpus:", dict(totals))
    print(f"corpus: {len(not_typeset)} formulas KaTeX cannot typeset (shown as TeX, with a warning):")
    print("\n".join(not_typeset))
    # Each names the module and line it is on.
    assert all(re.search(r"literate: labml_nn/\S+\.py:\d+: formula not typeset: KaTeX parse error: ", line)
               for line in not_typeset), not_typeset
    assert not failures, "\n".join(f"{name}: {p}" for name, p in list(failures.items())[:20])
