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
(milliseconds since navigation start) when every formula is visibly
typeset, and when those of the first screen (1400 x 900) are, which is what
a reader sees first. Visibly typeset: each holds typeset output (`.katex`,
or MathJax's `mjx-container`), KaTeX's stylesheet is applied, and, after the
page is laid out, no font face is still loading and KaTeX's main font is
loaded. So the figure
means the same for any renderer, in the page or at build time (formulas
typeset at build time are in the page's HTML from the start; they are shown
once the stylesheet and fonts are in). We print the median and the spread
(min, max) of that time, of the `load` event, and the ratio of medians to the
first candidate. On a busy machine wall time includes the time the page waited
for a core: `--cpu` traces each load and adds the CPU time the page's main
thread spent until typeset, which does not.

    python experiments/bench_site_math.py --repeats 30 --cpu

Needs Chromium (`apt-get install chromium`) and playwright (the dev extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from site_fixtures import CHROMIUM_ARGS, chromium_executable, mkdocs_build, serve  # noqa: E402

# Runs before the page's scripts: record the first frame at which all math
# (as many formulas as the page's HTML holds) is typeset and shown: KaTeX's
# stylesheet applied (its font family on `.katex`) and, once layout has asked
# for the fonts the formulas use (`offsetWidth` forces it), none loading:
# each font face's own status, not the set's `document.fonts.status`, which
# a task updates that may wait long behind a busy main thread.
# And the first frame at which the formulas of the first screen (those above
# the window's bottom edge, at least one) are typeset and shown: what a
# reader sees first.
PROBE = """
(count => {
  const done = e => e.querySelector('.katex, mjx-container') !== null;
  const shown = () => {
    const katex = document.querySelector('.arithmatex .katex');
    if (!katex) return true;  // another renderer (MathJax brings its own fonts)
    if (!getComputedStyle(katex).fontFamily.includes('KaTeX_Main')) return false;
    katex.offsetWidth;
    return document.fonts.check('1em KaTeX_Main') && ![...document.fonts].some(f => f.status === 'loading');
  };
  const poll = () => {
    const all = [...document.querySelectorAll('.arithmatex')];
    if (window.__screenTypeset === undefined) {
      const screen = all.filter(e => e.getBoundingClientRect().top < innerHeight);
      if (screen.length && screen.every(done) && shown()) window.__screenTypeset = performance.now();
    }
    if (all.filter(done).length >= count && shown()) { window.__mathTypeset = performance.now(); return; }
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


# Trace categories for the main thread's tasks and the navigation's start.
TRACE = ["toplevel", "devtools.timeline", "blink.user_timing"]
TASKS = ("RunTask", "ThreadControllerImpl::RunTask")


def measure(page, url: str, browser=None) -> dict[str, float]:
    """Time to typeset and to `load`; with `browser`, also the main thread's CPU time until typeset."""
    if browser is not None:
        browser.start_tracing(page=page, categories=TRACE)
    page.goto(url, wait_until="load")
    page.wait_for_function("() => window.__mathTypeset !== undefined", timeout=30_000)
    result = {"typeset": page.evaluate("window.__mathTypeset"),
              "first screen": page.evaluate("window.__screenTypeset"),
              "load": page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd")}
    if browser is not None:
        result["cpu"] = main_thread_cpu(json.loads(browser.stop_tracing())["traceEvents"], url, result["typeset"])
    return result


def main_thread_cpu(events: list[dict], url: str, until_ms: float) -> float:
    """
    CPU milliseconds the page's main thread spent in tasks from the navigation's
    start until `until_ms` later: on a busy machine, wall time counts the time the
    thread waited for a core; this does not.
    """
    starts = [e for e in events if e["name"] == "navigationStart"
              and e.get("args", {}).get("data", {}).get("documentLoaderURL") == url]
    start = starts[-1]
    end = start["ts"] + until_ms * 1000
    return sum(e.get("tdur", 0) for e in events
               if e["name"] in TASKS and e.get("ph") == "X" and e["pid"] == start["pid"]
               and e["tid"] == start["tid"] and start["ts"] <= e["ts"] <= end) / 1000


def summary(name: str, values: list[float], base: list[float]) -> str:
    ratio = statistics.median(values) / statistics.median(base)
    return (f"{name:<40} median {statistics.median(values):6.0f} ms   min {min(values):6.0f}   "
            f"max {max(values):6.0f}   x{ratio:.2f}   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", action="append", default=[], metavar="NAME=DIR",
                        help="a built site to measure (repeatable; default: build this repository's)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cpu", action="store_true",
                        help="trace each load and report the main thread's CPU time until typeset too")
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
            tracer = browser if args.cpu else None
            results = {name: {} for name in sites}

            def record(name, kind, measured):
                for key, value in measured.items():
                    results[name].setdefault(f"{kind} {key}", []).append(value)

            def context(name):
                c = browser.new_context(viewport={"width": 1400, "height": 900})
                c.add_init_script(PROBE % counts[name])
                return c

            for _ in range(args.repeats):
                for name in sites:
                    c = context(name)
                    record(name, "cold", measure(c.new_page(), f"{bases[name]}/{path}", tracer))
                    c.close()
            pages = {}
            for name in sites:
                pages[name] = context(name).new_page()
                measure(pages[name], f"{bases[name]}/{path}")  # fill the cache
            for _ in range(args.repeats):
                for name in sites:
                    record(name, "cached", measure(pages[name], f"{bases[name]}/{path}", tracer))
            browser.close()
    first = next(iter(results.values()))
    labels = {"cold typeset": "typeset, first visit", "cold first screen": "first screen typeset, first visit",
              "cold load": "load event, first visit", "cold cpu": "main-thread CPU, first visit",
              "cached typeset": "typeset, cached", "cached first screen": "first screen typeset, cached",
              "cached load": "load event, cached", "cached cpu": "main-thread CPU, cached"}
    for kind, label in labels.items():
        for name, values in results.items():
            if kind in values:
                print(summary(f"{label} [{name}]", values[kind], first[kind]))


if __name__ == "__main__":
    main()
