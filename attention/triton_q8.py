"""``triton_q8``: our 8-bit attention kernel in Triton, in the spirit of SageAttention 2.

- **Q·K in 8 bits.** K minus its per-channel mean over the tokens (softmax does not change when
  every key moves by the same vector; it takes out the channel offsets that would waste the 8-bit
  range), then each token of Q and K gets its own scale: INT8 by default, FP8 e4m3 where INT8 is
  slow (``WAN_ACCEL_TRITON_Q8_QK``). Products are exact in int32 (or float32) and scaled once.
- **P·V in FP8** (sm89+): V minus its per-channel mean where that mean is a real offset (>= 1 % of
  the channel's range; added back at the end), one e4m3 scale per channel; P is stored as P*448 in
  e4m3; each key block's product starts from zero and is added to a float32 accumulator (Hopper's
  FP8 MMA keeps ~22 bits). 16-bit P·V (the only kind before sm89; a tuning candidate after, and the
  pick wherever FP8's output fails the check; or ``WAN_ACCEL_TRITON_Q8_PV=16bit``) casts P to V's
  dtype and reads V in place.
- **Layout.** Q, K, V are read through their strides (ComfyUI's ``(B, L, H*D)`` as ``(B, H, L, D)``
  views: no copies); the output is written straight into a ``(B, L, H, D)`` buffer, so the caller's
  reshape back to ``(B, L, H*D)`` is free. Scratch: K and V in 8 bits (one byte per element each,
  padded to 128 tokens) and a float32 scale per key, for as many heads at a time as fit
  ``WAN_ACCEL_TRITON_Q8_SCRATCH_MB`` (default 512); freed when the call returns.
- **Declines** (the dispatcher falls back): masks, head dims other than 64/128, float32 inputs or a
  float32 precision request, fewer keys than ``WAN_ACCEL_TRITON_Q8_MIN_KV`` (default 1024: Wan's
  cross-attention to 512 text / 257 image tokens is not worth quantising), GPUs below sm80.
- **Configs** are timed on the first call of each shape class and cached per GPU
  (:mod:`.triton_q8_tune`).

The kernels live in :mod:`.triton_q8_kernels` and are imported on first use, so importing this
module needs no Triton.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, replace

import torch

from .contract import AttnCall
from .triton_q8_tune import MAX_BLOCK_N, Config, Tuner, candidates, length_class, time_ms
from .verify import compare, reference_rows

DOC = ("ours: Triton kernel, 8-bit Q·K (INT8, per-token scales, K smoothed) and FP8 or 16-bit P·V with "
       "float32 accumulation; launch configs and the P·V kind tuned per GPU among those that pass verification "
       "(FP8 P·V needs sm89+); declines masks and short contexts (< 1024 keys)")
DTYPES = (torch.float16, torch.bfloat16)
HEAD_DIMS = (64, 128)
MIN_CAPABILITY = (8, 0)
QK_KINDS = ("int8", "fp8")
PV_KINDS = ("fp8", "16bit")
QK_ENV = "WAN_ACCEL_TRITON_Q8_QK"
PV_ENV = "WAN_ACCEL_TRITON_Q8_PV"
MIN_KV_ENV = "WAN_ACCEL_TRITON_Q8_MIN_KV"
DEFAULT_MIN_KV = 1024
INT8_SLOW = {(10, 3)}  # Blackwell Ultra: INT8 tensor throughput cut; FP8 is the fast 8-bit path there
QUANT_BLOCK = 64  # tokens per program of the K/V quantisation
MEAN_SAMPLES = 4096  # tokens the K and V means are taken over (any vector works; only the range matters)
E4M3_MAX = 448.0
# smallest |mean| / (max - min) of a V channel that is subtracted before FP8: at 1 % of the range the
# shift is >= 4.5 e4m3 units of the scaled values, several times a bf16 input's spacing there
V_SMOOTH_MIN = 0.01
LOG2E = 1.4426950408889634
MAX_GRID_Y = 65535  # batch * heads is the grid's second axis
SCRATCH_ENV = "WAN_ACCEL_TRITON_Q8_SCRATCH_MB"
DEFAULT_SCRATCH_MB = 512  # 8-bit K and V of ~24 heads at Wan 14B's 82,992 tokens
KERNEL_VERSION = "q8v3"  # part of the tuning cache key: bump when the kernels change

TUNER = Tuner()


def _kernels():
    return importlib.import_module(".triton_q8_kernels", __package__)


def interpreted() -> bool:
    """True when the kernels were built under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    try:
        return "Interpreted" in type(_kernels().attn_kernel).__name__
    except ImportError:  # no triton: nothing runs anywhere, and probe() says so
        return False


