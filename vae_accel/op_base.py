"""The op algebra: what every region-aware op of the Wan VAE is, and the one walk over a graph of them.

Each op maps an output rectangle to the input rectangle it needs (``need``) and computes exactly that
output from a tensor covering at least that input (``run``). Each also says what it is made of
(``children``), how it rescales space and time (``space_scale``, ``time_scale``) and what it costs the
planner's memory model for one tile step (``account``), so the planner, the graph builders and the key
numbering all read the same facts and a new op is one class.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import torch

from .context import ExecContext, TileState
from .rect import Rect, crop

Size = tuple[int, int]


class ModuleRef:
    """A weak reference to one module of the VAE. Graphs are cached per VAE and must never keep
    it alive (a strong reference from the cache would leak every VAE the engine touches); the
    weights are read through it at run time, so they are always the module's current ones."""

    __slots__ = ("_ref",)

    def __init__(self, module: torch.nn.Module):
        self._ref = weakref.ref(module)

    def __call__(self) -> torch.nn.Module:
        module = self._ref()
        if module is None:
            raise ReferenceError("the VAE this op graph was built from no longer exists")
        return module


@dataclass
class CostTally:
    """The planner's memory model of one tile step, filled in by the ops in execution order: the size
    and frame count reaching the next op, the causal caches kept (elements) and the widest activation."""

    size: Size
    frames: float
    cache: float = 0.0
    peak: float = 0.0

    def activation(self, channels: int) -> None:
        self.peak = max(self.peak, channels * self.frames * self.size[0] * self.size[1])

    def cached_frames(self, channels: int, frames: int) -> None:
        self.cache += frames * channels * self.size[0] * self.size[1]


class Op:
    key: int = -1

    def children(self) -> Sequence["Op"]:
        """The ops this one is built from, in the order they run."""
        return ()

    def out_size(self, size: Size) -> Size:
        return size

    def need(self, out: Rect, size: Size) -> Rect:
        raise NotImplementedError

    def run(self, x: torch.Tensor, have: Rect, out: Rect, size: Size, st: TileState, ctx: ExecContext) -> torch.Tensor:
        raise NotImplementedError

    def halo(self) -> float:
        """Spatial reach in input pixels (for reporting and the planner)."""
        return 0.0

    def space_scale(self) -> Fraction:
        """Output pixels per input pixel along each axis (2 upsampling, 1/2 downsampling)."""
        return Fraction(1)

    def time_scale(self) -> Fraction:
        """Output frames per input frame after the first chunk (2 upsampling in time, 1/2 down)."""
        return Fraction(1)

    def account(self, tally: CostTally) -> None:
        """This op's part of one tile step in the planner's memory model. By default an op made of
        others is theirs; a leaf keeps no cache, adds no activation of its own and sets the size."""
        kids = self.children()
        if kids:
            for child in kids:
                child.account(tally)
        else:
            tally.size = self.out_size(tally.size)


def walk(op: Op) -> Iterator[Op]:
    """``op`` and everything it is made of, depth first."""
    yield op
    for child in op.children():
        yield from walk(child)


def number_ops(root: Op) -> int:
    """Give every op a unique key (its index in a depth-first walk)."""
    n = 0
    for n, op in enumerate(walk(root), 1):
        op.key = n - 1
    return n


class Seq(Op):
    """Ops applied in order; rectangles are planned backwards from the wanted output."""

    def __init__(self, ops: Sequence[Op]):
        self.ops = list(ops)

    def children(self):
        return self.ops

    def out_size(self, size):
        for op in self.ops:
            size = op.out_size(size)
        return size

    def _plan(self, out: Rect, size: Size):
        sizes = [size]
        for op in self.ops:
            sizes.append(op.out_size(sizes[-1]))
        outs = [None] * len(self.ops)
        want = out
        for i in range(len(self.ops) - 1, -1, -1):
            outs[i] = want
            want = self.ops[i].need(want, sizes[i])
        return sizes, outs, want

    def need(self, out, size):
        return self._plan(out, size)[2]

    def run(self, x, have, out, size, st, ctx):
        sizes, outs, _ = self._plan(out, size)
        for op, s, o in zip(self.ops, sizes, outs):
            x = op.run(x, have, o, s, st, ctx)
            have = o
        return x

    def halo(self):
        total, f = 0.0, 1.0
        for op in self.ops:
            total += op.halo() / f
            f *= float(op.space_scale())
        return total

    def space_scale(self):
        f = Fraction(1)
        for op in self.ops:
            f *= op.space_scale()
        return f

    def time_scale(self):
        f = Fraction(1)
        for op in self.ops:
            f *= op.time_scale()
        return f


class Rescale(Op):
    """The skeleton every whole-factor regridding shares: up by ``factor`` (each input pixel becomes
    factor x factor) or down (factor x factor pixels become one). Subclasses move the channels and
    frames in :meth:`regrid`, given exactly the input the wanted output needs."""

    def __init__(self, factor: int, up: bool):
        self.factor, self.up = factor, up

    def out_size(self, size):
        f = self.factor
        return (size[0] * f, size[1] * f) if self.up else (size[0] // f, size[1] // f)

    def need(self, out, size):
        return out.cover_div(self.factor) if self.up else out.scale(self.factor)

    def space_scale(self):
        return Fraction(self.factor) if self.up else Fraction(1, self.factor)

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        y = self.regrid(crop(x, have, inr), st, ctx)
        return crop(y, inr.scale(self.factor), out) if self.up else y

    def regrid(self, x: torch.Tensor, st: TileState, ctx: ExecContext) -> torch.Tensor:
        raise NotImplementedError
