"""
The built site in headless Chromium, served on 127.0.0.1: the side-by-side
layout at desktop width and stacked layout at phone width, the code column
(no horizontal scrolling, long lines wrapped with a hanging indent, one
number width per page, the copy button clear of the code), formulas typeset
by KaTeX when the site is built (shown without JavaScript, after instant
navigation, and labml_nn-style formulas), a click on a
linked name landing on its definition on another page, breadcrumbs and a
package's module list, search over code and readable formulas, light and
dark palettes, and, on every page opened, no request outside the site and no
console error; with `repo_url` set, links to the repository and still no
request outside the site.

Screenshots go to test-artifacts/ (git-ignored), so that a failure can be
looked at. Without Chromium these tests skip, except in CI (CI=true), where
they fail.
"""

from __future__ import annotations

import json
import re

import pytest

from site_fixtures import ARTIFACTS, CHROMIUM_ARGS, ROOT, chromium, require_chromium, serve, serve_real_site

# The generator's own fixture project (site_fixtures put its tests' folder on the path).
from literate_testing import MINI_CONFIG, mkdocs_build, write_project  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
MODEL_PAGES = ["", "labml_nn_switch/", "labml_nn_switch/mha/", "labml_nn_switch/feed_forward/",
               "labml_nn_switch/switch/", "labml_nn_switch/routing_result/", "labml_nn_switch/expert_rows/",
               "labml_nn_switch/transformer/",
               "labml_nn_switch/experiment/", "labml_nn_switch/gradient_sync/"]


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def base_url():
    with serve_real_site() as url:
        yield url


class Watched:
    """A page with everything it requested and every error it logged."""

    def __init__(self, browser, base_url, viewport, **options):
        self.base_url = base_url
        self.context = browser.new_context(viewport=viewport, **options)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        # Console errors (KaTeX, which runs when the site is built, reports
        # there, as build warnings).
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("response", lambda r: r.status >= 400 and self.errors.append(f"{r.status}: {r.url}"))

    def goto(self, path: str):
        self.page.goto(self.base_url + "/" + path, wait_until="load")
        wait_for_math(self.page)

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


# Every arithmatex element holds a typeset formula (KaTeX's HTML, written
# into the page when the site was built).
MATH_DONE = """() => {
  const all = [...document.querySelectorAll('.arithmatex')];
  return all.every(e => e.querySelector('.katex'));
}"""


def wait_for_math(page):
    page.wait_for_function(MATH_DONE, timeout=30_000)


