"""
Render the whole labml_nn corpus with mkdocs-literate and with pycco, on the
same files, several rounds, and print the medians, the spread and the ratio;
then the corpus figures of our pages: modules rendered, code lines missing,
note words missing, formulas intact.

    python mkdocs-literate/benchmarks/bench_corpus.py [--rounds 5]

Needs the `corpus` extra (labml-nn, installed with --no-deps) and the `bench`
extra (pycco). Ours is timed as a user runs it: a whole `mkdocs build` of a
site with every module (the plain `mkdocs` theme, no search), in this process;
pycco as its `process()` writes one HTML page per module.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from literate_testing import CORPUS_CONFIG, check_module, corpus_root  # noqa: E402



def corpus() -> Path:
    root = corpus_root()
    if root is None:
        sys.exit("labml-nn is not installed: pip install --no-deps 'labml-nn==0.5.1'")
    return root


def build_ours(package: Path, work: Path) -> Path:
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    (work / "docs").mkdir(exist_ok=True)
    (work / "docs" / "index.md").write_text("# labml_nn\n")
    config_file = work / "mkdocs.yml"
    config_file.write_text(CORPUS_CONFIG.format(path=package.as_posix()))
    site = work / "site"
    config = load_config(str(config_file), site_dir=str(site))
    build(config)
    return site


def build_pycco(package: Path, work: Path) -> Path:
    from pycco.main import process
    files = sorted(str(p.relative_to(package.parent)) for p in package.rglob("*.py"))
    cwd = os.getcwd()
    os.chdir(package.parent)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            process(files, preserve_paths=True, outdir=str(work / "pycco"))
    finally:
        os.chdir(cwd)
    return work / "pycco"


# Wall time, this process's CPU time (steadier on a shared machine), and
# how many pages were written.
def timed(fn, package: Path) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(package, Path(tmp))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, len(list(out.rglob("*.html")))


def summary(times: list[float]) -> str:
    return (f"median {statistics.median(times):6.2f} s  "
            f"(min {min(times):.2f}, max {max(times):.2f}, n={len(times)})")


def figures(package: Path) -> Counter:
    """Build our site once and check every page against its source."""
    totals = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        site = build_ours(package, Path(tmp))
        for file in sorted(package.rglob("*.py")):
            rel = file.relative_to(package.parent).with_suffix("")
            page = site / (rel.parent if rel.name == "__init__" else rel) / "index.html"
            r = check_module(file, page)
            totals.update(modules=1, code_lines=r["code_lines"], formulas=r["formulas"],
                          code_lines_missing=len(r["missing_code"]) + len(r["wrong"]) + len(r["twice"]),
                          note_words_missing=sum(r["missing_words"].values()),
                          formulas_broken=len(r["broken"]), stray_dollars=max(r["stray"], 0))
    return totals


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    package = corpus()
    files = list(package.rglob("*.py"))
    lines = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in files)
    print(f"corpus: {package} ({len(files)} modules, {lines} lines)")

    # mkdocs logs every page at INFO: keep the output to the figures.
    import logging
    logging.getLogger("mkdocs").setLevel(logging.ERROR)
    ours, pycco = [], []
    for _ in range(args.rounds):
        # Alternate, so that a slow spell of the machine hits both.
        ours.append(timed(build_ours, package))
        pycco.append(timed(build_pycco, package))
    print(f"pages written: ours {ours[0][2]} (with the theme's 404 and home), pycco {pycco[0][2]}")
    for i, clock in enumerate(("wall", "CPU")):
        a, b = [t[i] for t in ours], [t[i] for t in pycco]
        print(f"{clock:>4}: mkdocs-literate (mkdocs build) {summary(a)}")
        print(f"{clock:>4}: pycco (process)                {summary(b)}")
        print(f"{clock:>4}: ratio ours / pycco (medians)   {statistics.median(a) / statistics.median(b):.2f}")

    totals = figures(package)
    print(f"modules rendered:     {totals['modules']} of {len(files)}")
    print(f"code lines rendered:  {totals['code_lines']}; missing, wrong or twice: {totals['code_lines_missing']}")
    print(f"note words missing:   {totals['note_words_missing']}")
    print(f"formulas intact:      {totals['formulas'] - totals['formulas_broken']} of {totals['formulas']}; "
          f"stray $ in prose: {totals['stray_dollars']}")


if __name__ == "__main__":
    main()
