"""What the workers of a multi-device run share, thread-safe: the tiles still to do (:class:`Dealer`)."""
from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Callable

from .rect import Rect

if TYPE_CHECKING:  # only for the annotations: multi_device imports this module
    from .multi_device import Worker


class Stopped(Exception):
    """The run was stopped (interrupted, or another device's error ended it): leave quietly."""


class Dealer:
    """The tiles not yet finished, handed out one at a time; thread-safe."""

    def __init__(self, tiles: list[Rect], workers: list[Worker]):
        self.pending = deque(tiles)
        self.in_flight = 0
        self.alive = {w.index for w in workers}
        self.errors: list[tuple[Worker, BaseException]] = []
        self.stopped: BaseException | None = None
        self.cond = threading.Condition()

    def take(self, idle: Callable[[], None] | None = None) -> Rect | None:
        """The next tile, or None when all are finished or the run stopped. Waits while another device
        still works on a tile it might hand back (calling ``idle`` between waits)."""
        while True:
            with self.cond:
                if self.stopped is not None:
                    return None
                if self.pending:
                    self.in_flight += 1
                    return self.pending.popleft()
                if self.in_flight == 0:
                    return None
                self.cond.wait(0.05)
            if idle is not None:
                idle()

    def finish(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def hand_back(self, worker: Worker, rect: Rect, exc: BaseException) -> None:
        with self.cond:
            self.in_flight -= 1
            self.pending.appendleft(rect)
            self.alive.discard(worker.index)
            self.errors.append((worker, exc))
            self.cond.notify_all()

    def others_alive(self, worker: Worker) -> bool:
        with self.cond:
            return bool(self.alive - {worker.index})

    def stop(self, exc: BaseException) -> None:
        with self.cond:
            if self.stopped is None:
                self.stopped = exc
            self.cond.notify_all()
