"""
The Chinese site in headless Chromium, served with the English one on
127.0.0.1 (English at the root, Chinese under /zh/): the header's language
menu goes to the same page in the other language (Chinese, Japanese) and back, the formulas of
the translated page are typeset, search finds the Switch page by a Chinese
(or Japanese) term, and no page asks for anything outside the site or logs an error.
Without Chromium these tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import pytest

from site_fixtures import ARTIFACTS, CHROMIUM_ARGS, require_chromium, serve_real_site

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1400, "height": 900}

# Every formula is typeset: each arithmatex element holds KaTeX's output,
# written into the translated page when the site was built.
MATH_DONE = """() => {
  const all = [...document.querySelectorAll('.arithmatex')];
  return all.length > 0 && all.every(e => e.querySelector('.katex'));
}"""


# The text of every code column (textContent: columns off screen count too).
CODE = "els => els.map(e => e.textContent)"


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


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.requests, page.errors = [], []
    page.on("request", lambda r: page.requests.append(r.url))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("response", lambda r: r.status >= 400 and page.errors.append(f"{r.status}: {r.url}"))
    yield page
    outside = [u for u in page.requests
               if not (u.startswith(base_url + "/") or u.startswith(("data:", "blob:")))]
    context.close()
    assert outside == [], f"requests outside the site: {outside}"
    assert page.errors == [], f"errors: {page.errors}"


def choose_language(page, lang: str):
    # The menu opens on hover; its links go to the same page in that language.
    page.hover(".md-header__option .md-select")
    with page.expect_navigation(wait_until="load"):
        page.click(f'a.md-select__link[hreflang="{lang}"]')


def test_language_menu_switches_the_switch_page_and_back(page, base_url):
    page.goto(f"{base_url}/labml_nn_switch/switch/", wait_until="load")
    page.wait_for_function(MATH_DONE, timeout=30_000)
    code = page.eval_on_selector_all(".literate-code", CODE)

    choose_language(page, "zh")
    assert page.url == f"{base_url}/zh/labml_nn_switch/switch/"
    assert page.evaluate("document.documentElement.lang") == "zh"
    page.wait_for_function(MATH_DONE, timeout=30_000)
    assert page.locator("h1").first.inner_text().startswith("Switch 层")
    assert page.locator(".literate-untranslated").count() == 0
    # The code column is the English page's code.
    assert page.eval_on_selector_all(".literate-code", CODE) == code and len(code) > 20
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "switch-zh-1400.png"))

    choose_language(page, "ja")
    assert page.url == f"{base_url}/ja/labml_nn_switch/switch/"
    page.wait_for_function(MATH_DONE, timeout=30_000)
    assert page.locator("h1").first.inner_text().startswith("Switch 層")

    choose_language(page, "en")
    assert page.url == f"{base_url}/labml_nn_switch/switch/"
    assert page.evaluate("document.documentElement.lang") == "en"


@pytest.mark.parametrize("language, term", [("zh", "负载均衡损失"), ("zh", "专家"), ("ja", "エキスパート")])
def test_search_finds_the_switch_page_by_a_translated_term(page, base_url, language, term):
    page.goto(f"{base_url}/{language}/", wait_until="load")
    page.click(".md-search__input")
    # The theme reads the query on a key's release (or when its search worker
    # becomes ready): fill the box, then release a key that types nothing.
    page.fill(".md-search__input", term)
    page.press(".md-search__input", "End")
    results = page.locator(".md-search-result__item a")
    results.first.wait_for(timeout=60_000)
    hrefs = [results.nth(i).get_attribute("href") for i in range(results.count())]
    assert any("labml_nn_switch/switch/" in h for h in hrefs), hrefs
    assert all(f"/{language}/" in page.evaluate("h => new URL(h, location.href).href", h) for h in hrefs), hrefs
