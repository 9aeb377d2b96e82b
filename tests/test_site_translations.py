"""
The translated sites and their catalogues. Chinese: every listed page is 100% translated and
current (the translate command in strict mode), every formula, code span and
link target of the English notes is in the Chinese unchanged, the glossary is
followed, and the built zh site (mkdocs.zh.yml, --strict) shows the
translations with the English pages' anchors, in Chinese search. Japanese:
the Switch page, translated and current, the other pages shown in English
under a notice.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from mkdocs_literate.catalogue import Catalogue, load_glossary, protected
from mkdocs_literate.translate import main, units
from site_fixtures import ROOT, parse_page, require_real_site

ZH = ROOT / "translations" / "zh"

# The pages that must be fully translated: the home page, the model pages and the
# experiment's (model and step, settings, training loop, command line).
TRANSLATED = ["docs/index.md", "labml_nn_switch/__init__.py", "labml_nn_switch/mha.py",
              "labml_nn_switch/feed_forward.py", "labml_nn_switch/switch.py", "labml_nn_switch/routing_result.py",
              "labml_nn_switch/expert_rows.py",
              "labml_nn_switch/transformer.py", "labml_nn_switch/experiment.py",
              "labml_nn_switch/configs.py", "labml_nn_switch/trainer.py", "labml_nn_switch/cli.py"]


def catalogues():
    return sorted(p for p in ZH.rglob("*.yaml") if p.name != "glossary.yaml")


def test_listed_pages_are_translated_and_current():
    out = io.StringIO()
    code = main(["status", "--strict", "--root", str(ROOT), *TRANSLATED], out=out)
    assert code == 0, out.getvalue()
    assert f"{len(TRANSLATED)}/{len(TRANSLATED)} files complete" in out.getvalue()


@pytest.mark.parametrize("path", catalogues(), ids=lambda p: p.relative_to(ZH).as_posix())
def test_formulas_code_and_links_survive_translation(path):
    cat = Catalogue.load(path, "zh")
    checked = 0
    for entry in cat.entries.values():
        if entry.current:
            missing = protected(entry.en) - protected(entry.text)
            assert not missing, (entry.key, dict(missing))
            checked += 1
    assert checked > 0


def test_every_catalogue_has_its_source_and_every_paragraph_an_entry():
    for path in catalogues():
        source = path.relative_to(ZH).as_posix()[:-len(".yaml")]
        assert (ROOT / source).is_file(), f"{path}: no source {source}"
    for source in TRANSLATED:
        cat = Catalogue.load(ZH / f"{source}.yaml", "zh")
        for where, paragraph in units(ROOT, source):
            assert cat.lookup(paragraph)[1] == "current", (source, where, paragraph[:60])


def test_glossary_terms_are_used():
    glossary = load_glossary(ZH / "glossary.yaml")
    assert glossary.terms["expert"] == "专家" and glossary.terms["router"] == "路由器"
    text = "".join(e.text for p in catalogues() for e in Catalogue.load(p, "zh").entries.values())
    for term in ("专家", "路由器", "容量因子", "负载均衡损失"):
        assert text.count(term) >= 3, term


# ## The built zh site

@pytest.mark.slow
def test_zh_pages_are_chinese_with_the_english_anchors():
    site = require_real_site().path
    for source in TRANSLATED:
        if source.startswith("docs/"):
            rel = "index.html"
        else:
            rel = source[:-len(".py")].replace("/__init__", "") + "/index.html"
        en, zh = site / rel, site / "zh" / rel
        text = zh.read_text(encoding="utf-8")
        assert '<html lang="zh"' in text, rel
        assert "literate-untranslated" not in text, rel
        # Section permalinks and heading anchors are the English page's.
        assert parse_page(en).ids <= parse_page(zh).ids, (rel, parse_page(en).ids - parse_page(zh).ids)
    switch = (site / "zh" / "labml_nn_switch" / "switch" / "index.html").read_text(encoding="utf-8")
    assert "<title>Switch 层" in switch and "负载均衡损失" in switch
    # The language switcher offers both languages.
    assert re.search(r'<a href="[^"]*" hreflang="en" class="md-select__link">\s*English', switch)


@pytest.mark.slow
def test_zh_search_index_has_chinese_words():
    site = require_real_site().path
    index = json.loads((site / "zh" / "search" / "search_index.json").read_text(encoding="utf-8"))
    # Words are separated by zero-width spaces (jieba, at build time), and the
    # separator splits at them; glossary terms are single words.
    assert "\\u200b" in index["config"]["separator"]
    # The Switch layer's two pages: the layer, and its losses and statistics
    text = " ".join(d["text"] for d in index["docs"]
                    if d["location"].startswith(("labml_nn_switch/switch/", "labml_nn_switch/routing_result/")))
    words = set(re.split("[\\s\u200b\u3000\\-、。，．？！；]+", text))
    assert {"专家", "路由器", "容量因子", "负载均衡损失"} <= words


# ## Japanese: the Switch layer's two pages

@pytest.mark.parametrize("source", ["labml_nn_switch/switch.py", "labml_nn_switch/routing_result.py"])
def test_japanese_switch_pages_are_translated_and_current(source):
    out = io.StringIO()
    code = main(["status", "--lang", "ja", "--strict", "--root", str(ROOT), source], out=out)
    assert code == 0, out.getvalue()
    for entry in Catalogue.load(ROOT / "translations" / "ja" / f"{source}.yaml", "ja").entries.values():
        assert not protected(entry.en) - protected(entry.text), entry.key


@pytest.mark.slow
def test_japanese_site_has_the_switch_page_and_english_elsewhere():
    site = require_real_site().path / "ja"
    switch = (site / "labml_nn_switch" / "switch" / "index.html").read_text(encoding="utf-8")
    assert '<html lang="ja"' in switch and "エキスパート" in switch
    assert "literate-untranslated" not in switch
    losses = (site / "labml_nn_switch" / "routing_result" / "index.html").read_text(encoding="utf-8")
    assert "負荷分散損失" in losses and "literate-untranslated" not in losses
    mha = (site / "labml_nn_switch" / "mha" / "index.html").read_text(encoding="utf-8")
    assert "literate-untranslated-page" in mha and "このページはまだ翻訳されていません" in mha
