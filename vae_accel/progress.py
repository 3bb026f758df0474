"""Progress reporting: a callback ``(done, total)``, tqdm by default outside ComfyUI."""
from __future__ import annotations

from typing import Callable


class Progress:
    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.done > self.total:  # an OOM split adds steps the plan did not know about
            self.total = self.done
        if self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        pass


class _Tqdm(Progress):
    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="Wan VAE", unit="step", leave=False)
        super().__init__(None, total)

    def advance(self, n: int = 1) -> None:
        super().advance(n)
        if self.bar.total < self.total:
            self.bar.total = self.total
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def make_progress(callback, total: int) -> Progress:
    """``callback``: a function, ``False`` for silence, or ``None`` for a tqdm bar if tqdm is installed."""
    if callback is False:
        return Progress(None, total)
    if callback is None:
        try:
            return _Tqdm(total)
        except ImportError:
            return Progress(None, total)
    return Progress(callback, total)