# Per section with both notes and code: the boxes of the two columns.
SECTION_BOXES = """() => [...document.querySelectorAll('.literate-section')]
  .filter(s => s.querySelector('.literate-notes').innerText.trim() && s.querySelector('.literate-code pre'))
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
    # Long code lines wrap inside their block: neither it nor the page scrolls sideways.
    assert w.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert w.page.evaluate(OVERFLOWING_CODE) == 0
    w.assert_clean()


# Visible text of the page outside code: no TeX left untypeset.
VISIBLE_PROSE = """() => {
  const article = document.querySelector('article').cloneNode(true);
  article.querySelectorAll('code, pre, .katex-mathml').forEach(e => e.remove());
  document.body.appendChild(article);
  const text = article.innerText;
  article.remove();
  return text;
}"""

# A formula whose glyphs have no width was not really typeset (missing fonts
# or CSS); one KaTeX could not read shows as `.katex-error`.
BLANK_FORMULAS = """() => [...document.querySelectorAll('.arithmatex .katex-html')]
  .filter(e => e.getBoundingClientRect().width === 0).length
  + document.querySelectorAll('.katex-error').length"""

# Display formulas wider than the notes column (they would scroll sideways).
OVERFLOWING_FORMULAS = """() => [...document.querySelectorAll('.katex-display')]
  .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.slice(0, 60))"""


@pytest.mark.parametrize("path", MODEL_PAGES)
def test_katex_typesets_every_formula(watched, path):
    w = watched(DESKTOP)
    w.goto(path)
    n_math = w.page.evaluate("document.querySelectorAll('.arithmatex').length")
    n_typeset = w.page.evaluate("document.querySelectorAll('.arithmatex .katex').length")
    assert n_typeset == n_math
    if path in ("", "labml_nn_switch/switch/"):
        assert n_math > 5
    prose = w.page.evaluate(VISIBLE_PROSE)
    for raw in ("$$", "\\(", "\\)", "\\[", "\\]"):
        assert raw not in prose, (path, raw, prose[max(0, prose.find(raw) - 80):prose.find(raw) + 80])
    assert w.page.evaluate(BLANK_FORMULAS) == 0
    assert w.page.evaluate(OVERFLOWING_FORMULAS) == []
    w.screenshot("math-" + (path.strip("/").replace("/", "-") or "home"))
    w.assert_clean()


# The page's own HTML holds the typeset formulas: without JavaScript, every
# formula is there, laid out (KaTeX's stylesheet and fonts loaded, no glyph
# without width), nothing of KaTeX's script is asked for, and the fonts the
# page preloads are those its formulas use.
def test_formulas_are_typeset_without_javascript(browser, base_url):
    w = Watched(browser, base_url, DESKTOP, java_script_enabled=False)
    try:
        w.page.goto(base_url + "/labml_nn_switch/switch/", wait_until="load")
        n_math = w.page.evaluate("document.querySelectorAll('.arithmatex').length")
        assert n_math > 50
        assert w.page.evaluate("document.querySelectorAll('.arithmatex .katex').length") == n_math
        assert w.page.evaluate("document.fonts.ready.then(() => document.fonts.check('16px KaTeX_Main'))")
        assert w.page.evaluate("[...document.fonts].filter(f => f.family.startsWith('KaTeX') && "
                               "f.status === 'loaded').length") >= 3
        assert w.page.evaluate(BLANK_FORMULAS) == 0
        prose = w.page.evaluate(VISIBLE_PROSE)
        assert "\\frac" not in prose and "\\(" not in prose
        assert not [u for u in w.requests if u.endswith(".js") and ("katex" in u or "literate" in u)]
        assert any(u.endswith("katex.min.css") for u in w.requests)
        # The head asks early for exactly the fonts the formulas use.
        preloaded = w.page.evaluate("[...document.querySelectorAll('link[rel=preload][as=font]')]"
                                    ".map(l => l.href.split('/').pop())")
        fonts = {u.rsplit("/", 1)[-1] for u in w.requests if "/katex/fonts/" in u}
        assert len(preloaded) >= 3 and sorted(preloaded) == sorted(fonts)
        w.screenshot("math-without-javascript")
        w.assert_clean()
    finally:
        w.close()


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
    # and its formulas came typeset with it.
    wait_for_math(w.page)
    assert w.page.evaluate(BLANK_FORMULAS) == 0
    assert w.page.evaluate("document.querySelectorAll('.arithmatex .katex').length") > 0
    w.screenshot("after-click-feed_forward")
    # Back to the first page, instantly again: its formulas are typeset.
    w.page.go_back()
    w.page.wait_for_url(re.compile(r".*/switch/$"), timeout=15_000)
    wait_for_math(w.page)
    w.page.wait_for_timeout(500)
    assert w.page.evaluate("window.literateMark") == "same document"
    assert w.page.evaluate(BLANK_FORMULAS) == 0
    w.assert_clean()


def search(w: Watched, query: str) -> str:
    """The text of the search results for `query`, from the home page."""
    w.goto("")
    w.page.click(".md-search__input")
    # Typed key by key: the theme searches on key events.
    w.page.keyboard.type(query, delay=20)
    w.page.wait_for_selector(".md-search-result__item", timeout=15_000)
    w.page.wait_for_timeout(300)
    return w.page.inner_text(".md-search-result")


def test_search_finds_code_and_palette_toggles(watched):
    w = watched(DESKTOP)
    results = search(w, "plan_dispatch")
    assert "def plan_dispatch" in results
    assert "#\n" not in results  # permalinks are not indexed
    w.screenshot("search")
    w.page.keyboard.press("Escape")
    before = w.page.evaluate("document.body.getAttribute('data-md-color-scheme')")
    w.page.locator("form[data-md-component=palette] label:visible").first.click()
    after = w.page.evaluate("document.body.getAttribute('data-md-color-scheme')")
    assert {before, after} == {"default", "slate"}
    w.assert_clean()


# ## The code column

# Per code line: its length in characters, its rows on screen, where code
# starts (right of the number), where its text starts on its first row and
# where its later rows start (from the boxes of its characters), and the
# width of one character.
CODE_LINES = """() => {
  const out = [];
  for (const line of document.querySelectorAll('.literate-line')) {
    const text = line.textContent.replace(/\\t/g, '    ');
    const chars = [];
    const walker = document.createTreeWalker(line, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.length; i++) {
        const range = document.createRange();
        range.setStart(node, i); range.setEnd(node, i + 1);
        const r = range.getBoundingClientRect();
        if (r.width > 0) chars.push({c: node.data[i], x: r.left, y: r.top, w: r.width});
      }
    }
    if (!chars.length) continue;
    const rows = [...new Set(chars.map(c => Math.round(c.y)))].sort((a, b) => a - b);
    const first = chars.find(c => c.c.trim() !== '');
    const later = chars.filter(c => Math.round(c.y) > rows[0]);
    const number = line.querySelector('.literate-lineno');
    out.push({n: number.dataset.lineno, length: text.length, origin: number.getBoundingClientRect().right,
              rows: rows.length, start: first ? first.x : null,
              later: later.length ? Math.min(...later.map(c => c.x)) : null, ch: chars[0].w});
  }
  return out;
}"""

# Code blocks wider than their box (they would scroll), and the page's own width.
OVERFLOWING_CODE = """() => [...document.querySelectorAll('.literate-code pre, .literate-code pre > code')]
  .filter(e => e.scrollWidth > e.clientWidth + 1).length"""


@pytest.mark.parametrize("path", ["labml_nn_switch/switch/", "labml_nn_switch/expert_parallel/"])
def test_code_fits_100_columns_and_longer_lines_wrap_with_a_hanging_indent(watched, path):
    w = watched(DESKTOP)
    w.goto(path)
    assert w.page.evaluate(OVERFLOWING_CODE) == 0
    assert w.page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    lines = w.page.evaluate(CODE_LINES)
    assert len(lines) > 100
    long = [line for line in lines if line["length"] > 100]
    assert long, "the page has no line over 100 characters to wrap"
    for line in lines:
        if line["length"] <= 100:
            assert line["rows"] == 1, line
        else:
            # Wrapped, and the rows after the first start further right than
            # the line's own text: a hanging indent of at least two characters
            # (for a line indented by more than 60, at least 60 in).
            assert line["rows"] >= 2, line
            hang = min(line["start"] + 2 * line["ch"], line["origin"] + 60 * line["ch"])
            assert line["later"] >= hang - 1, line
    w.screenshot("wrapped-" + path.strip("/").replace("/", "-"))
    w.assert_clean()


# The boxes of the copy buttons, and of every piece of code text, per block.
COPY_BUTTON_OVERLAPS = """() => {
  const hits = [];
  for (const pre of document.querySelectorAll('.literate-code pre')) {
    const button = pre.querySelector('.md-code__nav, .md-clipboard');
    if (!button) { hits.push({missing: pre.id}); continue; }
    const b = button.getBoundingClientRect();
    const rects = [];
    const walker = document.createTreeWalker(pre.querySelector('code'), NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (!node.data.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      rects.push(...range.getClientRects());
    }
    for (const r of rects) {
      if (r.width && r.left < b.right && r.right > b.left && r.top < b.bottom && r.bottom > b.top) {
        hits.push({pre: pre.id, text: [r.left, r.top, r.right, r.bottom], button: [b.left, b.top, b.right, b.bottom]});
      }
    }
  }
  return hits;
}"""


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1400", "390"])
def test_copy_button_never_covers_code(watched, viewport):
    w = watched(viewport)
    w.goto("labml_nn_switch/switch/")
    assert w.page.evaluate("document.querySelectorAll('.literate-code pre').length") > 10
    assert w.page.evaluate(COPY_BUTTON_OVERLAPS) == []
    w.assert_clean()


# Line-number boxes' widths, and where code starts on unindented lines.
GUTTERS = """() => {
  const lines = [...document.querySelectorAll('.literate-line')];
  const widths = lines.map(l => l.querySelector('.literate-lineno').getBoundingClientRect().width);
  const starts = lines
    .filter(l => !l.style.getPropertyValue('--i') && l.children.length > 1)
    .map(l => l.children[1].getBoundingClientRect().left);
  const digits = lines.map(l => l.querySelector('.literate-lineno').dataset.lineno.length);
  const distinct = xs => [...new Set(xs.map(x => x.toFixed(1)))];
  return {widths: distinct(widths), starts: distinct(starts), digits: [...new Set(digits)]};
}"""


def test_one_line_number_width_per_page(watched):
    w = watched(DESKTOP)
    w.goto("labml_nn_switch/switch/")
    gutters = w.page.evaluate(GUTTERS)
    assert sorted(gutters["digits"]) == [2, 3]  # numbers of two and three digits
    assert len(gutters["widths"]) == 1, gutters
    assert len(gutters["starts"]) == 1, gutters  # code lines up across sections
    w.assert_clean()


# ## Where a page is

def test_breadcrumbs_and_module_list_lead_between_pages(watched):
    w = watched(DESKTOP)
    w.goto("labml_nn_switch/switch/")
    trail = w.page.locator(".literate-trail")
    assert trail.is_visible()
    assert trail.inner_text().split() == ["Home", "›", "labml_nn_switch", "›", "switch.py"]
    trail.locator("a", has_text="labml_nn_switch").click()
    w.page.wait_for_url(re.compile(r".*/labml_nn_switch/$"), timeout=15_000)
    w.page.wait_for_selector(".literate-contents")
    listed = w.page.locator(".literate-contents li a")
    hrefs = [listed.nth(i).get_attribute("href") for i in range(listed.count())]
    for name in ("mha", "feed_forward", "switch", "transformer", "experiment", "expert_parallel"):
        assert any(h.endswith(f"/labml_nn_switch/{name}/") for h in hrefs), hrefs
    w.screenshot("module-list")
    w.page.locator(".literate-contents li a", has_text=re.compile("^The Switch layer")).click()
    w.page.wait_for_url(re.compile(r".*/labml_nn_switch/switch/$"), timeout=15_000)
    wait_for_math(w.page)
    w.assert_clean()


# ## Search shows formulas as text

def test_search_results_show_formulas_as_text(watched):
    w = watched(DESKTOP)
    results = search(w, "load balancing")
    assert "∑" in results or "α" in results, results
    for tex in ("\\(", "\\[", "\\sum", "\\alpha", "\\frac", "\\text", "$$"):
        assert tex not in results, (tex, results)
    w.screenshot("search-formulas")
    w.assert_clean()


# ## Light and dark

# The colours a reader sees: notes text, a formula, code text and the code band.
COLOURS = """() => {
  const colour = sel => getComputedStyle(document.querySelector(sel)).color;
  return {scheme: document.body.getAttribute('data-md-color-scheme'),
          notes: colour('.literate-notes p'), formula: colour('.literate-notes .katex'),
          code: colour('.literate-code code'),
          page: getComputedStyle(document.body).backgroundColor};
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_palette_follows_the_system_and_formulas_take_the_text_colour(browser, base_url, scheme):
    w = Watched(browser, base_url, DESKTOP, color_scheme=scheme)
    try:
        w.goto("labml_nn_switch/switch/")
        colours = w.page.evaluate(COLOURS)
        assert colours["scheme"] == {"light": "default", "dark": "slate"}[scheme]
        assert colours["formula"] == colours["notes"]
        assert colours["code"] != colours["page"]
        w.screenshot(f"switch-{scheme}")
        w.assert_clean()
    finally:
        w.close()


# ## A project with a repository, and labml_nn-style formulas

REPO = "https://github.com/example-owner/mini"

MINI_REPO_CONFIG = MINI_CONFIG.rstrip() + f"\n    repo_url: {REPO}\n"

# Notes as labml_nn writes them: environments, text, blackboard and
# calligraphic letters, operators, big delimiters, accents.
LABML_STYLE = r'''
r"""
# Formulas as labml_nn writes them

The loss is $\mathcal{L}(\theta) = \mathbb{E}_{x \sim p}\big[ \log q_\theta(x) \big]$
and $\operatorname{softmax}(x)_i = \frac{e^{x_i}}{\sum_j e^{x_j}}$.

$$
\begin{align}
\hat{y} &= \underset{y}{\operatorname{arg\,max}} \; p(y \vert x) \\
\tilde{\alpha}_t &= \mathop{\text{clip}}\Big(\frac{\pi_\theta}{\pi_{\theta_{old}}}, 1 - \epsilon, 1 + \epsilon\Big) \\
\nabla_\theta J &= \prod_{i=1}^{N} \sqrt{\lVert W_i^\top \rVert} \cdot \color{orange}{\dots}
\end{align}
$$
"""


def loss(x):
    return x
'''


@pytest.fixture(scope="module")
def repo_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo-site")
    config = write_project(root, config=MINI_REPO_CONFIG, extra={"pkg/notes.py": LABML_STYLE})
    result = mkdocs_build(config, root / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    with serve(root / "site") as url:
        yield url


def test_repository_links_without_a_request_outside_the_site(browser, repo_site):
    w = Watched(browser, repo_site, DESKTOP)
    try:
        # Anything not for the site is refused (and recorded by `assert_clean`).
        w.context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
        w.goto("pkg/notes/")
        # The theme fetches its repository facts after the page is shown.
        w.page.wait_for_timeout(1500)
        assert w.page.get_attribute(".md-header .md-source", "href") == REPO
        numbers = w.page.locator("a.literate-lineno")
        assert numbers.count() > 0
        line = numbers.first.get_attribute("data-lineno")
        assert numbers.first.get_attribute("href") == f"{REPO}/blob/main/pkg/notes.py#L{line}"
        w.screenshot("repo-links")
        w.assert_clean()
    finally:
        w.close()


def test_labml_style_formulas_typeset(browser, repo_site):
    w = Watched(browser, repo_site, DESKTOP)
    try:
        w.goto("pkg/notes/")
        assert w.page.evaluate("document.querySelectorAll('.arithmatex .katex').length") == 3
        assert w.page.evaluate("document.querySelectorAll('.arithmatex .katex-display').length") == 1
        assert w.page.evaluate(BLANK_FORMULAS) == 0
        # Each align row is a row of the typeset formula.
        assert w.page.evaluate("document.querySelector('.katex-display').getBoundingClientRect().height") > 80
        w.screenshot("labml-style-formulas")
        w.assert_clean()
    finally:
        w.close()


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
