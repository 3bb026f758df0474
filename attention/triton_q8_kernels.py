"""Triton kernels of the ``triton_q8`` attention backend (the wrapper is :mod:`.triton_q8`).

Two launches per call:

- ``quant_kv_kernel``: K minus its per-channel mean over tokens (softmax is invariant to it), then
  one scale per token (or, with ``K_BLOCK_SCALE``, one per block of 128 tokens, written for each of
  its tokens), INT8 or FP8 e4m3; for FP8 P·V also V minus its per-channel mean, one scale per
  channel, e4m3, stored transposed (``(D, L)``: the token axis is the contraction axis of P·V, and
  Hopper's 8-bit MMA wants it contiguous). The buffers are padded to ``LKP`` tokens (a multiple of
  the largest key block) with zeros, so key loads never leave their head.
- ``attn_kernel``: one program per (query block, batch*head). Q is read from the caller's strided
  tensor and quantised per token in registers (the scale carries sm_scale*log2(e)); online softmax
  in float32 over key blocks (with block scales of K the key scale is one number per block, so a
  score costs one FMA and, with ``I2F_ADD``, no conversion at all: see ``_block_scores``); P·V in FP8
  (P scaled by 448, per-block products added to a float32 accumulator: two-level accumulation) or 16-bit
  (P in V's dtype, V read in place). The last,
  partial key block is the only one that is masked.

Under ``TRITON_INTERPRET=1`` (CPU tests, Triton 3.8) two interpreter defects are worked around
when ``INTERPRETED`` is set, and the GPU never takes those branches: its float32 -> e4m3 cast rounds
ties away from zero and drops the carry into the exponent (31 becomes 16), so values are first
rounded to the e4m3 grid, which makes the cast exact; its bfloat16 ``tl.dot`` returns garbage, so
16-bit operands are widened to float32 after P is rounded to V's dtype (same values, same products).
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2_448 = tl.constexpr(8.807354922057604)  # P is stored as P * 448: the full e4m3 range
E4M3_MAX = tl.constexpr(448.0)
INT8_MAX = tl.constexpr(127.0)


@triton.jit
def _max2(a, b):
    return tl.maximum(a, b)


@triton.jit
def _add2(a, b):
    return a + b


# Row reductions are tl.reduce with the combine functions tl.max / tl.sum themselves use (same GPU
# code), and tl.full replaces tl.zeros: tl.max, tl.sum and tl.zeros are Triton-library @jit functions,
# built for the GPU when triton was imported before TRITON_INTERPRET=1 was set (which a test process
# cannot always prevent), and the interpreter then refuses to call them; it reduces with numpy when the
# combine function *is* Triton's own, and element by element in Python for any other.
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", None) or _max2
_SUM_COMBINE = getattr(tl.standard, "_sum_combine", None) or _add2


@triton.jit
def _row_max(x):
    return tl.reduce(x, 1, _MAX_COMBINE)


@triton.jit
def _row_sum(x):
    return tl.reduce(x, 1, _SUM_COMBINE)


@triton.jit
def _e4m3_grid(x):
    """Round float32 ``x`` (|x| <= 448) to the nearest e4m3 value, ties to even."""
    bits = x.to(tl.int32, bitcast=True)
    exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # e4m3 subnormals share 2^-6's spacing
    ulp = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)
    y = x / ulp
    y = (y + 12582912.0) - 12582912.0  # 1.5 * 2^23: float32 addition rounds to an integer, ties to even
    return y * ulp


@triton.jit
def _to_e4m3(x, INTERPRETED: tl.constexpr):
    if INTERPRETED:
        x = _e4m3_grid(x)
    return x.to(tl.float8e4nv)


@triton.jit
def _quantize_rows(x, extra_scale, QK_FP8: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK_SCALE: tl.constexpr = False):
    """Rows of float32 ``x`` -> (8-bit rows, float32 scale per row times ``extra_scale``); with
    ``BLOCK_SCALE`` every row gets the block's one scale (its largest magnitude)."""
    amax = tl.maximum(_row_max(tl.abs(x)), 1e-30)  # an all-zero row stays zero, not NaN
    if BLOCK_SCALE:
        amax = tl.maximum(amax, tl.reduce(amax, 0, _MAX_COMBINE))  # the block's max, on every row
    if QK_FP8:
        scale = amax / E4M3_MAX
        xq = _to_e4m3(x * (1.0 / scale)[:, None], INTERPRETED)
    else:
        scale = amax / INT8_MAX
        y = x * (1.0 / scale)[:, None]
        xq = (y + tl.where(y >= 0, 0.5, -0.5)).to(tl.int8)  # round half away from zero
    return xq, scale * extra_scale


@triton.jit
def _block_and_head(H):
    """(block along the tokens, batch*head as int64, batch, head) of this program."""
    bh = tl.program_id(1).to(tl.int64)
    return tl.program_id(0), bh, bh // H, bh % H


