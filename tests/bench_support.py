"""Load a bench script (bench/<name>.py) as a module for tests of its logic. The benches import their
siblings by plain name, as when run from bench/, so bench/ is on sys.path while one loads."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
