"""The Wan VAE's layers as region-aware ops: causal convolutions, RMS norm + SiLU, residual blocks and
whole-frame attention, reading their weights from the real module tree at run time.

Zero padding is applied only at true image borders; inside the image a tile reads real neighbour pixels
(its halo), so a tiled result equals the untiled one. Causal temporal state (the conv caches of the
reference implementation) lives in the tile's :class:`~.context.TileState`, stored with the rectangle it
covers, so a tile can be split later and its halves crop the parent's state.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from .op_base import ModuleRef, Op, Seq, Size
from .rect import Rect, crop


class Conv(Op):
    """A (causal) convolution: Conv3d with kernel (kt, k, k) or a Conv2d applied per frame.

    ``kt > 1`` means causal in time: the previous ``kt - 1`` input frames come from the
    tile's state (zeros before the first frame), exactly like the reference's cache.
    """

    def __init__(self, module: torch.nn.Module):
        w = module.weight
        self.module_ref = ModuleRef(module)
        self.cin, self.cout = w.shape[1], w.shape[0]
        self.kt = w.shape[2] if w.dim() == 5 else 1
        self.k = w.shape[-1]
        if w.shape[-1] != w.shape[-2] or self.k % 2 == 0:
            raise ValueError(f"unsupported conv kernel {tuple(w.shape)}")
        stride = getattr(module, "stride", (1,))
        if any(s != 1 for s in stride):
            raise ValueError("strided conv needs StridedConv")
        self.r = self.k // 2

    @property
    def module(self) -> torch.nn.Module:
        return self.module_ref()

    def account(self, tally):
        tally.cached_frames(self.cin, self.kt - 1)
        tally.activation(max(self.cin, self.cout))

    def halo(self) -> float:
        return float(self.r)

    def need(self, out: Rect, size: Size) -> Rect:
        return out.grow(self.r, size)

    def run(self, x, have, out, size, st, ctx):
        """Causal frames by concatenation in time (a contiguous copy in channels-last), zero
        borders by the convolution's own padding: where a tile needs padding on one side only,
        both sides are padded and the extra output row or column is cropped away."""
        inr = self.need(out, size)
        x = crop(x, have, inr)
        if self.kt > 1:
            lead = self.kt - 1
            saved = st.get(self.key)
            if saved is None:
                b, c, _, h, w = x.shape
                head = ctx.empty((b, c, lead, h, w)).zero_()
            else:
                head = crop(saved[0], saved[1], inr)
            x = torch.cat([head, x], dim=2)
            if ctx.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            st.put(self.key, (x[:, :, -lead:].clone(), inr))
        y, _ = self.convolve(x, inr, out, ctx)
        return y

    def convolve(self, x, inr: Rect, out: Rect, ctx, bias: bool = True, weights: tuple | None = None):
        """(the conv of ``x``, which covers ``inr`` with its causal frames in front, cropped to ``out``; the
        bias left to add, or None). With ``bias=False`` the conv's bias is handed back instead of added, so
        the next kernel adds it in a pass it makes anyway (kernels.fused); a copy when it came from a weight
        source's loan (ComfyUI's cast buffers may be reused once the loan ends). ``weights``: a (weight,
        bias) the caller derived and keeps (kernels.channel_pad), used instead of the module's."""
        r = self.r
        py = max(r - (out.y0 - inr.y0), r - (inr.y1 - out.y1))
        px = max(r - (out.x0 - inr.x0), r - (inr.x1 - out.x1))
        with (nullcontext(weights) if weights is not None else ctx.weights(self.key, self.module_ref(), as_3d=True)) as (w, b):
            y = F.conv3d(x, w, b if bias else None, padding=(0, py, px))
            loaned = weights is None and ctx.source is not None
            later = None if bias or b is None else (b.clone() if loaned else b)
        # the padded output covers inr grown by the padding, less the kernel reach, clipped below by nothing
        got = Rect(inr.y0 - py + r, inr.y1 + py - r, inr.x0 - px + r, inr.x1 + px - r)
        return crop(y, got, out), later


class NormAct(Op):
    """RMS norm over channels (Wan's ``F.normalize * sqrt(C) * gamma + bias``), then SiLU.

    ``norm`` is the module holding ``gamma`` (and ``bias``, a tensor or a plain number when it has none)."""

    def __init__(self, norm: torch.nn.Module, act: bool = True):
        self.norm_ref, self.act = ModuleRef(norm), act
        self.scale_ = norm.gamma.shape[0] ** 0.5

    def need(self, out, size):
        return out

    def run(self, x, have, out, size, st, ctx):
        x = crop(x, have, out)
        norm = self.norm_ref()
        g = ctx.param((self.key, "g"), norm.gamma.reshape(1, -1, 1, 1, 1) * self.scale_)
        bias = None
        if isinstance(getattr(norm, "bias", None), torch.Tensor):
            bias = ctx.param((self.key, "b"), norm.bias.reshape(1, -1, 1, 1, 1))
        if ctx.norm_act is not None and bias is None and self.act:
            return ctx.norm_act(x, g)
        y = F.normalize(x.float(), dim=1).to(x.dtype) * g if x.dtype != torch.float32 else F.normalize(x, dim=1) * g
        if bias is not None:
            y = y + bias
        return F.silu(y, inplace=True) if self.act else y


