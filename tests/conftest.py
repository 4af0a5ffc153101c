"""Puts tests/ on sys.path so shared helpers import as ``support.<name>``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
