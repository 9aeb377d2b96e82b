/*
 * The literate pages' script: MathJax's configuration, and typesetting after
 * every page load, including mkdocs-material's instant navigation, which
 * swaps the page's content without loading a new document.
 *
 * This file is loaded before MathJax itself (tex-chtml.js), which reads the
 * `window.MathJax` object below as its configuration.
 */
(function () {
  "use strict";

  // Is there math on the page that is not typeset yet? Typeset math sits
  // in an `mjx-container` inside its arithmatex element.
  function pending() {
    var all = document.querySelectorAll(".arithmatex");
    for (var i = 0; i < all.length; i++) {
      if (!all[i].querySelector("mjx-container")) return true;
    }
    return false;
  }

  // Typeset the page's new math. Calls are chained on MathJax's own promise,
  // so two page loads in quick succession never typeset at the same time,
  // and the check for new math runs when the call's turn comes: the first
  // page is announced both by MathJax's `ready` and by the theme, and must
  // be typeset once.
  //
  // Before typesetting, MathJax forgets the previous page: its formulas
  // (`typesetClear`), equation labels (`texReset`) and its stylesheet
  // (`output.clearCache`). The stylesheet must go because the theme's
  // instant navigation replaces the `<head>` elements it did not write, and
  // so drops MathJax's `<style>`; after `clearCache` MathJax writes a new
  // one with the glyphs of the new page.
  function typeset() {
    var mj = window.MathJax;
    if (!mj || !mj.startup || !mj.startup.promise || typeof mj.typesetPromise !== "function") {
      // MathJax has not loaded yet; its `ready` below typesets the first page.
      return;
    }
    mj.startup.promise = mj.startup.promise
      .then(function () {
        if (!pending()) return;
        if (mj.startup.output && mj.startup.output.clearCache) mj.startup.output.clearCache();
        mj.typesetClear();
        mj.texReset();
        return mj.typesetPromise();
      })
      .catch(function (err) {
        console.warn("MathJax typesetting failed:", err);
      });
  }

  // pymdownx.arithmatex (generic mode) writes inline math as `\(...\)` and
  // display math as `\[...\]`, inside elements of class `arithmatex`. Only
  // those elements are typeset: code and other text with dollar signs or
  // backslashes are left alone.
  window.MathJax = {
    tex: {
      inlineMath: [["\\(", "\\)"]],
      displayMath: [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true
    },
    options: {
      ignoreHtmlClass: ".*|",
      processHtmlClass: "arithmatex"
    },
    startup: {
      // We typeset ourselves, once MathJax is ready and after each page load.
      typeset: false,
      ready: function () {
        window.MathJax.startup.defaultReady();
        typeset();
      }
    }
  };

  // mkdocs-material emits `document$` on every page load, instant or not.
  if (window.document$ && typeof window.document$.subscribe === "function") {
    window.document$.subscribe(typeset);
  }
})();
