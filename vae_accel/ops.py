"""Region-aware operations of the Wan VAE, reading weights from the real module tree.

Each op maps an output rectangle to the input rectangle it needs (``need``) and computes
exactly that output from a tensor covering at least that input (``run``). Zero padding is
applied only at true image borders; inside the image a tile reads real neighbour pixels
(its halo), so a tiled result equals the untiled one. Causal temporal state (the conv
caches of the reference implementation) lives in a per-tile :class:`TileState`, stored with
the rectangle it covers, so a tile can be split later and its children crop the parent's state.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
import torch.nn.functional as F

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


WeightSource = Callable[[torch.nn.Module, torch.device, torch.dtype], ContextManager[tuple]]


def module_weights(module: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """The engine's own weight source: the module's weight and bias on the run's device and dtype."""
    bias = module.bias.detach().to(device, dtype) if module.bias is not None else None
    return nullcontext((module.weight.detach().to(device, dtype), bias))


@dataclass
class ExecContext:
    """How this run computes: device, dtype, memory layout, the fused norm+SiLU and where weights come from.

    ``source`` hands out a module's (weight, bias) for the span of one use (a context manager); None
    means :func:`module_weights`, whose results are kept for the whole run. A caller's source is asked
    every time and nothing it hands out is kept: ComfyUI's own cast path (the bridge) accounts for the
    weights it moves, streams them under Dynamic VRAM and applies the patcher's weight patches."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False
    norm_act: Callable | None = None
    source: WeightSource | None = None
    _kept: dict = field(default_factory=dict)

    def weights(self, key, module: torch.nn.Module, as_3d: bool) -> ContextManager[tuple]:
        """``with ctx.weights(key, module, as_3d) as (w, b):`` the conv's weights in this run's layout."""
        hit = self._kept.get(key)
        if hit is not None:
            return nullcontext(hit)
        return self._fetch(key, module, as_3d)

    @contextmanager
    def _fetch(self, key, module, as_3d):
        with (self.source or module_weights)(module, self.device, self.dtype) as (w, b):
            if as_3d and w.dim() == 4:
                w = w.unsqueeze(2)
            if self.channels_last:
                w = w.contiguous(memory_format=torch.channels_last_3d)
            if self.source is None:
                self._kept[key] = (w, b)
            yield w, b

    def param(self, key, tensor: torch.Tensor) -> torch.Tensor:
        """A small derived parameter (a norm's gain or bias), kept for the run."""
        hit = self._kept.get(key)
        if hit is None:
            hit = self._kept[key] = tensor.detach().to(self.device, self.dtype)
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

    def rate(self) -> float:
        """Output pixels per input pixel along each axis (2 for upsampling, 0.5 for downsampling)."""
        return float(self.scale())


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

    def halo(self) -> float:
        return float(self.r)

    def need(self, out: Rect, size: Size) -> Rect:
        return out.grow(self.r, size)

    def run(self, x, have, out, size, st, ctx):
        """Causal frames by concatenation in time (a contiguous copy in channels-last), zero
        borders by the convolution's own padding: where a tile needs padding on one side only,
        both sides are padded and the extra output row or column is cropped away."""
        r = self.r
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
        py = max(r - (out.y0 - inr.y0), r - (inr.y1 - out.y1))
        px = max(r - (out.x0 - inr.x0), r - (inr.x1 - out.x1))
        with ctx.weights(self.key, self.module_ref(), as_3d=True) as (w, b):
            y = F.conv3d(x, w, b, padding=(0, py, px))
        # the padded output covers inr grown by the padding, less the kernel reach, clipped below by nothing
        got = Rect(inr.y0 - py + r, inr.y1 + py - r, inr.x0 - px + r, inr.x1 + px - r)
        return crop(y, got, out)


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
        total, f = 0.0, 1.0
        for op in self.ops:
            total += op.halo() / f
            f *= op.rate()
        return total

    def rate(self):
        f = 1.0
        for op in self.ops:
            f *= op.rate()
        return f

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
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        y = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
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
        z = ctx.empty((b, c, 2 * t, h, w))
        z.view(b, c, t, 2, h, w).copy_(y.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5))
        return z


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

    def rate(self):
        return self.main.rate()


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
        self.norm, self.to_qkv, self.proj = norm, ModuleRef(to_qkv), ModuleRef(proj)

    def need(self, out, size):
        return Rect.full(size)

    def run(self, x, have, out, size, st, ctx):
        if out != Rect.full(size) or have != out:
            raise AssertionError("frame attention runs on whole frames only")
        b, c, t, h, w = x.shape
        y = self.norm.run(x, have, out, size, st, ctx)
        with ctx.weights((self.key, "qkv"), self.to_qkv(), as_3d=True) as (wq, bq):
            qkv = F.conv3d(y, wq, bq)
        del y
        qkv = qkv.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, 3 * c)
        q, k, v = qkv.chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        with ctx.weights((self.key, "proj"), self.proj(), as_3d=True) as (wp, bp):
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

    def rate(self):
        return 0.5

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


class AvgDown(Op):
    """Wan 2.2's parameter-free shortcut: average groups of channels x (2 frames) x 2x2 pixels;
    a chunk of odd length is padded with a zero frame in front (the first chunk)."""

    def __init__(self, in_ch: int, out_ch: int, factor_t: int, factor_s: int):
        self.in_ch, self.out_ch, self.ft, self.fs = in_ch, out_ch, factor_t, factor_s
        self.group = in_ch * factor_t * factor_s * factor_s // out_ch

    def out_size(self, size):
        return size[0] // self.fs, size[1] // self.fs

    def need(self, out, size):
        return out.scale(self.fs)

    def rate(self):
        return 1.0 / self.fs

    def run(self, x, have, out, size, st, ctx):
        x = crop(x, have, self.need(out, size))
        pad_t = (self.ft - x.shape[2] % self.ft) % self.ft
        if pad_t:
            x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        b, c, t, h, w = x.shape
        ft, fs = self.ft, self.fs
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_ch, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class Patchify(Op):
    """Wan 2.2's pixel unshuffle at the input: 2x2 pixels -> channels (c, r, q)."""

    def __init__(self, patch: int):
        self.p = patch

    def out_size(self, size):
        return size[0] // self.p, size[1] // self.p

    def need(self, out, size):
        return out.scale(self.p)

    def rate(self):
        return 1.0 / self.p

    def run(self, x, have, out, size, st, ctx):
        x = crop(x, have, self.need(out, size))
        b, c, t, h, w = x.shape
        p = self.p
        x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
        return x.reshape(b, c * p * p, t, h // p, w // p)


class TakeChannels(Op):
    """The first ``n`` channels (the latent mean of the encoder's mean/log-variance output)."""

    def __init__(self, n: int):
        self.n = n

    def need(self, out, size):
        return out

    def run(self, x, have, out, size, st, ctx):
        return crop(x, have, out)[:, : self.n]
