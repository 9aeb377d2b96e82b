"""
The plugin on small fixture projects, built with `mkdocs build --strict` as a
user would: default sources, errors that name what is wrong, navigation
options, `mkdocs serve` watching the sources, repository and edit links.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from literate_testing import MINI_CONFIG, mkdocs_build, read_literate_page, write_project

pytestmark = pytest.mark.slow


def build(tmp_path, **kwargs):
    config = write_project(tmp_path, **kwargs)
    return mkdocs_build(config, tmp_path / "site")


def test_mini_project_builds_strict_with_default_sources(tmp_path):
    result = build(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("pkg/index.html", "pkg/layer/index.html", "pkg/helpers/index.html"):
        assert (tmp_path / "site" / page).is_file()


def test_broken_link_in_a_note_fails_the_strict_build(tmp_path):
    result = build(tmp_path, extra={"pkg/extra.py": '"""See [nothing](nothing.md)."""\n'})
    assert result.returncode != 0
    assert "nothing.md" in result.stderr + result.stdout


def test_broken_anchor_in_a_note_fails_the_strict_build(tmp_path):
    result = build(tmp_path, extra={"pkg/extra.py": '"""See [no](helpers.py#no_such_name)."""\n'})
    assert result.returncode != 0
    assert "no_such_name" in result.stderr + result.stdout


def test_unparseable_source_names_file_and_line(tmp_path):
    result = build(tmp_path, extra={"pkg/bad.py": "x = 1\n\ndef f(:\n    pass\n"})
    assert result.returncode != 0
    assert "pkg/bad.py:3:" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_formula_katex_cannot_read_is_a_warning_and_shown_as_tex(tmp_path):
    # Line 4 of the module holds a formula with a brace left open; the
    # notes before and after it are typeset.
    bad = '''
    """
    Fine: $a_1$.

    Broken: $\\frac{a}{b$ here.

    $$
    \\sum_i x_i
    $$
    """
    x = 1
    '''
    extra = {"pkg/bad.py": bad, "docs/page.md": "# Page\n\nAlso broken:\n$\\left( x$\n"}
    strict = build(tmp_path, extra=extra)
    assert strict.returncode != 0
    log = strict.stdout + strict.stderr
    assert "pkg/bad.py:4: formula not typeset: KaTeX parse error:" in log
    assert "docs/page.md:4: formula not typeset: KaTeX parse error:" in log
    assert "Traceback" not in strict.stderr
    # Not strict: the build goes on, and the page shows the TeX as written.
    loose = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "loose", strict=False)
    assert loose.returncode == 0, loose.stdout + loose.stderr
    page = read_literate_page(tmp_path / "loose" / "pkg" / "bad" / "index.html")
    assert page.formulas == ["\\(a_1\\)", "\\(\\frac{a}{b\\)", "\\[\\sum_i x_i\\]"]
    text = (tmp_path / "loose" / "pkg" / "bad" / "index.html").read_text()
    assert re.search(r'<span class="katex-error" title="ParseError: KaTeX parse error: [^"]+"[^>]*>'
                     r"\\frac\{a\}\{b</span>", text)
    assert text.count('class="katex"') == 2


@pytest.mark.parametrize("source, name", [
    ("- path: no_such_package", "no_such_package"),
    ("- path: pkg\n  order: [layer, no_such_module]", "no_such_module"),
])
def test_missing_source_or_module_in_order_names_itself(tmp_path, source, name):
    config = "site_name: Mini\nplugins:\n  - literate:\n      sources:\n" + textwrap.indent(source, " " * 8) + "\n"
    result = build(tmp_path, config=config)
    assert result.returncode != 0
    assert name in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_nav_order_sections_and_new_hand_written_pages(tmp_path):
    config = """
        site_name: Mini
        theme:
          name: mkdocs
        plugins:
          - literate:
              math: false
              sources:
                - path: pkg
                  nav: The package
                  order: [layer]
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        """
    result = build(tmp_path, config=config, extra={"docs/later.md": "# Added later\n"})
    assert result.returncode == 0, result.stdout + result.stderr
    home = (tmp_path / "site" / "index.html").read_text()
    assert "The package" in home and "Added later" in home
    # `order` first (layer), then the package itself, then the rest by name.
    positions = [home.index(f'href="{p}"') for p in ("pkg/layer/", "pkg/", "pkg/helpers/")]
    assert positions == sorted(positions)
    assert not (tmp_path / "site" / "assets" / "literate" / "katex").exists()
    assert "katex" not in home


