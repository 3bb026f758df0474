"""Triton kernel: the VAE's causal 3-D convolution as an implicit GEMM, bias added in the epilogue.

Why: at 96 channels (the Wan VAE's full-resolution stages) cuDNN runs its 3x3x3 convs on an sm80
kernel (``sm80_xmma_fprop_implicit_gemm_..._tilesize256x32x32``) at ~246 TFLOP/s on an H200, while
the 192-channel convs get an sm90 wgmma kernel at ~528; the 96-channel convs are 40% of a decode's
GPU time. And cuDNN's bias add is a separate pass over the output; here it is free.

What: ``conv3d(x, w, b, padding)`` equals ``F.conv3d(x, w, b, padding=padding)`` for channels-last
(channel stride 1) inputs, kernels (kt, k, k) with kt and k in {1, 3}, stride 1, no dilation, one
group, no time padding (the caller's input already holds the causal frames: time is "valid") and
any spatial zero padding. float32 accumulation, bias added in float32, one rounding to x's dtype;
the output is a new channels_last_3d tensor.

How: GEMM rows (M) are BLOCK_M consecutive output pixels of one frame, flattened over (h, w) (only a
frame's last block is partial); columns (N) are output channels in BLOCK_N blocks (96 pads to 128:
the padded weight columns are masked, so they load as zeros at no memory cost, only tensor-core
time); the reduction (K) is one flat loop of steps over (time tap, kh tap, kw tap, BLOCK_K input
channels), one A tile and one dot per step. A single loop is what Triton's pipeliner overlaps
(async copies num_stages deep), and one dot per accumulator a step lets the next step's wgmma issue
before this one completes (dots chained inside a step each wait for the one before). An A tile is
BLOCK_M pixels x BLOCK_K channels, contiguous per pixel: 16-byte vector copies. Zero padding masks
whole rows (pixels whose tap falls outside the frame), constant along the channels, so the copies
stay vectors (a masked copy writes zeros and reads nothing). Weights are packed once as
[kt, kh, kw, Cin, Cout] (:func:`pack_weight`; callers cache it) so a B tile is BLOCK_K contiguous
rows. Each dot reads its A and B tiles from L2 (16-byte async copies bypass L1), which may well be
what limits this kernel at 96 channels (see ``CONFIGS``). ``T_BLOCK=2``: a program computes two
consecutive output frames of a kt=3 conv, each input frame's A tile feeding both accumulators
(4 A tiles per (tap, chunk) for the two frames instead of 6; two of the 8 dots multiply zero
weights). The grid runs output frames and channel blocks fastest, so programs sharing input
frames run together and HBM reads each frame about once.

Sizes are run-time values (one binary serves every tile size); strides stay specialised, which is
what tells the compiler each pixel's channels are 16-byte aligned. Under ``TRITON_INTERPRET=1`` the
kernel runs on CPU tensors (tests).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .availability import interpreting

# Candidates for bench/conv_micro.py to sweep (the first one is the default). At 96 channels one
# 128-wide channel block covers every output channel (an A tile is never read twice; the 32 padded
# columns cost tensor-core time, not memory traffic) and K=32 splits 96 exactly. A step (one A and
# one B tile, 8 KiB each at M=128, N=128) is a dot of 1 MFLOP, 0.75 of it useful: about 21 bytes of
# L2 traffic per useful kFLOP, so 500 TFLOP/s would need ~10 TB/s from L2. Bigger M shares each B
# tile among more pixels; T_BLOCK=2 shares each A tile between two output frames.
CONFIGS = [
    # baseline: two warpgroups, each an m64n128 wgmma; 16 KiB a stage, 2 programs an SM
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4, T_BLOCK=1),
    # one warpgroup per program (more programs an SM hide the latency instead)
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=4, num_stages=4, T_BLOCK=1),
    # 256 pixels: B traffic per pixel halved (~16 bytes per useful kFLOP); 1 program an SM
    dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4, T_BLOCK=1),
    # two output frames a program: each A tile feeds both (a quarter of the dots multiply zero weights)
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=4, T_BLOCK=2),
    # a deeper pipeline for the baseline: L2 latency rather than bandwidth (96 KiB of stages)
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=6, T_BLOCK=1),
    # 64-wide channel blocks: small accumulators, but every A tile is read twice
    dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4, T_BLOCK=1),
    # 64-channel steps: 2 steps a tap instead of 3 at 96 channels, the second one half masked
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3, T_BLOCK=1),
]
DEFAULT = CONFIGS[0]


def conv3d_kernel(
    X, Wp, B, Y,
    T_out, H, W, H_out, W_out, Cin, Cout, pad_h, pad_w,
    xs_n, xs_t, xs_h, xs_w,
    ys_n, ys_t, ys_h, ys_w,
    KT: tl.constexpr, KS: tl.constexpr, T_BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_C: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # program -> (batch, pixel block, output-frame block, channel block), the last two fastest:
    # programs running at the same time read the same input frames (once from HBM, then from L2)
    n_pix = H_out * W_out
    pid = tl.program_id(0)
    n_nb = (Cout + BLOCK_N - 1) // BLOCK_N
    n_tb = (T_out + T_BLOCK - 1) // T_BLOCK
    n_pb = (n_pix + BLOCK_M - 1) // BLOCK_M
    nb = pid % n_nb
    rest = pid // n_nb
    tb = rest % n_tb
    rest = rest // n_tb
    pb = rest % n_pb
    i_n = rest // n_pb

    p = pb * BLOCK_M + tl.arange(0, BLOCK_M)
    p_ok = p < n_pix
    oh = p // W_out
    ow = p % W_out
    t0 = tb * T_BLOCK
    T_in = T_out + KT - 1
    # T_BLOCK=2: the rows of the block's second output frame, none past the last frame (a row
    # limit rather than a scalar flag: the interpreter cannot broadcast a scalar into a mask)
    p_ok2 = p < tl.where(t0 + 1 < T_out, n_pix, 0)
    # frame offsets in int64 (a video is more than 2**31 elements); offsets inside a frame are int32
    frame = tl.cast(xs_t, tl.int64)  # tl.cast: a stride of 1 arrives as a constant
    x_base = X + i_n.to(tl.int64) * xs_n + t0.to(tl.int64) * frame
    x_row = oh * xs_h + ow * xs_w
    c = tl.arange(0, BLOCK_K)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < Cout
    w_tap = Cin * Cout  # packed weights: [kt, kh, kw, Cin, Cout], one tap = Cin x Cout

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # T_BLOCK=2 only (dead code otherwise)
    chunks = (Cin + BLOCK_K - 1) // BLOCK_K
    # One flat loop, one A tile a step: over (input frame f, kh tap, kw tap, channel chunk). A single
    # loop is what the pipeliner overlaps, and one dot per accumulator a step is what lets the next
    # step's wgmma issue before this one completes (dots chained inside a step each wait for the last).
    for i in range((KT + T_BLOCK - 1) * KS * KS * chunks):
        step = i // chunks
        c0 = (i - step * chunks) * BLOCK_K
        f = step // (KS * KS)
        tap = step - f * (KS * KS)
        dh = tap // KS - pad_h
        dw = tap % KS - pad_w
        ih = oh + dh
        iw = ow + dw
        # a whole row (pixel) is in or out: the mask is constant along the channels, so the
        # loads stay 16-byte vectors (a masked async copy just writes zeros and reads nothing)
        row_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        if T_BLOCK == 2:  # T_BLOCK=2's last input frame exists only with the block's second output frame
            row_ok = row_ok & (p < tl.where(t0 + f < T_in, n_pix, 0))
        cc = c0 + c
        a_ptr = x_base + f.to(tl.int64) * frame + (x_row + dh * xs_h + dw * xs_w)[:, None] + cc[None, :]
        a_mask = row_ok[:, None]
        if not EVEN_C:  # the last chunk is partial: mask the channels too
            a_mask = a_mask & (cc < Cin)[None, :]
        a = tl.load(a_ptr, mask=a_mask, other=0.0)
        # output frame t0 takes input frame t0+f through time tap f; T_BLOCK=2's output frame t0+1
        # takes the same A tile through tap f-1: 4 A tiles feed both frames instead of 6
        b_ptr = Wp + (f * (KS * KS) + tap) * w_tap + cc[:, None] * Cout + n[None, :]
        b_mask = (n < tl.where(f < KT, Cout, 0))[None, :]  # time tap f exists (always, with T_BLOCK=1)
        if not EVEN_C:
            b_mask = b_mask & (cc < Cin)[:, None]
        acc = tl.dot(a, tl.load(b_ptr, mask=b_mask, other=0.0), acc, input_precision=PRECISION)
        if T_BLOCK == 2:
            b2_ptr = b_ptr - KS * KS * w_tap
            b2_mask = (n < tl.where(f >= 1, Cout, 0))[None, :]
            if not EVEN_C:
                b2_mask = b2_mask & (cc < Cin)[:, None]
            acc2 = tl.dot(a, tl.load(b2_ptr, mask=b2_mask, other=0.0), acc2, input_precision=PRECISION)

    y_ptr = Y + i_n.to(tl.int64) * ys_n + t0.to(tl.int64) * ys_t + (oh * ys_h + ow * ys_w)[:, None] + n[None, :]
    y_mask = p_ok[:, None] & n_ok[None, :]
    if HAS_BIAS:
        bias = tl.load(B + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc += bias
        acc2 += bias
    tl.store(y_ptr, acc.to(Y.dtype.element_ty), mask=y_mask)
    if T_BLOCK == 2:
        y2_mask = (p_ok & p_ok2)[:, None] & n_ok[None, :]
        tl.store(y_ptr + tl.cast(ys_t, tl.int64), acc2.to(Y.dtype.element_ty), mask=y2_mask)


# sizes vary per tile: run-time values in one binary (Cin, Cout and strides stay specialised: their
# multiple-of-16 property is what lets the loads vectorise)
NOT_SPECIALISED = ["T_out", "H", "W", "H_out", "W_out", "pad_h", "pad_w"]
_compiled: dict = {}


def kernel():
    """The jitted kernel; under ``TRITON_INTERPRET=1`` Triton's CPU interpreter (tests)."""
    mode = interpreting()
    if mode not in _compiled:
        _compiled[mode] = triton.jit(conv3d_kernel, do_not_specialize=NOT_SPECIALISED)
    return _compiled[mode]


