"""Phase events that engines emit, for whoever records them.

Engines call :func:`phase` around a unit of work and :func:`note` for an instant
event (an OOM retry, a backend choice). With no listener attached both cost one
list check, so engines may call them on hot-ish paths (per tile, per slice).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[dict], None]
_listeners: list[Listener] = []


def add_listener(fn: Listener) -> None:
    if fn not in _listeners:
        _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def _emit(event: dict) -> None:
    for fn in list(_listeners):
        try:
            fn(event)
        except Exception:  # a broken listener must never break the engine
            pass


@contextmanager
def phase(name: str, **info) -> Iterator[None]:
    if not _listeners:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _emit({"kind": "phase", "name": name, "seconds": time.perf_counter() - start, **info})


def note(name: str, **info) -> None:
    if _listeners:
        _emit({"kind": "note", "name": name, **info})
