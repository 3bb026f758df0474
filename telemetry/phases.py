"""Phase events that engines emit, for whoever records them.

Engines call :func:`phase` around a unit of work and :func:`note` for an instant
event (an OOM retry, a backend choice). With no listener attached both cost one
list check, so engines may call them on hot-ish paths (per tile, per slice).

A listener that raises never reaches the engine: the error goes to the error sinks (the recorder
counts it in the run record), or, with none attached, is logged once per listener.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[dict], None]
ErrorSink = Callable[[str, BaseException], None]
_listeners: list[Listener] = []
_error_sinks: list[ErrorSink] = []
_logged: set[str] = set()
log = logging.getLogger("wan_accel.telemetry")


def add_listener(fn: Listener) -> None:
    if fn not in _listeners:
        _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def add_error_sink(fn: ErrorSink) -> None:
    if fn not in _error_sinks:
        _error_sinks.append(fn)


def remove_error_sink(fn: ErrorSink) -> None:
    if fn in _error_sinks:
        _error_sinks.remove(fn)


def _listener_failed(fn: Listener, exc: Exception) -> None:
    where = f"phase listener {getattr(fn, '__qualname__', type(fn).__name__)}"
    if _error_sinks:
        for sink in list(_error_sinks):
            sink(where, exc)  # the recorder's report_failure, which never raises
    elif where not in _logged:
        _logged.add(where)
        log.warning("wan_accel telemetry: %s failed (%s: %s); engines go on without it", where, type(exc).__name__, exc)


def _emit(event: dict) -> None:
    for fn in list(_listeners):
        try:
            fn(event)
        except Exception as exc:  # a broken listener must never break the engine
            _listener_failed(fn, exc)


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
