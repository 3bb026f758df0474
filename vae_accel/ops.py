"""Region-aware operations of the Wan VAE, reading weights from the real module tree.

Each op maps an output rectangle to the input rectangle it needs (``need``) and computes
exactly that output from a tensor covering at least that input (``run``). Zero padding is
applied only at true image borders; inside the image a tile reads real neighbour pixels
(its halo), so a tiled result equals the untiled one. Causal temporal state (the conv
caches of the reference implementation) lives in a per-tile :class:`TileState`, stored with
the rectangle it covers, so a tile can be split later and its children crop the parent's state.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .rect import Rect, crop

Size = tuple[int, int]


class TileState:
    """Causal caches of one tile. Writes are staged until :meth:`commit`, so a step that
    fails half way (out of memory) leaves the committed state intact for the retry."""

    def __init__(self, committed: dict | None = None):
        self.committed: dict = committed if committed is not None else {}
        self.staged: dict = {}

    def get(self, key):
        if key in self.staged:
            return self.staged[key]
        return self.committed.get(key)

    def put(self, key, value) -> None:
        self.staged[key] = value

    def commit(self) -> None:
        self.committed.update(self.staged)
        self.staged = {}

    def rollback(self) -> None:
        self.staged = {}

    def child(self) -> "TileState":
        """State for a sub-tile: shares the committed tensors (they are cropped on read)."""
        return TileState(dict(self.committed))


@dataclass
class ExecContext:
    """How this run computes: device, dtype, memory layout and the fused norm+SiLU."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False
    norm_act: Callable | None = None
    _weights: dict = field(default_factory=dict)

    def weight(self, key, module: torch.nn.Module, as_3d: bool):
        hit = self._weights.get(key)
        if hit is None:
            w = module.weight.detach().to(self.device, self.dtype)
            if as_3d and w.dim() == 4:
                w = w.unsqueeze(2)
            if self.channels_last:
                w = w.contiguous(memory_format=torch.channels_last_3d)
            b = module.bias.detach().to(self.device, self.dtype) if module.bias is not None else None
            hit = self._weights[key] = (w, b)
        return hit

    def param(self, key, tensor: torch.Tensor) -> torch.Tensor:
        hit = self._weights.get(key)
        if hit is None:
            hit = self._weights[key] = tensor.detach().to(self.device, self.dtype)
        return hit

    def empty(self, shape) -> torch.Tensor:
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        return torch.empty(shape, device=self.device, dtype=self.dtype, memory_format=fmt)


class Op:
    key: int = -1

    def out_size(self, size: Size) -> Size:
        return size

    def need(self, out: Rect, size: Size) -> Rect:
        raise NotImplementedError

    def run(self, x: torch.Tensor, have: Rect, out: Rect, size: Size, st: TileState, ctx: ExecContext) -> torch.Tensor:
        raise NotImplementedError

    def halo(self) -> float:
        """Spatial reach in input pixels (for reporting and the planner)."""
        return 0.0

    def scale(self) -> int:
        return 1


