"""The Wan VAE's resampling as region-aware ops: up (decoder) and down (encoder) in space and in time.

The parameter-free space regriddings (nearest 2x, Wan 2.2's channel<->pixel shortcuts and patches)
share :class:`~.op_base.Rescale`; the learned ones (strided conv, causal time convs) read their
weights from the module tree at run time.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F

from .op_base import ModuleRef, Op, Rescale
from .op_layers import Conv
from .rect import Rect, crop


def channels_to_blocks(x: torch.Tensor, ft: int, fs: int, columns_first: bool = False) -> torch.Tensor:
    """(b, c*ft*fs*fs, t, h, w) -> (b, c, t*ft, h*fs, w*fs): each group of channels, ordered (c, frame,
    row, column) or with ``columns_first`` (c, frame, column, row), unfolds into an ft x fs x fs block of
    frames and pixels. The inverse of :func:`blocks_to_channels`."""
    b, cc, t, h, w = x.shape
    x = x.view(b, cc // (ft * fs * fs), ft, fs, fs, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 4, 7, 3) if columns_first else x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, cc // (ft * fs * fs), t * ft, h * fs, w * fs)


def blocks_to_channels(x: torch.Tensor, ft: int, fs: int, columns_first: bool = False) -> torch.Tensor:
    """(b, c, t*ft, h*fs, w*fs) -> (b, c*ft*fs*fs, t, h, w), the inverse of :func:`channels_to_blocks`."""
    b, c, tt, hh, ww = x.shape
    t, h, w = tt // ft, hh // fs, ww // fs
    x = x.reshape(b, c, t, ft, h, fs, w, fs)
    x = x.permute(0, 1, 3, 7, 5, 2, 4, 6) if columns_first else x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * ft * fs * fs, t, h, w)


class Upsample2x(Rescale):
    """Nearest 2x upsampling (Wan's ``nearest-exact`` at scale 2 maps output i to input i // 2)."""

    def __init__(self):
        super().__init__(2, up=True)

    def regrid(self, x, st, ctx):
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")


class DupUp(Rescale):
    """Wan 2.2's parameter-free shortcut: repeat channels, then unfold them into 2x2 pixels
    (and 2 frames when upsampling in time; the first chunk keeps only its last frame)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        super().__init__(factor_s, up=True)
        self.in_ch, self.out_ch, self.ft, self.fs = in_ch, out_ch, factor_t, factor_s
        self.repeats = out_ch * factor_t * factor_s * factor_s // in_ch

    def regrid(self, x, st, ctx):
        x = channels_to_blocks(x.repeat_interleave(self.repeats, dim=1), self.ft, self.fs)
        if st.get(self.key) is None:
            st.put(self.key, True)
            x = x[:, :, self.ft - 1 :]
        return x

    def add_into(self, y: torch.Tensor, x, have: Rect, out: Rect, size, st, ctx) -> torch.Tensor:
        """``y += self.run(x, have, out, ...)`` without building the shortcut: every output pixel is a copy
        of one input channel, so over the part of ``out`` that whole ``fs`` x ``fs`` blocks tile, ``y`` is
        viewed in blocks and the input added as a broadcast view. Why: at Wan 2.2's last upsampling the
        built shortcut is 0.9 GB per step at 704x1280, made by two copies. The strips of ``out`` outside
        whole blocks (a pixel wide), the first chunk (which drops frames) and channel groupings a view
        cannot express take the plain path. Same numbers either way: the values added are the same."""
        inner = Rect(-(-out.y0 // self.fs) * self.fs, out.y1 // self.fs * self.fs,
                     -(-out.x0 // self.fs) * self.fs, out.x1 // self.fs * self.fs)
        source = None
        if st.get(self.key) is not None and inner.height > 0 and inner.width > 0:
            source = self.block_view(crop(x, have, inner.cover_div(self.fs)))
        if source is None:
            return y.add_(self.run(x, have, out, size, st, ctx))
        b, c, t = source.shape[:3]
        part = crop(y, out, inner)
        part.unflatten(2, (t, self.ft)).unflatten(4, (inner.height // self.fs, self.fs)).unflatten(
            6, (inner.width // self.fs, self.fs)).add_(source)
        strips = [Rect(out.y0, inner.y0, out.x0, out.x1), Rect(inner.y1, out.y1, out.x0, out.x1),
                  Rect(inner.y0, inner.y1, out.x0, inner.x0), Rect(inner.y0, inner.y1, inner.x1, out.x1)]
        for strip in strips:
            if strip.height > 0 and strip.width > 0:
                crop(y, out, strip).add_(self.run(x, have, strip, size, st, ctx))
        return y

    def block_view(self, x: torch.Tensor) -> torch.Tensor | None:
        """The shortcut of ``x`` (b, in_ch, t, h, w) as a broadcast view (b, out_ch, t, ft, h, fs, w, fs), or
        None. Output channel block (c, frame, row, column) reads input channel (c * P + j) // repeats, P its
        ft * fs * fs blocks and j its index among them: a view when ``repeats`` is the product of the last
        k block dimensions (the copies run along those), the rest selecting the input channel."""
        dims = (self.ft, self.fs, self.fs)
        lead = next((k for k in range(4) if math.prod(dims[k:]) == self.repeats), None)
        if lead is None:
            return None
        b, _, t, h, w = x.shape
        v = x.view(b, self.out_ch, *dims[:lead], t, h, w)
        order = [0, 1, lead + 2] + [2] * (lead > 0) + [lead + 3] + [3] * (lead > 1) + [lead + 4] + [4] * (lead > 2)
        v = v.permute(order)
        for position, present in ((3, lead > 0), (5, lead > 1), (7, lead > 2)):
            if not present:
                v = v.unsqueeze(position)
        return v


class AvgDown(Rescale):
    """Wan 2.2's parameter-free shortcut: average groups of channels x (2 frames) x 2x2 pixels;
    a chunk of odd length is padded with a zero frame in front (the first chunk)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        super().__init__(factor_s, up=False)
        self.in_ch, self.out_ch, self.ft, self.fs = in_ch, out_ch, factor_t, factor_s
        self.group = in_ch * factor_t * factor_s * factor_s // out_ch

    def regrid(self, x, st, ctx):
        pad_t = (self.ft - x.shape[2] % self.ft) % self.ft
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        x = blocks_to_channels(x, self.ft, self.fs)
        b, _, t, h, w = x.shape
        return x.view(b, self.out_ch, self.group, t, h, w).mean(dim=2)


class PatchShuffle(Rescale):
    """Wan 2.2's 2x2 patches: channels (c, r, q) <-> q rows and r columns of pixels. ``up`` (a class
    attribute): channels to pixels, the decoder's last step; else pixels to channels, the encoder's first."""

    up = True

    def __init__(self, patch: int):
        super().__init__(patch, up=type(self).up)

    def regrid(self, x, st, ctx):
        shuffle = channels_to_blocks if self.up else blocks_to_channels
        return shuffle(x, 1, self.factor, columns_first=True)


class Unpatchify(PatchShuffle):
    """Wan 2.2's pixel shuffle at the very end: channels (c, r, q) -> q rows, r columns."""

    up = True


class Patchify(PatchShuffle):
    """Wan 2.2's pixel unshuffle at the input: 2x2 pixels -> channels (c, r, q)."""

    up = False


class TimeUpsample(Op):
    """Wan's ``upsample3d`` time conv: the first chunk passes through; later frames go through
    a causal (3,1,1) conv to 2C channels, interleaved into 2t frames."""

    def __init__(self, conv: Conv):
        self.conv = conv

    def children(self):
        return [self.conv]

    def time_scale(self):
        return Fraction(2)

    def account(self, tally):
        self.conv.account(tally)
        tally.frames *= 2

    def need(self, out, size):
        return out

    def run(self, x, have, out, size, st, ctx):
        x = crop(x, have, out)
        if st.get(self.key) is None:
            st.put(self.key, True)
            return x
        y = self.conv.run(x, out, out, size, st, ctx)
        b, c2, t, h, w = y.shape
        c = c2 // 2
        z = ctx.empty((b, c, 2 * t, h, w))
        z.view(b, c, t, 2, h, w).copy_(y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5))
        return z