def pack_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(Cout, Cin, kt, kh, kw) -> contiguous (kt, kh, kw, Cin, Cout): one tap's B tile is contiguous rows."""
    return weight.detach().permute(2, 3, 4, 1, 0).to(dtype or weight.dtype).contiguous()


def _check(x, weight, bias, padding, stride, dilation, groups) -> None:
    def unsupported(what):
        raise ValueError(f"conv3d_triton: {what}")

    def ones(v):
        return v == 1 or (isinstance(v, (tuple, list)) and tuple(v) == (1, 1, 1))

    if not (ones(stride) and ones(dilation) and groups == 1):
        unsupported(f"stride {stride}, dilation {dilation}, groups {groups}: only 1, 1, 1")
    if x.dim() != 5 or weight.dim() != 5:
        unsupported(f"5-D input and weight expected, got {tuple(x.shape)} and {tuple(weight.shape)}")
    if len(padding) != 3 or padding[0] != 0 or min(padding) < 0:
        unsupported(f"padding {padding}: time padding must be 0 (the input holds the causal frames)")
    cout, cin, kt, kh, kw = weight.shape
    if cin != x.shape[1] or kt not in (1, 3) or kh != kw or kh not in (1, 3):
        unsupported(f"weight {tuple(weight.shape)} for input {tuple(x.shape)}: kernels (1|3, k, k), k 1 or 3")
    if x.shape[1] > 1 and x.stride(1) != 1:
        unsupported("input not channels-last (channel stride must be 1: channels_last_3d or a crop of it)")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        unsupported(f"dtype {x.dtype}")
    if bias is not None and bias.numel() != cout:
        unsupported(f"bias of {bias.numel()} elements for {cout} output channels")
    if not (x.is_cuda or interpreting()):
        unsupported("CPU tensors need TRITON_INTERPRET=1")
    t_out, h_out, w_out = _out_size(x, kt, kh, padding)
    if min(t_out, h_out, w_out) <= 0:
        unsupported(f"input {tuple(x.shape)} too small for kernel {(kt, kh, kw)} with padding {padding}")
    # offsets inside one frame are int32 (the frame offsets are int64)
    reach = (h_out + kh) * abs(x.stride(3)) + (w_out + kw) * abs(x.stride(4)) + cin
    if max(reach, h_out * w_out * cout) >= 2**31:
        unsupported("a frame of more than 2**31 elements")


