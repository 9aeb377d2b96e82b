r"""
---
title: "Translate: pages in other languages"
summary: >
  How the literate generator renders a page in another language from its
  catalogue, marks what is not translated yet, and the command that lists
  missing and stale paragraphs for translators.
---

# Pages in other languages

With `language: zh` in its options, the [plugin](plugin.py) builds the site
in Chinese: every paragraph of the notes, and of the hand-written pages, is
looked up in its [catalogue](catalogue.py); the code column is unchanged.

* A **current** entry replaces its paragraph. A translated heading keeps the
  English heading's anchor (`{ #the-router }`), so links between pages, and
  the language switcher, land on the same place in both languages.
* A **missing** or **stale** paragraph is shown in English inside a box
  marked "not yet translated" (in the page's language).
* A translation that lost a formula, a code span or a link target is not shown
  either; it also makes a warning, so `mkdocs build --strict` stops.
* A page with no catalogue at all is shown in English under one notice,
  rather than with a marker on every paragraph.

For translators, the same module is a command:

```
python -m mkdocs_literate.translate status --lang zh [--strict] [PATH ...]
python -m mkdocs_literate.translate update --lang zh PATH ...
```

`update` also finds the translation of a paragraph that moved from another
file in the language's other catalogues, as they were before the command
(so update the files a paragraph moved between in one command). `status` prints, per file, how many paragraphs are current and, for each one
that is not, where it is (`path:line`), why (missing, stale, invalid, or a
glossary term not used) and how it starts. With `--strict` it exits with
status 1 unless every file named is 100% current. `update` writes each file's
catalogue for its current paragraphs (see
[catalogue.py](catalogue.py#updating)). A `PATH` is a `.py` or `.md` file
or a folder of them; without one, every file that has a catalogue.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import re
import sys
from collections.abc import Callable
from pathlib import Path

import markdown as markdown_lib
from markdown.extensions.toc import slugify as default_slugify

from .catalogue import (Catalogue, CatalogueError, Entry, glossary_misses, heading, key,
                        load_glossary, paragraphs, problems, translatable)
from .sections import Module, ParseError, parse

# ## Words of the page itself
#
# The marker on an untranslated paragraph and the notice on an untranslated
# page, in the page's language (English for a language not listed).
LABELS = {
    "zh": ("尚未翻译", "本页尚未翻译，以下为英文原文。"),
    "ja": ("未翻訳", "このページはまだ翻訳されていません。以下は英語の原文です。"),
}
DEFAULT_LABELS = ("not yet translated", "This page is not translated yet; it is shown in English.")
NAMES = {"zh": "Chinese", "ja": "Japanese"}


# ## The translator
#
# One per build: it reads catalogues as pages ask for them and collects the
# problems the plugin reports as warnings. Paths are relative to the project
# root (where `mkdocs.yml` is), as `labml_nn_switch/switch.py`.
class Translator:
    def __init__(self, root: Path, directory: str, language: str,
                 slugify: Callable[[str, str], str] | None = None):
        self.root = root
        self.folder = root / directory / language
        self.language = language
        self.slugify = slugify or default_slugify
        self.glossary = load_glossary(self.folder / "glossary.yaml")
        self.label, self.notice = LABELS.get(language, DEFAULT_LABELS)
        self.warnings: list[str] = []

    def catalogue(self, rel_path: str) -> Catalogue:
        return Catalogue.load(self.folder / f"{rel_path}.yaml", self.language)

    # Every current entry of the language's catalogues, by key.
    def memory(self) -> dict[str, Entry]:
        found = {}
        for path in sorted(self.folder.rglob("*.yaml")):
            if path.name != "glossary.yaml":
                found.update((k, e) for k, e in Catalogue.load(path, self.language).entries.items()
                             if e.current)
        return found

    # A short text (a navigation title) is translated when the glossary has it.
    def phrase(self, text: str) -> str:
        return self.glossary.titles.get(text, text)

    # ## A source module
    #
    # A copy of the parsed module with translated notes, title and summary;
    # sections, anchors and code stay as they are.
    def module(self, module: Module) -> Module:
        cat = self.catalogue(module.path)
        if not cat.exists:
            first = dataclasses.replace(module.sections[0],
                                        notes=[self._notice()] + module.sections[0].notes)
            return dataclasses.replace(module, sections=[first] + module.sections[1:])
        ids: set[str] = set()
        sections = [dataclasses.replace(s, notes=[self._note(cat, n, ids) for n in s.notes])
                    for s in module.sections]
        summary = self._plain(cat, str(module.summary)) if module.summary else module.summary
        return dataclasses.replace(module, sections=sections, title=self._plain(cat, module.title),
                                   summary=summary)

    # ## A hand-written page
    #
    # The Markdown of a page (front matter already taken off by mkdocs) and
    # its `meta`, whose `title` and `description` are translated in place.
    def markdown(self, rel_path: str, text: str, meta: dict) -> str:
        cat = self.catalogue(rel_path)
        if not cat.exists:
            return self._notice() + "\n\n" + text
        for field in ("title", "description"):
            if isinstance(meta.get(field), str):
                meta[field] = self._plain(cat, meta[field])
        return self._note(cat, text, set()) + "\n"

    # ## Paragraph by paragraph
    def _note(self, cat: Catalogue, text: str, ids: set[str]) -> str:
        out = []
        for block in paragraphs(text):
            if not translatable(block):
                out.append(block)
                continue
            translation, status = cat.lookup(block)
            if status == "invalid":
                found = "; ".join(problems(block, cat.entries[key(block)].text))
                self.warnings.append(f"{cat.path}: entry {key(block)}: {found}; the English is shown")
            if translation is None:
                out.append(self._marked(block))
            else:
                out.append(self._keep_anchor(block, translation, ids))
        return "\n\n".join(out)

    # Titles and summaries are plain text: without a current translation they
    # stay English, unmarked.
    def _plain(self, cat: Catalogue, text: str) -> str:
        translation, _ = cat.lookup(text)
        return translation if translation is not None else text

    # The marker is a box around the English paragraph. Its label comes from
    # CSS (`data-label`), so it is seen but not indexed by the search.
    def _marked(self, block: str) -> str:
        label = html.escape(self.label)
        return (f'<div class="literate-untranslated" data-label="{label}" title="{label}" markdown>\n\n'
                f"{block}\n\n</div>")

    def _notice(self) -> str:
        return f'<p class="literate-untranslated-page">{html.escape(self.notice)}</p>'

    # A translated heading takes the id the English heading gets from the
    # `toc` extension (made unique on the page as `toc` does, `_1`, `_2`),
    # unless the translator gave one.
    def _keep_anchor(self, english: str, translation: str, ids: set[str]) -> str:
        found = heading(english)
        if not found or "{" in translation.split("\n")[0]:
            return translation
        words = re.sub(r"<[^>]+>", "", markdown_lib.markdown(found[1]))
        base = self.slugify(html.unescape(words), "-")
        anchor, n = base, 0
        while anchor in ids:
            n += 1
            anchor = f"{base}_{n}"
        ids.add(anchor)
        first, *rest = translation.split("\n")
        return "\n".join([f"{first} {{ #{anchor} }}"] + rest)


# ## What a file has to translate
#
# The units of a file are `(where, paragraph)` pairs: the title and summary,
# then every translatable paragraph of the notes in page order.
def units(root: Path, rel_path: str) -> list[tuple[str, str]]:
    text = (root / rel_path).read_text(encoding="utf-8")
    found: list[tuple[str, str]] = []
    if rel_path.endswith(".py"):
        module = parse(text, rel_path)
        found.append(("title", module.title))
        if module.summary:
            found.append(("summary", str(module.summary)))
        notes = [(f"section {s.anchor}", n) for s in module.sections for n in s.notes]
    else:
        from mkdocs.utils.meta import get_data
        body, meta = get_data(text)
        found += [(f, meta[f]) for f in ("title", "description") if isinstance(meta.get(f), str)]
        notes = [("page", body)]
    for where, note in notes:
        found += [(where, p) for p in paragraphs(note) if translatable(p)]
    return found


# The line a paragraph starts on, for messages: the first source line that
# holds its first line of text.
def _line(lines: list[str], paragraph: str) -> int:
    first = paragraph.strip().split("\n")[0].strip()
    for n, line in enumerate(lines, 1):
        if first and first in line:
            return n
    return 1


# ## The command
def _files(root: Path, folder: Path, paths: list[str]) -> list[str]:
    if not paths:
        found = [p.relative_to(folder).as_posix()[:-len(".yaml")] for p in folder.rglob("*.yaml")
                 if p.name != "glossary.yaml"]
        return sorted(found)
    files = []
    for p in paths:
        path = (root / p)
        if path.is_dir():
            files += sorted(f.relative_to(root).as_posix() for f in path.rglob("*")
                            if f.suffix in (".py", ".md") and "__pycache__" not in f.parts)
        elif path.is_file():
            files.append(path.relative_to(root).as_posix())
        else:
            raise SystemExit(f"translate: {p}: no such file or folder")
    return files


def status(translator: Translator, rel_path: str, out) -> bool:
    """Print the state of one file's translation; `True` when it is complete."""
    cat = translator.catalogue(rel_path)
    if not (translator.root / rel_path).is_file():
        print(f"{rel_path}: the source is gone; delete {cat.path.relative_to(translator.root)}", file=out)
        return False
    found = units(translator.root, rel_path)
    lines = (translator.root / rel_path).read_text(encoding="utf-8").split("\n")
    todo, current = [], 0
    for where, paragraph in found:
        translation, state = cat.lookup(paragraph)
        if state == "current":
            misses = glossary_misses(translator.glossary, paragraph, translation)
            if not misses:
                current += 1
                continue
            state = "glossary (" + ", ".join(misses) + ")"
        elif state == "invalid":
            state = "invalid (" + "; ".join(problems(paragraph, cat.entries[key(paragraph)].text)) + ")"
        start = " ".join(paragraph.split())
        todo.append(f"  {rel_path}:{_line(lines, paragraph)} [{where}] {state}: "
                    f"{start[:60]}{'…' if len(start) > 60 else ''}")
    keys = {key(p) for _, p in found}
    obsolete = [k for k in cat.entries if k not in keys]
    total = len(found)
    share = 100.0 * current / total if total else 100.0
    note = "" if cat.exists else " (no catalogue)"
    extra = f", {len(obsolete)} obsolete entries" if obsolete else ""
    print(f"{rel_path}: {current}/{total} current ({share:.1f}%){note}{extra}", file=out)
    for line in todo:
        print(line, file=out)
    return current == total