class StridedDown(Op):
    """Wan's spatial downsample: zero pad one row/column at the bottom/right, 3x3 conv, stride 2."""

    def __init__(self, conv2d: torch.nn.Module):
        self.module_ref = ModuleRef(conv2d)
        self.cin = conv2d.weight.shape[1]
        if tuple(conv2d.stride) != (2, 2) or conv2d.weight.shape[-1] != 3:
            raise ValueError("expected a 3x3 stride-2 Conv2d")

    def out_size(self, size):
        return (size[0] + 1 - 3) // 2 + 1, (size[1] + 1 - 3) // 2 + 1

    def need(self, out, size):
        return Rect(2 * out.y0, min(2 * out.y1 + 1, size[0]), 2 * out.x0, min(2 * out.x1 + 1, size[1]))

    def halo(self):
        return 1.0

    def space_scale(self):
        return Fraction(1, 2)

    def account(self, tally):
        tally.activation(self.cin)
        tally.size = self.out_size(tally.size)

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        pb, pr = 2 * out.y1 + 1 - inr.y1, 2 * out.x1 + 1 - inr.x1
        if pb or pr:
            x = F.pad(x, (0, pr, 0, pb))
        with ctx.weights(self.key, self.module_ref(), as_3d=True) as (w, b):
            return F.conv3d(x, w, b, stride=(1, 2, 2))


class TimeDown(Op):
    """Wan's ``downsample3d`` time conv: the first chunk passes through; later chunks are
    convolved (3 frames, stride 2) together with the last frame seen before."""

    def __init__(self, conv: torch.nn.Module):
        self.module_ref = ModuleRef(conv)
        self.cin = conv.weight.shape[1]

    def time_scale(self):
        return Fraction(1, 2)

    def account(self, tally):
        tally.activation(self.cin)
        tally.cached_frames(self.cin, 1)
        tally.frames /= 2

    def need(self, out, size):
        return out

    def run(self, x, have, out, size, st, ctx):
        x = crop(x, have, out)
        saved = st.get(self.key)
        st.put(self.key, (x[:, :, -1:].clone(), out))
        if saved is None:
            return x
        x = torch.cat([crop(saved[0], saved[1], out), x], dim=2)
        with ctx.weights(self.key, self.module_ref(), as_3d=True) as (w, b):
            return F.conv3d(x, w, b, stride=(2, 1, 1))
