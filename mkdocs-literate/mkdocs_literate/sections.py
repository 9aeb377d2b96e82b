"""
---
title: "Sections: Python source to notes and code"
summary: >
  How the literate generator splits a Python file into sections of notes and
  code, with the tokenizer and the syntax tree rather than line patterns.
---

# Python source → sections

A literate page is a list of *sections*. Each section has **notes** (Markdown,
shown on the left) and **code** (source lines with their original line numbers,
shown on the right). This module turns the text of one Python file into those
sections. It never imports the file: it reads it with
[`tokenize`](https://docs.python.org/3/library/tokenize.html) and
[`ast`](https://docs.python.org/3/library/ast.html), so comments inside strings,
`#` inside brackets and multi-line strings are never mistaken for notes.

## The rules

1. The **module docstring** opens the page. YAML front matter between two `---`
   lines at its very start gives the page `title` and `summary`; it is not
   shown. Without it, the first `#` heading of the notes is the title, else
   the file name.
2. A block of `#` comment lines on their own (at any indentation) is the
   **note** for the code that follows it. A bare `#` line inside the block is a
   paragraph break. Blocks separated only by blank lines join into one note.
3. A **lone `#`** (a block of nothing but bare `#` lines) before code starts a
   new section with an empty note: the way to cut long code without a comment.
4. A **`class` or `def`**, with its decorators and however many lines its
   signature takes, always starts a section. A note block right above it is
   that section's note; its **docstring** is added to the note and left out of
   the code column.
5. Comments **inside brackets** (a multi-line call, list or signature) and
   **trailing comments** after code stay in the code, so a statement is never
   cut in two. So do a `#!` line and a `coding:` cookie at the top of the file.
6. **Blank lines** between code lines of a section are kept; blank lines at
   the edges of a section are the gaps between sections and are dropped.
   Every code line keeps its **original line number**.
7. Docstrings may use triple single or triple double quotes and may fit on
   one line. The notes show a docstring **as it is written in the file**, raw
   or not: TeX such as `\frac` or `\theta` needs no `r` prefix. A docstring
   is lifted into the notes only when it sits on lines of its own (no code
   before or after it on those lines); otherwise it stays code.
8. A file that does not parse stops with a `ParseError` naming `path:line`.

Besides sections, the parser records what the [renderer](render.py) needs to
link names in code to their definitions on other pages: the module-level
definitions and the imports of the file.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import tokenize
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import yaml


# ## Errors
#
# A file that cannot be parsed, or front matter that is not a mapping, raises
# `ParseError`. Its message is `path:line: what went wrong`, which is what the
# [plugin](plugin.py) shows as the build error.
class ParseError(Exception):
    """An error in a source file, located by file and line."""

    def __init__(self, path: str, line: int | None, message: str):
        # Keep the parts, for callers that want them
        self.path = path
        self.line = line
        self.message = message
        # and the usual `path:line: message` form as the exception text.
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


# ## The data
#
# One line of code: its number in the original file (counting from 1) and its
# text without the line ending.
@dataclass(frozen=True)
class CodeLine:
    number: int
    text: str


@dataclass
class Section:
    """
    One section of a page: notes on the left, code on the right.

    * `notes` are the Markdown paragraphs of the note, in order;
      `notes_markdown` joins them.
    * `code` are the code lines, in order, with their original numbers.
    * `definition` is the qualified name (`Class.method`) when the section
      starts at a `class` or `def`, and `kind` is then `"class"` or `"def"`.
    * `anchor` is the section's id on the page: the qualified name for a
      definition, `section-N` otherwise. The parser makes anchors unique.
    """

    notes: list[str] = field(default_factory=list)
    code: list[CodeLine] = field(default_factory=list)
    definition: str | None = None
    kind: str | None = None
    anchor: str = ""

    @property
    def notes_markdown(self) -> str:
        # Paragraphs are separated by a blank line, as Markdown wants.
        return "\n\n".join(self.notes)

    @property
    def first_line(self) -> int | None:
        # The number of the first code line, or `None` for a note-only section.
        return self.code[0].number if self.code else None


@dataclass
class Module:
    """
    A parsed source file.

    * `path` is the path used in messages and repository links.
    * `name` is the dotted module name (`labml_nn_switch.switch`), when known;
      relative imports are resolved against it.
    * `title`, `summary` and `meta` come from the front matter.
    * `names` maps each module-level class or function to its section anchor.
    * `imports` maps each imported name to `(module, attribute)`: `attribute`
      is `None` for `import a.b as c`, and the imported name for
      `from a import b`.
    """

    path: str
    name: str | None
    title: str
    summary: str | None
    meta: dict
    sections: list[Section]
    names: dict[str, str] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)


# ## Parsing a file
#
# `parse` is the whole public interface: source text in, `Module` out.
# `is_package` says the file is a package's `__init__.py`, which changes what
# `from . import x` means.
def parse(source: str, path: str = "<string>", *, name: str | None = None,
          is_package: bool = False) -> Module:
    """Split `source` into sections; see the rules at the top of this page."""
    # Normalise line endings so that line numbers agree between `ast`,
    # `tokenize` and our own list of lines. Splitting on `\n` only (not
    # `str.splitlines`) keeps form feeds and other odd characters inside
    # their line, as Python itself does.
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    lines = source.split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    # The syntax tree finds docstrings and definitions, and its `SyntaxError`
    # gives the line of the first problem.
    # Invalid escapes (`"\e"` in TeX) are no concern of ours, since docstrings
    # are read as written; Python's warnings about them are silenced.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
            tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ParseError(path, e.lineno, e.msg) from None

    # Collect definitions and lifted docstrings from the tree,
    definitions, docstrings = _definitions_and_docstrings(tree, lines)
    # the lines that are notes, from the token stream,
    note_lines = _note_lines(source, path, definitions)
    # then walk the lines once and cut them into sections.
    sections, owner = _cut(lines, note_lines, definitions, docstrings)

    # The module docstring may carry front matter; it is taken off the notes.
    meta: dict = {}
    module_doc = docstrings.get(0)
    if module_doc is not None:
        meta, text = _front_matter(module_doc.text, path, module_doc.start)
        _replace_note(owner[0], module_doc.text, text)

    # Give every section an anchor, unique within the page.
    _assign_anchors(sections)
    # Module-level names link to their sections from other pages.
    names = {s.definition: s.anchor for s in sections
             if s.definition and "." not in s.definition}

    return Module(
        path=path,
        name=name,
        title=_title(meta, sections, path),
        summary=meta.get("summary"),
        meta=meta,
        sections=sections,
        names=names,
        imports=_imports(tree, name, is_package),
    )


# ## Definitions and docstrings
#
# A definition remembers where its section starts (the first decorator), the
# line of the `class`/`def` keyword, and its qualified name.
@dataclass
class _Definition:
    qualname: str
    kind: str
    start: int
    keyword_line: int


# A docstring that will be lifted into the notes: its first and last line, its
# text as written, without its common indentation.
@dataclass
class _Docstring:
    start: int
    end: int
    text: str


def _definitions_and_docstrings(tree: ast.Module, lines: list[str]):
    definitions: dict[int, _Definition] = {}
    # Docstrings are keyed by the start line of their definition; the module
    # docstring by `0`.
    docstrings: dict[int, _Docstring] = {}

    doc = _lifted_docstring(tree, lines)
    if doc:
        docstrings[0] = doc

    # Walk the tree keeping the qualified name of the enclosing definitions.
    def visit(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = prefix + child.name
                # The section starts at the first decorator, if any.
                start = min([d.lineno for d in child.decorator_list] + [child.lineno])
                kind = "class" if isinstance(child, ast.ClassDef) else "def"
                definitions[start] = _Definition(qualname, kind, start, child.lineno)
                doc = _lifted_docstring(child, lines)
                if doc:
                    docstrings[start] = doc
                visit(child, qualname + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return definitions, docstrings


# A docstring is the first statement of a body when it is a string constant.
# It is lifted only when nothing else shares its first or last line: in
# `def f(): "doc"` it stays in the code.
def _lifted_docstring(node, lines: list[str]) -> _Docstring | None:
    body = getattr(node, "body", None)
    if not body:
        return None
    first = body[0]
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)):
        return None
    start, end = first.lineno, first.end_lineno
    # `ast` counts columns in UTF-8 bytes, hence the encoding.
    before = lines[start - 1].encode("utf-8")[:first.col_offset]
    after = lines[end - 1].encode("utf-8")[first.end_col_offset:]
    if before.strip() or after.strip():
        return None
    # `inspect.cleandoc` removes the common indentation, as `help()` does.
    text = inspect.cleandoc(_as_written(first, lines))
    return _Docstring(start, end, text)


# The notes show a docstring as its author typed it, not as Python evaluates
# it. Most literate authors write TeX in plain (not raw) docstrings, and
# Python's escapes would eat it: `"\frac"` starts with a form feed, `"\theta"`
# with a tab, `"\nabla"` with a newline. So the text between the quotes is
# taken from the source itself; only a docstring made of several literals
# (`"a" "b"`) falls back to its value.
_STRING = re.compile(r"([rRuU]{0,2})('''|\"\"\"|'|\")(.*)\2", re.S)


def _as_written(expr: ast.Expr, lines: list[str]) -> str:
    # The literal's text, from its first column to its last (`ast` counts
    # columns in UTF-8 bytes).
    first, last = expr.lineno - 1, expr.end_lineno - 1
    start = lines[first].encode("utf-8")[expr.col_offset:].decode("utf-8")
    if first == last:
        literal = lines[first].encode("utf-8")[expr.col_offset:expr.end_col_offset].decode("utf-8")
    else:
        end = lines[last].encode("utf-8")[:expr.end_col_offset].decode("utf-8")
        literal = "\n".join([start, *lines[first + 1:last], end])
    match = _STRING.fullmatch(literal)
    if match is None or match.group(2) in match.group(3):
        return expr.value.value
    return match.group(3)


# ## Which lines are notes
#
# A note line is a line whose only token is a comment, outside any bracket.
# The token stream tells both: a `COMMENT` token is alone on its line when no
# other token has touched that line before it (a multi-line string touches
# every line it spans), and the bracket depth counts `(`, `[` and `{`.
#
# Left as code: comments between a decorator and its `def` (the definition
# must stay whole), a `#!` first line and an encoding cookie.
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*[-\w.]+")


def _note_lines(source: str, path: str, definitions: dict[int, _Definition]) -> dict[int, str]:
    notes: dict[int, str] = {}
    touched: set[int] = set()
    depth = 0
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
            tokenize.DEDENT, tokenize.ENDMARKER, tokenize.ENCODING}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as e:
        # `ast.parse` succeeded, so this is unlikely; still name the place.
        line = e.args[1][0] if len(e.args) > 1 and isinstance(e.args[1], tuple) else None
        raise ParseError(path, line, str(e.args[0])) from None

    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            if depth == 0 and line not in touched:
                notes[line] = tok.string
        elif tok.type not in skip:
            touched.update(range(tok.start[0], tok.end[0] + 1))

    # Comments inside a decorated definition's header stay with the code.
    for d in definitions.values():
        for line in range(d.start + 1, d.keyword_line):
            notes.pop(line, None)
    # So do a shebang and an encoding cookie at the top.
    for line in (1, 2):
        text = notes.get(line)
        if text is not None and ((line == 1 and text.startswith("#!")) or _CODING.match(text)):
            del notes[line]
    return notes


# A note line loses its `#` and one space after it; more spaces are kept, so
# indented Markdown (code blocks, nested lists) survives.
def _strip_comment(comment: str) -> str:
    text = comment[1:]
    return text[1:] if text.startswith(" ") else text


# ## Cutting lines into sections
#
# One pass over the lines. `current` is the section being filled; `blanks`
# holds blank lines after code until we know whether more code follows in the
# same section (then they are kept) or the section ends (then they are gaps).
# `owner` remembers which section each docstring's notes went to.
def _cut(lines, note_lines, definitions, docstrings):
    sections = [Section()]
    owner: dict[int, Section] = {}
    doc_lines = {}
    for key, doc in docstrings.items():
        for n in range(doc.start, doc.end + 1):
            doc_lines[n] = key
    blanks: list[CodeLine] = []
    # The section that holds the module docstring never takes a definition,
    # so the page's introduction stays on its own.
    module_section: Section | None = None

    def new_section() -> Section:
        blanks.clear()
        sections.append(Section())
        return sections[-1]

    current = sections[0]
    n = 1
    while n <= len(lines):
        text = lines[n - 1]

        # A lifted docstring: its text joins the notes of the section that
        # owns it (the definition's, or the current one for the module).
        if n in doc_lines:
            key = doc_lines[n]
            if n == docstrings[key].start:
                target = owner.get(key, current)
                if key == 0:
                    owner[0] = target
                    module_section = target
                if docstrings[key].text.strip():
                    target.notes.append(docstrings[key].text)
            n += 1
            continue

        # A definition: a new section, unless the current one holds only the
        # note written for it (no code yet).
        if n in definitions:
            d = definitions[n]
            if current.code or current.definition or current is module_section:
                current = new_section()
            blanks.clear()
            current.definition, current.kind = d.qualname, d.kind
            owner[d.start] = current
            current.code.append(CodeLine(n, text))
            n += 1
            continue

        # A block of note lines: read all of it at once.
        if n in note_lines:
            block = []
            while n in note_lines:
                block.append(_strip_comment(note_lines[n].strip()))
                n += 1
            if all(line == "" for line in block):
                # A lone `#`: always a fresh section, with an empty note.
                if current.code or current.notes or current.definition:
                    current = new_section()
            else:
                if current.code or current is module_section:
                    current = new_section()
                current.notes.append("\n".join(block).strip("\n"))
            blanks.clear()
            continue

        # A blank line: held while we wait to see what follows.
        if text.strip() == "":
            if current.code:
                blanks.append(CodeLine(n, text))
            n += 1
            continue

        # A line of code (or a comment kept as code).
        current.code.extend(blanks)
        blanks.clear()
        current.code.append(CodeLine(n, text))
        n += 1

    # Drop sections with neither notes nor code (an empty file, or an empty
    # opening section before a definition that took a new one).
    kept = [s for s in sections if s.notes or s.code or s.definition]
    return (kept or [Section()]), owner


# ## Front matter, title and anchors
#
# Front matter is YAML between a first line `---` and the next `---` line.
def _front_matter(text: str, path: str, line: int) -> tuple[dict, str]:
    doc_lines = text.split("\n")
    if not doc_lines or doc_lines[0].strip() != "---":
        return {}, text
    for i in range(1, len(doc_lines)):
        if doc_lines[i].strip() == "---":
            try:
                meta = yaml.safe_load("\n".join(doc_lines[1:i])) or {}
            except yaml.YAMLError as e:
                raise ParseError(path, line, f"front matter is not valid YAML: {e}") from None
            if not isinstance(meta, dict):
                raise ParseError(path, line, "front matter must be a YAML mapping")
            return meta, "\n".join(doc_lines[i + 1:]).strip("\n")
    raise ParseError(path, line, "front matter has no closing '---' line")


# Replace the module docstring's text in its section's notes by the text
# without front matter (dropping it when nothing else is left).
def _replace_note(section: Section, old: str, new: str):
    if old not in section.notes:
        return
    i = section.notes.index(old)
    if new.strip():
        section.notes[i] = new
    else:
        del section.notes[i]


# The title: front matter `title`, else the first `#` heading of the notes
# (outside fenced code), else the file name (the package name for
# `__init__.py`).
def _title(meta: dict, sections: list[Section], path: str) -> str:
    if meta.get("title"):
        return str(meta["title"])
    for section in sections:
        fenced = False
        for line in section.notes_markdown.split("\n"):
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and line.startswith("# "):
                return line[2:].strip().rstrip("#").strip()
    p = PurePosixPath(path.replace("\\", "/"))
    return p.parent.name if p.stem == "__init__" and p.parent.name else p.stem


# Anchors: the qualified name for a definition, `section-N` otherwise; a name
# seen twice (a function redefined under `if`) gets `-2`, `-3`, ...
def _assign_anchors(sections: list[Section]):
    seen: set[str] = set()
    for i, section in enumerate(sections):
        base = section.definition or f"section-{i}"
        anchor, k = base, 1
        while anchor in seen:
            k += 1
            anchor = f"{base}-{k}"
        seen.add(anchor)
        section.anchor = anchor


# ## Imports
#
# Every `import` and `from ... import` in the file, relative ones resolved
# against the module's own name. A name imported twice keeps its first
# import: in `try: from .a import x` / `except ImportError: from a import x`
# the first is the one that is meant. `from . import mha` records `("pkg", "mha")`:
# the renderer decides whether `mha` is a module or a name in `pkg`.
def _imports(tree: ast.Module, name: str | None, is_package: bool) -> dict[str, tuple[str, str | None]]:
    imports: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports.setdefault(alias.asname, (alias.name, None))
                else:
                    top = alias.name.split(".")[0]
                    imports.setdefault(top, (top, None))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, name, is_package)
            if base is None:
                continue
            for alias in node.names:
                if alias.name != "*":
                    imports.setdefault(alias.asname or alias.name, (base, alias.name))
    return imports


def _resolve_relative(module: str | None, level: int, name: str | None, is_package: bool) -> str | None:
    if level == 0:
        return module
    if not name:
        return None
    # The package of a module is its name without the last part; a package's
    # `__init__` is its own package.
    parts = name.split(".")
    if not is_package:
        parts = parts[:-1]
    if level - 1 > len(parts):
        return None
    parts = parts[:len(parts) - (level - 1)]
    if module:
        parts = parts + module.split(".")
    return ".".join(parts) or None
