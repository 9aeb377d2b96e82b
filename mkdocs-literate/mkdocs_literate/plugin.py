"""
---
title: "Plugin: the mkdocs wiring"
summary: >
  The literate mkdocs plugin: which files become pages, how they enter the
  site and its navigation, where the code goes into the rendered page, and the
  assets and the one template it adds.
---

# The mkdocs plugin

mkdocs builds a site in a fixed order of
[events](https://www.mkdocs.org/dev-guide/plugins/#events); the plugin does
one small job in each.

| event | job |
|---|---|
| `on_config` | find the source files, add our Markdown needs, CSS, JavaScript and template; set up a translation |
| `on_files` | parse every source file and add its page, in memory, to the site's files, with the images beside it |
| `on_page_markdown` | remember which page is being rendered (for links to modules); its edit link; translate a hand-written page |
| `on_pre_build` | start a build's KaTeX (see [formulas.py](formulas.py)) |
| `on_page_content` | put the highlighted, linked code into the rendered page; formulas' text for search |
| `on_post_page` | typeset the written page's formulas with KaTeX; preload the fonts they use |
| `on_post_build` | copy our CSS and JavaScript and KaTeX's stylesheet and fonts into the site |
| `on_serve` | make `mkdocs serve` watch the source files |

The pages are generated on every build and never written to `docs/`. The
plugin is registered under the name `literate` (an entry point in
`pyproject.toml`); its options are in [config.py](config.py).
"""

from __future__ import annotations

import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import BasePlugin, get_plugin_logger
from mkdocs.structure.files import File
from mkdocs.utils import get_relative_url, nest_paths

from . import formulas
from .config import LiterateConfig
from .notes import NotesExtension
from .render import Linker, code_html, fill_code, highlight_lines, page_markdown
from .scripts import defer_scripts
from .sections import ParseError, parse
from .translate import Translator

log = get_plugin_logger("literate")

# Where our files go in the built site.
ASSETS = "assets/literate"
# The files beside a module that are images, copied into the site.
IMAGES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".avif")


# ## A source file
#
# Everything the plugin knows about one rendered file: where it is, its
# path relative to `mkdocs.yml` (used in messages, repository links and
# `.py` links), its dotted module name, which configured source it belongs to,
# its name relative to that source (for `order` and `exclude`) and the page
# it becomes (`switch.py` → `switch.md`, `__init__.py` → `index.md`).
@dataclass
class SourceFile:
    path: Path
    rel_path: str
    module: str
    is_package: bool
    group: int
    short_name: str
    src_uri: str


