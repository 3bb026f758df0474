"""CPU tests of the ``triton_q8`` attention backend: its Triton kernels run under ``TRITON_INTERPRET=1``
against a float64 reference; its dispatch facts and bench run as plain Python (the registry backend
and the tuner: ``test_attention_triton_q8.py``).

What the interpreter does not cover: GPU code generation and speed (the interpreter computes the same
algorithm with numpy), Hopper's reduced-precision FP8 accumulation (numpy accumulates exactly), the
hardware float32 -> e4m3 cast (the kernels round to the e4m3 grid themselves there, see
``triton_q8_kernels``). ``bench/triton_q8.py`` measures those on a GPU.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch

from wan_accel.attention import triton_q8_tune as tune
from wan_accel.attention.contract import AttnCall
from wan_accel.attention.triton_q8_tune import Config

REPO = Path(__file__).resolve().parent.parent
KERNELS = "wan_accel.attention.triton_q8_kernels"

# (cosine >=, relative L2 <=) against float64 on random inputs; measured 0.99935/0.036, 0.99995/0.011
# and 0.99865/0.052 over the shapes below. A broken quantisation (no K smoothing on a K with a large
# mean, a wrong scale, an unmasked tail block) lands far outside them.
BOUNDS = {("int8", "fp8"): (0.9988, 0.045), ("int8", "16bit"): (0.9998, 0.015), ("fp8", "fp8"): (0.998, 0.06)}
KINDS = list(BOUNDS)


@pytest.fixture(scope="module")
def q8():
    """``wan_accel.attention.triton_q8`` with its kernels built for the Triton interpreter."""
    pytest.importorskip("triton", reason="triton is not installed: these tests run its interpreter on the CPU")
    old_env = os.environ.get("TRITON_INTERPRET")
    old_kernels = sys.modules.pop(KERNELS, None)
    os.environ["TRITON_INTERPRET"] = "1"
    mod = importlib.import_module("wan_accel.attention.triton_q8")
    mod.reset()
    assert mod.interpreted()
    yield mod
    sys.modules.pop(KERNELS, None)  # a later import builds GPU kernels again
    if old_kernels is not None:
        sys.modules[KERNELS] = old_kernels
    if old_env is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old_env
    mod.reset()


def reference(q, k, v):
    q, k, v = (t.double() for t in (q, k, v))
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v


def errors(out, ref, center=None) -> tuple[float, float]:
    got, ref = out.double(), ref.double()
    if center is not None:
        got, ref = got - center, ref - center
    got, ref = got.flatten(), ref.flatten()
    cos = float(torch.nn.functional.cosine_similarity(got, ref, dim=0))
    return cos, float((got - ref).norm() / ref.norm())


def assert_close(out, ref, kinds, center=None):
    assert bool(torch.isfinite(out).all())
    cos, rel = errors(out, ref, center)
    min_cos, max_rel = BOUNDS[kinds]
    assert cos >= min_cos and rel <= max_rel, f"{kinds}: cosine {cos:.6f}, relative error {rel:.4f}"


def comfy_qkv(b, heads, lq, lk, d, dtype, seed=0):
    """q/k/v as ComfyUI hands them over: (B, L, H*D), here sliced out of one fused projection (strided),
    viewed as (B, H, L, D)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, heads * d, generator=g).to(dtype)
    kv = torch.randn(b, lk, 2, heads * d, generator=g).to(dtype)
    view = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    return view(q), view(kv[:, :, 0]), view(kv[:, :, 1])


