"""Errors telemetry swallows so the prompt never sees them: counted per run and reported once.

Telemetry must never fail the work it measures, so its hooks catch everything; this is where what
they catch goes. Each run gets one :class:`RunFailures`: the count and the places land in the run
record, and one log line per run names the first error (by class name: ComfyUI imports this
package under a module name made of its install path).
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("wan_accel.telemetry")
MESSAGE_CHARS = 300


def error_type_name(type_name: object) -> str | None:
    """``custom_nodes.comfyui-wan-accel.vae_accel.x.TileError`` or a path-like module -> ``TileError``."""
    if type_name is None:
        return None
    return str(type_name).rsplit(".", 1)[-1]


class RunFailures:
    """Failures of one run (thread-safe: a run is finished on a background thread)."""

    def __init__(self):
        self.count = 0
        self.sites: dict[str, int] = {}
        self.first: str | None = None
        self.lock = threading.Lock()

    def add(self, where: str, exc: BaseException) -> None:
        with self.lock:
            self.count += 1
            self.sites[where] = self.sites.get(where, 0) + 1
            if self.first is None:
                self.first = f"{where}: {type(exc).__name__}: {str(exc)[:MESSAGE_CHARS]}"

    def into_record(self, run: dict) -> None:
        with self.lock:
            run["telemetry_failures"] = self.count
            if self.count:
                run["telemetry_failure_sites"] = dict(self.sites)

    def log_once(self, run_id: str | None) -> None:
        """The run's one log line, if anything failed."""
        with self.lock:
            if not self.count:
                return
            log.warning("wan_accel telemetry: %d error(s) inside telemetry during run %s, first %s; the prompt "
                        "was not affected", self.count, run_id, self.first)
