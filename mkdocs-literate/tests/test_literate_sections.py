"""
The parser of the literate generator (mkdocs-literate/mkdocs_literate/sections.py):
small cases for each rule, then a property test on generated sources whose
every line is labelled by the generator (code, note, docstring, blank), so the
expected result does not come from the parser's own logic.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mkdocs_literate.sections import ParseError, parse

ROOT = Path(__file__).resolve().parent.parent


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def code_of(section):
    return [(c.number, c.text) for c in section.code]


# ## The module docstring and the title

def test_front_matter_gives_title_and_summary_and_is_not_shown():
    m = parse(src('''
        """
        ---
        title: "The Switch layer"
        summary: Routing to experts.
        ---

        # A heading

        Intro text.
        """
        import torch
    '''), "pkg/switch.py")
    assert m.title == "The Switch layer"
    assert m.summary == "Routing to experts."
    first = m.sections[0]
    assert "---" not in first.notes_markdown and "summary" not in first.notes_markdown
    assert first.notes_markdown.startswith("# A heading")
    assert "Intro text." in first.notes_markdown
    assert code_of(first) == [(11, "import torch")]


def test_title_from_first_heading_without_front_matter():
    m = parse(src('''
        """
        Some words first.

        # The Title #

        ## Not this
        """
    '''), "a.py")
    assert m.title == "The Title"
    assert m.summary is None


def test_heading_in_a_fence_is_not_the_title():
    m = parse(src('''
        """
        ```
        # not a title
        ```
        """
    '''), "pkg/thing.py")
    assert m.title == "thing"


def test_title_from_file_name_and_package_name():
    assert parse("x = 1\n", "pkg/feed_forward.py").title == "feed_forward"
    assert parse("x = 1\n", "pkg/__init__.py").title == "pkg"


def test_title_from_comment_heading_without_docstring():
    m = parse("# # Helpers\nx = 1\n", "h.py")
    assert m.title == "Helpers"


def test_module_docstring_opens_the_page_and_keeps_its_own_section():
    m = parse(src('''
        """Module intro."""
        def f():
            return 1
    '''))
    assert m.sections[0].notes == ["Module intro."]
    assert m.sections[0].code == []
    assert m.sections[1].definition == "f"


def test_front_matter_must_be_a_mapping_and_closed():
    with pytest.raises(ParseError) as e:
        parse('"""\n---\n- a list\n---\n"""\n', "bad.py")
    assert str(e.value).startswith("bad.py:1:")
    with pytest.raises(ParseError, match="closing"):
        parse('"""\n---\ntitle: x\n"""\n', "bad.py")


# ## Note blocks

def test_comment_block_is_the_note_of_the_following_code():
    m = parse(src('''
        x = 1
        # Add one
        # to x.
        y = x + 1
    '''))
    assert code_of(m.sections[0]) == [(1, "x = 1")]
    assert m.sections[1].notes_markdown == "Add one\nto x."
    assert code_of(m.sections[1]) == [(4, "y = x + 1")]


def test_bare_hash_is_a_paragraph_break():
    m = parse("# First paragraph\n#\n# Second\nx = 1\n")
    assert m.sections[0].notes_markdown == "First paragraph\n\nSecond"


def test_blocks_separated_by_blank_lines_join_into_one_note():
    m = parse("# One\n\n# Two\nx = 1\n")
    assert len(m.sections) == 1
    assert m.sections[0].notes == ["One", "Two"]


def test_lone_hash_starts_a_section_with_an_empty_note():
    m = parse(src('''
        x = 1
        #
        y = 2
    '''))
    assert [code_of(s) for s in m.sections] == [[(1, "x = 1")], [(3, "y = 2")]]
    assert m.sections[1].notes == []


def test_lone_hash_after_a_note_only_section_keeps_the_note_apart():
    m = parse("# Just a note\n\n#\nx = 1\n")
    assert m.sections[0].notes == ["Just a note"] and m.sections[0].code == []
    assert m.sections[1].notes == [] and code_of(m.sections[1]) == [(4, "x = 1")]


def test_extra_spaces_after_hash_are_kept_for_markdown():
    m = parse("# A list:\n#\n#     indented code\n# * item\nx = 1\n")
    assert "    indented code" in m.sections[0].notes_markdown


def test_indented_comment_blocks_inside_functions_are_notes():
    m = parse(src('''
        def f(x):
            # Double it
            y = 2 * x
            # and return.
            return y
    '''))
    assert [s.notes for s in m.sections] == [[], ["Double it"], ["and return."]]
    assert [code_of(s) for s in m.sections] == [
        [(1, "def f(x):")], [(3, "    y = 2 * x")], [(5, "    return y")]]


def test_trailing_inline_comments_stay_in_the_code():
    m = parse("x = 1  # one\n# note\ny = 2  # two\n")
    assert code_of(m.sections[0]) == [(1, "x = 1  # one")]
    assert code_of(m.sections[1]) == [(3, "y = 2  # two")]


def test_comments_inside_brackets_stay_in_the_code():
    m = parse(src('''
        y = f(
            1,
            # the second argument
            2,
        )
    '''))
    assert len(m.sections) == 1
    assert [n for n, _ in code_of(m.sections[0])] == [1, 2, 3, 4, 5]


def test_hash_lines_inside_strings_are_code():
    m = parse(src('''
        s = """
        # not a comment
        """
        t = 1
    '''))
    assert len(m.sections) == 1
    assert [n for n, _ in code_of(m.sections[0])] == [1, 2, 3, 4]


def test_shebang_and_coding_cookie_stay_code():
    m = parse("#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n# Note\nx = 1\n")
    assert code_of(m.sections[0]) == [(1, "#!/usr/bin/env python"), (2, "# -*- coding: utf-8 -*-")]
    assert m.sections[1].notes == ["Note"]


# ## Blank lines and line numbers

def test_blank_lines_inside_code_are_kept_and_edges_dropped():
    m = parse(src('''
        # Note

        a = 1

        b = 2


        # Next
        c = 3
    '''))
    assert code_of(m.sections[0]) == [(3, "a = 1"), (4, ""), (5, "b = 2")]
    assert code_of(m.sections[1]) == [(9, "c = 3")]


def test_crlf_line_endings():
    m = parse("# Note\r\nx = 1\r\n\r\ny = 2\r\n")
    assert code_of(m.sections[0]) == [(2, "x = 1"), (3, ""), (4, "y = 2")]


def test_empty_file():
    m = parse("", "pkg/empty.py")
    assert m.title == "empty"
    assert len(m.sections) == 1 and m.sections[0].code == [] and m.sections[0].notes == []


# ## Definitions and docstrings

def test_def_with_decorators_and_multiline_signature_is_one_section():
    m = parse(src('''
        x = 1
        @decorator
        @other(arg=1)
        def f(
            a: int,  # the first
            # the second
            b: int = 2,
        ) -> int:
            """The docstring."""
            return a + b
    '''))
    assert len(m.sections) == 2
    s = m.sections[1]
    assert s.definition == "f" and s.kind == "def"
    assert s.notes == ["The docstring."]
    assert [n for n, _ in code_of(s)] == [2, 3, 4, 5, 6, 7, 8, 10]
    assert all("docstring" not in t for _, t in code_of(s))


def test_comment_between_decorator_and_def_stays_with_the_definition():
    m = parse("@dec\n# about f\ndef f():\n    pass\n")
    assert len(m.sections) == 1
    assert [n for n, _ in code_of(m.sections[0])] == [1, 2, 3, 4]


def test_note_above_a_def_joins_its_docstring():
    m = parse(src('''
        x = 1

        # ## A helper
        def f():
            """
            Does things.
            """
            pass
    '''))
    s = m.sections[1]
    assert s.definition == "f"
    assert s.notes == ["## A helper", "Does things."]
    assert [n for n, _ in code_of(s)] == [4, 8]


def test_def_always_starts_a_section_even_right_after_code():
    m = parse("x = 1\ndef f():\n    pass\ny = 2\n")
    assert [s.definition for s in m.sections] == [None, "f"]
    assert [n for n, _ in code_of(m.sections[1])] == [2, 3, 4]


def test_class_and_methods_are_sections_with_qualified_anchors():
    m = parse(src('''
        class A:
            """A class."""
            size: int = 1

            def f(self):
                """A method."""
                return 1

            async def g(self):
                return 2
    '''))
    assert [(s.definition, s.kind) for s in m.sections] == [("A", "class"), ("A.f", "def"), ("A.g", "def")]
    assert [s.anchor for s in m.sections] == ["A", "A.f", "A.g"]
    assert m.names == {"A": "A"}
    assert code_of(m.sections[0]) == [(1, "class A:"), (3, "    size: int = 1")]


@pytest.mark.parametrize("docstring, expected", [
    ('"""Double quotes."""', "Double quotes."),
    ("'''Single quotes.'''", "Single quotes."),
    ('"One line, plain quotes."', "One line, plain quotes."),
    ('r"""Raw: $\\alpha \\{x\\} \\\\ y_1$"""', "Raw: $\\alpha \\{x\\} \\\\ y_1$"),
    ("R'''Raw \\theta'''", "Raw \\theta"),
    ('"""\n    Multi\n      line\n    """', "Multi\n  line"),
])
def test_docstring_styles(docstring, expected):
    source = "def f():\n    " + docstring.replace("\n", "\n") + "\n    return 1\n"
    m = parse(source, "d.py")
    s = m.sections[0]
    assert s.notes == [expected]
    assert [t.strip() for _, t in code_of(s)] == ["def f():", "return 1"]


def test_docstring_sharing_a_line_with_code_stays_code():
    m = parse('def f(): "doc"\nclass A: """doc"""; x = 1\n')
    assert [s.notes for s in m.sections] == [[], []]
    assert [n for s in m.sections for n, _ in code_of(s)] == [1, 2]


# Docstrings are taken as written: TeX in a plain (not raw) docstring keeps
# every backslash, where Python would have made `\f` a form feed, `\t` a tab
# and `\n` a newline. Escapes that Python would undo (`\\`, `\"`) stay too.
TEX_AS_WRITTEN = (
    "\\frac{1}{2} \\theta \\nabla \\nu \\rho \\vec{v} \\alpha \\\\ \\\"q\\\"\n"
    "\\begin{align}\n"
    "a &= \\beta \\\\\n"
    "\\end{align}"
)


@pytest.mark.parametrize("quote", ['"""', "'''", 'u"""', 'r"""', 'R\'\'\''])
def test_docstrings_are_taken_as_written_in_the_file(quote):
    body = TEX_AS_WRITTEN.replace("\n", "\n    ")
    close = quote.lstrip("ruRU")
    for source in (f"{quote}\n{TEX_AS_WRITTEN}\n{close}\nx = 1\n",
                   f"def f():\n    {quote}\n    {body}\n    {close}\n    return 1\n"):
        m = parse(source, "t.py")
        assert m.sections[0].notes == [TEX_AS_WRITTEN]


def test_docstring_of_several_literals_falls_back_to_its_value():
    m = parse('def f():\n    "a" \\\n    "b"\n    return 1\n')
    assert m.sections[0].notes == ["ab"]


def test_duplicate_definitions_get_unique_anchors():
    m = parse("if X:\n    def f():\n        pass\nelse:\n    def f():\n        pass\n")
    anchors = [s.anchor for s in m.sections]
    assert len(anchors) == len(set(anchors))
    assert "f" in anchors and "f-2" in anchors


def test_nested_functions_are_sections_too():
    m = parse("def outer():\n    # inner note\n    def inner():\n        pass\n    return inner\n")
    assert [s.definition for s in m.sections] == ["outer", "outer.inner"]
    assert m.sections[1].notes == ["inner note"]
    assert m.names == {"outer": "outer"}


# ## Errors

def test_syntax_error_names_file_and_line():
    with pytest.raises(ParseError) as e:
        parse("x = 1\n\ndef f(:\n    pass\n", "pkg/broken.py")
    assert str(e.value).startswith("pkg/broken.py:3: ")
    assert e.value.path == "pkg/broken.py" and e.value.line == 3


def test_indentation_error_names_file_and_line():
    with pytest.raises(ParseError, match=r"^i\.py:3: "):
        parse("def f():\n    x = 1\n  y = 2\n", "i.py")


# ## Imports, for linking names

def test_imports_resolve_relative_to_the_module_and_package():
    source = src('''
        import torch
        import torch.nn as nn
        from .mha import MultiHeadAttention as MHA
        from . import feed_forward
        from ..other import thing
    ''')
    m = parse(source, name="pkg.sub.mod")
    assert m.imports["torch"] == ("torch", None)
    assert m.imports["nn"] == ("torch.nn", None)
    assert m.imports["MHA"] == ("pkg.sub.mha", "MultiHeadAttention")
    assert m.imports["feed_forward"] == ("pkg.sub", "feed_forward")
    assert m.imports["thing"] == ("pkg.other", "thing")
    init = parse("from .switch import SwitchFeedForward\n", name="pkg", is_package=True)
    assert init.imports["SwitchFeedForward"] == ("pkg.switch", "SwitchFeedForward")


# ## The property: nothing lost, nothing duplicated
#
# A generator of Python sources in which every line carries the label the
# parser must give it. Statements are built recursively: plain assignments
# (some with trailing comments), comment blocks, lone `#`, blank lines,
# multi-line calls with comments inside, multi-line strings holding `#` lines,
# `if` blocks, and functions and classes with decorators, multi-line
# signatures and docstrings of every style.

CODE, NOTE, DOC, BLANK = "code", "note", "doc", "blank"

words = st.sampled_from(["alpha", "beta", "gamma $x_1$", "**bold**", "`code`", "\\{a\\}"])


@st.composite
def comment_block(draw, ind):
    lines = draw(st.lists(st.one_of(words.map(lambda w: "# " + w), st.just("#")), min_size=1, max_size=3))
    return [(NOTE, ind + line) for line in lines]


@st.composite
def docstring(draw, ind):
    style = draw(st.sampled_from(["one", "one_single", "multi", "raw", "plain"]))
    w = draw(words).replace("\\", "")
    if style == "one":
        return [(DOC, f'{ind}"""{w}."""')]
    if style == "one_single":
        return [(DOC, f"{ind}'''{w}.'''")]
    if style == "plain":
        return [(DOC, f'{ind}"{w}"')]
    if style == "raw":
        return [(DOC, f'{ind}r"""'), (DOC, f"{ind}$\\alpha \\\\ {w}$"), (DOC, f'{ind}"""')]
    return [(DOC, f'{ind}"""'), (DOC, f"{ind}{w}"), (DOC, ""), (DOC, f"{ind}# not a note"), (DOC, f'{ind}"""')]


@st.composite
def simple(draw, ind):
    kind = draw(st.sampled_from(["assign", "inline", "call", "string", "blank"]))
    v = "v"
    if kind == "assign":
        return [(CODE, f"{ind}{v} = 1")]
    if kind == "inline":
        return [(CODE, f"{ind}{v} = 2  # trailing")]
    if kind == "call":
        return [(CODE, f"{ind}{v} = f("), (CODE, f"{ind}    1,  # in brackets"),
                (CODE, f"{ind}    # a comment inside brackets"), (CODE, f"{ind})")]
    if kind == "string":
        return [(CODE, f'{ind}{v} = """'), (CODE, "# hash in a string"), (CODE, '"""')]
    return [(BLANK, draw(st.sampled_from(["", ind])))]


def statements(ind, depth):
    options = [simple(ind), comment_block(ind), st.just([(NOTE, ind + "#")])]
    if depth < 2:
        options += [definition(ind, depth), if_block(ind, depth)]
    return st.one_of(*options)


@st.composite
def body(draw, ind, depth, allow_doc):
    lines = []
    if allow_doc and draw(st.booleans()):
        lines += draw(docstring(ind))
    for stmt in draw(st.lists(statements(ind, depth + 1), max_size=4)):
        lines += stmt
    # A body needs at least one statement: a docstring or a line of code.
    if not any(label in (CODE, DOC) and line.startswith(ind) and not line[len(ind):].startswith(" ")
               for label, line in lines):
        lines.append((CODE, f"{ind}pass"))
    return lines


@st.composite
def definition(draw, ind, depth):
    lines = []
    for _ in range(draw(st.integers(0, 2))):
        lines.append((CODE, f"{ind}@decorator"))
    if lines and draw(st.booleans()):
        lines.append((CODE, f"{ind}# between decorator and def"))
    name = draw(st.sampled_from(["f", "g", "Name"]))
    if draw(st.booleans()):
        lines.append((CODE, f"{ind}class {name}:"))
    elif draw(st.booleans()):
        lines += [(CODE, f"{ind}def {name}("), (CODE, f"{ind}    a,  # first"),
                  (CODE, f"{ind}    # comment in the signature"), (CODE, f"{ind}    b=1,"),
                  (CODE, f"{ind}) -> int:")]
    else:
        lines.append((CODE, f"{ind}def {name}(a):"))
    lines += draw(body(ind + "    ", depth, allow_doc=True))
    return lines


@st.composite
def if_block(draw, ind, depth):
    return [(CODE, f"{ind}if x:")] + draw(body(ind + "    ", depth, allow_doc=False))


@st.composite
def module_source(draw):
    lines = []
    if draw(st.booleans()):
        lines += draw(docstring(""))
    for stmt in draw(st.lists(statements("", 0), max_size=8)):
        lines += stmt
    return lines


def check_property(labelled):
    text = "\n".join(line for _, line in labelled) + "\n"
    ast.parse(text)  # the generator only writes valid Python
    m = parse(text, "gen.py")
    source_lines = text.split("\n")
    label = {i + 1: lab for i, (lab, _) in enumerate(labelled)}

    emitted = [c for s in m.sections for c in s.code]
    numbers = [c.number for c in emitted]
    # Every emitted line is the source line of that number,
    assert all(c.text == source_lines[c.number - 1] for c in emitted)
    # in order, none twice,
    assert numbers == sorted(set(numbers))
    # every code line is there, and no note or docstring line is.
    assert {n for n, lab in label.items() if lab == CODE} <= set(numbers)
    assert all(label[n] in (CODE, BLANK) for n in numbers)
    # Blank lines are kept exactly when they sit between code of one section.
    for s in m.sections:
        if not s.code:
            continue
        first, last = s.code[0].number, s.code[-1].number
        assert label[first] == CODE and label[last] == CODE
        inside = {n for n in range(first, last + 1) if label[n] in (CODE, BLANK)}
        assert inside == {c.number for c in s.code}
    # Notes keep every word of the comments and docstrings.
    notes = "\n".join(s.notes_markdown for s in m.sections)
    for n, lab in label.items():
        line = labelled[n - 1][1].strip()
        if lab == NOTE and line != "#":
            assert line[2:] in notes
        if lab == DOC and line and '"' not in line and "'" not in line:
            assert line in notes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(module_source())
def test_property_code_columns_reproduce_every_code_line(labelled):
    check_property(labelled)


# The real modules of this repository, as they are: every line that holds a
# token other than a comment appears in exactly one section, with its number,
# unless it is part of a lifted docstring.
@pytest.mark.parametrize("path", sorted((ROOT / "mkdocs_literate").rglob("*.py")),
                         ids=lambda p: p.name)
def test_real_modules_lose_no_code(path):
    import io
    import tokenize
    text = path.read_text(encoding="utf-8")
    m = parse(text, path.name)
    lines = text.split("\n")
    emitted = [c for s in m.sections for c in s.code]
    numbers = [c.number for c in emitted]
    assert numbers == sorted(set(numbers))
    assert all(c.text == lines[c.number - 1] for c in emitted)
    touched = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):
            touched.update(range(tok.start[0], tok.end[0] + 1))
    docstring_lines = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.body and isinstance(node.body[0], ast.Expr) and isinstance(
                    getattr(node.body[0], "value", None), ast.Constant) and isinstance(node.body[0].value.value, str):
                docstring_lines.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    assert touched - docstring_lines <= set(numbers)


# Any docstring, raw or not, reaches the notes as written between its quotes
# (without its common indentation), whatever escapes Python would see in it.
TEX_CHARS = st.text(alphabet=st.sampled_from(list("abfnrtv{}_^$|*<0 \\")), max_size=40)


@settings(max_examples=300, deadline=None)
@given(TEX_CHARS, st.sampled_from(['"""', "'''", 'r"""', "u'''", '"']))
def test_property_docstrings_reach_the_notes_as_written(body, quote):
    close = quote.lstrip("ru")
    source = f"def f():\n    {quote}{body}{close}\n    return 1\n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source)
    except SyntaxError:
        return  # a backslash before the closing quote: not a docstring at all
    expected = inspect.cleandoc(body)
    notes = parse(source, "p.py").sections[0].notes
    assert notes == ([expected] if expected.strip() else [])


def test_a_fallback_import_does_not_replace_the_first():
    m = parse("try:\n    from .a import x\nexcept ImportError:\n    from a import x\n",
              name="pkg.b")
    assert m.imports["x"] == ("pkg.a", "x")
