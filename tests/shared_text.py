"""
Where the tests find Tiny Shakespeare. The text is never committed: it is the
shared copy beside the repository (`../shared/data/tiny_shakespeare.txt`), or
wherever `TINY_SHAKESPEARE` says. Tests that need it are skipped without it
(`.ci/run` says so loudly).
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(os.environ.get('TINY_SHAKESPEARE', REPO.parent / 'shared' / 'data' / 'tiny_shakespeare.txt'))
needs_text = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f'{SHAKESPEARE} is not here')
