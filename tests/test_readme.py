"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python block"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        # The example's names exist and its layer ran
        assert namespace["y"].shape == namespace["x"].shape
        assert 0.0 <= float(namespace["routing"].dropped_fraction) <= 1.0
