"""
Helpers for testing the generator: build a site with mkdocs as a user would,
write small fixture projects, and read built pages back (ids, links, the
notes' text, the code column's numbered lines, the formulas).

The project that uses the generator (this repository's `tests/`) imports
them too.
"""

from __future__ import annotations

import ast
import functools
import html
import importlib.util
import io
import os
import re
import subprocess
import sys
import textwrap
import tokenize
import warnings
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from mkdocs_literate.sections import parse


# ## Building

def mkdocs_build(config_file: Path, site_dir: Path, *, strict: bool = True,
                 env: dict[str, str] | None = None,
                 python: str = sys.executable) -> subprocess.CompletedProcess:
    """Run `mkdocs build` as a user would, and return the finished process."""
    cmd = [python, "-m", "mkdocs", "build", "-f", str(config_file), "-d", str(site_dir)]
    if strict:
        cmd.append("--strict")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                          cwd=config_file.parent)


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


def strip_tags(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


# ## A literate page, read back
#
# What a reader sees of a literate page: the text of the notes column (with
# images' alt text), the formulas as TeX, the text of the notes
# outside formulas and code, and the code column as (line number, text) pairs
# in page order.
@dataclass
class LiteratePage:
    notes_text: str = ""
    formulas: list[str] = field(default_factory=list)
    prose: str = ""
    code: list[tuple[int, str]] = field(default_factory=list)


_VOID = {"br", "img", "hr", "input", "meta", "link", "wbr", "source", "col", "area"}


class _LiterateParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        # The open elements, as (tag, marks), and how many open elements
        # carry each mark: a class we look for, or the tag `code`/`pre`.
        self.stack: list[tuple[str, set[str]]] = []
        self.open: Counter = Counter()
        self.notes: list[str] = []
        self.prose: list[str] = []
        self.math: list[str] | None = None
        self.formulas: list[str] = []
        # Inside a formula typeset by KaTeX: its TeX, and whether it is display math.
        self.typeset: list[str] | None = None
        self.display = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        # Elements separate words: `<code>NaN</code>s` reads as two.
        self.notes.append(" ")
        if tag == "img" and self.open["literate-notes"]:
            self.notes.append(" " + (attrs.get("alt") or "") + " ")
        if tag in _VOID:
            return
        marks = (classes & _MARKS) | ({tag} & {"code", "pre", "annotation"})
        self.stack.append((tag, marks))
        self.open.update(marks)
        # A formula typeset at build time: its TeX is in the MathML's
        # `annotation`, or, when KaTeX could not read it, the error's text.
        if self.math is not None and marks & {"katex", "katex-display", "katex-error"}:
            if self.typeset is None:
                self.typeset = []
            self.display = self.display or "katex-display" in marks
        if "arithmatex" in marks:
            self.math = []
            self.typeset = None
            self.display = tag == "div"
            # A formula whose TeX was moved to `data-tex` (its text then is a
            # readable rendering): the TeX is what the notes hold.
            if attrs.get("data-tex") is not None:
                left, right = ("\\[", "\\]") if "data-display" in attrs else ("\\(", "\\)")
                self.math = [left + attrs["data-tex"] + right]
                self.notes.append(self.math[0])
                self.open["tex-moved"] += 1

    def handle_endtag(self, tag):
        self.notes.append(" ")
        if tag in _VOID or not any(t == tag for t, _ in self.stack):
            return
        while self.stack:
            open_tag, marks = self.stack.pop()
            self.open.subtract(marks)
            if "arithmatex" in marks and self.math is not None:
                if self.typeset is not None:
                    left, right = ("\\[", "\\]") if self.display else ("\\(", "\\)")
                    self.math = [left + "".join(self.typeset) + right]
                    self.notes.append(self.math[0])
                    self.typeset = None
                self.formulas.append("".join(self.math))
                self.math = None
                self.open["tex-moved"] = 0
            if open_tag == tag:
                break

    def handle_data(self, data):
        if self.open["tex-moved"]:
            return
        if self.typeset is not None:
            if self.open["annotation"] or self.open["katex-error"]:
                self.typeset.append(data)
            return
        if self.open["literate-notes"]:
            self.notes.append(data)
            if self.math is not None:
                self.math.append(data)
            elif not (self.open["code"] or self.open["pre"]):
                self.prose.append(data)


_MARKS = {"literate-notes", "arithmatex", "katex", "katex-display", "katex-error"}


# The code columns are read with patterns (they are most of a page's tags),
# the rest with the parser. A column is a `pre` of one `literate-line` per
# source line, its number in `data-lineno` (the renderer's layout), or a table
# of numbers and code (`pymdownx.highlight`'s).
_COLUMN = re.compile(r'<div class="literate-code"[^>]*><div class="highlight"><pre><code>(.*?)</code></pre></div></div>'
                     r'|<table class="highlighttable">.*?</table>', re.S)
_LINE = re.compile(r'<span class="literate-line"[^>]*><(?:span|a) class="literate-lineno" data-lineno="(\d+)"')
_CELL = re.compile(r'<td class="(linenos|code)">(.*?)</td>', re.S)


def read_literate_page(path: Path) -> LiteratePage:
    text = path.read_text(encoding="utf-8")
    code = []
    for column in _COLUMN.finditer(text):
        if column.group(1) is not None:
            for row in column.group(1).split("\n"):
                code.append((int(_LINE.match(row).group(1)), strip_tags(row)))
            continue
        cells = dict(_CELL.findall(column.group(0)))
        numbers = strip_tags(cells["linenos"]).strip("\n").split("\n")
        lines = strip_tags(cells["code"]).split("\n")
        code.extend(zip((int(n) for n in numbers), lines))
    parser = _LiterateParser()
    parser.feed(_COLUMN.sub("", text))
    parser.close()
    return LiteratePage("".join(parser.notes), parser.formulas, "".join(parser.prose), code)


# ## The reference, from the source alone
#
# Independently of the parser: the lines that hold a token other than a
# comment must be code, except the lines of a docstring that stands on lines
# of its own; the notes are the comments and those docstrings, as written.
def reference(text: str):
    lines = text.split("\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = ast.parse(text)
    docstrings: list[tuple[int, int]] = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                before = lines[first.lineno - 1].encode()[:first.col_offset]
                after = lines[first.end_lineno - 1].encode()[first.end_col_offset:]
                if not before.strip() and not after.strip():
                    docstrings.append((first.lineno, first.end_lineno))
    doc_lines = {n for a, b in docstrings for n in range(a, b + 1)}
    touched, comments = set(), {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT, tokenize.ENDMARKER):
            touched.update(range(tok.start[0], tok.end[0] + 1))
    return lines, touched - doc_lines, doc_lines, comments


# Words of notes: letters and digits, after taking out what a reader never
# sees as text: link targets, HTML tags and comments, front matter.
WORD = re.compile(r"[A-Za-z0-9]+")


def note_words(text: str) -> Counter:
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"^\s*(```|~~~)\S+", " ", text, flags=re.M)
    text = re.sub(r"\]\([^)\s]*(\s+\"[^\"]*\")?\)", "] ", text)
    text = re.sub(r"</?[A-Za-z][^>]*>", " ", text)
    text = re.sub(r"^\s*\[[^\]]+\]:\s*\S+.*$", " ", text, flags=re.M)
    # Ordered lists number their items themselves.
    text = re.sub(r"^\s*\d+[.)]\s", " ", text, flags=re.M)
    return Counter(WORD.findall(text))


def without_front_matter(lines: list[str], start: int) -> set[int]:
    """The line numbers of a module docstring's front matter (from `start`)."""
    first = start - 1
    body = [ln.strip().strip("'\"rRuU") for ln in lines[first:]]
    while body and body[0] == "":
        first += 1
        body = body[1:]
    if not body or body[0] != "---":
        return set()
    for i in range(1, len(body)):
        if body[i] == "---":
            return set(range(first + 1, first + i + 2))
    return set()


# Formulas: `$$...$$` (across lines), then `$...$` on one line, outside
# backtick code (which does not cross paragraphs).
def formulas(markdown: str) -> list[str]:
    markdown = "\n\n".join(re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", " ", p, flags=re.S)
                           for p in re.split(r"\n\s*\n", markdown))
    found = [m.group(1) for m in re.finditer(r"\$\$(.+?)\$\$", markdown, re.S)]
    markdown = re.sub(r"\$\$(.+?)\$\$", " ", markdown, flags=re.S)
    found += [m.group(1) for m in re.finditer(r"(?<![\\$])\$(?=\S)([^$\n]+?)(?<!\\)\$", markdown)]
    return found


def squash(text: str) -> str:
    return " ".join(text.split())


# A formula's TeX without its delimiters and with its spaces squashed: the
# same formula however much space the source put inside `$...$`.
def tex(formula: str) -> str:
    if formula[:2] in ("\\(", "\\[") and formula[-2:] in ("\\)", "\\]"):
        formula = formula[2:-2]
    return squash(formula)


def check_module(file: Path, page: Path) -> dict:
    """The corpus figures of one module: what is missing, if anything."""
    text = file.read_text(encoding="utf-8").replace("\r\n", "\n")
    lines, must_be_code, doc_lines, comments = reference(text)
    rendered = read_literate_page(page)

    # Code: each rendered line is the source line of its number, once;
    # every line that must be code is there.
    numbers = [n for n, _ in rendered.code]
    wrong = [n for n, t in rendered.code if t != lines[n - 1]]
    twice = [n for n, k in Counter(numbers).items() if k > 1]
    missing_code = sorted(must_be_code - set(numbers))

    # Notes: the words of the comments that are not code and of the
    # docstrings (front matter aside) are all in the notes column.
    front = without_front_matter(lines, min(doc_lines)) if doc_lines and min(doc_lines) <= 3 else set()
    source_notes = [comments[n][1:] for n in sorted(comments) if n not in numbers]
    quotes = re.compile(r"^\s*[rRuU]{0,2}(\"\"\"|\'\'\'|\"|\')|(\"\"\"|\'\'\'|\"|\')\s*$")
    source_notes += [quotes.sub(" ", lines[n - 1]) for n in sorted(doc_lines - front)]
    expected = note_words("\n".join(source_notes))
    missing_words = expected - note_words(rendered.notes_text)

    # Formulas, from the notes as the parser gives them: each one reaches
    # the page whole (typeset, its TeX kept by KaTeX), and no `$` is left
    # in the prose.
    module = parse(text, file.name)
    notes = "\n\n".join(s.notes_markdown for s in module.sections)
    math = [squash(f) for f in formulas(notes)]
    typeset = squash(" ".join(rendered.formulas))
    broken = [f for f in math if f not in typeset]
    stray = rendered.prose.count("$") - notes.count("\\$")
    # and the page's blocks are whole: a note never closes what it did not open.
    page_html = page.read_text(encoding="utf-8")
    unbalanced = page_html.count("<div") - page_html.count("</div>")
    return {"code_lines": len(numbers), "wrong": wrong, "twice": twice, "missing_code": missing_code,
            "missing_words": missing_words, "formulas": len(math), "broken": broken, "stray": stray,
            "unbalanced": unbalanced}


# ## The corpus: labml_nn's modules, as their authors wrote them

def corpus_root() -> Path | None:
    """The installed `labml_nn` package directory, found without importing it."""
    spec = importlib.util.find_spec("labml_nn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# The site of the corpus: its package as the one source, the plainest theme
CORPUS_CONFIG = """\
site_name: labml_nn corpus
theme:
  name: mkdocs
plugins:
  - literate:
      sources:
        - path: {path}
markdown_extensions:
  - pymdownx.arithmatex:
      generic: true
"""
