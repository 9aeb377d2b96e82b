"""
The built site in headless Chromium, served on 127.0.0.1: the side-by-side
layout at desktop width and stacked layout at phone width, MathJax typesetting
(also after instant navigation), a click on a linked name landing on its
definition on another page, search over code, the palette toggle, and, on
every page opened, no request outside the site and no console error.

Screenshots go to test-artifacts/ (git-ignored), so that a failure can be
looked at. Without Chromium these tests skip, except in CI (CI=true), where
they fail.
"""

from __future__ import annotations

import json
import re

import pytest

from site_fixtures import ARTIFACTS, CHROMIUM_ARGS, ROOT, require_chromium, serve_real_site

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
MODEL_PAGES = ["", "labml_nn_switch/", "labml_nn_switch/mha/", "labml_nn_switch/feed_forward/",
               "labml_nn_switch/switch/", "labml_nn_switch/transformer/", "labml_nn_switch/experiment/"]


@pytest.fixture(scope="module")
def browser():
    executable = require_chromium()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def base_url():
    with serve_real_site() as url:
        yield url


class Watched:
    """A page with everything it requested and every error it logged."""

    def __init__(self, browser, base_url, viewport):
        self.base_url = base_url
        self.context = browser.new_context(viewport=viewport)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        # Console errors, and MathJax's warnings (it warns, for one, when its
        # stylesheet was taken out of the page under it).
        self.page.on("console", lambda m: (m.type == "error" or (m.type == "warning" and "MathJax" in m.text))
                     and self.errors.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"{r.status}: {r.url}"))

    def goto(self, path: str):
        self.page.goto(self.base_url + "/" + path, wait_until="load")
        wait_for_mathjax(self.page)

    def screenshot(self, name: str):
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

    def assert_clean(self):
        outside = [u for u in self.requests
                   if not (u.startswith(self.base_url + "/") or u.startswith(("data:", "blob:")))]
        assert outside == [], f"requests outside the site: {outside}"
        assert self.errors == [], f"console errors: {self.errors}"

    def close(self):
        self.context.close()


@pytest.fixture
def watched(browser, base_url):
    opened = []

    def open_page(viewport):
        w = Watched(browser, base_url, viewport)
        opened.append(w)
        return w

    yield open_page
    for w in opened:
        w.close()


# MathJax is done when every arithmatex element holds a typeset formula.
MATH_DONE = """() => {
  const all = [...document.querySelectorAll('.arithmatex')];
  return all.every(e => e.querySelector('mjx-container'));
}"""


def wait_for_mathjax(page):
    page.wait_for_function(MATH_DONE, timeout=30_000)


# Per section with both notes and code: the boxes of the two columns.
SECTION_BOXES = """() => [...document.querySelectorAll('.literate-section')]
  .filter(s => s.querySelector('.literate-notes').innerText.trim() && s.querySelector('.literate-code table'))
  .slice(0, 12)
  .map(s => {
    const n = s.querySelector('.literate-notes').getBoundingClientRect();
    const c = s.querySelector('.literate-code').getBoundingClientRect();
    return {id: s.id, notes: [n.left, n.top, n.right, n.bottom], code: [c.left, c.top, c.right, c.bottom]};
  })"""


def test_desktop_notes_and_code_side_by_side(watched):
    w = watched(DESKTOP)
    w.goto("labml_nn_switch/switch/")
    w.screenshot("switch-1400")
    boxes = w.page.evaluate(SECTION_BOXES)
    assert len(boxes) >= 5
    for box in boxes:
        notes, code = box["notes"], box["code"]
        assert notes[2] <= code[0] + 1, box          # notes end where code begins
        assert abs(notes[1] - code[1]) <= 1, box      # both start at the section's top
        assert code[2] - code[0] > 0.5 * DESKTOP["width"], box
    # The page's full width: no side navigation, content nearly edge to edge.
    article = w.page.evaluate("document.querySelector('.md-content').getBoundingClientRect().width")
    assert article > 0.9 * DESKTOP["width"]
    assert not w.page.is_visible(".md-sidebar--primary")
    w.assert_clean()


def test_phone_notes_stacked_above_code(watched):
    w = watched(PHONE)
    w.goto("labml_nn_switch/switch/")
    w.screenshot("switch-390")
    boxes = w.page.evaluate(SECTION_BOXES)
    assert len(boxes) >= 5
    for box in boxes:
        notes, code = box["notes"], box["code"]
        assert code[1] >= notes[3] - 1, box                   # code below its notes
        assert code[2] - code[0] >= 0.9 * PHONE["width"], box  # at full width
    # Long code lines scroll inside their block, not the page.
    assert w.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    w.assert_clean()