def probe() -> None:
    """Raise when the kernel cannot run here: no Triton 3.x, no CUDA, GPU older than sm80."""
    triton = importlib.import_module("triton")
    major = int(str(triton.__version__).split(".")[0])
    if major < 3:
        raise ImportError(f"triton_q8 needs triton >= 3.0, found {triton.__version__}")
    if not hasattr(torch, "float8_e4m3fn"):
        raise RuntimeError("this torch has no float8_e4m3fn")
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    cap = torch.cuda.get_device_capability()
    if cap < MIN_CAPABILITY:
        raise RuntimeError(f"triton_q8 needs compute capability >= {MIN_CAPABILITY}, this GPU is {cap}")


def min_kv_len() -> int | None:
    """The fewest keys taken (``WAN_ACCEL_TRITON_Q8_MIN_KV``), or None when the variable is malformed."""
    value = os.environ.get(MIN_KV_ENV, "").strip()
    try:
        return int(value) if value else DEFAULT_MIN_KV
    except ValueError:
        return None


def kinds(capability: tuple[int, int] | None) -> tuple[str, str]:
    """(Q·K kind, preferred P·V kind) for a GPU (``None``: the CPU interpreter), unless the env vars say;
    :func:`pv_choices` lists the P·V kinds the tuner may pick from."""
    qk = os.environ.get(QK_ENV) or ("fp8" if capability in INT8_SLOW else "int8")
    pv = os.environ.get(PV_ENV) or ("fp8" if capability is None or capability >= (8, 9) else "16bit")
    if qk not in QK_KINDS:
        raise ValueError(f"{QK_ENV}={qk!r}: expected one of {', '.join(QK_KINDS)}")
    if pv not in PV_KINDS:
        raise ValueError(f"{PV_ENV}={pv!r}: expected one of {', '.join(PV_KINDS)}")
    if capability is not None and capability < (8, 9) and "fp8" in (qk, pv):
        raise ValueError(f"triton_q8: FP8 needs compute capability >= (8, 9), this GPU is {capability}; "
                         f"unset {QK_ENV} / {PV_ENV}")
    return qk, pv


def pv_choices(capability: tuple[int, int] | None, pv: str | None = None) -> tuple[str, ...]:
    """The P·V kinds the tuner may pick from, preferred first: ``pv`` or ``WAN_ACCEL_TRITON_Q8_PV`` when
    given; on an FP8 GPU FP8 then 16-bit (FP8 is taken only where its output passes the check); else
    16-bit. The CPU interpreter runs the preferred kind only."""
    preferred = pv or kinds(capability)[1]
    if pv or os.environ.get(PV_ENV) or capability is None or preferred == "16bit":
        return (preferred,)
    return (preferred, "16bit")


