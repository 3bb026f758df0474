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
_noted_this_run: set = set()
log = logging.getLogger("wan_accel.telemetry")


def add_listener(fn: Listener) -> None:
    if fn not in _listeners:
        _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    if fn in _listeners:
        _listeners.remove(fn)


def listener_count() -> int:
    """How many listeners are attached (a recorder detaches its own when its run ends)."""
    return len(_listeners)


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


def note_once_per_run(key, name: str, **info) -> None:
    """:func:`note`, the first time ``key`` (hashable) comes up in the current run only.

    For facts that hold for the rest of a run but belong in every run's record, e.g. the attention
    kernel a model runs per shape: an engine that notes it once per process would leave the second
    prompt's sampler without it. Cheap enough for every call: one set lookup.
    """
    if _listeners and key not in _noted_this_run:
        _noted_this_run.add(key)
        _emit({"kind": "note", "name": name, **info})


def run_started() -> None:
    """A new run is being recorded: :func:`note_once_per_run` notes everything again."""
    _noted_this_run.clear()
