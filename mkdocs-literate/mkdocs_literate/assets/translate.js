/*
 * The language switcher goes to the same page in the other language.
 *
 * The header's language menu (mkdocs-material's `extra.alternate`) links to
 * the home page of each language. Every language's site has the same pages
 * at the same paths below its own root, so the same page elsewhere is: the
 * other site's root + this page's path below this site's root (+ the
 * fragment: translated headings keep their English anchors). The roots are
 * the `<link rel="alternate" hreflang>` elements the theme writes in the
 * head; this site's is the one in the page's own language.
 *
 * The click is taken in the capture phase, before the theme's own handler,
 * which looks the page up in the other site's sitemap and, with the English
 * site at the root and the others below it, can mistake one site for the
 * other.
 */
(function () {
  "use strict";

  function roots() {
    var found = {};
    var links = document.querySelectorAll('link[rel="alternate"][hreflang]');
    for (var i = 0; i < links.length; i++) {
      found[links[i].getAttribute("hreflang")] = links[i].href;
    }
    return found;
  }

  window.addEventListener("click", function (ev) {
    if (ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.button !== 0) return;
    var link = ev.target instanceof Element && ev.target.closest("a.md-select__link[hreflang]");
    if (!link) return;
    var all = roots();
    var here = all[document.documentElement.lang];
    var there = all[link.getAttribute("hreflang")];
    if (!here || !there || location.href.indexOf(here) !== 0) return;
    ev.preventDefault();
    ev.stopPropagation();
    location.assign(there + location.href.slice(here.length));
  }, true);
})();