def unsupported_reason(call: AttnCall) -> str | None:
    """None when ``triton_q8`` takes the call; otherwise why not, in one line."""
    dev = call.device
    if dev.type != "cuda" and not (dev.type == "cpu" and interpreted()):
        return f"triton_q8 runs on CUDA only, not {dev.type}"
    if call.dtype not in DTYPES:
        return f"triton_q8 takes float16/bfloat16, not {str(call.dtype).replace('torch.', '')}"
    if call.head_dim not in HEAD_DIMS or call.v.shape[-1] != call.head_dim:
        return f"triton_q8 takes head dim 64 or 128, not {call.head_dim} (v: {call.v.shape[-1]})"
    if call.mask is not None:
        return "triton_q8 would ignore the attention mask"
    if call.wants_fp32:
        return "triton_q8 quantises; the call asks for attn_precision=float32"
    # a reason, never an exception: the dispatcher asks before its try block, on every new shape
    min_kv = min_kv_len()
    if min_kv is None:
        return f"triton_q8: {MIN_KV_ENV}={os.environ.get(MIN_KV_ENV)!r} is not a whole number of keys; fix or unset it"
    if call.k_len < min_kv:
        return (f"triton_q8 skips {call.k_len} keys (< {min_kv}, {MIN_KV_ENV}): "
                "quantising a short context costs more than it saves")
    if call.batch * call.heads > MAX_GRID_Y:
        return f"triton_q8 takes batch*heads <= {MAX_GRID_Y}, not {call.batch * call.heads}"
    if dev.type == "cuda" and torch.cuda.get_device_capability(dev) < MIN_CAPABILITY:
        return f"triton_q8 needs compute capability >= {MIN_CAPABILITY}"
    return None


def run(call: AttnCall) -> torch.Tensor:
    return attention(call.q, call.k, call.v)


def reset() -> None:
    """Forget the tuned configs (memory only; the file is reread on the next pick)."""
    TUNER.reset()


@dataclass
class QuantKV:
    """Quantised keys and values of one call (freed with it)."""
    k8: torch.Tensor  # (B, H, LKP, D) int8 or e4m3, token-padded with zeros
    k_scale: torch.Tensor  # (B, H, LKP) float32
    v: torch.Tensor  # FP8 P·V: (B, H, D, LKP) e4m3 (V transposed); 16-bit P·V: the caller's V
    v_scale: torch.Tensor  # (B, H, D) float32 (FP8 P·V; else a placeholder)
    v_mean: torch.Tensor  # (B, H, D) float32 (FP8 P·V; else a placeholder)
    lk: int  # keys
    padded_len: int


