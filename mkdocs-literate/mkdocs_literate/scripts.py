"""
---
title: "Scripts: the page is shown before the theme's scripts run"
summary: Marks the scripts at the end of a built page `defer`, so that the browser shows the page, formulas and all, before it runs them.
---

# The page first, then the theme's scripts

mkdocs-material ends every page with its script (`bundle.….min.js`) and the
site's `extra_javascript`, as ordinary `<script src>` elements. An ordinary
script runs as soon as the parser reaches it, and the browser paints nothing
in between: on a long page the theme's script lays out the whole page (to
place its copy buttons, its table of contents) before the reader sees
anything. On the Switch layer's page, 58 sections and 113 formulas, that held
the first paint back by about 200 ms in headless Chromium.

A `defer` script runs once the page is parsed, in the order written, and the
browser may paint first. So we mark those scripts `defer`, as a page author
would: the page shows at once, with its formulas typeset at build time, and
the theme's features (search, copy buttons, instant navigation) arrive a
moment later. Nothing else changes: the deferred scripts still run in their
order, before the `DOMContentLoaded` event the theme waits for.

Only the last scripts of the page are deferred: an inline script placed after
one of them (by a template override, say) may expect it to have run already,
so every external script before an inline one is left as it is. Scripts with
`async`, `defer` or `type="module"` are deferred or independent already, and
a `type` that is not JavaScript (the theme's JSON configuration) is data, not
a script that runs.
"""

from __future__ import annotations

import re

# One `<script ...>...</script>` element, its attributes and its text. The
# text is taken whole, so a `<script` inside an inline script's strings is
# never mistaken for an element.
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE)
# `name` or `name=value` attributes
ATTRIBUTE = re.compile(r"""([^\s=/]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s>]+))?""")
# The `type` values that mean JavaScript (an empty or missing `type` does too)
JAVASCRIPT = {"", "text/javascript", "application/javascript", "module"}


def _attributes(text: str) -> dict[str, str]:
    """The attributes of a start tag, names in lower case, values unquoted."""
    return {name.lower(): (value or "").strip("\"'") for name, value in ATTRIBUTE.findall(text)}


def defer_scripts(html: str) -> str:
    """`html` with its trailing external scripts marked `defer` (see above)."""
    scripts = list(SCRIPT.finditer(html))
    # The scripts to defer: external ones after the last inline script that runs
    to_defer = []
    for match in reversed(scripts):
        attributes = _attributes(match.group(1))
        kind = attributes.get("type", "").lower()
        if kind not in JAVASCRIPT:
            continue  # data, such as the theme's JSON configuration
        if "src" not in attributes:
            break  # an inline script: it and everything before it stay as they are
        if not ({"async", "defer"} & attributes.keys() or kind == "module"):
            to_defer.append(match)
    # Insert the attribute from the end, so that earlier offsets stay right
    for match in to_defer:
        end = match.start(1) + len(match.group(1).rstrip().rstrip("/").rstrip())
        html = html[:end] + " defer" + html[end:]
    return html
