"""Every Python file of the repository compiles without a warning."""

import subprocess
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_compiles_without_warnings():
    # An invalid escape such as "\s" in a docstring with LaTeX is a warning now and
    # an error in a later Python: such notes belong in raw strings (r"""...""")
    sources = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert len(sources) > 50
    problems = []
    for path in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                compile((ROOT / path).read_text(encoding="utf-8"), path, "exec")
            except (SyntaxError, Warning) as e:
                problems.append(f"{path}:{getattr(e, 'lineno', '?')}: {e}")
    assert not problems, "\n".join(problems)