# ---------------------------------------------------------------------------------------------
# the kernel against float64
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kinds", KINDS, ids=lambda k: "/".join(k))
@pytest.mark.parametrize("b,heads,lq,lk,d,dtype,cfg", [
    (1, 2, 37, 37, 64, torch.bfloat16, Config(64, 64, 4, 2)),
    (1, 2, 130, 130, 128, torch.float16, Config(64, 64, 4, 2, use_tma=True)),
    (2, 3, 100, 77, 64, torch.bfloat16, Config(128, 128, 4, 2)),  # cross-attention shape, both tails
    (1, 1, 300, 300, 128, torch.bfloat16, Config(128, 64, 4, 2, use_tma=True)),
], ids=["l37-d64-bf16", "l130-d128-fp16-tma", "b2h3-lq100-lk77", "l300-d128-tma"])
def test_matches_float64_on_comfy_layout(q8, kinds, b, heads, lq, lk, d, dtype, cfg):
    q, k, v = comfy_qkv(b, heads, lq, lk, d, dtype)
    assert not k.is_contiguous()
    out = q8.attention(q, k, v, qk=kinds[0], pv=kinds[1], config=cfg)
    assert out.shape == (b, heads, lq, d) and out.dtype == dtype
    assert out.transpose(1, 2).is_contiguous()  # the caller's (B, L, H*D) reshape is free
    assert_close(out, reference(q, k, v), kinds)


@pytest.mark.parametrize("kinds", KINDS, ids=lambda k: "/".join(k))
@pytest.mark.parametrize("cfg", [
    Config(64, 64, 4, 2, k_block=True),
    Config(64, 128, 4, 2, use_tma=True, k_block=True, i2f_add=True),
    Config(32, 64, 4, 3, k_block=True, i2f_add=True),
], ids=["kb", "kb-i2fadd-tma", "kb-i2fadd-m32"])
@pytest.mark.parametrize("lq,lk", [(37, 37), (100, 300)])
def test_block_key_scales_keep_the_accuracy(q8, kinds, cfg, lq, lk):
    """One K scale per 128 keys (with the scores kept biased by 1.5 * 2^23 and unbiased inside the exponent's
    FMA) keeps the kinds' accuracy, with partial and several key blocks."""
    q, k, v = comfy_qkv(1, 2, lq, lk, 64, torch.bfloat16, seed=21)
    out = q8.attention(q, k, v, qk=kinds[0], pv=kinds[1], config=cfg)
    assert_close(out, reference(q, k, v), kinds)


def test_block_key_scales_are_one_per_128_keys(q8):
    """``k_block`` writes the block's largest magnitude as every key's scale; per-key scales differ."""
    g = torch.Generator().manual_seed(22)
    k = torch.randn(1, 2, 300, 64, generator=g) * torch.linspace(0.1, 3, 300)[:, None]
    v = torch.randn(1, 2, 300, 64, generator=g)
    per_key = q8.quantize_kv(k, v, False, True).k_scale
    block = q8.quantize_kv(k, v, False, True, k_block=True).k_scale
    assert block.shape == per_key.shape == (1, 2, 384)
    for start in (0, 128, 256):
        valid = slice(start, min(start + 128, 300))
        assert torch.all(block[..., valid] == per_key[..., valid].amax(dim=-1, keepdim=True))
    assert not torch.all(per_key[..., :128] == per_key[..., :1])


@pytest.mark.parametrize("lq,lk", [(1, 1), (33, 260), (64, 128)])
def test_contiguous_bhld_and_lengths(q8, lq, lk):
    """skip_reshape layout (contiguous (B, H, L, D)); one token; lengths that are and are not block multiples."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g).to(torch.float16) for n in (lq, lk, lk))
    out = q8.attention(q, k, v, config=Config(32, 64, 4, 2))
    assert_close(out, reference(q, k, v), q8.kinds(None))


@pytest.mark.parametrize("kinds", [("int8", "fp8"), ("int8", "16bit")], ids=lambda k: "/".join(k))
def test_key_channel_offsets_are_smoothed_away(q8, kinds):
    """A large per-channel mean on K would eat the 8-bit range; subtracting it changes no softmax."""
    q, k, v = comfy_qkv(1, 2, 130, 130, 64, torch.bfloat16, seed=4)
    k = (k.float() + 20 * torch.randn(1, 2, 1, 64, generator=torch.Generator().manual_seed(5))).to(k.dtype)
    out = q8.attention(q, k, v, qk=kinds[0], pv=kinds[1], config=Config(64, 64, 4, 2))
    assert_close(out, reference(q, k, v), kinds)


def test_value_channel_offsets_are_smoothed_away(q8):
    """FP8 P·V quantises V minus its channel means and adds them back; judged on the output's deviation
    from those means (the offsets themselves are exact), fp16 so the output's own rounding stays small."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 130, 128, generator=g) for _ in range(3))
    v = (v + 6 * torch.randn(1, 2, 1, 128, generator=g)).half()
    q, k = (2 * q).half(), k.half()
    out = q8.attention(q, k, v, qk="int8", pv="fp8", config=Config(64, 64, 4, 2))
    assert_close(out, reference(q, k, v), ("int8", "fp8"), center=v.double().mean(dim=2, keepdim=True))


