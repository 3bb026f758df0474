"""Ops that fuse the memory-bound steps around the convolutions into the norm kernel.

- :class:`NormConv`: RMS norm + SiLU written straight into the causal conv's input buffer, after
  the frames cached from the previous slice, so the conv reads it without a concatenation copy.
- :class:`FusedResBlock`: a residual block whose final ``h + shortcut`` is handed on unadded
  (:class:`PendingSum`) when the next op is a :class:`NormConv`, which adds it in the same pass
  as its norm (the sum is still written back: the next block's shortcut reads it).

Both keep the engine's state format (the same keys and cached tensors as ``Conv``), so a tile's
state is the same whichever ops computed it, and the same results as the ops they replace.
"""
from __future__ import annotations

import copy

import torch

from ..ops import Conv, ExecContext, NormAct, Op, Seq, TileState
from ..rect import Rect, crop
from .memo import memo
from .norm_act import norm_act


class PendingSum:
    """``h + s`` not computed yet; crops like a tensor (``x[..., ys, xs]``)."""

    def __init__(self, h: torch.Tensor, s: torch.Tensor):
        self.h, self.s, self.summed = h, s, False

    @property
    def shape(self):
        return self.h.shape

    def __getitem__(self, index) -> "PendingSum":
        part = PendingSum(self.h[index], self.s[index])
        part.summed = self.summed
        return part

    def take(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(h, s to add into h) the first time, (the sum, None) afterwards: the caller adds."""
        if self.summed:
            return self.h, None
        self.summed = True
        return self.h, self.s

    def materialize(self) -> torch.Tensor:
        h, s = self.take()
        return h.add_(s) if s is not None else h


def norm_params(norm: NormAct, ctx: ExecContext):
    """(gamma * sqrt(C), bias) as float32 vectors on the device, once per run. Read through the op's
    weak module reference: the graph (and this memo, which dies with the run) never keeps the VAE alive."""

    def make():
        module = norm.norm_ref()
        g = module.gamma.detach().reshape(-1).to(ctx.device, torch.float32) * norm.scale_
        bias = getattr(module, "bias", None)
        b = bias.detach().reshape(-1).to(ctx.device, torch.float32) if isinstance(bias, torch.Tensor) else None
        return g, b

    return memo(ctx, ("norm", norm.key), make)


class NormConv(Op):
    """``Seq([norm, conv])`` where the norm writes into the conv's causal input buffer."""

    accepts_pending = True

    def __init__(self, norm: NormAct, conv: Conv):
        self.norm, self.conv = norm, conv
        self.key = conv.key
        # the conv over the already-assembled buffer: same weights and key, no causal concatenation
        self.body = copy.copy(conv)
        self.body.kt = 1

    def children(self):
        return [self.norm, self.conv]

    def need(self, out: Rect, size) -> Rect:
        return self.conv.need(out, size)

    def halo(self) -> float:
        return self.conv.halo()

    def run(self, x, have: Rect, out: Rect, size, st: TileState, ctx: ExecContext) -> torch.Tensor:
        inr = self.need(out, size)
        add = None
        if isinstance(x, PendingSum):
            # fused only when the whole pending region is this norm's input; else add it first
            x, add = x.take() if have == inr else (x.materialize(), None)
        x = crop(x, have, inr)
        g, bias = norm_params(self.norm, ctx)
        lead = self.conv.kt - 1
        if lead == 0:
            y = norm_act(x, g, bias, act=self.norm.act, add=add)
            return self.body.run(y, inr, out, size, st, ctx)
        b, c, t, h, w = x.shape
        buf = ctx.empty((b, c, lead + t, h, w))
        saved = st.get(self.conv.key)
        if saved is None:
            buf[:, :, :lead].zero_()
        else:
            buf[:, :, :lead].copy_(crop(saved[0], saved[1], inr))
        norm_act(x, g, bias, act=self.norm.act, add=add, out=buf[:, :, lead:])
        st.put(self.conv.key, (buf[:, :, -lead:].clone(), inr))
        return self.body.run(buf, inr, out, size, st, ctx)


def accepts_pending(op: Op) -> bool:
    """Whether ``op.run`` takes a :class:`PendingSum` input."""
    return bool(getattr(op, "accepts_pending", False))


class FusedResBlock(Op):
    """``x + conv2(act(norm2(conv1(act(norm1(x))))))`` with :class:`NormConv` steps; with
    ``defer`` the final add is left to the next op (a :class:`NormConv` or another block)."""

    def __init__(self, main: Seq, shortcut: Op | None, defer: bool):
        self.main, self.shortcut, self.defer = main, shortcut, defer
        self.accepts_pending = accepts_pending(main.ops[0])

    def children(self):
        return [self.main] + ([self.shortcut] if self.shortcut is not None else [])

    def need(self, out, size):
        return self.main.need(out, size)

    def halo(self):
        return self.main.halo()

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        h = self.main.run(x, inr, out, size, st, ctx)  # its first NormConv adds a pending input in place
        base = x.materialize() if isinstance(x, PendingSum) else x
        s = crop(base, inr, out)
        if self.shortcut is not None:
            s = self.shortcut.run(s, out, out, size, st, ctx)
        return PendingSum(h, s) if self.defer else h.add_(s)