@triton.jit
def quant_kv_kernel(K, V, K_MEAN, V_MEAN, V_INV_SCALE, K8, K_SCALE, V8T,
                    stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
                    H, LK, LKP,
                    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, QK_FP8: tl.constexpr, PV_FP8: tl.constexpr,
                    INTERPRETED: tl.constexpr, K_BLOCK_SCALE: tl.constexpr = False):
    pid_n, bh, b, h = _block_and_head(H)
    rows = pid_n * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, HEAD_DIM)
    valid = (rows < LK)[:, None]

    k = tl.load(K + b * stride_kb + h * stride_kh + rows[:, None] * stride_kl + cols[None, :], mask=valid, other=0.0)
    k_mean = tl.load(K_MEAN + bh * HEAD_DIM + cols)
    k = tl.where(valid, k.to(tl.float32) - k_mean[None, :], 0.0)
    k8, k_scale = _quantize_rows(k, 1.0, QK_FP8, INTERPRETED, K_BLOCK_SCALE)
    tl.store(K8 + bh * LKP * HEAD_DIM + rows[:, None] * HEAD_DIM + cols[None, :], k8)
    tl.store(K_SCALE + bh * LKP + rows, k_scale)

    if PV_FP8:
        v = tl.load(V + b * stride_vb + h * stride_vh + rows[:, None] * stride_vl + cols[None, :], mask=valid,
                    other=0.0)
        v_mean = tl.load(V_MEAN + bh * HEAD_DIM + cols)
        v_inv = tl.load(V_INV_SCALE + bh * HEAD_DIM + cols)
        v = tl.where(valid, (v.to(tl.float32) - v_mean[None, :]) * v_inv[None, :], 0.0)
        v = tl.minimum(tl.maximum(v, -E4M3_MAX), E4M3_MAX)
        tl.store(V8T + bh * HEAD_DIM * LKP + cols[None, :] * LKP + rows[:, None], _to_e4m3(v, INTERPRETED))