def test_dominant_keys_do_not_overflow(q8):
    """Scores in the thousands: the running max keeps exp2 finite; each query picks its matching key."""
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 2, 96, 64, generator=g)
    perm = torch.randperm(96, generator=g)
    k = 40 * q[:, :, perm] + torch.randn(1, 2, 96, 64, generator=g)
    v = torch.randn(1, 2, 96, 64, generator=g)
    q, k, v = (t.bfloat16() for t in (q, k, v))
    ref = reference(q, k, v)
    for kinds in KINDS:
        out = q8.attention(q, k, v, qk=kinds[0], pv=kinds[1], config=Config(64, 64, 4, 2))
        assert_close(out, ref, kinds)


@pytest.mark.parametrize("pv", ["fp8", "16bit"])
def test_int8_scores_converted_by_addition_are_exact(q8, pv):
    """``i2f_add`` turns the int32 scores into float32 by an integer add: the same output bit for bit,
    also at the largest possible score (every product 127 * 127)."""
    q, k, v = comfy_qkv(1, 2, 100, 150, 64, torch.bfloat16, seed=13)
    q[:, :, :5] = 3.0  # rows that quantise to all 127 ...
    k[:, :, :7] = 2.0  # ... against keys that do too: the score is 64 * 127 * 127 (K's mean moves it a bit)
    plain = q8.attention(q, k, v, qk="int8", pv=pv, config=Config(64, 64, 4, 2))
    added = q8.attention(q, k, v, qk="int8", pv=pv, config=Config(64, 64, 4, 2, i2f_add=True))
    assert torch.equal(plain, added)
    assert_close(added, reference(q, k, v), ("int8", pv))


def test_value_mean_below_the_input_grid_is_not_subtracted(q8):
    """The FP8 P·V accuracy bug of the first GPU run (cosine 0.9985 at Wan 14B on random bf16 inputs):
    V's per-channel mean over 83k random tokens is tiny next to the spacing of bf16 inputs, so
    subtracting it moves almost no input across an e4m3 rounding boundary; the quantised values
    ignore the shift while the mean is added back exactly, biasing each channel by its own mean --
    about the size of the signal when attention is spread over many keys. Here the same at 257 keys:
    uniform attention (q = 0) over pairs +w, -w and one token of 0.5, so the exact output is
    0.5 / 257 per channel, a shift of 0.2 e4m3 steps. With the mean subtracted anyway the output
    comes out near twice that."""
    g = torch.Generator().manual_seed(12)
    w = torch.randn(128, 64, generator=g).clamp(-3.5, 3.5)
    w[0] = 4.0  # every channel's range is exactly +-4: 0.5 lands on the e4m3 grid (56 of 448)
    v = torch.cat([w, -w, torch.full((1, 64), 0.5)]).reshape(1, 1, 257, 64).bfloat16()
    k = torch.randn(1, 1, 257, 64, generator=g).bfloat16()
    q = torch.zeros(1, 1, 64, 64, dtype=torch.bfloat16)
    out = q8.attention(q, k, v, qk="int8", pv="fp8", config=Config(64, 64, 4, 2))
    ref = reference(q, k, v)
    assert_close(out, ref, ("int8", "fp8"))
    torch.testing.assert_close(out.double(), ref, rtol=2 ** -7, atol=0)