class Conv(Op):
    """A (causal) convolution: Conv3d with kernel (kt, k, k) or a Conv2d applied per frame.

    ``kt > 1`` means causal in time: the previous ``kt - 1`` input frames come from the
    tile's state (zeros before the first frame), exactly like the reference's cache.
    """

    def __init__(self, module: torch.nn.Module):
        w = module.weight
        self.module = module
        self.kt = w.shape[2] if w.dim() == 5 else 1
        self.k = w.shape[-1]
        if w.shape[-1] != w.shape[-2] or self.k % 2 == 0:
            raise ValueError(f"unsupported conv kernel {tuple(w.shape)}")
        stride = getattr(module, "stride", (1,))
        if any(s != 1 for s in stride):
            raise ValueError("strided conv needs StridedConv")
        self.r = self.k // 2

    def halo(self) -> float:
        return float(self.r)

    def need(self, out: Rect, size: Size) -> Rect:
        return out.grow(self.r, size)

    def _assemble(self, x: torch.Tensor, inr: Rect, out: Rect, cache, ctx: ExecContext):
        """One buffer holding [cache frames | x] with zero borders where the image ends."""
        r = self.r
        pt, pb = r - (out.y0 - inr.y0), r - (inr.y1 - out.y1)
        pl, pr = r - (out.x0 - inr.x0), r - (inr.x1 - out.x1)
        lead = self.kt - 1
        b, c, t, h, w = x.shape
        if lead == 0 and not (pt or pb or pl or pr):
            return x, None
        buf = ctx.empty((b, c, lead + t, h + pt + pb, w + pl + pr))
        if pt:
            buf[:, :, :, :pt].zero_()
        if pb:
            buf[:, :, :, h + pt :].zero_()
        if pl:
            buf[:, :, :, pt : pt + h, :pl].zero_()
        if pr:
            buf[:, :, :, pt : pt + h, w + pl :].zero_()
        inner = buf[:, :, :, pt : pt + h, pl : pl + w]
        if lead:
            if cache is None:
                inner[:, :, :lead].zero_()
            else:
                inner[:, :, :lead].copy_(cache)
        inner[:, :, lead:].copy_(x)
        new_cache = inner[:, :, -lead:].clone() if lead else None
        return buf, new_cache

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        cache = None
        if self.kt > 1:
            saved = st.get(self.key)
            if saved is not None:
                cache = crop(saved[0], saved[1], inr)
        buf, new_cache = self._assemble(x, inr, out, cache, ctx)
        if self.kt > 1:
            st.put(self.key, (new_cache, inr))
        w, b = ctx.weight(self.key, self.module, as_3d=True)
        return F.conv3d(buf, w, b)


class NormAct(Op):
    """RMS norm over channels (Wan's ``F.normalize * sqrt(C) * gamma + bias``), then SiLU."""

    def __init__(self, gamma: torch.Tensor, bias, act: bool = True):
        self.gamma, self.bias, self.act = gamma, bias, act
        self.scale_ = gamma.shape[0] ** 0.5

    def need(self, out, size):
        return out

    def run(self, x, have, out, size, st, ctx):
        x = crop(x, have, out)
        g = ctx.param((self.key, "g"), self.gamma.reshape(1, -1, 1, 1, 1) * self.scale_)
        bias = None
        if isinstance(self.bias, torch.Tensor):
            bias = ctx.param((self.key, "b"), self.bias.reshape(1, -1, 1, 1, 1))
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


class Seq(Op):
    """Ops applied in order; rectangles are planned backwards from the wanted output."""

    def __init__(self, ops: Sequence[Op]):
        self.ops = list(ops)

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
        total, f = 0.0, 1
        for op in self.ops:
            total += op.halo() / f
            f *= op.scale()
        return total

    def scale(self):
        f = 1
        for op in self.ops:
            f *= op.scale()
        return f


class ResBlock(Op):
    """x + conv2(act(norm2(conv1(act(norm1(x)))))) with a 1x1 shortcut when widths differ."""

    def __init__(self, norm1: NormAct, conv1: Conv, norm2: NormAct, conv2: Conv, shortcut: Conv | None):
        self.main = Seq([norm1, conv1, norm2, conv2])
        self.shortcut = shortcut

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


class Upsample2x(Op):
    """Nearest 2x upsampling (Wan's ``nearest-exact`` at scale 2 maps output i to input i // 2)."""

    def out_size(self, size):
        return size[0] * 2, size[1] * 2

    def need(self, out, size):
        return out.cover_div(2)

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        b, c, t, h, w = x.shape
        y = ctx.empty((b, c, t, 2 * h, 2 * w))
        y.view(b, c, t, h, 2, w, 2).copy_(x[:, :, :, :, None, :, None].expand(b, c, t, h, 2, w, 2))
        return crop(y, inr.scale(2), out)

    def scale(self):
        return 2


class TimeUpsample(Op):
    """Wan's ``upsample3d`` time conv: the first chunk passes through; later frames go through
    a causal (3,1,1) conv to 2C channels, interleaved into 2t frames."""

    def __init__(self, conv: Conv):
        self.conv = conv

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
        z = ctx.empty((b, c, t, 2, h, w))
        z.copy_(y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5))
        return z.view(b, c, 2 * t, h, w)