@triton.jit
def _token_scores(dot, k_scale, q_scale, keys, LK, I2F_ADD: tl.constexpr, MASK: tl.constexpr):
    """A block's scores with one scale per key, as ``_block_scores`` returns them (offset 0)."""
    if I2F_ADD:  # (INT8 Q·K only)
        # |dot| <= HEAD_DIM * 127 * 127 < 2^22: adding 1.5 * 2^23 to its bits gives a float32 whose value
        # minus 1.5 * 2^23 is dot exactly, an integer add and a float add instead of a conversion
        t = ((dot + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0) * k_scale[None, :]
    else:
        t = dot.to(tl.float32) * k_scale[None, :]
    if MASK:
        t = tl.where((keys < LK)[None, :], t, float("-inf"))
    return t, q_scale, 0.0


@triton.jit
def _block_scores(dot, k_block_scale, q_scale, keys, LK, I2F_ADD: tl.constexpr, MASK: tl.constexpr):
    """The same with one scale for the whole key block: (scores, their per-row factor, a per-row offset),
    so that a score in exp2 units is scores * factor - offset and P = exp2(that - the row's max).
    With ``I2F_ADD`` the scores stay biased by 1.5 * 2^23 (an exact float32 of dot + bias, from one
    integer add) and the bias is taken off inside the exponent's FMA: factor * bias is a per-row
    constant (its rounding moves a whole row's exponents of this block by < 1e-6 of the row's score
    range), so a score costs no conversion and no separate multiply."""
    if I2F_ADD:
        t = (dot + 0x4B400000).to(tl.float32, bitcast=True)
        bias = 12582912.0
    else:
        t = dot.to(tl.float32)
        bias = 0.0
    if MASK:
        t = tl.where((keys < LK)[None, :], t, float("-inf"))
    factor = q_scale * k_block_scale
    return t, factor, factor * bias


@triton.jit
def _attn_step(acc, l_i, m_i, q8, q_scale, K8, K_SCALE, V, bh, b, h, stride_vb, stride_vh, stride_vl, LK, LKP,
               start_n, offs_n, offs_d,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PV_FP8: tl.constexpr, USE_TMA: tl.constexpr,
               INTERPRETED: tl.constexpr, PV_IMPRECISE: tl.constexpr, I2F_ADD: tl.constexpr, MASK: tl.constexpr,
               K_BLOCK: tl.constexpr):
    """One key block of the online softmax."""
    keys = start_n + offs_n
    if USE_TMA:
        k = K8.load([(bh * LKP).to(tl.int32) + start_n, 0])  # descriptors take int32 offsets
    else:
        k = tl.load(K8 + bh * LKP * HEAD_DIM + keys[:, None] * HEAD_DIM + offs_d[None, :])
    # the per-query scale is factored out of the max (it is positive) and folded into exp2's FMA
    dot = tl.dot(q8, k.T)
    if K_BLOCK:
        t, factor, offset = _block_scores(dot, tl.load(K_SCALE + bh * LKP + start_n), q_scale, keys, LK,
                                          I2F_ADD, MASK)
    else:
        t, factor, offset = _token_scores(dot, tl.load(K_SCALE + bh * LKP + keys), q_scale, keys, LK,
                                          I2F_ADD, MASK)
    m_new = tl.maximum(m_i, _row_max(t) * factor - offset)
    alpha = tl.math.exp2(m_i - m_new)
    if PV_FP8:
        p = tl.math.exp2(t * factor[:, None] - (offset + m_new - LOG2_448)[:, None])
    else:
        p = tl.math.exp2(t * factor[:, None] - (offset + m_new)[:, None])
    l_i = l_i * alpha + _row_sum(p)
    if PV_FP8:
        if USE_TMA:
            v = V.load([(bh * HEAD_DIM).to(tl.int32), start_n]).T
        else:
            v = tl.load(V + bh * HEAD_DIM * LKP + offs_d[None, :] * LKP + keys[:, None])
        p8 = _to_e4m3(p, INTERPRETED)
        # a fresh product per block, added in float32: Hopper's FP8 MMA accumulates in ~22 bits (summing
        # inside the MMA instead was slower too: 236.9 against 218.9 ms, bench/results/triton_q8_variants_h200.json)
        if PV_IMPRECISE > 0:
            pv = tl.dot(p8, v, max_num_imprecise_acc=PV_IMPRECISE)
        else:
            pv = tl.dot(p8, v)
        acc = acc * alpha[:, None] + pv
    else:
        if USE_TMA:  # a (B, H, L, D) descriptor over the caller's strided V: keys past L read as zeros
            v = V.load([b.to(tl.int32), h.to(tl.int32), start_n, 0]).reshape([BLOCK_N, HEAD_DIM])
        else:
            v_ptrs = V + b * stride_vb + h * stride_vh + keys[:, None] * stride_vl + offs_d[None, :]
            if MASK:
                v = tl.load(v_ptrs, mask=(keys < LK)[:, None], other=0.0)
            else:
                v = tl.load(v_ptrs)
        p16 = p.to(v.dtype)
        if INTERPRETED:
            acc = tl.dot(p16.to(tl.float32), v.to(tl.float32), acc * alpha[:, None])
        else:
            acc = tl.dot(p16, v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["LQ", "LK"])
def attn_kernel(Q, K8, K_SCALE, V, V_SCALE, V_MEAN, Out,
                stride_qb, stride_qh, stride_ql, stride_vb, stride_vh, stride_vl, stride_ob, stride_oh, stride_ol,
                H, LQ, LK, LKP, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_FP8: tl.constexpr,
                PV_FP8: tl.constexpr, USE_TMA: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                INTERPRETED: tl.constexpr, PV_IMPRECISE: tl.constexpr, I2F_ADD: tl.constexpr = False,
                K_BLOCK: tl.constexpr = False):
    pid_m, bh, b, h = _block_and_head(H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = (offs_m < LQ)[:, None]

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :], mask=row_ok,
                other=0.0)
    q8, q_scale = _quantize_rows(q.to(tl.float32), qk_scale, QK_FP8, INTERPRETED)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    n_full = (LK // BLOCK_N) * BLOCK_N
    if WARP_SPECIALIZE:
        for start_n in tl.range(0, n_full, BLOCK_N, warp_specialize=True):
            acc, l_i, m_i = _attn_step(acc, l_i, m_i, q8, q_scale, K8, K_SCALE, V, bh, b, h, stride_vb, stride_vh,
                                       stride_vl, LK, LKP, start_n, offs_n, offs_d, HEAD_DIM, BLOCK_N, PV_FP8,
                                       USE_TMA, INTERPRETED, PV_IMPRECISE, I2F_ADD, False, K_BLOCK)
    else:
        for start_n in range(0, n_full, BLOCK_N):
            acc, l_i, m_i = _attn_step(acc, l_i, m_i, q8, q_scale, K8, K_SCALE, V, bh, b, h, stride_vb, stride_vh,
                                       stride_vl, LK, LKP, start_n, offs_n, offs_d, HEAD_DIM, BLOCK_N, PV_FP8,
                                       USE_TMA, INTERPRETED, PV_IMPRECISE, I2F_ADD, False, K_BLOCK)
    if n_full < LK:
        acc, l_i, m_i = _attn_step(acc, l_i, m_i, q8, q_scale, K8, K_SCALE, V, bh, b, h, stride_vb, stride_vh,
                                   stride_vl, LK, LKP, n_full, offs_n, offs_d, HEAD_DIM, BLOCK_N, PV_FP8,
                                   USE_TMA, INTERPRETED, PV_IMPRECISE, I2F_ADD, True, K_BLOCK)

    if PV_FP8:
        v_scale = tl.load(V_SCALE + bh * HEAD_DIM + offs_d)
        v_mean = tl.load(V_MEAN + bh * HEAD_DIM + offs_d)
        out = acc * (1.0 / l_i)[:, None] * v_scale[None, :] + v_mean[None, :]
    else:
        out = acc / l_i[:, None]
    tl.store(Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_ok)