@pytest.mark.parametrize("pv", ["fp8", "16bit"])
def test_small_attention_weights_keep_their_precision(q8, pv):
    """A tail of keys at 1e-3 and 1e-4 of the top weight, carrying +w and -w: FP8 P·V stores P*448,
    so those weights stay normal e4m3 numbers instead of flushing to zero (which would drop 9% of w)."""
    g = torch.Generator().manual_seed(9)
    n = 150
    q = 0.1 * torch.randn(1, 1, 64, 64, generator=g)
    q[..., 0] = 8.0  # score of a key = its first channel (8 * c / sqrt(64))
    k = 0.1 * torch.randn(1, 1, 1 + 2 * n, 64, generator=g)
    k[0, 0, 0, 0], k[0, 0, 1:n + 1, 0], k[0, 0, n + 1:, 0] = 10.0, 10.0 - 7.1, 10.0 - 9.2
    w = torch.randn(64, generator=g)
    v = 0.05 * torch.randn(1, 1, 1 + 2 * n, 64, generator=g)
    v[0, 0, 0] += torch.randn(64, generator=g)
    v[0, 0, 1:n + 1] += w
    v[0, 0, n + 1:] -= w
    q, k, v = q.half(), k.half(), v.half()
    out = q8.attention(q, k, v, qk="int8", pv=pv, config=Config(64, 64, 4, 2))
    assert_close(out, reference(q, k, v), ("int8", pv))


@pytest.mark.parametrize("pv", ["fp8", "16bit"])
def test_zero_and_constant_inputs_stay_finite(q8, pv):
    """All-zero rows and a V without spread have zero range: the scales must not divide by it."""
    z = torch.zeros(1, 2, 70, 64, dtype=torch.bfloat16)
    out = q8.attention(z, z, z, pv=pv, config=Config(64, 64, 4, 2))
    assert bool((out == 0).all())
    const = torch.arange(64, dtype=torch.float32).div(8).expand(1, 2, 70, 64).bfloat16()
    q, k, _ = comfy_qkv(1, 2, 70, 70, 64, torch.bfloat16)
    out = q8.attention(q, k, const, pv=pv, config=Config(64, 64, 4, 2))
    torch.testing.assert_close(out.float(), const.float(), rtol=8e-3, atol=1e-3)


def test_scratch_is_released(q8, monkeypatch):
    """Nothing in the module keeps the quantised K/V (or the inputs) alive after a call."""
    held = []
    real = q8.quantize_kv

    def spy(*args, **kwargs):
        kv = real(*args, **kwargs)
        held.extend(weakref.ref(t) for t in (kv.k8, kv.k_scale, kv.v, kv.v_scale, kv.v_mean))
        return kv

    monkeypatch.setattr(q8, "quantize_kv", spy)
    q, k, v = (torch.randn(1, 2, 40, 64).bfloat16() for _ in range(3))
    out = q8.attention(q, k, v, config=Config(64, 64, 4, 2))
    del q, k, v
    assert held and all(ref() is None for ref in held)
    assert out.shape == (1, 2, 40, 64)


def test_head_chunks_bound_the_scratch_and_change_nothing(q8, monkeypatch):
    q, k, v = comfy_qkv(2, 3, 70, 70, 64, torch.bfloat16, seed=10)
    whole = q8.attention(q, k, v, config=Config(64, 64, 4, 2))
    heads_quantised = []
    real = q8.quantize_kv
    monkeypatch.setattr(q8, "quantize_kv", lambda k_, *a: heads_quantised.append(k_.shape[1]) or real(k_, *a))
    per_head_mb = 2 * 128 * (2 * 64 + 4) / 2**20  # batch 2, 128 padded keys, K8 + V8 + key scales
    monkeypatch.setenv(q8.SCRATCH_ENV, str(2.5 * per_head_mb))
    two_and_one = q8.attention(q, k, v, config=Config(64, 64, 4, 2))
    monkeypatch.setenv(q8.SCRATCH_ENV, "0")
    one_by_one = q8.attention(q, k, v, config=Config(64, 64, 4, 2))
    assert heads_quantised == [2, 1, 1, 1, 1]
    assert torch.equal(two_and_one, whole) and torch.equal(one_by_one, whole)
    monkeypatch.setenv(q8.SCRATCH_ENV, "lots")
    with pytest.raises(ValueError, match=q8.SCRATCH_ENV):
        q8.attention(q, k, v, config=Config(64, 64, 4, 2))


