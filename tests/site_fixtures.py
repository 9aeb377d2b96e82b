"""
Helpers shared by the site tests: building a site with mkdocs (the real one,
once per test process, or a small fixture project), reading ids and links out
of built pages, serving a built site on 127.0.0.1, and finding Chromium.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
# The languages the site is translated into: mkdocs.zh.yml, ...
LANGUAGES = sorted(p.name.split(".")[1] for p in ROOT.glob("mkdocs.*.yml"))

# The generator's own test helpers: building with mkdocs, reading built pages.
sys.path.insert(0, str(ROOT / "mkdocs-literate" / "tests"))
from literate_testing import mkdocs_build, page_file, parse_page, resolve_link  # noqa: E402,F401


# ## Building

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@dataclass
class BuiltSite:
    path: Path
    seconds: float
    process: subprocess.CompletedProcess
    # A server bound to 127.0.0.1 on the port the site was built for (its
    # `site_url`, which instant navigation needs), started by `serve_real_site`.
    server: http.server.ThreadingHTTPServer
    url: str
    # The translated sites (mkdocs.<language>.yml), each built into
    # `path / language` after the English one: the language switcher links to them.
    translated: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)

    @property
    def output(self) -> str:
        processes = [self.process, *self.translated.values()]
        return "".join(p.stdout + p.stderr for p in processes)

    @property
    def ok(self) -> bool:
        return all(p.returncode == 0 for p in [self.process, *self.translated.values()]) \
            and set(self.translated) == set(LANGUAGES)


@functools.cache
def real_site() -> BuiltSite:
    """The repository's own site, built with --strict once per test process."""
    tmp = Path(tempfile.mkdtemp(prefix="literate-site-"))
    atexit.register(shutil.rmtree, tmp, True)
    site = tmp / "site"
    # Take a free port first, so that the site can be built for its address.
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    atexit.register(server.server_close)
    url = f"http://127.0.0.1:{server.server_port}"
    start = time.perf_counter()
    process = mkdocs_build(ROOT / "mkdocs.yml", site, env={"SITE_URL": url + "/"})
    translated = {}
    for language in LANGUAGES if process.returncode == 0 else []:
        translated[language] = mkdocs_build(ROOT / f"mkdocs.{language}.yml", site / language,
                                            env={"SITE_URL": url + "/"})
    return BuiltSite(site, time.perf_counter() - start, process, server, url, translated)


def require_real_site() -> BuiltSite:
    site = real_site()
    if not site.ok:
        pytest.fail(f"mkdocs build --strict failed:\n{site.output}")
    return site


# ## Serving

@contextlib.contextmanager
def serve_real_site():
    """Serve the real site at the address it was built for; yield that URL."""
    site = require_real_site()
    thread = threading.Thread(target=site.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site.url
    finally:
        site.server.shutdown()
        thread.join()


@contextlib.contextmanager
def serve(directory: Path):
    """Serve `directory` on 127.0.0.1 on a free port; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


# ## Chromium

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]


def chromium_executable() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_chromium() -> str:
    """Chromium's path; skip without it, except in CI, where that is a failure."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed"
    executable = chromium_executable()
    if executable is None and reason is None:
        reason = "Chromium is not installed (apt-get install chromium)"
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser tests must run in CI: {reason}")
        pytest.skip(reason)
    return executable


@contextlib.contextmanager
def chromium():
    """Headless Chromium under Playwright (skipped without it, except in CI); yields the browser."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
