"""Whether the Triton kernels can run here, decided once per reason and said in one log line.

Triton is optional: without it, or on tensors it cannot take (the CPU outside the interpreter,
an unsupported layout), every kernel has a torch path with the same results.
"""
from __future__ import annotations

import importlib
import logging
import os

log = logging.getLogger("wan_accel")
_said: set = set()
_modules: dict = {}
_paths: dict = {}  # (kernel, path taken) -> calls: what really ran, for benches and tests


def count(kernel: str, path: str) -> None:
    key = (kernel, path)
    _paths[key] = _paths.get(key, 0) + 1


def paths_taken() -> dict:
    """{kernel: {path: calls}} since the last :func:`reset_counts` (e.g. ``{"norm_act": {"triton": 812}}``)."""
    out: dict = {}
    for (kernel, path), n in _paths.items():
        out.setdefault(kernel, {})[path] = n
    return out


def reset_counts() -> None:
    _paths.clear()


def interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``): kernels run on CPU tensors (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def say_once(reason: str, level: int = logging.INFO) -> None:
    if reason not in _said:
        _said.add(reason)
        log.log(level, "wan_accel kernels: %s", reason)


def triton_module(name: str):
    """Import a kernel module that needs Triton (``name`` relative to this package), or None with
    one log line when Triton is missing or broken."""
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"{__package__}.{name}")
        except Exception as exc:  # ImportError, or a Triton whose import fails on this machine
            _modules[name] = None
            say_once(f"Triton unavailable ({type(exc).__name__}: {exc}); using the torch path")
    return _modules[name]


def disable(name: str, exc: BaseException) -> None:
    """A kernel failed to compile or launch here: use the torch path from now on, one warning."""
    _modules[name] = None
    say_once(f"{name} failed ({type(exc).__name__}: {exc}); using the torch path", logging.WARNING)


def reset() -> None:
    """Forget decisions (tests that switch the interpreter or fake a missing Triton)."""
    _said.clear()
    _modules.clear()
    _paths.clear()
