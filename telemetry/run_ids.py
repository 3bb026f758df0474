"""Run ids: ``YYYYmmdd-HHMMSS-xxxxxxxx`` (UTC start time, 8 hex), the only names the run store accepts.

The hex part starts with the millisecond (3 hex digits) and ids made by one process strictly
increase, so sorting ids sorts runs by start even when many start in the same second (cached
prompts take milliseconds); the remaining random hex keeps two servers sharing an output folder
apart.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from datetime import datetime, timezone

RUN_ID = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}", re.ASCII)  # \d would take any Unicode digit
RANDOM_BITS = 20


def valid_run_id(run_id: object) -> bool:
    return isinstance(run_id, str) and RUN_ID.fullmatch(run_id) is not None


class RunIds:
    """Makes strictly increasing run ids (thread-safe)."""

    def __init__(self):
        self.last = ""
        self.lock = threading.Lock()

    def new(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        stamp = datetime.fromtimestamp(now, timezone.utc)
        millis = stamp.microsecond // 1000
        with self.lock:
            run_id = stamp.strftime("%Y%m%d-%H%M%S-") + f"{(millis << RANDOM_BITS) | secrets.randbits(RANDOM_BITS):08x}"
            if run_id <= self.last:  # same millisecond (or the clock stepped back): one past the last id
                head, tail = self.last.rsplit("-", 1)
                run_id = f"{head}-{int(tail, 16) + 1:08x}"
            self.last = run_id
            return run_id


RUN_IDS = RunIds()


def new_run_id(now: float | None = None) -> str:
    return RUN_IDS.new(now)
