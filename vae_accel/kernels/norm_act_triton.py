"""Triton kernel: RMS norm over channels, optional bias and SiLU, optional conv bias and residual add first.

Imported only when Triton is installed (``norm_act`` falls back to torch otherwise). Tensors are
5-D (N, C, T, H, W), any strides. Each program normalises BLOCK_P pixels with all their channels
in registers, in float32, and reads and writes every element once.

One binary per (BLOCK_C, dtypes, channel stride): the channel count and the flags are run-time
values, not constants, because each compiled variant costs a process's first decode ~0.4 s on an
H200 (Triton's code generator and ptxas), and with them as constants a Wan 2.1 decode needed seven
(bench/results/profile_vae_h200.json). Strides are element strides; Triton marks integer arguments
that are multiples of 16 as such, and a channel stride of 1 as a constant, so with channels-last
tensors (every pixel stride a multiple of C, itself a multiple of 16) the compiler can prove each
pixel's channels aligned and contiguous and uses vector loads. Sizes are not specialised on, so
tiles of every size share the binary, compiled once and kept in Triton's on-disk cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .availability import interpreting

EPS_SQUARED = tl.constexpr(1e-24)  # F.normalize's eps (1e-12) on the norm, squared


def norm_act_kernel(
    X, A, P, G, B, Y,
    n_pix, size_t, size_h, size_w,
    xs_n, xs_t, xs_h, xs_w,
    as_n, as_t, as_h, as_w,
    ys_n, ys_t, ys_h, ys_w,
    xs_c, as_c, ys_c, C,
    has_add, has_pre, has_bias, act, store_sum,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
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
    x_at = i_n * xs_n + it * xs_t + ih * xs_h + iw * xs_w
    x_ptr = X + x_at[:, None] + c[None, :] * xs_c
    x = tl.load(x_ptr, mask=ok, other=0.0).to(tl.float32)
    if has_pre != 0:
        # the conv's bias, rounded to the storage dtype as the conv's own bias add would round it
        x = (x + tl.load(P + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]).to(X.dtype.element_ty).to(tl.float32)
    if has_add != 0:
        a_at = i_n * as_n + it * as_t + ih * as_h + iw * as_w
        a = tl.load(A + a_at[:, None] + c[None, :] * as_c, mask=ok, other=0.0).to(tl.float32)
        # round the sum to the storage dtype before normalising: the same numbers as add_ then norm
        x = (x + a).to(X.dtype.element_ty).to(tl.float32)
    if store_sum != 0:
        tl.store(x_ptr, x.to(X.dtype.element_ty), mask=ok)
    inv = tl.math.rsqrt(tl.maximum(tl.sum(x * x, axis=1), EPS_SQUARED))
    g = tl.load(G + c, mask=c_ok, other=0.0).to(tl.float32)
    y = x * inv[:, None] * g[None, :]
    if has_bias != 0:
        y += tl.load(B + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if act != 0:
        y = y * tl.sigmoid(y)
    y_at = i_n * ys_n + it * ys_t + ih * ys_h + iw * ys_w
    tl.store(Y + y_at[:, None] + c[None, :] * ys_c, y.to(Y.dtype.element_ty), mask=ok)


# sizes vary per tile and the flags per call: run-time values in one binary (strides stay
# specialised: their multiple-of-16 property is what lets the loads vectorise)
NOT_SPECIALISED = ["n_pix", "size_t", "size_h", "size_w", "has_add", "has_pre", "has_bias", "act", "store_sum"]
_compiled: dict = {}


def kernel():
    """The jitted kernel; under ``TRITON_INTERPRET=1`` Triton's CPU interpreter (tests)."""
    mode = interpreting()
    if mode not in _compiled:
        _compiled[mode] = triton.jit(norm_act_kernel, do_not_specialize=NOT_SPECIALISED)
    return _compiled[mode]


def strides_in(t: torch.Tensor) -> tuple[int, ...]:
    """(N, T, H, W) element strides (0 for a size-1 dim), then the channel stride (1 for a single channel)."""
    pixel = tuple(t.stride(d) if t.shape[d] > 1 else 0 for d in (0, 2, 3, 4))
    return pixel + (t.stride(1) if t.shape[1] > 1 else 1,)


def block_sizes(c: int, n_pix: int) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps): about 4096 elements per program on a GPU. The interpreter
    pays per program, not per element, so it gets few large blocks (the masks still see edges)."""
    block_c = triton.next_power_of_2(c)
    if interpreting():
        return block_c, min(1024, triton.next_power_of_2(n_pix)), 4
    block_p = max(1, min(64, 4096 // block_c))
    return block_c, block_p, 4 if block_c * block_p <= 4096 else 8


def launch(x, g, bias, add, out, act: bool, pre=None, store_sum: bool = True) -> None:
    n, c, t, h, w = x.shape
    n_pix = n * t * h * w
    if n_pix == 0:
        return
    s = [strides_in(v) for v in (x, add if add is not None else x, out)]
    block_c, block_p, warps = block_sizes(c, n_pix)
    summed = store_sum and (add is not None or pre is not None)
    kernel()[(triton.cdiv(n_pix, block_p),)](
        # absent tensors are stood in for by ones of the dtype they have when present (x's for the
        # residual and the conv bias, float32 for the norm's bias): a pointer's dtype is part of the
        # binary's key, so any other stand-in would compile a second variant
        x, add if add is not None else x, pre if pre is not None else x, g, bias if bias is not None else g, out,
        n_pix, t, h, w, *s[0][:4], *s[1][:4], *s[2][:4], s[0][4], s[1][4], s[2][4], c,
        int(add is not None), int(pre is not None), int(bias is not None), int(act), int(summed),
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps,
    )
