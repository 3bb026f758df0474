"""Old name of :mod:`.telemetry_hooks` (it never defined nodes), kept while callers outside telemetry's area
(``bench/two_pass.py``, ``bench/telemetry_overhead.py``, ``tests/test_workflows.py``) still import it."""
from __future__ import annotations

from .telemetry_hooks import install_hooks, loaded_models_snapshot, uninstall_hooks

NODES: list = []

__all__ = ["NODES", "install_hooks", "loaded_models_snapshot", "uninstall_hooks"]
