/*
 * The literate pages' script: typeset the page's formulas with KaTeX, on
 * every page load, including mkdocs-material's instant navigation, which
 * swaps the page's content without loading a new document.
 *
 * The generator (formulas.py) leaves each formula as an element of class
 * `arithmatex` whose `data-tex` attribute holds its TeX and whose text is a
 * readable version for search; `data-display` marks display math. KaTeX
 * (katex.min.js, loaded before this file) replaces that text with the
 * typeset formula, synchronously.
 */
(function () {
  "use strict";

  function typeset() {
    var katex = window.katex;
    if (!katex) return;
    // One set of macros per page: a `\def` or `\newcommand` in one formula
    // holds in the formulas after it, as it would in a TeX document.
    var macros = {};
    var all = document.querySelectorAll(".arithmatex[data-tex]");
    for (var i = 0; i < all.length; i++) {
      var element = all[i];
      if (element.querySelector(".katex")) continue;
      katex.render(element.getAttribute("data-tex"), element, {
        displayMode: element.hasAttribute("data-display"),
        // A formula KaTeX cannot read shows its TeX, in the error colour,
        // with the reason in its title; the rest of the page is typeset.
        throwOnError: false,
        // Notes as labml_nn writes them put Unicode letters in math, which
        // KaTeX accepts but would warn about in the console.
        strict: "ignore",
        macros: macros,
        globalGroup: true
      });
    }
  }

  // This script runs at the end of the body, when the page's HTML is all
  // there: typeset it now. mkdocs-material then emits `document$` for this
  // page (nothing left to do) and again after each instant navigation.
  typeset();
  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(typeset);
  }
})();
