"""
`defer_scripts`: the external scripts at the end of a page are deferred, and
nothing that could depend on running earlier is.
"""

from __future__ import annotations

from html.parser import HTMLParser

from mkdocs_literate.scripts import defer_scripts


class Scripts(HTMLParser):
    """Each `<script>`'s attributes, in order."""

    def __init__(self, html: str):
        super().__init__()
        self.found: list[dict[str, str | None]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.found.append(dict(attrs))


def deferred(html: str) -> list[bool]:
    return ["defer" in attrs for attrs in Scripts(defer_scripts(html)).found]


# mkdocs-material's page end, as the theme writes it
THEME_END = """
<script>var palette=__md_get("__palette")</script>
<main>...</main>
<script id="__config" type="application/json">{"base": ".."}</script>
<script src="../assets/javascripts/bundle.a5f9d56c.min.js"></script>
<script src="../assets/literate/translate.js"></script>
</body></html>
"""


def test_the_theme_script_and_extra_javascript_are_deferred_in_order():
    out = defer_scripts(THEME_END)
    assert deferred(THEME_END) == [False, False, True, True]
    # Nothing else changed: remove the attribute and the page is as it was
    assert out.replace(" defer>", ">") == THEME_END
    assert out.index("bundle") < out.index("translate.js")


def test_external_scripts_before_an_inline_script_stay_as_they_are():
    html = ('<script src="a.js"></script><script>useA()</script>'
            '<script src="b.js"></script>')
    assert deferred(html) == [False, False, True]


def test_async_defer_and_module_scripts_keep_their_own_loading():
    html = ('<script async src="a.js"></script><script src="b.js" defer></script>'
            '<script type="module" src="c.js"></script><script src="d.js"></script>')
    out = defer_scripts(html)
    assert out.count("defer") == 2  # b.js's own, and d.js
    assert Scripts(out).found[0] == {"async": None, "src": "a.js"}
    assert deferred(html) == [False, True, False, True]


def test_a_script_tag_inside_an_inline_script_is_not_an_element():
    html = '<script src="a.js"></script><script>var s = "<script src=x.js>";</script>'
    assert defer_scripts(html) == html


def test_json_data_does_not_stop_deferring_and_is_not_deferred():
    html = '<script src="a.js"></script><script type="application/json">{}</script>'
    assert deferred(html) == [True, False]


def test_self_closing_and_single_quoted_attributes():
    html = "<script src='a.js' />\n</script>"
    assert defer_scripts(html) == "<script src='a.js' defer />\n</script>"
