"""Ops that fuse the memory-bound steps around the convolutions into the norm kernel.

- :class:`NormConv`: RMS norm + SiLU written straight into the causal conv's input buffer, after
  the frames cached from the previous slice, so the conv reads it without a concatenation copy.
- :class:`FusedResBlock`: a residual block whose final ``h + shortcut`` is handed on unadded
  (:class:`PendingSum`) when the next op is a :class:`NormConv`, which adds it in the same pass
  as its norm (the sum is still written back: the next block's shortcut reads it).
- A conv's bias, likewise (``defer_bias``): PyTorch adds a convolution's bias in a separate pass over
  its output (measured on an H200: 12 % of a Wan 2.1 decode's GPU time); a conv followed by a norm
  hands its output on without it and the norm kernel adds it, rounded as that pass would round it.

All keep the engine's state format (the same keys and cached tensors as ``Conv``), so a tile's
state is the same whichever ops computed it, and the same results as the ops they replace.
"""
from __future__ import annotations

import torch

from ..ops import Conv, ExecContext, NormAct, Op, Seq, TileState
from ..rect import Rect, crop
from .channel_pad import padded_channels, padded_weights
from .memo import memo
from .norm_act import norm_act


class PendingSum:
    """``h + pre + s`` not computed yet, added in that order and rounded after each add (as ``h.add_(bias)``
    then ``.add_(s)`` would): ``pre`` a per-channel vector (a conv's bias), ``s`` a tensor; either may be
    None. Crops like a tensor (``x[..., ys, xs]``). ``keep``: whoever adds it writes the sum back into
    ``h`` (a block's input is read again by its shortcut); without it the sum is used once."""

    def __init__(self, h: torch.Tensor, s: torch.Tensor | None = None, pre: torch.Tensor | None = None,
                 keep: bool = True):
        self.h, self.s, self.pre, self.keep, self.summed = h, s, pre, keep, False

    @property
    def shape(self):
        return self.h.shape

    def __getitem__(self, index) -> "PendingSum":
        part = PendingSum(self.h[index], self.s[index] if self.s is not None else None, self.pre, self.keep)
        part.summed = self.summed
        return part

    def take(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(h, s, pre) to add the first time; (the sum, None, None) afterwards when it was kept."""
        if self.summed:
            if not self.keep:
                raise AssertionError("a pending sum used once was asked for again: its producer must keep it")
            return self.h, None, None
        self.summed = True
        return self.h, self.s, self.pre

    def materialize(self) -> torch.Tensor:
        h, s, pre = self.take()
        if pre is not None:
            h.add_(pre.reshape(1, -1, 1, 1, 1))
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


def causal_buffer(conv: Conv, shape, width: int, inr: Rect, st: TileState, ctx: ExecContext) -> torch.Tensor:
    """``conv``'s input buffer for ``shape`` (b, c, t, h, w) new frames: ``width`` channels (those past c
    zero, for channel_pad's padded weights), the conv's kt - 1 cached frames in front (zeros before the
    first slice). The caller writes the new frames after them, then calls :func:`keep_frames`."""
    b, c, t, h, w = shape
    lead = conv.kt - 1
    buf = ctx.empty((b, width, lead + t, h, w))
    if width > c:
        buf[:, c:].zero_()
    saved = st.get(conv.key) if lead else None
    if lead and saved is None:
        buf[:, :c, :lead].zero_()
    elif lead:
        buf[:, :c, :lead].copy_(crop(saved[0], saved[1], inr))
    return buf


def keep_frames(conv: Conv, buf: torch.Tensor, c: int, inr: Rect, st: TileState) -> None:
    """Stage the buffer's last kt - 1 frames (its first ``c`` channels) as the conv's cache, as ``Conv`` does."""
    lead = conv.kt - 1
    if lead:
        st.put(conv.key, (buf[:, :c, -lead:].clone(), inr))


class NormConv(Op):
    """``Seq([norm, conv])`` where the norm writes into the conv's causal input buffer. With ``defer_bias``
    the conv's bias is left to the next op (a :class:`PendingSum`, kept when ``keep_pending``)."""

    accepts_pending = True

    def __init__(self, norm: NormAct, conv: Conv):
        self.norm, self.conv = norm, conv
        self.key = conv.key
        self.defer_bias, self.keep_pending = False, True

    def children(self):
        return [self.norm, self.conv]

    def need(self, out: Rect, size) -> Rect:
        return self.conv.need(out, size)

    def halo(self) -> float:
        return self.conv.halo()

    def run(self, x, have: Rect, out: Rect, size, st: TileState, ctx: ExecContext):
        inr = self.need(out, size)
        add = pre = None
        keep = True
        if isinstance(x, PendingSum):
            # fused only when the whole pending region is this norm's input; else add it first
            keep = x.keep
            x, add, pre = x.take() if have == inr else (x.materialize(), None, None)
        x = crop(x, have, inr)
        g, bias = norm_params(self.norm, ctx)
        lead = self.conv.kt - 1
        c = x.shape[1]
        width = padded_channels(c, ctx.device)
        if lead == 0 and width == c:
            y = norm_act(x, g, bias, act=self.norm.act, add=add, pre=pre, store_sum=keep)
            return self._conv(y, inr, out, ctx, width)
        buf = causal_buffer(self.conv, x.shape, width, inr, st, ctx)
        norm_act(x, g, bias, act=self.norm.act, add=add, pre=pre, store_sum=keep, out=buf[:, :c, lead:])
        keep_frames(self.conv, buf, c, inr, st)
        return self._conv(buf, inr, out, ctx, width)

    def _conv(self, buf, inr: Rect, out: Rect, ctx: ExecContext, width: int):
        padded = padded_weights(ctx, self.conv, width) if width > self.conv.cin else None
        y, later = self.conv.convolve(buf, inr, out, ctx, bias=not self.defer_bias, weights=padded)
        return PendingSum(y, pre=later, keep=self.keep_pending) if later is not None else y


class ThinInputConv(Op):
    """A conv whose input is a few channels wide (the encoder's colour channels), run over a copy of its
    causal input zero-padded in channels where that is faster (channel_pad), else the conv itself. Its
    cached frames are the conv's own (same key, same tensors), so tiles and retries see the same state."""

    def __init__(self, conv: Conv):
        self.conv, self.key = conv, conv.key

    def children(self):
        return [self.conv]

    def need(self, out: Rect, size) -> Rect:
        return self.conv.need(out, size)

    def halo(self) -> float:
        return self.conv.halo()

    def run(self, x, have: Rect, out: Rect, size, st: TileState, ctx: ExecContext):
        width = padded_channels(x.shape[1], ctx.device)
        if width == x.shape[1]:
            return self.conv.run(x, have, out, size, st, ctx)
        inr = self.need(out, size)
        x = crop(x, have, inr)
        c = x.shape[1]
        buf = causal_buffer(self.conv, x.shape, width, inr, st, ctx)
        buf[:, :c, self.conv.kt - 1 :].copy_(x)
        keep_frames(self.conv, buf, c, inr, st)
        return self.conv.convolve(buf, inr, out, ctx, weights=padded_weights(ctx, self.conv, width))[0]


def accepts_pending(op: Op) -> bool:
    """Whether ``op.run`` takes a :class:`PendingSum` input."""
    return bool(getattr(op, "accepts_pending", False))


class FusedResBlock(Op):
    """``x + conv2(act(norm2(conv1(act(norm1(x))))))`` with :class:`NormConv` steps; with
    ``defer`` the final add is left to the next op (a :class:`NormConv` or another block). conv2's
    bias may come back unadded from ``main`` (its last NormConv defers it): it joins the sum."""

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
        pre = None
        if isinstance(h, PendingSum):
            h, pre = h.h, h.pre
        if self.defer:
            return PendingSum(h, s, pre)
        return PendingSum(h, s, pre).materialize()