def _out_size(x, kt, k, padding) -> tuple[int, int, int]:
    return x.shape[2] - kt + 1, x.shape[3] + 2 * padding[1] - k + 1, x.shape[4] + 2 * padding[2] - k + 1


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int, int],
           config: dict | None = None, *, packed: torch.Tensor | None = None,
           stride=1, dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=padding)`` for the cases above (ValueError for the others).

    ``config``: BLOCK_M, BLOCK_N (an upper bound: at most the next power of two of Cout, at least
    16), BLOCK_K, num_warps, num_stages, T_BLOCK (2: two output frames a program, kt=3 only); default
    ``CONFIGS[0]``. ``packed``: :func:`pack_weight` of ``weight`` in x's dtype, to skip packing it per call.
    """
    _check(x, weight, bias, tuple(padding), stride, dilation, groups)
    cfg = dict(DEFAULT, **(config or {}))
    cout, cin, kt, ks, _ = weight.shape
    nb, _, t, h, w = x.shape
    t_out, h_out, w_out = _out_size(x, kt, ks, padding)
    if packed is None:
        packed = pack_weight(weight, x.dtype)
    elif packed.shape != (kt, ks, ks, cin, cout) or packed.dtype != x.dtype or not packed.is_contiguous():
        raise ValueError(f"conv3d_triton: packed weights {tuple(packed.shape)} {packed.dtype}: not pack_weight's")
    if bias is not None:
        bias = bias.reshape(-1).contiguous()
    y = torch.empty((nb, cout, t_out, h_out, w_out), device=x.device, dtype=x.dtype,
                    memory_format=torch.channels_last_3d)
    if y.numel() == 0:
        return y
    block_n = max(16, min(cfg["BLOCK_N"], triton.next_power_of_2(cout)))
    t_block = cfg["T_BLOCK"] if kt == 3 else 1
    blocks = triton.cdiv(h_out * w_out, cfg["BLOCK_M"]) * triton.cdiv(t_out, t_block) * triton.cdiv(cout, block_n)
    kernel()[(nb * blocks,)](
        x, packed, bias if bias is not None else packed, y,
        t_out, h, w, h_out, w_out, cin, cout, padding[1], padding[2],
        *(x.stride(d) for d in (0, 2, 3, 4)), *(y.stride(d) for d in (0, 2, 3, 4)),
        KT=kt, KS=ks, T_BLOCK=t_block, HAS_BIAS=bias is not None, EVEN_C=cin % cfg["BLOCK_K"] == 0,
        # float32 inputs: exact float32 products, as F.conv3d (tensor-core TF32 would lose 13 bits)
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=block_n, BLOCK_K=cfg["BLOCK_K"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return y