# Visible text of the page outside code: no TeX left untypeset.
VISIBLE_PROSE = """() => {
  const article = document.querySelector('article').cloneNode(true);
  article.querySelectorAll('code, pre, mjx-assistive-mml').forEach(e => e.remove());
  document.body.appendChild(article);
  const text = article.innerText;
  article.remove();
  return text;
}"""

# A formula whose glyphs have no width was not really typeset (missing fonts or CSS).
BLANK_FORMULAS = """() => [...document.querySelectorAll('mjx-container')]
  .filter(e => e.offsetParent !== null && e.getBoundingClientRect().width === 0).length"""


@pytest.mark.parametrize("path", MODEL_PAGES)
def test_mathjax_typesets_every_formula(watched, path):
    w = watched(DESKTOP)
    w.goto(path)
    n_math = w.page.evaluate("document.querySelectorAll('.arithmatex').length")
    n_typeset = w.page.evaluate("document.querySelectorAll('.arithmatex mjx-container').length")
    assert n_typeset == n_math
    if path in ("", "labml_nn_switch/switch/"):
        assert n_math > 5
    prose = w.page.evaluate(VISIBLE_PROSE)
    for raw in ("$$", "\\(", "\\)", "\\[", "\\]"):
        assert raw not in prose, (path, raw, prose[max(0, prose.find(raw) - 80):prose.find(raw) + 80])
    assert w.page.evaluate(BLANK_FORMULAS) == 0
    w.screenshot("math-" + (path.strip("/").replace("/", "-") or "home"))
    w.assert_clean()


def test_click_on_a_name_lands_on_its_definition(watched):
    w = watched(DESKTOP)
    w.goto("labml_nn_switch/switch/")
    link = w.page.locator('a.literate-link[href*="feed_forward/#"]').first
    href = link.get_attribute("href")
    anchor = href.split("#", 1)[1]
    link.scroll_into_view_if_needed()
    # A mark on this document: it survives only if the theme's instant
    # navigation swaps the content instead of loading a new document.
    w.page.evaluate("window.literateMark = 'same document'")
    link.click()
    w.page.wait_for_url(re.compile(rf".*/feed_forward/#{re.escape(anchor)}$"), timeout=15_000)
    # The definition is there, in view,
    w.page.wait_for_function(f"() => document.getElementById({anchor!r}) !== null", timeout=15_000)
    w.page.wait_for_timeout(500)
    assert w.page.evaluate("window.literateMark") == "same document", "no instant navigation"
    top = w.page.evaluate(f"document.getElementById({anchor!r}).getBoundingClientRect().top")
    assert 0 <= top < DESKTOP["height"] / 2
    # and its formulas were typeset again.
    wait_for_mathjax(w.page)
    assert w.page.evaluate(BLANK_FORMULAS) == 0
    assert w.page.evaluate("document.querySelectorAll('.arithmatex mjx-container').length") > 0
    w.screenshot("after-click-feed_forward")
    # Back to the first page, instantly again: its formulas are typeset anew.
    w.page.go_back()
    w.page.wait_for_url(re.compile(r".*/switch/$"), timeout=15_000)
    wait_for_mathjax(w.page)
    w.page.wait_for_timeout(500)
    assert w.page.evaluate("window.literateMark") == "same document"
    assert w.page.evaluate(BLANK_FORMULAS) == 0
    w.assert_clean()


def test_search_finds_code_and_palette_toggles(watched):
    w = watched(DESKTOP)
    w.goto("")
    w.page.click(".md-search__input")
    # Typed key by key: the theme searches on key events.
    w.page.keyboard.type("plan_dispatch", delay=20)
    w.page.wait_for_selector(".md-search-result__item", timeout=15_000)
    results = w.page.inner_text(".md-search-result")
    assert "def plan_dispatch" in results
    assert "#\n" not in results  # permalinks are not indexed
    w.screenshot("search")
    w.page.keyboard.press("Escape")
    before = w.page.evaluate("document.body.getAttribute('data-md-color-scheme')")
    w.page.locator("form[data-md-component=palette] label:visible").first.click()
    after = w.page.evaluate("document.body.getAttribute('data-md-color-scheme')")
    assert {before, after} == {"default", "slate"}
    w.assert_clean()


# ## The Routing page
#
# The committed view of a real run: a panel per Switch layer, switched by its buttons,
# every character on its expert's colour, legible in both palettes, no wider than a phone.

ROUTING = json.loads((ROOT / "experiments" / "results" / "routing" / "routing.json").read_text())