# ---------------------------------------------------------------------------------------------
# the backend interface: run, unsupported_reason, probe, reset
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_reshape,skip_output_reshape", [(False, False), (True, True), (False, True)])
def test_run_through_the_contract(q8, monkeypatch, skip_reshape, skip_output_reshape):
    monkeypatch.setenv(q8.MIN_KV_ENV, "1")
    monkeypatch.setenv(tune.CONFIG_ENV, "64,64,4,2")
    heads, d = 2, 64
    q, k, v = comfy_qkv(2, heads, 90, 90, d, torch.float16, seed=8)
    if not skip_reshape:
        q, k, v = (t.transpose(1, 2).reshape(t.shape[0], t.shape[2], heads * d) for t in (q, k, v))
    call = AttnCall.from_args((q, k, v, heads), {"skip_reshape": skip_reshape,
                                                 "skip_output_reshape": skip_output_reshape})
    assert q8.unsupported_reason(call) is None
    out = call.finish(q8.run(call))
    ref = reference(call.q, call.k, call.v)
    if not skip_output_reshape:
        assert out.shape == (2, 90, heads * d)
        ref = ref.transpose(1, 2).reshape(2, 90, heads * d)
    assert_close(out, ref, q8.kinds(None))


def call_of(lq=2048, lk=2048, d=64, dtype=torch.bfloat16, mask=None, precision=None):
    q = torch.zeros(1, lq, 2 * d, dtype=dtype)
    k = torch.zeros(1, lk, 2 * d, dtype=dtype)
    return AttnCall.from_args((q, k, k, 2), {"mask": mask, "attn_precision": precision})


def test_unsupported_reasons(q8, monkeypatch):
    assert q8.unsupported_reason(call_of()) is None
    assert "head dim" in q8.unsupported_reason(call_of(d=96))
    assert "float16/bfloat16" in q8.unsupported_reason(call_of(dtype=torch.float32))
    assert "mask" in q8.unsupported_reason(call_of(mask=torch.zeros(2048, 2048)))
    assert "attn_precision=float32" in q8.unsupported_reason(call_of(precision=torch.float32))
    short = q8.unsupported_reason(call_of(lk=512))  # Wan's text cross-attention
    assert "512 keys" in short and q8.MIN_KV_ENV in short
    monkeypatch.setenv(q8.MIN_KV_ENV, "256")
    assert q8.unsupported_reason(call_of(lk=512)) is None
    monkeypatch.setenv(q8.MIN_KV_ENV, "many")  # a reason, not an exception: the dispatcher asks outside its try
    assert "'many' is not a whole number" in q8.unsupported_reason(call_of(lk=512))
    monkeypatch.setattr(q8, "interpreted", lambda: False)
    assert "CUDA only" in q8.unsupported_reason(call_of())


def test_backend_constants(q8):
    assert q8.DTYPES == (torch.float16, torch.bfloat16) and q8.HEAD_DIMS == (64, 128)
    assert q8.MIN_CAPABILITY == (8, 0) and "Triton" in q8.DOC