class LiteratePlugin(BasePlugin[LiterateConfig]):
    # ## on_config
    #
    # Find the files first, so that a missing source stops the build before
    # anything else happens.
    def on_config(self, config):
        self.root = Path(config.config_file_path or ".").resolve().parent
        self.sources = self._find_sources()
        self.by_rel_path = {s.rel_path: s for s in self.sources}
        self.by_uri = {s.src_uri: s for s in self.sources}
        self.by_module = {s.module: s for s in self.sources}

        # Notes sit inside HTML blocks, so Markdown must look inside them;
        # links to modules and display math inside paragraphs need help
        # (see [notes.py](notes.py)).
        if "md_in_html" not in config.markdown_extensions:
            config.markdown_extensions.append("md_in_html")
        math = "pymdownx.arithmatex" in config.markdown_extensions
        config.markdown_extensions.append(NotesExtension(self, math=math))

        # Our stylesheet, and KaTeX's for formulas typeset at build time
        # (the pages need no script for math).
        config.extra_css.append(f"{ASSETS}/literate.css")
        if self.config.math:
            config.extra_css.append(f"{ASSETS}/{formulas.KATEX_CSS}")

        # Our one template: mkdocs-material's repository link in the header,
        # without the attribute that makes the theme's script ask GitHub's API
        # for the repository's stars and forks from the reader's browser. The
        # link stays; the site makes no request outside itself. A user's own
        # `custom_dir` still comes first; other themes never use the file.
        dirs = config.theme.dirs
        dirs.insert(1 if config.theme.custom_dir else 0, str(Path(__file__).parent / "templates"))

        # The address of a source line, if there is a repository to link to.
        # The theme's "edit this page" link of a literate page goes to its
        # source file, in GitHub's form, when the address comes from `repo_url`.
        self.line_url = self.config.line_url
        self.edit_url = None
        if not self.line_url and config.repo_url:
            repo = config.repo_url.rstrip("/")
            self.line_url = repo + f"/blob/{self.config.branch}/{{path}}#L{{line}}"
            self.edit_url = repo + f"/edit/{self.config.branch}/{{path}}"
        self.current_file = None
        self.translator = self._translator(config)
        return config

    # ## Translation
    #
    # In another language, notes come from catalogues (see
    # [translate.py](translate.py)): translated headings carry their English
    # anchors (`attr_list`), the site lives under `<language>/` of the
    # original's address, and our stylesheet marks what is not translated yet.
    # The language switcher's script is added in every language.
    def _translator(self, config) -> Translator | None:
        config.extra_css.append(f"{ASSETS}/translate.css")
        config.extra_javascript.append(f"{ASSETS}/translate.js")
        language = self.config.language
        if not language:
            return None
        if "attr_list" not in config.markdown_extensions:
            config.markdown_extensions.append("attr_list")
        if config.site_url and not config.site_url.rstrip("/").endswith(f"/{language}"):
            config.site_url = config.site_url.rstrip("/") + f"/{language}/"
        slugify = config.mdx_configs.get("toc", {}).get("slugify")
        translator = Translator(self.root, self.config.translations, language, slugify)
        # Chinese search splits text into words with jieba at build time
        # (mkdocs-material's search plugin does, when jieba is installed):
        # teach it the glossary's terms, so that `容量因子` is one word.
        try:
            import jieba
        except ImportError:
            jieba = None
        if jieba is not None and language.startswith("zh"):
            for term in translator.glossary.terms.values():
                jieba.add_word(term)
        return translator

    # Each configured source gives a list of files; with none configured, each
    # package beside `mkdocs.yml`. A file claimed by two sources goes to the
    # one with the longer (more specific) path.
    def _find_sources(self) -> list[SourceFile]:
        entries = [(s.path, s.exclude, s.url) for s in self.config.sources]
        if not entries:
            entries = [(p.name, [], None) for p in sorted(self.root.iterdir())
                       if (p / "__init__.py").is_file() and p.name not in ("tests", "docs")]
            if not entries:
                raise PluginError("literate: no sources configured and no package beside mkdocs.yml")

        claimed: dict[Path, tuple[int, int]] = {}
        found: dict[Path, SourceFile] = {}
        # What `mkdocs serve` watches: the configured paths themselves; and
        # the default title of each source's navigation section: its name.
        self.watch_paths = []
        self.titles = []
        for group, (path, exclude, url) in enumerate(entries):
            base = (self.root / path).resolve()
            if not base.exists():
                raise PluginError(f"literate: source '{path}' does not exist (looked for {base})")
            self.watch_paths.append(base)
            self.titles.append(base.stem)
            if base.is_file() and base.suffix != ".py":
                raise PluginError(f"literate: source '{path}' is not a .py file or a package")
            files = [base] if base.is_file() else sorted(_package_files(base))
            for file in files:
                source = self._source_file(file, base, group, url)
                if _excluded(source.short_name, exclude):
                    continue
                depth = len(base.parts)
                if file in claimed and claimed[file][0] >= depth:
                    continue
                claimed[file] = (depth, group)
                found[file] = source

        sources = list(found.values())
        # Every module named in `order` must be there.
        for group, entry in enumerate(self.config.sources):
            names = {s.short_name for s in sources if s.group == group}
            for name in entry.order:
                if name not in names:
                    raise PluginError(f"literate: module '{name}' in the order of source "
                                      f"'{entry.path}' does not exist")
        return sources

    def _source_file(self, file: Path, base: Path, group: int, url: str | None) -> SourceFile:
        # A source outside the project (an installed package) is named from
        # the directory that holds it.
        outer = base.parent
        rel_path = (file.relative_to(self.root) if file.is_relative_to(self.root)
                    else file.relative_to(outer)).as_posix()
        module = _module_name(file)
        is_package = file.name == "__init__.py"
        # The name relative to the source: `switch`, `literate.sections`,
        # `__init__` for the package itself.
        if base.is_file():
            short = file.stem
        else:
            parts = list(file.relative_to(base).with_suffix("").parts)
            if is_package:
                parts = parts[:-1] or ["__init__"]
            short = ".".join(parts)
        # The page's place: the file's own, or under the source's `url`.
        page_path = rel_path
        if url:
            url = url.strip("/")
            page_path = (posixpath.join(url, file.relative_to(base).as_posix()) if base.is_dir()
                         else url + ".py")
        src_uri = page_path[:-len(".py")] + ".md"
        if is_package:
            src_uri = posixpath.join(posixpath.dirname(page_path), "index.md")
        return SourceFile(file, rel_path, module, is_package, group, short, src_uri)

    # ## on_files
    #
    # Parse every source, then add its page to the site as a file generated in
    # memory, with its breadcrumbs and, for a package, its modules (which
    # need every module's title). A parse error becomes a build error naming
    # `path:line`.
    def on_files(self, files, *, config):
        self.modules = {}
        # What the pages show: the modules with their notes translated, in
        # another language.
        self.shown = {}
        self.texts = {}
        self.page_files = {}
        for source in self.sources:
            text = source.path.read_text(encoding="utf-8")
            try:
                module = parse(text, source.rel_path, name=source.module, is_package=source.is_package)
            except ParseError as e:
                raise PluginError(f"literate: {e}") from None
            if files.get_file_from_path(source.src_uri) is not None:
                raise PluginError(f"literate: {source.rel_path} would become {source.src_uri}, "
                                  f"which is already a documentation file")
            self.modules[source.module] = module
            self.shown[source.module] = self.translator.module(module) if self.translator else module
            self.texts[source.module] = text
        home = files.get_file_from_path("index.md")
        for source in self.sources:
            markdown = page_markdown(self.shown[source.module], self._trail(source, home),
                                     self._contents(source))
            file = File.generated(config, source.src_uri, content=markdown)
            files.append(file)
            self.page_files[source.module] = file
        self.linker = Linker(self.modules)
        self._translation_warnings()
        self._add_images(files, config)
        # The `.html` links of notes are checked against the site's files.
        self.files = files

        # Without a `nav` in mkdocs.yml, build one.
        if self.config.nav and not config.nav:
            config.nav = self._nav(files)
        return files

    # Images beside a module (`![](figure.png)` in its notes) go into the
    # site at the same place relative to its page, so the notes' relative
    # links find them, and mkdocs checks them like any other link.
    def _add_images(self, files, config):
        folders = {(s.path.parent, posixpath.dirname(s.src_uri)) for s in self.sources}
        for directory, page_dir in sorted(folders):
            for image in sorted(directory.iterdir()):
                uri = posixpath.join(page_dir, image.name)
                if image.suffix.lower() in IMAGES and files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(image)))

    # The breadcrumbs of a page: the home page (a hand-written `index.md`),
    # each rendered package the module is in, outermost first, and the page's
    # own file. A module's package is its name less the last part; a
    # package's, its own name less the last part.
    def _trail(self, source: SourceFile, home) -> list[tuple[str, str | None]]:
        here = posixpath.dirname(source.src_uri) or "."
        trail = [(self._phrase("Home"), posixpath.relpath(home.src_uri, here))] if home else []
        parts = source.module.split(".")
        for i in range(1, len(parts)):
            package = self.by_module.get(".".join(parts[:i]))
            if package is not None and package.is_package:
                trail.append((parts[i - 1], posixpath.relpath(package.src_uri, here)))
        own = parts[-1] if source.is_package else posixpath.basename(source.rel_path)
        return trail + [(own, None)]

    # The modules of a package's page: those whose package it is, in the
    # order of the navigation.
    def _contents(self, source: SourceFile) -> list[tuple[str, str, str | None]]:
        if not source.is_package:
            return []
        here = posixpath.dirname(source.src_uri) or "."
        children = [s for s in self.sources if s is not source
                    and s.module.rpartition(".")[0] == source.module]
        return [(self.shown[s.module].title, posixpath.relpath(s.src_uri, here),
                 self.shown[s.module].summary) for s in sorted(children, key=self._order_key)]

    # Hand-written pages first, as mkdocs would list them, then a section per
    # source: modules named in `order` first, then the package itself, then
    # the rest by name.
    def _nav(self, files):
        generated = set(self.by_uri)
        handwritten = [f.src_uri for f in files.documentation_pages() if f.src_uri not in generated]
        nav = nest_paths(handwritten)
        for group in sorted({s.group for s in self.sources}):
            members = [s for s in self.sources if s.group == group]
            entry = self.config.sources[group] if self.config.sources else None
            pages = [s.src_uri for s in sorted(members, key=self._order_key)]
            title = self._phrase(entry.nav if entry and entry.nav else self.titles[group])
            nav.append({title: pages})
        return nav

    def _order_key(self, source: SourceFile):
        order = list(self.config.sources[source.group].order) if self.config.sources else []
        if source.short_name in order:
            return (0, order.index(source.short_name), "")
        return (1, 0 if source.short_name == "__init__" else 1, source.short_name)

    # ## on_page_markdown
    #
    # The `.py` link rewriter runs inside Markdown, which does not know the
    # page; this tells it. A literate page's edit link is set here too.
    def on_page_markdown(self, markdown, *, page, config, files):
        self.current_file = page.file
        source = self.by_uri.get(page.file.src_uri)
        if source is not None and self.edit_url:
            page.edit_url = self.edit_url.format(path=source.rel_path)
        if self.translator and source is None and page.file.abs_src_path:
            # The catalogue of `docs/index.md` is `translations/<language>/docs/index.md.yaml`.
            path = Path(page.file.abs_src_path).resolve()
            rel_path = path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) \
                else page.file.src_uri
            markdown = self.translator.markdown(rel_path, markdown, page.meta)
            self._translation_warnings()
        return markdown

    # A short text of the site's own, in the site's language.
    def _phrase(self, text: str) -> str:
        return self.translator.phrase(text) if self.translator else text

    def _translation_warnings(self):
        if self.translator:
            for warning in self.translator.warnings:
                log.warning(warning)
            self.translator.warnings.clear()

    # ## on_pre_build
    #
    # One KaTeX per build, and its cache of typeset formulas; V8 starts at the
    # first formula.
    def on_pre_build(self, *, config):
        self.typesetter = formulas.Typesetter() if self.config.math else None

    # ## on_page_content
    #
    # On every page, hand-written ones too, formulas get their readable text
    # for search ([formulas.py](formulas.py)). On a literate page, the notes
    # are rendered; now the code. Highlight the file once, with every name
    # the linker can resolve turned into a link, and fill each section's
    # placeholder.
    def on_page_content(self, html, *, page, config, files):
        if self.config.math:
            html = formulas.prepare(html)
        source = self.by_uri.get(page.file.src_uri)
        if source is None:
            return html
        module = self.modules[source.module]

        def link(name, base):
            if base is None:
                found = self.linker.resolve(source.module, name)
            else:
                found = self.linker.resolve_attribute(source.module, base, name)
            return self._href(page, found) if found else None

        def line_url(number):
            if not self.line_url:
                return None
            return self.line_url.format(path=source.rel_path, line=number)

        lines = highlight_lines(self.texts[source.module], link)
        blocks = {i: code_html(section, lines, line_url) for i, section in enumerate(module.sections)}
        try:
            return fill_code(html, blocks)
        except ValueError as e:
            raise PluginError(f"literate: {source.rel_path}: {e}") from None

    # The address of a definition, relative to the page that links to it.
    def _href(self, page, found):
        module, anchor = found
        target = self.page_files.get(module)
        if target is None:
            return None
        fragment = f"#{anchor}" if anchor else ""
        if target is page.file:
            return fragment or "#"
        return get_relative_url(target.url, page.file.url) + fragment

    # ## on_post_page
    #
    # Search has taken the page's text; now typeset its formulas. One that
    # KaTeX cannot read is a warning (which fails a strict build) naming
    # where it is written: `path:line` of the source file or hand-written
    # page (a translation keeps its English formulas, so they are found
    # there too). The page's head then asks early for the KaTeX fonts its
    # formulas use. Last, the scripts at the end of the page are deferred, so
    # that the browser shows the page before it runs them
    # ([scripts.py](scripts.py)).
    def on_post_page(self, output, *, page, config):
        if self.typesetter is not None:
            def error(tex, message):
                log.warning(f"{self._formula_place(page, tex)}: formula not typeset: {message}")

            output = formulas.typeset(output, self.typesetter, error)
            preload = "".join(
                f'<link rel="preload" href="{get_relative_url(f"{ASSETS}/katex/fonts/{font}", page.url)}" '
                f'as="font" type="font/woff2" crossorigin>' for font in formulas.fonts(output))
            output = output.replace("</head>", preload + "</head>", 1)
        return defer_scripts(output) if self.config.defer_scripts else output

    def _formula_place(self, page, tex: str) -> str:
        source = self.by_uri.get(page.file.src_uri)
        if source is not None:
            path, text = source.rel_path, self.texts[source.module]
        else:
            file = Path(page.file.abs_src_path or ".")
            path = file.relative_to(self.root).as_posix() if file.is_relative_to(self.root) else page.file.src_uri
            text = page.file.content_string
        line = formulas.line_of(tex, text)
        return path if line is None else f"{path}:{line}"

    # ## on_post_build
    #
    # Copy our assets: KaTeX's stylesheet and fonts among them unless formulas
    # are left alone (its script only runs in the build); stop KaTeX.
    def on_post_build(self, *, config):
        site = Path(config.site_dir)
        skip = (shutil.ignore_patterns("katex.min.js") if self.config.math
                else shutil.ignore_patterns("katex"))
        shutil.copytree(Path(__file__).parent / "assets", site / ASSETS, dirs_exist_ok=True, ignore=skip)
        self._stop_katex()

    def on_build_error(self, *, error):
        self._stop_katex()

    def _stop_katex(self):
        if getattr(self, "typesetter", None) is not None:
            self.typesetter.close()
            self.typesetter = None

    # ## on_serve
    #
    # `mkdocs serve` watches `docs/` and `mkdocs.yml`; the sources live
    # elsewhere, so watch them too (a directory is watched with everything in
    # it, so a new module is picked up as well).
    def on_serve(self, server, *, config, builder):
        for path in self.watch_paths:
            if not any(path != other and path.is_relative_to(other) for other in self.watch_paths):
                server.watch(str(path))
        return server


# ## Helpers
#
# The `.py` files of a package, its subpackages included; directories without
# an `__init__.py` are not packages and are skipped.
def _package_files(base: Path):
    for path in base.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        if all((parent / "__init__.py").is_file()
               for parent in path.parents if parent.is_relative_to(base)):
            yield path


# A module name from the file's place among packages: walk up while the
# directory is a package.
def _module_name(file: Path) -> str:
    parts = [] if file.name == "__init__.py" else [file.stem]
    parent = file.parent
    while (parent / "__init__.py").is_file():
        parts.insert(0, parent.name)
        parent = parent.parent
    return ".".join(parts) or file.stem


def _excluded(short_name: str, exclude: list[str]) -> bool:
    return any(short_name == e or short_name.startswith(e + ".") for e in exclude)
