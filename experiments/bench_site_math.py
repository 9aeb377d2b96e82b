"""
How long until every formula on the site's biggest page is typeset, in headless Chromium.

Each candidate is a built site, served on 127.0.0.1; by default the one this
repository builds now. Give a baseline to compare with, e.g. the site as the
`main` branch builds it:

    git worktree add /tmp/main-tree main
    (cd /tmp/main-tree && PYTHONPATH=mkdocs-literate python -m mkdocs build -d /tmp/site-main)
    python experiments/bench_site_math.py --site main=/tmp/site-main --site now=site/

The page with the most formulas (`class="arithmatex"` elements) in the first
site is loaded `--repeats` times per candidate, interleaved (A B A B ...) so
that the machine's load hits all alike, each load in a fresh browser context
(empty cache, a first visit), then as often again in one context per candidate
(cached files, as the next page of a visit). A script injected before the
page's own polls every animation frame and records `performance.now()`
(milliseconds since navigation start) when every formula holds typeset output
(`.katex`, or MathJax's `mjx-container`), so the figure means the same for any
renderer, in the page or at build time. We print the median and the spread
(min, max) of that time, of the `load` event, and the ratio of medians to the
first candidate.

    python experiments/bench_site_math.py --repeats 30

Needs Chromium (`apt-get install chromium`) and playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from site_fixtures import CHROMIUM_ARGS, chromium_executable, mkdocs_build, serve  # noqa: E402

# Runs before the page's scripts: record the first frame at which all math
# (as many formulas as the page's HTML holds) is typeset.
PROBE = """
(count => {
  const poll = () => {
    const typeset = [...document.querySelectorAll('.arithmatex')]
      .filter(e => e.querySelector('.katex, mjx-container')).length;
    if (typeset >= count) { window.__mathTypeset = performance.now(); return; }
    requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})(%d);
"""


def biggest_page(site: Path) -> tuple[str, int]:
    """The site path of the page with the most formulas, and how many it has."""
    counts = {}
    for html in site.rglob("index.html"):
        counts[html] = len(re.findall(r'class="arithmatex"', html.read_text(encoding="utf-8")))
    page = max(counts, key=counts.get)
    rel = page.parent.relative_to(site).as_posix()
    return ("" if rel == "." else rel + "/"), counts[page]


def measure(page, url: str) -> tuple[float, float]:
    page.goto(url, wait_until="load")
    page.wait_for_function("() => window.__mathTypeset !== undefined", timeout=30_000)
    typeset = page.evaluate("window.__mathTypeset")
    load = page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")
    return typeset, load


def summary(name: str, values: list[float], base: list[float]) -> str:
    ratio = statistics.median(values) / statistics.median(base)
    return (f"{name:<34} median {statistics.median(values):6.0f} ms   min {min(values):6.0f}   "
            f"max {max(values):6.0f}   x{ratio:.2f}   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", action="append", default=[], metavar="NAME=DIR",
                        help="a built site to measure (repeatable; default: build this repository's)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    executable = chromium_executable()
    if executable is None:
        sys.exit("Chromium not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        sites = dict(s.split("=", 1) for s in args.site)
        if not sites:
            built = Path(tmp) / "site"
            done = mkdocs_build(ROOT / "mkdocs.yml", built)
            if done.returncode:
                sys.exit(done.stdout + done.stderr)
            sites = {"now": built}
        sites = {name: Path(path) for name, path in sites.items()}
        path, _ = biggest_page(next(iter(sites.values())))
        with sync_playwright() as p, contextlib.ExitStack() as stack:
            bases = {name: stack.enter_context(serve(site)) for name, site in sites.items()}
            counts = {name: len(re.findall(r'class="arithmatex"', (site / path / "index.html").read_text()))
                      for name, site in sites.items()}
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            print(f"page: {path} ({counts}) formulas, Chromium {browser.version}")
            results = {name: {k: [] for k in ("cold", "cold load", "cached", "cached load")} for name in sites}

            def context(name):
                c = browser.new_context(viewport={"width": 1400, "height": 900})
                c.add_init_script(PROBE % counts[name])
                return c

            for _ in range(args.repeats):
                for name in sites:
                    c = context(name)
                    typeset, load = measure(c.new_page(), f"{bases[name]}/{path}")
                    results[name]["cold"].append(typeset)
                    results[name]["cold load"].append(load)
                    c.close()
            pages = {}
            for name in sites:
                pages[name] = context(name).new_page()
                measure(pages[name], f"{bases[name]}/{path}")  # fill the cache
            for _ in range(args.repeats):
                for name in sites:
                    typeset, load = measure(pages[name], f"{bases[name]}/{path}")
                    results[name]["cached"].append(typeset)
                    results[name]["cached load"].append(load)
            browser.close()
    first = next(iter(results.values()))
    for kind, label in (("cold", "typeset, first visit"), ("cold load", "load event, first visit"),
                        ("cached", "typeset, cached"), ("cached load", "load event, cached")):
        for name, values in results.items():
            print(summary(f"{label} [{name}]", values[kind], first[kind]))


if __name__ == "__main__":
    main()