def rms_norm_silu(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Reference math of :class:`NormAct`, kept as one function so it can be compiled/fused."""
    xf = x.float()
    y = xf * torch.rsqrt(torch.clamp((xf * xf).sum(dim=1, keepdim=True), min=1e-24)) * g.float()
    return F.silu(y).to(x.dtype)


class ResBlock(Op):
    """x + conv2(act(norm2(conv1(act(norm1(x)))))) with a 1x1 shortcut when widths differ."""

    def __init__(self, norm1: NormAct, conv1: Conv, norm2: NormAct, conv2: Conv, shortcut: Conv | None):
        self.main = Seq([norm1, conv1, norm2, conv2])
        self.shortcut = shortcut

    def children(self):
        return [self.main] + ([self.shortcut] if self.shortcut is not None else [])

    def need(self, out, size):
        return self.main.need(out, size)

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        h = self.main.run(x, inr, out, size, st, ctx)
        s = crop(x, inr, out)
        if self.shortcut is not None:
            s = self.shortcut.run(s, out, out, size, st, ctx)
        return h.add_(s)

    def halo(self):
        return self.main.halo()


class AddShortcut(Op):
    """main(x) + shortcut(x): Wan 2.2's residual up/down blocks."""

    def __init__(self, main: Op, shortcut: Op):
        self.main, self.shortcut = main, shortcut

    def children(self):
        return [self.main, self.shortcut]

    def out_size(self, size):
        return self.main.out_size(size)

    def need(self, out, size):
        return self.main.need(out, size).union(self.shortcut.need(out, size))

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        y = self.main.run(x, inr, out, size, st, ctx)
        add_into = getattr(self.shortcut, "add_into", None)  # DupUp adds itself without being built
        if add_into is not None:
            return add_into(y, x, inr, out, size, st, ctx)
        return y.add_(self.shortcut.run(x, inr, out, size, st, ctx))

    def halo(self):
        return max(self.main.halo(), self.shortcut.halo())

    def space_scale(self):
        return self.main.space_scale()

    def time_scale(self):
        return self.main.time_scale()

    def account(self, tally):
        self.main.account(tally)  # the shortcut is parameter-free and shares the main path's sizes


class FrameAttention(Op):
    """Wan's single-head attention over all pixels of each frame: global, so full frame only."""

    def __init__(self, norm: NormAct, to_qkv: torch.nn.Module, proj: torch.nn.Module):
        self.norm, self.to_qkv, self.proj = norm, ModuleRef(to_qkv), ModuleRef(proj)

    def children(self):
        return [self.norm]

    def need(self, out, size):
        return Rect.full(size)

    def run(self, x, have, out, size, st, ctx):
        if out != Rect.full(size) or have != out:
            raise AssertionError("frame attention runs on whole frames only")
        return self.run_rows(x, out, size, st, ctx)

    def run_rows(self, x, rows: Rect, size, st, ctx):
        """The output rows ``rows`` (full width) from whole frames ``x``: every pixel of a frame is a key,
        only the pixels of ``rows`` are queries. Splitting the queries over devices splits the work and
        leaves each output pixel's softmax over the same keys (decode_stem_split)."""
        if x.shape[-2:] != size or rows.x0 != 0 or rows.x1 != size[1]:
            raise AssertionError("frame attention reads whole frames and writes full-width rows")
        b, c, t, h, w = x.shape
        full = Rect.full(size)
        y = self.norm.run(x, full, full, size, st, ctx)
        with ctx.weights((self.key, "qkv"), self.to_qkv(), as_3d=True) as (wq, bq):
            qkv = F.conv3d(y, wq, bq)
        del y
        qkv = qkv.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, 3 * c)
        q, k, v = qkv.chunk(3, dim=-1)
        rh = rows.y1 - rows.y0
        q = q.reshape(b * t, 1, h, w, c)[:, :, rows.y0 : rows.y1].reshape(b * t, 1, rh * w, c)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.reshape(b, t, rh, w, c).permute(0, 4, 1, 2, 3)  # channels-last already: no copy for that layout
        # the projection's output keeps its input's layout: contiguous here would hand the next norm kernel
        # strides that depend on the frame width (a new Triton binary per width class, compiled mid-call)
        a = a.contiguous(memory_format=torch.channels_last_3d if ctx.channels_last else torch.contiguous_format)
        with ctx.weights((self.key, "proj"), self.proj(), as_3d=True) as (wp, bp):
            return F.conv3d(a, wp, bp).add_(x[:, :, :, rows.y0 : rows.y1])


class TakeChannels(Op):
    """The first ``n`` channels (the latent mean of the encoder's mean/log-variance output)."""

    def __init__(self, n: int):
        self.n = n

    def need(self, out, size):
        return out

    def run(self, x, have, out, size, st, ctx):
        return crop(x, have, out)[:, : self.n]