# Per expert class: the text and background colours of the visible passage's characters,
# and the contrast between them (WCAG's formula).
PASSAGE_COLOURS = """() => {
  const rgb = s => s.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = c => { const [r, g, b] = c.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                     return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const contrast = (a, b) => { const [x, y] = [lum(rgb(a)), lum(rgb(b))].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const panel = [...document.querySelectorAll('.rv-layer')].find(e => e.offsetParent !== null);
  const out = {};
  for (const s of panel.querySelectorAll('.rv-text span')) {
    const cs = getComputedStyle(s), cls = s.classList[0];
    out[cls] = out[cls] || {background: new Set(), contrast: 99, n: 0};
    out[cls].background.add(cs.backgroundColor);
    out[cls].contrast = Math.min(out[cls].contrast, contrast(cs.color, cs.backgroundColor));
    out[cls].n += 1;
  }
  const page = getComputedStyle(document.querySelector('.md-main')).backgroundColor;
  const body = getComputedStyle(document.body).backgroundColor;
  const chartText = [...panel.querySelectorAll('svg text')].map(t => contrast(getComputedStyle(t).fill, body));
  return {layer: panel.dataset.layer, n: panel.querySelectorAll('.rv-text span').length,
          experts: Object.fromEntries(Object.entries(out).map(([k, v]) => [k, {background: [...v.background], contrast: v.contrast, n: v.n}])),
          chartText: Math.min(...chartText), nChartText: chartText.length};
}"""


def test_routing_page_layers_colours_and_no_outside_request(watched):
    w = watched(DESKTOP)
    w.goto("routing/")
    layers = ROUTING["passage"]["layers"]
    assert len(layers) >= 2
    first = w.page.evaluate(PASSAGE_COLOURS)
    # The first layer is shown, a span per character, each expert on one colour of its own
    assert first["layer"] == "0" and first["n"] == len(ROUTING["passage"]["text"])
    backgrounds = [v["background"] for v in first["experts"].values()]
    assert all(len(b) == 1 for b in backgrounds) and len({b[0] for b in backgrounds}) == len(backgrounds) >= 2
    assert {k: v["n"] for k, v in first["experts"].items()} == \
        {f"e{e}": layers[0]["expert"].count(e) for e in set(layers[0]["expert"])}
    # Its dropped characters are struck through
    dropped = w.page.evaluate("[...document.querySelectorAll('#rv-layer-0 .rv-text .d')].map("
                              "s => getComputedStyle(s).textDecorationLine)")
    assert len(dropped) == layers[0]["kept"].count(0) and all("line-through" in d for d in dropped)
    w.screenshot("routing-1400-layer1")
    # Another layer at a click
    w.page.click("label[for=rv-1]")
    second = w.page.evaluate(PASSAGE_COLOURS)
    assert second["layer"] == "1"
    assert {k: v["n"] for k, v in second["experts"].items()} == \
        {f"e{e}": layers[1]["expert"].count(e) for e in set(layers[1]["expert"])}
    assert w.page.is_hidden("#rv-layer-0")
    w.screenshot("routing-1400-layer2")
    w.assert_clean()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_routing_page_legible_in_both_palettes_on_a_phone(watched, scheme):
    w = watched(PHONE)
    w.page.emulate_media(color_scheme=scheme)
    w.goto("routing/")
    assert w.page.evaluate("document.body.getAttribute('data-md-color-scheme')") == \
        {"light": "default", "dark": "slate"}[scheme]
    colours = w.page.evaluate(PASSAGE_COLOURS)
    # Every character readable on its expert's colour (WCAG AA: 4.5), and the charts' text on the page
    assert min(v["contrast"] for v in colours["experts"].values()) >= 4.5, colours
    assert colours["nChartText"] > 5 and colours["chartText"] >= 4.5, colours
    # Nothing wider than the phone: the table scrolls in its box, the passage wraps
    assert w.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    w.screenshot(f"routing-390-{scheme}")
    w.assert_clean()


def test_notebook_page_shows_its_outputs(watched):
    w = watched(PHONE)
    w.goto("notebook/")
    # The button to Colab (a link, not an image from elsewhere), the plot, the routing view
    colab = w.page.locator("a.md-button", has_text="Open in Colab")
    assert colab.get_attribute("href").startswith("https://colab.research.google.com/github/")
    assert w.page.evaluate("[...document.querySelectorAll('article img')].filter(i => i.naturalWidth > 0).length") >= 1
    assert w.page.locator("#notebook-routing .rv-layer").count() >= 2
    assert w.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    w.screenshot("notebook-390")
    w.assert_clean()
