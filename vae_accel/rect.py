"""Rectangles in the pixel grid of one resolution level, and cropping by them.

Every tensor the tiled engine handles covers a known rectangle of its level's image; the
rectangle travels with it so each operation can take exactly the pixels it needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rect:
    y0: int
    y1: int
    x0: int
    x1: int

    @staticmethod
    def full(size: tuple[int, int]) -> "Rect":
        return Rect(0, size[0], 0, size[1])

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def area(self) -> int:
        return self.height * self.width

    def grow(self, r: int, size: tuple[int, int]) -> "Rect":
        """Grow by ``r`` on every side, clipped to an image of ``size`` (the halo of a conv)."""
        return Rect(max(self.y0 - r, 0), min(self.y1 + r, size[0]), max(self.x0 - r, 0), min(self.x1 + r, size[1]))

    def scale(self, f: int) -> "Rect":
        return Rect(self.y0 * f, self.y1 * f, self.x0 * f, self.x1 * f)

    def cover_div(self, f: int) -> "Rect":
        """The smallest rectangle at 1/f resolution whose f-fold upsampling covers this one."""
        return Rect(self.y0 // f, -(-self.y1 // f), self.x0 // f, -(-self.x1 // f))

    def contains(self, other: "Rect") -> bool:
        return self.y0 <= other.y0 and other.y1 <= self.y1 and self.x0 <= other.x0 and other.x1 <= self.x1

    def union(self, other: "Rect") -> "Rect":
        return Rect(min(self.y0, other.y0), max(self.y1, other.y1), min(self.x0, other.x0), max(self.x1, other.x1))


def crop(x: torch.Tensor, have: Rect, want: Rect) -> torch.Tensor:
    """View of ``x`` (covering ``have`` in its last two dims) restricted to ``want``."""
    if have == want:
        return x
    if not have.contains(want):
        raise AssertionError(f"tile bookkeeping: {want} is not inside {have}")
    return x[..., want.y0 - have.y0 : want.y1 - have.y0, want.x0 - have.x0 : want.x1 - have.x0]