class DupUp(Op):
    """Wan 2.2's parameter-free shortcut: repeat channels, then unfold them into 2x2 pixels
    (and 2 frames when upsampling in time; the first chunk keeps only its last frame)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        self.in_ch, self.out_ch, self.ft, self.fs = in_ch, out_ch, factor_t, factor_s
        self.repeats = out_ch * factor_t * factor_s * factor_s // in_ch

    def out_size(self, size):
        return size[0] * self.fs, size[1] * self.fs

    def need(self, out, size):
        return out.cover_div(self.fs)

    def scale(self):
        return self.fs

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.view(b, self.out_ch, self.ft, self.fs, self.fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_ch, t * self.ft, h * self.fs, w * self.fs)
        if st.get(self.key) is None:
            st.put(self.key, True)
            x = x[:, :, self.ft - 1 :]
        return crop(x, inr.scale(self.fs), out)


class AddShortcut(Op):
    """main(x) + shortcut(x): Wan 2.2's residual up/down blocks."""

    def __init__(self, main: Op, shortcut: Op):
        self.main, self.shortcut = main, shortcut

    def out_size(self, size):
        return self.main.out_size(size)

    def need(self, out, size):
        return self.main.need(out, size).union(self.shortcut.need(out, size))

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        y = self.main.run(x, inr, out, size, st, ctx)
        return y.add_(self.shortcut.run(x, inr, out, size, st, ctx))

    def halo(self):
        return max(self.main.halo(), self.shortcut.halo())

    def scale(self):
        return self.main.scale()


class Unpatchify(Op):
    """Wan 2.2's pixel shuffle at the very end: channels (c, r, q) -> q rows, r columns."""

    def __init__(self, patch: int):
        self.p = patch

    def out_size(self, size):
        return size[0] * self.p, size[1] * self.p

    def need(self, out, size):
        return out.cover_div(self.p)

    def scale(self):
        return self.p

    def run(self, x, have, out, size, st, ctx):
        inr = self.need(out, size)
        x = crop(x, have, inr)
        b, c, t, h, w = x.shape
        p = self.p
        y = x.reshape(b, c // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
        y = y.reshape(b, c // (p * p), t, h * p, w * p)
        return crop(y, inr.scale(p), out)


class FrameAttention(Op):
    """Wan's single-head attention over all pixels of each frame: global, so full frame only."""

    def __init__(self, norm: NormAct, to_qkv: torch.nn.Module, proj: torch.nn.Module):
        self.norm, self.to_qkv, self.proj = norm, to_qkv, proj

    def need(self, out, size):
        return Rect.full(size)

    def run(self, x, have, out, size, st, ctx):
        if out != Rect.full(size) or have != out:
            raise AssertionError("frame attention runs on whole frames only")
        b, c, t, h, w = x.shape
        y = self.norm.run(x, have, out, size, st, ctx)
        wq, bq = ctx.weight((self.key, "qkv"), self.to_qkv, as_3d=True)
        qkv = F.conv3d(y, wq, bq)
        del y
        qkv = qkv.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, 3 * c)
        q, k, v = qkv.chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        wp, bp = ctx.weight((self.key, "proj"), self.proj, as_3d=True)
        return F.conv3d(a.contiguous(), wp, bp).add_(x)


def number_ops(root: Op) -> int:
    """Give every op a unique key (its index in a depth-first walk)."""
    counter = [0]

    def visit(op):
        op.key = counter[0]
        counter[0] += 1
        for child in _children(op):
            visit(child)

    visit(root)
    return counter[0]


def _children(op: Op):
    if isinstance(op, Seq):
        return op.ops
    if isinstance(op, ResBlock):
        return [op.main] + ([op.shortcut] if op.shortcut is not None else [])
    if isinstance(op, TimeUpsample):
        return [op.conv]
    if isinstance(op, AddShortcut):
        return [op.main, op.shortcut]
    if isinstance(op, FrameAttention):
        return [op.norm]
    return []