def quantize_kv(k: torch.Tensor, v: torch.Tensor, qk_fp8: bool, pv_fp8: bool, k_block: bool = False) -> QuantKV:
    """K (and for FP8 P·V, V) in 8 bits; ``k_block``: one K scale per ``MAX_BLOCK_N`` keys, written for
    each of them (a block of the attention kernel then reads one)."""
    b, h, lk, d = k.shape
    lkp = -(-lk // MAX_BLOCK_N) * MAX_BLOCK_N
    step = max(1, lk // MEAN_SAMPLES)
    k_mean = k[:, :, ::step].mean(dim=2, dtype=torch.float32).contiguous()
    k8 = torch.empty((b, h, lkp, d), device=k.device, dtype=torch.float8_e4m3fn if qk_fp8 else torch.int8)
    k_scale = torch.empty((b, h, lkp), device=k.device, dtype=torch.float32)
    if pv_fp8:
        v_min, v_max = (t.float() for t in torch.aminmax(v, dim=2))
        v_mean = v[:, :, ::step].mean(dim=2, dtype=torch.float32)
        # a channel's mean is subtracted only when it is a real offset: a shift far below the spacing
        # of the (bf16) inputs moves almost none of them across an e4m3 rounding boundary, so the
        # 8-bit values ignore it while the kernel adds it back exactly (a bias the size of the output
        # of diffuse attention; see test_value_mean_below_the_input_grid_is_not_subtracted)
        v_mean = torch.where(v_mean.abs() >= V_SMOOTH_MIN * (v_max - v_min), v_mean, 0.0).contiguous()
        amax = torch.maximum(v_max - v_mean, v_mean - v_min).clamp_min(1e-20)
        v_inv = (E4M3_MAX / amax).contiguous()
        v_scale = (amax / E4M3_MAX).contiguous()
        v_out = torch.empty((b, h, d, lkp), device=v.device, dtype=torch.float8_e4m3fn)
    else:
        v_mean = v_inv = v_scale = k_mean  # not read
        v_out = v
    block = MAX_BLOCK_N if k_block else QUANT_BLOCK
    _kernels().quant_kv_kernel[(lkp // block, b * h)](
        k, v, k_mean, v_mean, v_inv, k8, k_scale, v_out,
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        h, lk, lkp,
        HEAD_DIM=d, BLOCK=block, QK_FP8=qk_fp8, PV_FP8=pv_fp8, INTERPRETED=interpreted(), K_BLOCK_SCALE=k_block,
        num_warps=8 if k_block else 4)
    return QuantKV(k8, k_scale, v_out, v_scale, v_mean, lk, lkp)


def launch_attention(q: torch.Tensor, kv: QuantKV, out: torch.Tensor, cfg: Config, qk_fp8: bool, pv_fp8: bool,
                     capability: tuple[int, int] | None):
    """One launch of the attention kernel into ``out`` ((B, H, Lq, D), any strides with D contiguous);
    returns Triton's compiled kernel (registers, spills, shared memory) or None under the interpreter."""
    b, h, lq, d = q.shape
    k_arg, v_arg = kv.k8, kv.v
    if cfg.use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        k_arg = TensorDescriptor(kv.k8, [b * h * kv.padded_len, d], [d, 1], [cfg.block_n, d])
        if pv_fp8:
            v_arg = TensorDescriptor(kv.v, [b * h * d, kv.padded_len], [kv.padded_len, 1], [d, cfg.block_n])
        else:  # the caller's V in place when TMA can address it (16-byte aligned start and strides)
            v16 = kv.v
            size = v16.element_size()
            if v16.data_ptr() % 16 or any(st * size % 16 for st in v16.stride()[:-1]):
                v16 = v16.contiguous()
            v_arg = TensorDescriptor(v16, list(v16.shape), list(v16.stride()), [1, 1, cfg.block_n, d])
    v_strides = (0, 0, 0) if pv_fp8 else (kv.v.stride(0), kv.v.stride(1), kv.v.stride(2))
    # Ada (and anything but Hopper, where it is Triton's default) would fold the add into the MMA
    pv_imprecise = cfg.block_n if pv_fp8 and capability is not None and capability != (9, 0) else 0
    return _kernels().attn_kernel[(-(-lq // cfg.block_m), b * h)](
        q, k_arg, kv.k_scale, v_arg, kv.v_scale, kv.v_mean, out,
        q.stride(0), q.stride(1), q.stride(2), *v_strides, out.stride(0), out.stride(1), out.stride(2),
        h, lq, kv.lk, kv.padded_len, LOG2E / math.sqrt(d),
        HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, QK_FP8=qk_fp8, PV_FP8=pv_fp8,
        USE_TMA=cfg.use_tma, WARP_SPECIALIZE=cfg.warp_specialize, INTERPRETED=interpreted(),
        PV_IMPRECISE=pv_imprecise, I2F_ADD=cfg.i2f_add and not qk_fp8, K_BLOCK=cfg.k_block, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def tune_key(q: torch.Tensor, k: torch.Tensor, qk: str, pv_kinds: tuple[str, ...], capability) -> str:
    import triton

    b, h, lq, d = q.shape
    name = torch.cuda.get_device_name(q.device) if q.device.type == "cuda" else "cpu"
    arch = f"sm{capability[0]}{capability[1]}" if capability else "interpreter"
    return (f"{KERNEL_VERSION}|{name}|{arch}|triton {triton.__version__}|d{d}|"
            f"{qk}/{'+'.join(pv_kinds)}|bh{length_class(b * h)}|lq{length_class(lq)}|lk{length_class(k.shape[2])}")


def scratch_budget_bytes() -> int:
    value = os.environ.get(SCRATCH_ENV, "")
    try:
        return int(float(value) * 2**20) if value else DEFAULT_SCRATCH_MB * 2**20
    except ValueError:
        raise ValueError(f"{SCRATCH_ENV}={value!r}: expected megabytes") from None


def heads_per_chunk(b: int, h: int, lk: int, d: int, pv_fp8: bool) -> int:
    """Heads whose 8-bit K (and V) fit the scratch budget together; at least one."""
    lkp = -(-lk // MAX_BLOCK_N) * MAX_BLOCK_N
    per_head = b * lkp * ((2 * d + 4) if pv_fp8 else (d + 4))  # K8 (+ V8) + the key scales
    return max(1, min(h, scratch_budget_bytes() // per_head))


def tuned_config(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, qk: str,
                 pv_kinds: tuple[str, ...], capability) -> Config:
    """The launch config (with its P·V kind) for this call's shape class: the tuner's pick among the
    candidates whose output on these heads passes the dispatcher's accuracy check."""
    qk_fp8 = qk == "fp8"
    quantised: dict[tuple[str, bool], QuantKV] = {}
    reference = None

    def run_one(cfg: Config):
        pv_fp8 = cfg.pv == "fp8"
        kind = (cfg.pv, cfg.k_block)
        if kind not in quantised:
            quantised.clear()  # candidates come grouped by kind: one kind's scratch at a time
            quantised[kind] = quantize_kv(k, v, qk_fp8, pv_fp8, cfg.k_block)
        return launch_attention(q, quantised[kind], out, cfg, qk_fp8, pv_fp8, capability)

    def check(cfg: Config) -> str | None:
        nonlocal reference
        run_one(cfg)  # compiles it, too
        if reference is None:
            reference = reference_rows(AttnCall(q, k, v, q.shape[1], None, None, False, False))
        verdict = compare(out, *reference)
        return None if verdict.ok else verdict.describe()

    cands = [c if c.pv else replace(c, pv=pv_kinds[0]) for c in candidates(capability, q.shape[-1], pv_kinds)]
    cfg = TUNER.pick(tune_key(q, k, qk, pv_kinds, capability), cands, lambda c: time_ms(lambda: run_one(c)), check)
    return cfg if cfg.pv else replace(cfg, pv=pv_kinds[0])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, qk: str | None = None, pv: str | None = None,
              config: Config | None = None) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(D)) v for (B, H, L, D) tensors (views welcome); returns (B, H, Lq, D), a view
    of a (B, Lq, H, D) buffer. ``qk``/``pv`` override the GPU's kinds (``config.pv``, when set, wins
    over ``pv``); ``config`` skips tuning. Heads go through in chunks whose quantised K/V fit
    ``WAN_ACCEL_TRITON_Q8_SCRATCH_MB`` (the result does not depend on the chunking: every scale is per
    batch and head); the tuner runs its candidates on the first chunk."""
    b, h, lq, d = q.shape
    capability = torch.cuda.get_device_capability(q.device) if q.device.type == "cuda" else None
    default_qk, _ = kinds(capability)
    qk = qk or default_qk
    if qk not in QK_KINDS or (pv is not None and pv not in PV_KINDS):
        raise ValueError(f"triton_q8 kinds qk={qk!r} pv={pv!r}: expected {QK_KINDS} and {PV_KINDS}")
    pv_kinds = pv_choices(capability, pv)
    q, k, v = _unit_stride(q), _unit_stride(k), _unit_stride(v)
    out = torch.empty((b, lq, h, d), device=q.device, dtype=q.dtype).transpose(1, 2)
    if lq == 0:
        return out
    qk_fp8 = qk == "fp8"
    step = heads_per_chunk(b, h, k.shape[2], d, "fp8" in pv_kinds)
    if config is None:
        first = slice(0, min(h, step))
        config = tuned_config(q[:, first], k[:, first], v[:, first], out[:, first], qk, pv_kinds, capability)
    elif not config.pv:
        config = replace(config, pv=pv_kinds[0])
    pv_fp8 = config.pv == "fp8"
    for h0 in range(0, h, step):
        heads = slice(h0, min(h, h0 + step))
        kv = quantize_kv(k[:, heads], v[:, heads], qk_fp8, pv_fp8, config.k_block)
        launch_attention(q[:, heads], kv, out[:, heads], config, qk_fp8, pv_fp8, capability)
        del kv  # the next chunk reuses the memory (same stream)
    return out