def update(translator: Translator, rel_path: str, out, memory: dict[str, Entry] | None = None):
    name = NAMES.get(translator.language, translator.language)
    header = (f"{name} ({translator.language}) notes for {rel_path}: one entry per English paragraph,\n"
              f"keyed by a hash of it. After the English changes, run\n"
              f"  python -m mkdocs_literate.translate update --lang {translator.language} {rel_path}\n"
              f"then translate the empty entries, check those marked stale against 'was' and\n"
              f"remove their 'stale' and 'was' lines.")
    memory = translator.memory() if memory is None else memory
    cat = translator.catalogue(rel_path).updated(units(translator.root, rel_path), memory)
    cat.save(header)
    counts = [e.current for e in cat.entries.values()]
    print(f"{cat.path.relative_to(translator.root)}: {sum(counts)}/{len(counts)} current", file=out)


def main(argv: list[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m mkdocs_literate.translate",
                                     description="Translation catalogues of literate pages.")
    parser.add_argument("command", choices=["status", "update"])
    parser.add_argument("paths", nargs="*", help=".py or .md files, or folders of them")
    parser.add_argument("--lang", default="zh", help="the language (default: zh)")
    parser.add_argument("--dir", default="translations", help="the catalogues' folder (default: translations)")
    parser.add_argument("--root", default=".", help="the project root, where mkdocs.yml is (default: .)")
    parser.add_argument("--strict", action="store_true", help="status: fail unless every file is 100%% current")
    args = parser.parse_intermixed_args(argv)
    root = Path(args.root).resolve()
    try:
        translator = Translator(root, args.dir, args.lang)
        files = _files(root, translator.folder, args.paths)
        if args.command == "update":
            # The translations of every catalogue, read before any is rewritten.
            memory = translator.memory()
            for f in files:
                update(translator, f, out, memory)
            return 0
        complete = [status(translator, f, out) for f in files]
    except (CatalogueError, ParseError) as e:
        print(f"translate: {e}", file=out)
        return 2
    done = sum(complete)
    print(f"{done}/{len(files)} files complete", file=out)
    return 1 if args.strict and done < len(files) else 0


if __name__ == "__main__":
    sys.exit(main())
