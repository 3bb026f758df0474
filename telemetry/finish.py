"""After a run closes: its GPU times read back, its record rendered, saved and sent, its failures
logged. In ComfyUI this runs on a background thread, so the prompt pays none of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import records
from .failures import RunFailures
from .probes import NullProbe, resolve_gpu_times


@dataclass
class ClosedRun:
    run: dict  # the header made at the run's start; filled in here
    nodes: list  # NodeState, in start order
    gpu_waiting: list  # nodes whose CUDA events the GPU had not passed yet
    probe: NullProbe
    wall: float
    status: str
    error: dict | None
    run_phases: list
    run_notes: list
    failures: RunFailures


def finish_run(closed: ClosedRun, store: Any, send: Callable[[str, dict], None] | None,
               report: Callable[[str, BaseException], None], rendered: Callable[[dict], None]) -> dict:
    """``report`` counts into ``closed.failures``; ``rendered(run)`` is told once the record exists."""
    run = closed.run
    try:
        resolve_gpu_times(closed.probe, closed.gpu_waiting, True, report)  # may wait: never on the prompt's thread
        records.run_record(run, closed.nodes, closed.wall, closed.status, closed.error, closed.run_phases,
                           closed.run_notes)
    except Exception as exc:
        report("finishing the run record", exc)
    closed.failures.into_record(run)  # what fails after this (saving, sending) is in the log line only
    rendered(run)
    if store is not None:
        try:
            store.save(run)
        except Exception as exc:
            report("saving the run", exc)
    if send is not None:
        try:
            send("run", run)
        except Exception as exc:
            report("sending the run", exc)
    closed.failures.log_once(run.get("id"))
    return run
