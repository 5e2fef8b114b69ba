"""Lets test modules import the helpers beside them however pytest is started (and so do spawned workers)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
