"""
Translated notes: paragraphs and their keys, what must survive translation,
the catalogue's round trip (a changed English paragraph turns its entry stale,
the page shows the English with a marker, the status command names it), the
file format, and a translated fixture site built with `mkdocs build --strict`.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from literate_testing import mkdocs_build, write_project
from mkdocs_literate.catalogue import (Catalogue, CatalogueError, Glossary, glossary_misses, key,
                                       paragraphs, problems, protected, translatable)
from mkdocs_literate.render import page_markdown
from mkdocs_literate.sections import parse
from mkdocs_literate.translate import Translator, main


# ## Paragraphs and keys

def test_paragraphs_keep_fenced_code_and_display_math_whole():
    text = textwrap.dedent("""\
        First paragraph,
        two lines.

        ```python
        a = 1

        b = 2
        ```

        $$
        x

        y
        $$

        ## A heading
        Last.""")
    assert paragraphs(text) == [
        "First paragraph,\ntwo lines.",
        "```python\na = 1\n\nb = 2\n```",
        "$$\nx\n\ny\n$$",
        "## A heading\nLast.",
    ]


def test_key_ignores_rewrapping_but_not_words():
    assert key("one two\nthree") == key("one  two three")
    assert key("one two three") != key("one two four")


@given(st.lists(st.text(alphabet="ab $`\n", min_size=1, max_size=12), max_size=5))
def test_paragraphs_lose_no_text(blocks):
    text = "\n\n".join(blocks)
    # Whatever the text, the paragraphs hold all its non-blank lines, in order.
    lines = [line for line in text.split("\n") if line.strip()]
    assert [line for p in paragraphs(text) for line in p.split("\n") if line.strip()] == lines


def test_translatable_needs_words_outside_code_and_math():
    assert translatable("The router $h(x)$.")
    assert not translatable("$$\nx = y\n$$")
    assert not translatable("```python\nx = 1\n```")
    assert not translatable("`[seq_len, batch_size]`")


# ## What must survive translation

def test_protected_finds_formulas_code_and_link_targets():
    en = r"Take $p_i(x)$ and `x.view(-1)` as in [the paper](https://arxiv.org/abs/2101.03961), $$a$$."
    assert protected(en) == {"$p_i(x)$": 1, "`x.view(-1)`": 1, "$$a$$": 1,
                             "link https://arxiv.org/abs/2101.03961": 1}
    # A `$` inside code is code, not math.
    assert protected("Use `a$b` and $c$.") == {"`a$b`": 1, "$c$": 1}


def test_problems_name_a_changed_formula_a_lost_code_span_and_a_changed_link():
    en = "Route with $p_i(x)$ in `route()`, see [it](switch.py#Router)."
    assert problems(en, "用 $p_i(x)$ 在 `route()` 中路由，见[它](switch.py#Router)。") == []
    found = problems(en, "用 $p_j(x)$ 在 route() 中路由，见[它](switch.py)。")
    assert len(found) == 3
    assert any("$p_i(x)$" in p for p in found)
    assert any("`route()`" in p for p in found)
    assert any("switch.py#Router" in p for p in found)


def test_a_heading_stays_a_heading_of_its_level():
    assert problems("## The router", "## 路由器") == []
    assert problems("## The router\nIt routes.", "## 路由器\n它负责路由。") == []
    assert problems("## The router\nIt routes.", "路由器\n它负责路由。") != []
    assert problems("## The router", "路由器") != []
    assert problems("## The router", "### 路由器") != []


def test_glossary_terms_in_english_prose_need_their_translation():
    glossary = Glossary(terms={"expert": "专家", "capacity factor": "容量因子"})
    assert glossary_misses(glossary, "Each expert has a capacity factor.", "每个专家有一个容量因子。") == []
    assert glossary_misses(glossary, "The experts.", "这些。") == ["expert → 专家"]
    # Not in code, formulas or a quoted title.
    assert glossary_misses(glossary, '`expert` and "Expert Choice"', "x") == []


# ## The catalogue's round trip

SOURCE = '''\
"""
# Routing

The router sends each token to one expert, $i^* = \\arg\\max_i p_i(x)$.

