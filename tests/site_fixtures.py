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
import textwrap
import threading
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


# ## Building

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def mkdocs_build(config_file: Path, site_dir: Path, *, strict: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `mkdocs build` as a user would, and return the finished process."""
    cmd = [sys.executable, "-m", "mkdocs", "build", "-f", str(config_file), "-d", str(site_dir)]
    if strict:
        cmd.append("--strict")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                          cwd=config_file.parent)


@dataclass
class BuiltSite:
    path: Path
    seconds: float
    process: subprocess.CompletedProcess
    # A server bound to 127.0.0.1 on the port the site was built for (its
    # `site_url`, which instant navigation needs), started by `serve_real_site`.
    server: http.server.ThreadingHTTPServer
    url: str

    @property
    def output(self) -> str:
        return self.process.stdout + self.process.stderr


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
    return BuiltSite(site, time.perf_counter() - start, process, server, url)


def require_real_site() -> BuiltSite:
    site = real_site()
    if site.process.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{site.output}")
    return site


# A small project for the generator: a package of three modules that link to
# each other in notes and in code, with math in the notes.
MINI_FILES = {
    "pkg/__init__.py": '''
        """
        ---
        title: Mini package
        summary: A tiny package for testing.
        ---

        # Mini

        Read [the layer](layer.py), the [helper](helpers.md#helper) and
        [the layer class](layer.html#Layer).
        """

        from .layer import Layer
        ''',
    "pkg/helpers.py": r'''
        r"""
        ---
        title: Helpers
        ---

        Inline $\{a_1, b'\}$ and $a < b$ and $x_i y_j$, and display:

        $$
        x \\ y_2 = \text{it's}
        $$
        """


        # ## A helper
        def helper(x):
            """Doubles $x$."""
            return 2 * x
        ''',
    "pkg/layer.py": '''
        """A layer that uses [the helper](helpers.py#helper)."""

        from .helpers import helper
        from . import helpers


        class Layer:
            """A layer."""

            def forward(self, x):
                # Use the helper twice
                return helper(x) + helpers.helper(x)
        ''',
    "docs/index.md": '''
        # Home

        See [Layer](pkg/layer.py#Layer) and $e^{i\\pi} = -1$.
        ''',
}

MINI_CONFIG = '''
    site_name: Mini
    theme:
      name: material
      font: false
    plugins:
      - search
      - literate
    markdown_extensions:
      - pymdownx.arithmatex:
          generic: true
    validation:
      anchors: warn
    '''


def write_project(root: Path, files: dict[str, str] | None = None, config: str | None = None,
                  extra: dict[str, str] | None = None) -> Path:
    """Write a fixture project under `root`; return its mkdocs.yml."""
    all_files = dict(MINI_FILES if files is None else files)
    all_files.update(extra or {})
    for name, text in all_files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    config_file = root / "mkdocs.yml"
    config_file.write_text(textwrap.dedent(MINI_CONFIG if config is None else config).lstrip("\n"))
    return config_file


# ## Reading built pages

class PageParser(HTMLParser):
    """Every id on a page, and every link with its classes."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []
        self.resources: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href") is not None:
            self.links.append((attrs["href"], attrs.get("class") or ""))
        if tag in ("script", "img", "iframe", "source") and attrs.get("src"):
            self.resources.append((tag, attrs["src"]))
        if tag == "link" and attrs.get("href"):
            self.resources.append((tag, attrs["href"]))


@functools.lru_cache(maxsize=256)
def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def page_file(site: Path, url_path: str) -> Path:
    """The file a site-relative URL path is served from."""
    path = site / url_path.lstrip("/")
    if url_path.endswith("/") or path.is_dir():
        path = path / "index.html"
    return path


def resolve_link(site: Path, page: Path, href: str) -> tuple[Path, str]:
    """The file and fragment a relative link on `page` points to."""
    page_url = "http://site/" + page.relative_to(site).as_posix()
    parts = urlsplit(urljoin(page_url, href))
    return page_file(site, parts.path), parts.fragment


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
