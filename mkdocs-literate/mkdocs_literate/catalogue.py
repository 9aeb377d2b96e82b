r"""
---
title: "Catalogue: translated notes that know when they are stale"
summary: >
  The translation catalogue of the literate generator: notes cut into
  paragraphs, one entry per paragraph keyed by a hash of its English text,
  the checks that keep formulas, code and links intact, and the file format.
---

# Translation catalogues

A page in another language is the same page with other notes: the code column
does not change. The notes are cut into **paragraphs** (Markdown blocks
separated by blank lines), and a *catalogue* holds one entry per paragraph:
the English text it was translated from and the translation. An entry's key is
a hash of the English paragraph, so

* an entry follows its paragraph wherever the paragraph moves (code added
  above it, a section split in two), and
* when the English paragraph changes, its hash changes and the old entry no
  longer matches: the translation is **stale** and is never shown as if it were
  current. The page shows the English paragraph instead, with a visible
  "not yet translated" marker, until a translator updates the entry.

A catalogue is a YAML file under the site's `translations/<language>/`
folder, at the path of its source file with `.yaml` added:
`translations/zh/labml_nn_switch/switch.py.yaml` holds the Chinese notes of
`labml_nn_switch/switch.py`, `translations/zh/docs/index.md.yaml` those of the
home page. One folder per language keeps a translator's work in one place and
out of the packages and `docs/`.

```yaml
# section SwitchFeedForward.forward
"5c0f3e9a21":
  en: |-
    Route each token to one expert.
  zh: |-
    把每个 token 路由到一个专家。
```

After the English changes, `python -m mkdocs_literate.translate update` (see
[translate.py](translate.py)) rewrites the catalogue in page order: an entry
whose English changed gets the new key, the new English, the old English as
`was` and `stale: true`, so the translator sees what changed; it counts as
current again once `stale` is removed. New paragraphs get an empty
translation; entries for paragraphs that are gone are dropped.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml


# ## Paragraphs
#
# A note is cut at blank lines, except inside a fenced code block or a
# `$$ ... $$` display formula, which stay whole however many blank lines they
# hold.
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def paragraphs(markdown: str) -> list[str]:
    """The Markdown blocks of `markdown`, in order, without the blank lines between them."""
    blocks: list[list[str]] = [[]]
    fence: str | None = None
    in_math = False
    for line in markdown.split("\n"):
        m = _FENCE.match(line)
        if fence is None and not in_math and m:
            fence = m.group(1)[0] * len(m.group(1))
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None and line.count("$$") % 2 == 1:
            in_math = not in_math
        if line.strip() == "" and fence is None and not in_math:
            if blocks[-1]:
                blocks.append([])
            continue
        blocks[-1].append(line)
    return ["\n".join(b) for b in blocks if b]


# A paragraph's key: the first ten hex digits of the SHA-1 of its text with
# runs of whitespace made one space, so that rewrapping a paragraph does not
# make its translation stale.
def key(paragraph: str) -> str:
    return hashlib.sha1(" ".join(paragraph.split()).encode("utf-8")).hexdigest()[:10]


# ## What must survive translation
#
# Formulas, code and link targets are not prose: they must reach the
# translated page exactly as they are in the English. `protected` lists them
# (fenced code first, so that a `$` or a backtick inside code is not read as
# math; inline code before math for the same reason), and `prose` is what
# remains when they are taken out.
_FENCED = re.compile(r"^[ \t]*(`{3,}|~{3,}).*?^[ \t]*\1[ \t]*$", re.M | re.S)
_CODE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_DISPLAY = re.compile(r"\$\$.+?\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?![\s$])(?:\\.|[^$\\])+?(?<!\s)\$(?!\$)", re.S)
_TARGET = re.compile(r"\]\((<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(\S+)", re.M)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _take(pattern: re.Pattern, text: str, found: list[str]) -> str:
    found.extend(m.group(0) for m in pattern.finditer(text))
    return pattern.sub(" ", text)


def protected(paragraph: str) -> Counter:
    """The formulas, code spans, code blocks and link targets of a paragraph."""
    found: list[str] = []
    rest = _take(_FENCED, paragraph, found)
    rest = _take(_CODE, rest, found)
    rest = _take(_DISPLAY, rest, found)
    rest = _take(_INLINE, rest, found)
    for m in _TARGET.finditer(rest):
        found.append("link " + (m.group(1) or m.group(2)))
    return Counter(found)


def prose(paragraph: str) -> str:
    """The paragraph without its formulas, code and link targets."""
    rest = paragraph
    for pattern in (_FENCED, _CODE, _DISPLAY, _INLINE, _TARGET):
        rest = pattern.sub(" ", rest)
    return rest


# A paragraph needs a translation when words are left once formulas, code and
# addresses are gone: a lone code block or formula does not.
def translatable(paragraph: str) -> bool:
    return re.search(r"[^\W\d_]{2,}", re.sub(r"<[^>]+>|https?://\S+", " ", prose(paragraph))) is not None


# A paragraph that starts with an ATX heading (`## Text`): its level and text.
def heading(paragraph: str) -> tuple[int, str] | None:
    m = _HEADING.match(paragraph.split("\n", 1)[0])
    return (len(m.group(1)), m.group(2)) if m else None


# The problems of a translation: every formula, code span and link target of
# the English must be in it unchanged (the translation may add more); a
# heading stays a heading of the same level.
def problems(english: str, translation: str) -> list[str]:
    found = []
    missing = protected(english) - protected(translation)
    for item in missing:
        found.append(f"lost or changed: {item!r}")
    en_heading, tr_heading = heading(english), heading(translation)
    if en_heading and (not tr_heading or tr_heading[0] != en_heading[0]):
        found.append(f"the English is a level-{en_heading[0]} heading; the translation must be one too")
    return found


# ## Entries and catalogues
#
# An entry is current when it has a translation and no `stale` mark; it is
# then shown only if `problems` finds nothing.
@dataclass
class Entry:
    key: str
    en: str
    text: str = ""
    stale: bool = False
    was: str | None = None
    # Where the paragraph is on its page (a section's anchor, `title`, ...),
    # written as a comment for translators.
    where: str = ""

    @property
    def current(self) -> bool:
        return bool(self.text.strip()) and not self.stale


class CatalogueError(Exception):
    """A catalogue file that cannot be read, named by its path."""


class Catalogue:
    """The entries of one source file in one language."""

    def __init__(self, path: Path, language: str, entries: dict[str, Entry] | None = None,
                 exists: bool = False):
        self.path = path
        self.language = language
        self.entries = entries or {}
        self.exists = exists

    @classmethod
    def load(cls, path: Path, language: str) -> Catalogue:
        if not path.is_file():
            return cls(path, language)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise CatalogueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise CatalogueError(f"{path}: a catalogue is a mapping of keys to entries")
        entries = {}
        for k, value in data.items():
            k = str(k)
            if not isinstance(value, dict) or not isinstance(value.get("en"), str):
                raise CatalogueError(f"{path}: entry {k}: needs an 'en' text")
            text = value.get(language) or ""
            if not isinstance(text, str):
                raise CatalogueError(f"{path}: entry {k}: '{language}' must be text")
            entry = Entry(k, value["en"], text, bool(value.get("stale")), value.get("was"))
            # An entry whose English no longer hashes to its key was edited by
            # hand: it cannot be trusted to match, so it counts as stale.
            if key(entry.en) != k:
                entry.stale = True
            entries[k] = entry
        return cls(path, language, entries, exists=True)

    # ## Matching paragraphs to entries
    #
    # `lookup` gives the translation of a paragraph, or `None` with the reason:
    # `missing` (never translated), `stale` (translated from other English) or
    # `invalid` (the translation lost a formula, code or a link).
    def lookup(self, paragraph: str) -> tuple[str | None, str]:
        entry = self.entries.get(key(paragraph))
        if entry is None:
            return None, "stale" if self.predecessor(paragraph, set()) else "missing"
        if not entry.current:
            return None, "stale" if entry.stale else "missing"
        if problems(paragraph, entry.text):
            return None, "invalid"
        return entry.text, "current"

    # The entry a changed paragraph came from: an entry that matches no
    # current paragraph and whose English is most like this one (at least
    # half of it the same).
    def predecessor(self, paragraph: str, used: set[str]) -> Entry | None:
        best, best_ratio = None, 0.5
        for entry in self.entries.values():
            if entry.key in used or not entry.text.strip():
                continue
            ratio = difflib.SequenceMatcher(None, entry.en, paragraph, autojunk=False).ratio()
            if ratio > best_ratio:
                best, best_ratio = entry, ratio
        return best

    # ## Updating
    #
    # `updated` is the catalogue for the current paragraphs `(where, text)`, in
    # page order: current entries as they are, changed paragraphs with their
    # predecessor's translation marked stale, new ones empty. `memory` holds
    # the entries of the language's other catalogues: a paragraph that moved
    # from another file (a module split in two) brings its translation along.
    def updated(self, units: list[tuple[str, str]], memory: dict[str, Entry] | None = None) -> Catalogue:
        keys = {key(text) for _, text in units}
        orphans = {k for k in self.entries if k not in keys}
        used = set(self.entries) - orphans
        entries: dict[str, Entry] = {}
        for where, text in units:
            k = key(text)
            if k in entries:
                continue
            old = self.entries.get(k) or (memory or {}).get(k)
            if old is not None:
                entries[k] = Entry(k, text, old.text, old.stale, old.was, where)
                continue
            before = self.predecessor(text, used)
            if before is not None:
                used.add(before.key)
                entries[k] = Entry(k, text, before.text, True, before.was or before.en, where)
            else:
                entries[k] = Entry(k, text, "", False, None, where)
        return Catalogue(self.path, self.language, entries, exists=True)

    # ## Writing
    #
    # The file is written by hand rather than by `yaml.dump`, to keep it
    # pleasant to edit: literal blocks (`|-`) for every text, the place of
    # each paragraph as a comment. A text a literal block cannot hold
    # exactly (leading spaces, trailing blanks) is written quoted; the result
    # is read back and compared before it replaces the old file, which happens
    # by an atomic rename, so a crash never leaves half a catalogue.
    def dump(self, header: str = "") -> str:
        out = [f"# {line}".rstrip() for line in header.strip().split("\n")] if header else []
        for entry in self.entries.values():
            out.append("")
            if entry.where:
                out.append(f"# {entry.where}")
            # Quoted: a key of digits only would read back as a number.
            out.append(f'"{entry.key}":')
            out.append(_field("en", entry.en))
            if entry.was is not None:
                out.append(_field("was", entry.was))
            out.append(_field(self.language, entry.text))
            if entry.stale:
                out.append("  stale: true")
        text = "\n".join(out).lstrip("\n") + "\n"
        loaded = yaml.safe_load(text) or {}
        for entry in self.entries.values():
            value = loaded.get(entry.key, {})
            if (value.get("en"), value.get(self.language) or "") != (entry.en, entry.text):
                raise CatalogueError(f"{self.path}: entry {entry.key} would not read back as written")
        return text

    def save(self, header: str = ""):
        text = self.dump(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _field(name: str, text: str) -> str:
    lines = text.split("\n")
    plain = (text and not text[0].isspace() and all(line == line.rstrip() for line in lines)
             and "\t" not in text)
    if not plain:
        return f"  {name}: " + yaml.safe_dump(text, allow_unicode=True, default_style='"', width=10**6).strip()
    return f"  {name}: |-\n" + "\n".join(f"    {line}" if line else "" for line in lines)


# ## The glossary
#
# `translations/<language>/glossary.yaml` has two mappings. `terms` maps
# English terms to the terms a reader of the language uses (`expert: 专家`):
# translators follow it, and the `status` command checks that a translated
# paragraph whose English uses a term (singular or plural, outside code and
# formulas) contains its translation. `titles` translates the site's own
# short texts, such as the navigation's section titles.
@dataclass
class Glossary:
    terms: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)


def load_glossary(path: Path) -> Glossary:
    if not path.is_file():
        return Glossary()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CatalogueError(f"{path}: not valid YAML: {e}") from None
    parts = {}
    for name in ("terms", "titles"):
        part = data.get(name) or {} if isinstance(data, dict) else None
        if not isinstance(part, dict) or not all(isinstance(v, str) for v in part.values()):
            raise CatalogueError(f"{path}: '{name}' must map English texts to translated texts")
        parts[name] = {str(k): v for k, v in part.items()}
    return Glossary(**parts)


def glossary_misses(glossary: Glossary, english: str, translation: str) -> list[str]:
    """The glossary terms used in the English prose whose translation is not in `translation`."""
    # Quoted text (a paper's title) is kept in English.
    text = re.sub(r'"[^"]*"', " ", prose(english))
    misses = []
    for term, translated in glossary.terms.items():
        pattern = r"(?<![\w-])" + re.escape(term).replace(r"\ ", r"[\s-]+") + r"(?:s|es)?(?![\w-])"
        if re.search(pattern, text, re.I) and translated not in translation:
            misses.append(f"{term} → {translated}")
    return misses
