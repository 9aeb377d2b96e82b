import sys
from pathlib import Path

# The site-building helpers are shared with the project's own site tests
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
