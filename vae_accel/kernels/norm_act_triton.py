"""Triton kernel: RMS norm over channels, optional bias and SiLU, optional residual add first.

Imported only when Triton is installed (``norm_act`` falls back to torch otherwise). Tensors are
5-D (N, C, T, H, W), any strides. Each program normalises BLOCK_P pixels with all their channels
in registers, in float32, and reads and writes every element once. When every tensor has its
channels contiguous (``channels_last_3d``, or any crop of it) the pixel strides are passed in
units of C and the channel stride is the constant 1, so the compiler can prove each pixel's
channels are aligned and uses vector loads; other layouts get a variant with element strides.
Sizes and pixel strides are not specialised on, so tiles of every size share one binary per
(channel count, dtype, flags), compiled once and kept in Triton's on-disk cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .availability import interpreting

EPS_SQUARED = tl.constexpr(1e-24)  # F.normalize's eps (1e-12) on the norm, squared


def norm_act_kernel(
    X, A, G, B, Y,
    n_pix, size_t, size_h, size_w,
    xs_n, xs_t, xs_h, xs_w,
    as_n, as_t, as_h, as_w,
    ys_n, ys_t, ys_h, ys_w,
    xs_c, as_c, ys_c,
    C: tl.constexpr, UNIT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    HAS_ADD: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = p < n_pix
    iw = (p % size_w).to(tl.int64)
    rest = p // size_w
    ih = (rest % size_h).to(tl.int64)
    rest = rest // size_h
    it = (rest % size_t).to(tl.int64)
    i_n = (rest // size_t).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = p_ok[:, None] & c_ok[None, :]
    x_at = (i_n * xs_n + it * xs_t + ih * xs_h + iw * xs_w) * UNIT
    x_ptr = X + x_at[:, None] + c[None, :] * xs_c
    x = tl.load(x_ptr, mask=ok, other=0.0).to(tl.float32)
    if HAS_ADD:
        a_at = (i_n * as_n + it * as_t + ih * as_h + iw * as_w) * UNIT
        a = tl.load(A + a_at[:, None] + c[None, :] * as_c, mask=ok, other=0.0).to(tl.float32)
        # round the sum to the storage dtype before normalising: the same numbers as add_ then norm
        if X.dtype.element_ty == tl.float32:
            summed = x + a
        else:
            summed = (x + a).to(X.dtype.element_ty, fp_downcast_rounding="rtne")
        tl.store(x_ptr, summed, mask=ok)
        x = summed.to(tl.float32)
    inv = tl.math.rsqrt(tl.maximum(tl.sum(x * x, axis=1), EPS_SQUARED))
    g = tl.load(G + c, mask=c_ok, other=0.0).to(tl.float32)
    y = x * inv[:, None] * g[None, :]
    if HAS_BIAS:
        y += tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if ACT:
        y = y * tl.sigmoid(y)
    y_at = (i_n * ys_n + it * ys_t + ih * ys_h + iw * ys_w) * UNIT
    if Y.dtype.element_ty != tl.float32:
        y = y.to(Y.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(Y + y_at[:, None] + c[None, :] * ys_c, y, mask=ok)


NOT_SPECIALISED = [
    "n_pix", "size_t", "size_h", "size_w",
    "xs_n", "xs_t", "xs_h", "xs_w", "as_n", "as_t", "as_h", "as_w", "ys_n", "ys_t", "ys_h", "ys_w",
]
_compiled: dict = {}


def kernel():
    """The jitted kernel; under ``TRITON_INTERPRET=1`` Triton's CPU interpreter (tests)."""
    mode = interpreting()
    if mode not in _compiled:
        _compiled[mode] = triton.jit(norm_act_kernel, do_not_specialize=NOT_SPECIALISED)
    return _compiled[mode]


def strides_in(t: torch.Tensor, unit: int) -> tuple[int, ...]:
    """(N, T, H, W) strides in units of ``unit`` elements, then the channel stride (0 for a size-1 dim)."""
    pixel = tuple((t.stride(d) if t.shape[d] > 1 else 0) // unit for d in (0, 2, 3, 4))
    return pixel + (t.stride(1) if t.shape[1] > 1 else 1,)


def channels_contiguous(t: torch.Tensor) -> bool:
    """Channel stride 1 and every pixel starting at a multiple of C: the vectorised variant applies."""
    c = t.shape[1]
    return (c == 1 or t.stride(1) == 1) and all(t.stride(d) % c == 0 for d in (0, 2, 3, 4) if t.shape[d] > 1)


def block_sizes(c: int, n_pix: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps): about 4096 elements per program on a GPU. The interpreter
    pays per program, not per element, so it gets few large blocks (the masks still see edges)."""
    block_c = triton.next_power_of_2(c)
    if interpreting():
        return block_c, min(1024, triton.next_power_of_2(n_pix)), 4
    block_p = max(1, min(64, 4096 // block_c))
    return block_c, block_p, 4 if block_c * block_p <= 4096 else 8


def launch(x, g, bias, add, out, act: bool) -> None:
    tensors = (x, add if add is not None else x, out)
    n, c, t, h, w = x.shape
    unit = c if all(channels_contiguous(v) for v in tensors) else 1
    s = [strides_in(v, unit) for v in tensors]
    n_pix = n * t * h * w
    if n_pix == 0:
        return
    block_c, block_p, warps = block_sizes(c, n_pix)
    kernel()[(triton.cdiv(n_pix, block_p),)](
        x, tensors[1], g, bias if bias is not None else g, out,
        n_pix, t, h, w, *s[0][:4], *s[1][:4], *s[2][:4], s[0][4], s[1][4], s[2][4],
        C=c, UNIT=unit, BLOCK_C=block_c, BLOCK_P=block_p,
        HAS_ADD=add is not None, HAS_BIAS=bias is not None, ACT=act, num_warps=warps,
    )