def test_serve_watches_the_sources(tmp_path):
    from mkdocs.config import load_config
    config_file = write_project(tmp_path)
    config = load_config(str(config_file))
    plugin = config.plugins["literate"]
    config = plugin.on_config(config)

    class Server:
        watched = []

        def watch(self, path, *args, **kwargs):
            self.watched.append(Path(path))

    server = plugin.on_serve(Server(), config=config, builder=None)
    assert (tmp_path / "pkg").resolve() in server.watched


def test_a_source_url_places_its_pages_and_links_follow(tmp_path):
    config = """
        site_name: Mini
        theme:
          name: mkdocs
        plugins:
          - literate:
              math: false
              sources:
                - path: pkg
                  url: library/api
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        """
    result = build(tmp_path, config=config, extra={"pkg/figure.png": "not really a PNG"})
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    for page in ("library/api/index.html", "library/api/layer/index.html", "library/api/helpers/index.html"):
        assert (site / page).is_file(), page
    assert not (site / "pkg").exists() or not list((site / "pkg").rglob("*.html"))
    # Notes' links written against the files reach the moved pages; images follow them.
    from literate_testing import parse_page, resolve_link
    index = site / "library" / "api" / "index.html"
    targets = {resolve_link(site, index, href) for href, _ in parse_page(index).links}
    assert (site / "library" / "api" / "layer" / "index.html", "Layer") in targets
    assert (site / "library" / "api" / "figure.png").is_file()


def test_repository_links_edit_links_and_the_theme_template(tmp_path):
    config = """
        site_name: Mini
        repo_url: https://github.com/owner/mini
        theme:
          name: material
          font: false
          custom_dir: overrides
          features: [content.action.edit]
        plugins:
          - literate
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        """
    (tmp_path / "overrides").mkdir()
    result = build(tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "pkg" / "layer" / "index.html").read_text()
    # Lines link to the repository, the edit link goes to the source file, and
    # the header's repository link has no mark for the theme to fetch GitHub's API.
    assert re.search(r'class="literate-lineno" data-lineno="\d+" '
                     r'href="https://github.com/owner/mini/blob/main/pkg/layer.py#L\d+"', page)
    assert 'href="https://github.com/owner/mini/edit/main/pkg/layer.py"' in page
    assert 'class="md-source"' in page and 'data-md-component="source"' not in page
    # Our template comes after the user's own overrides, before the theme's.
    from mkdocs.config import load_config
    loaded = load_config(str(tmp_path / "mkdocs.yml"))
    dirs = loaded.plugins["literate"].on_config(loaded).theme.dirs
    assert Path(dirs[0]) == (tmp_path / "overrides").resolve()
    assert Path(dirs[1]).name == "templates" and Path(dirs[1]).parent.name == "mkdocs_literate"


@pytest.mark.parametrize("option, deferred", [("", True), ("\n          defer_scripts: false", False)])
def test_the_theme_script_is_deferred_unless_turned_off(tmp_path, option, deferred):
    config = MINI_CONFIG.replace("      - literate\n", "      - literate:" + option + "\n" if option
                                 else "      - literate\n")
    result = build(tmp_path, config=config)
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("pkg/layer/index.html", "index.html"):
        html = (tmp_path / "site" / page).read_text(encoding="utf-8")
        bundle = re.search(r"<script[^>]*javascripts/bundle\.[0-9a-f]+\.min\.js[^>]*>", html).group(0)
        assert ("defer" in bundle) is deferred, bundle