It runs in float32.
"""


# Drop tokens over `capacity`.
def drop(x):
    return x
'''

TRANSLATIONS = {
    "# Routing": "# 路由",
    "The router sends each token to one expert, $i^* = \\arg\\max_i p_i(x)$.":
        "路由器把每个 token 发送给一个专家，$i^* = \\arg\\max_i p_i(x)$。",
    "It runs in float32.": "它以 float32 运行。",
    "Drop tokens over `capacity`.": "丢弃超出 `capacity` 的 token。",
    "Routing": "路由",
}


def project(tmp_path: Path, source: str = SOURCE) -> Path:
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "route.py").write_text(source, encoding="utf-8")
    return tmp_path


def translate_all(tmp_path: Path):
    # `update` writes a catalogue with empty entries; fill them in, as a translator does.
    assert main(["update", "--root", str(tmp_path), "pkg/route.py"], out=io.StringIO()) == 0
    path = tmp_path / "translations" / "zh" / "pkg" / "route.py.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for entry in data.values():
        entry["zh"] = TRANSLATIONS[entry["en"]]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def break_formula(path: Path):
    # The translator changed a formula: `\arg\max_i` became `\max_i`.
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for entry in data.values():
        entry["zh"] = entry["zh"].replace("\\arg\\max_i", "\\max_i")
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def status(tmp_path: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["status", "--root", str(tmp_path), *args, "pkg/route.py"], out=out)
    return code, out.getvalue()


def rendered(tmp_path: Path) -> str:
    text = (tmp_path / "pkg" / "route.py").read_text(encoding="utf-8")
    translator = Translator(tmp_path, "translations", "zh")
    return page_markdown(translator.module(parse(text, "pkg/route.py")))


def test_a_translated_page_shows_the_translation_and_keeps_the_code(tmp_path):
    project(tmp_path)
    translate_all(tmp_path)
    page = rendered(tmp_path)
    assert "路由器把每个 token 发送给一个专家，$i^* = \\arg\\max_i p_i(x)$。" in page
    assert "丢弃超出 `capacity` 的 token。" in page
    assert "The router sends" not in page and "literate-untranslated" not in page
    assert "title: 路由" in page
    # The translated heading keeps the English heading's anchor.
    assert "# 路由 { #routing }" in page
    assert status(tmp_path, "--strict") == (0, status(tmp_path)[1])
    assert "pkg/route.py: 5/5 current (100.0%)" in status(tmp_path)[1]


def test_a_changed_english_paragraph_turns_its_entry_stale(tmp_path):
    project(tmp_path)
    translate_all(tmp_path)
    project(tmp_path, SOURCE.replace("It runs in float32.", "It runs in float32, always."))

    # The page shows the English paragraph, marked, and the rest translated.
    page = rendered(tmp_path)
    assert 'class="literate-untranslated" data-label="尚未翻译"' in page
    marked = page.split('class="literate-untranslated"')[1].split("</div>")[0]
    assert "It runs in float32, always." in marked
    assert "它以 float32 运行。" not in page
    assert "路由器把每个 token" in page

    # The status command names it, with its line, and fails in strict mode.
    code, text = status(tmp_path, "--strict")
    assert code == 1
    assert "pkg/route.py: 4/5 current (80.0%), 1 obsolete entries" in text
    assert "pkg/route.py:6 [section section-0] stale: It runs in float32, always." in text

    # `update` keeps the old translation, marked stale, with the English it was made from.
    main(["update", "--root", str(tmp_path), "pkg/route.py"], out=io.StringIO())
    cat = Catalogue.load(tmp_path / "translations" / "zh" / "pkg" / "route.py.yaml", "zh")
    entry = cat.entries[key("It runs in float32, always.")]
    assert (entry.text, entry.stale, entry.was) == ("它以 float32 运行。", True, "It runs in float32.")
    assert len(cat.entries) == 5
    assert status(tmp_path)[1].count("stale") == 1

    # Once the translator has fixed it and removed the mark, it is current.
    path = cat.path
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fixed = data[entry.key]
    fixed.update(zh="它总是以 float32 运行。")
    del fixed["stale"], fixed["was"]
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert status(tmp_path, "--strict")[0] == 0
    assert "它总是以 float32 运行。" in rendered(tmp_path)


def test_a_new_paragraph_is_missing_and_a_page_without_catalogue_has_one_notice(tmp_path):
    project(tmp_path)
    page = rendered(tmp_path)
    assert page.count("literate-untranslated-page") == 1 and 'class="literate-untranslated"' not in page
    code, text = status(tmp_path, "--strict")
    assert code == 1 and "0/5 current (0.0%) (no catalogue)" in text
    translate_all(tmp_path)
    project(tmp_path, SOURCE.replace("# Drop tokens", "# A new note.\n#\n# Drop tokens"))
    assert "[section drop] missing: A new note." in status(tmp_path)[1]


def test_a_translation_that_loses_a_formula_is_not_shown_and_is_reported(tmp_path):
    project(tmp_path)
    path = translate_all(tmp_path)
    break_formula(path)
    translator = Translator(tmp_path, "translations", "zh")
    page = page_markdown(translator.module(parse(SOURCE, "pkg/route.py")))
    assert "The router sends each token" in page
    assert translator.warnings and "lost or changed" in translator.warnings[0]
    code, text = status(tmp_path, "--strict")
    assert code == 1 and "invalid (lost or changed: '$i^* = \\\\arg\\\\max_i p_i(x)$')" in text


# ## The file

def test_catalogue_file_reads_back_exactly_and_keys_stay_text(tmp_path):
    texts = ["plain", "  leading spaces", "trailing  \nspace", "tab\there", "中文 `code`\n\n$x$",
             "- a list\n  continued", "ends with colon:"]
    units = [(f"section s{i}", t) for i, t in enumerate(texts)]
    cat = Catalogue(tmp_path / "c.yaml", "zh").updated(units)
    for entry in cat.entries.values():
        entry.text = entry.en + " 译"
    cat.save("header")
    again = Catalogue.load(tmp_path / "c.yaml", "zh")
    assert {k: (e.en, e.text) for k, e in again.entries.items()} == \
        {k: (e.en, e.text) for k, e in cat.entries.items()}
    assert "# section s0" in cat.path.read_text(encoding="utf-8")
    # No temporary file is left beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]


def test_an_entry_whose_english_was_edited_by_hand_is_stale(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f'"{key("Old.")}":\n  en: New.\n  zh: 旧。\n', encoding="utf-8")
    assert Catalogue.load(path, "zh").lookup("Old.") == (None, "stale")


def test_a_broken_catalogue_names_its_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="c.yaml"):
        Catalogue.load(path, "zh")
    path.write_text("abc:\n  zh: 没有英文\n", encoding="utf-8")
    with pytest.raises(CatalogueError, match="entry abc: needs an 'en' text"):
        Catalogue.load(path, "zh")


# ## A translated fixture site

ZH_CONFIG = '''
    site_name: Mini
    theme:
      name: material
      font: false
      language: zh
    plugins:
      - search
      - literate:
          language: zh
          sources:
            - path: pkg
    markdown_extensions:
      - toc:
          permalink: true
      - pymdownx.arithmatex:
          generic: true
    validation:
      anchors: warn
    '''


@pytest.mark.slow
def test_translated_fixture_site_builds_strict_and_fails_on_a_lost_formula(tmp_path):
    write_project(tmp_path, files={"pkg/__init__.py": "", "docs/index.md": "# Home\n\nSee [route](pkg/route.md#routing).\n"},
                  config=ZH_CONFIG)
    project(tmp_path)
    path = translate_all(tmp_path)
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "pkg" / "route" / "index.html").read_text(encoding="utf-8")
    assert '<html lang="zh"' in page
    assert 'id="routing"' in page and "路由器把每个 token" in page
    # The hand-written page, without a catalogue, carries the notice.
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "本页尚未翻译" in home

    break_formula(path)
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "route.py.yaml" in result.stdout + result.stderr


def test_a_paragraph_moved_to_another_file_brings_its_translation(tmp_path):
    project(tmp_path)
    translate_all(tmp_path)
    # `drop` moves to a module of its own.
    (tmp_path / "pkg" / "drop.py").write_text(SOURCE[SOURCE.index("# Drop"):], encoding="utf-8")
    main(["update", "--root", str(tmp_path), "pkg/drop.py"], out=io.StringIO())
    out = io.StringIO()
    main(["status", "--root", str(tmp_path), "pkg/drop.py"], out=out)
    # Its note is translated; its title (the file name) is new.
    assert "pkg/drop.py: 1/2 current" in out.getvalue()
    assert "[title] missing: drop" in out.getvalue()


def test_status_names_a_catalogue_whose_source_is_gone(tmp_path):
    project(tmp_path)
    translate_all(tmp_path)
    (tmp_path / "pkg" / "route.py").unlink()
    out = io.StringIO()
    assert main(["status", "--strict", "--root", str(tmp_path)], out=out) == 1
    assert "pkg/route.py: the source is gone; delete translations/zh/pkg/route.py.yaml" in out.getvalue()