def test_kinds_per_gpu_and_overrides(q8, monkeypatch):
    assert q8.kinds((8, 6)) == ("int8", "16bit")  # Ampere: no FP8 tensor cores
    assert q8.kinds((8, 9)) == ("int8", "fp8") and q8.kinds((9, 0)) == ("int8", "fp8")
    assert q8.kinds((10, 3)) == ("fp8", "fp8")
    # the tuner's P·V candidates: FP8 first where the GPU has it, 16-bit as the verified alternative
    assert q8.pv_choices((9, 0)) == ("fp8", "16bit") and q8.pv_choices((8, 6)) == ("16bit",)
    assert q8.pv_choices(None) == ("fp8",) and q8.pv_choices((9, 0), "16bit") == ("16bit",)
    assert {c.pv for c in tune.candidates((9, 0), 128, q8.pv_choices((9, 0)))} == {"fp8", "16bit"}
    monkeypatch.setenv(q8.PV_ENV, "16bit")
    monkeypatch.setenv(q8.QK_ENV, "fp8")
    assert q8.kinds((9, 0)) == ("fp8", "16bit") and q8.pv_choices((9, 0)) == ("16bit",)
    with pytest.raises(ValueError, match="FP8 needs compute capability"):
        q8.kinds((8, 6))
    monkeypatch.setenv(q8.QK_ENV, "int4")
    with pytest.raises(ValueError, match=q8.QK_ENV):
        q8.kinds((9, 0))
    monkeypatch.delenv(q8.QK_ENV)
    with pytest.raises(ValueError, match="kinds"):
        q8.attention(*(torch.zeros(1, 1, 4, 64).half() for _ in range(3)), qk="int8", pv="fp4")


def test_probe_without_cuda_or_triton(monkeypatch):
    from wan_accel.attention import triton_q8

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: probe() succeeds here")
    pytest.importorskip("triton", reason="triton is not installed")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        triton_q8.probe()
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="2.3.1"))
    with pytest.raises(ImportError, match="triton >= 3.0"):
        triton_q8.probe()
    monkeypatch.setitem(sys.modules, "triton", None)
    with pytest.raises(ImportError):
        triton_q8.probe()


def test_without_triton_nothing_claims_to_be_interpreted(monkeypatch):
    from wan_accel.attention import triton_q8

    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.delitem(sys.modules, KERNELS, raising=False)
    assert triton_q8.interpreted() is False
    assert "CUDA only" in triton_q8.unsupported_reason(call_of())


def test_importing_the_wrapper_needs_no_triton(monkeypatch):
    """The registry imports the wrapper at start-up; Triton is only needed once the kernel runs."""
    monkeypatch.setitem(sys.modules, "triton", None)
    spec = importlib.util.spec_from_file_location("wan_accel.attention.triton_q8_copy", REPO / "attention" / "triton_q8.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    assert mod.DTYPES and callable(mod.run)


def test_reset_forgets_picks(q8):
    q8.TUNER.picks["k"] = Config(64, 64, 4, 2)
    q8.TUNER.timings["k"] = {"x": 1.0}
    q8.reset()
    assert not q8.TUNER.picks and not q8.TUNER.timings


# ---------------------------------------------------------------------------------------------
# the bench runs (tiny, on the CPU) and writes what the GPU run will
# ---------------------------------------------------------------------------------------------
def test_bench_small_writes_results(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    out = tmp_path / "q8.json"
    env = {**os.environ, "WAN_ACCEL_TRITON_Q8_CACHE": ""}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "triton_q8.py"), "--small", "--shapes", "tiny",
                           "--out", str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    res = data["shapes"]["tiny"]
    assert res["sdpa"]["default"]["verified"] and res["sdpa_best_ms"] > 0
    configs = res["triton_q8"]["configs"]
    assert {(c["qk"], c["pv"]) for c in configs} >= set(KINDS) and len(configs) == len(data["grid"])
    assert all({"ms", "tflops", "cosine", "rel_error", "verified", "auto_would_pick"} <= set(c) for c in configs), configs
    assert all(c["auto_would_pick"] == (c["verified"] and c["ms"] < res["sdpa_best_ms"]) for c in configs)
    runtime = res["triton_q8"]["runtime"]
    assert res["triton_q8"]["best"]["verified"] and runtime["verified"] and runtime["picks"]
    assert "cosine" in res["triton_q8"]["structured"]
