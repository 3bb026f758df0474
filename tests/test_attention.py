"""CPU tests of the attention engine (wan_accel.attention): no GPU, no ComfyUI.

GPU-only backends are exercised through fake packages put in ``sys.modules`` (their glue: layout,
argument passing, mask handling, fallback), with the CUDA requirement lifted by monkeypatch.

Over 400 lines: the dispatcher's cases share its fake backends and packages.
"""
from __future__ import annotations

import copy
import logging
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from wan_accel.attention import TUNER, AttentionOverride, AttnCall, AutoTuner, Schedule, available, backends, parse_ranges
from wan_accel.attention.backends import cudnn_fp8, registry, sub_quad
from wan_accel.telemetry import phases

torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# an independent float64 statement of ComfyUI's contract
# ---------------------------------------------------------------------------------------------
def ref_attention(q, k, v, heads, mask=None, skip_reshape=False, skip_output_reshape=False):
    q, k, v = (t.double() for t in (q, k, v))
    if not skip_reshape:
        b, lq, hd = q.shape
        d = hd // heads
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).permute(0, 2, 1, 3) for t in (q, k, v))
    d = q.shape[-1]
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(d)
    if mask is not None:
        m = mask
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None]
        if m.dtype == torch.bool:
            s = s.masked_fill(~m, float("-inf"))
        else:
            s = s + m.double()
    out = torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v)
    if skip_output_reshape:
        return out
    b, h, lq, d = out.shape
    return out.permute(0, 2, 1, 3).reshape(b, lq, h * d)


def make_qkv(b=2, heads=3, lq=37, lk=37, d=32, skip_reshape=False, dtype=torch.float32):
    if skip_reshape:
        shapes = [(b, heads, lq, d), (b, heads, lk, d), (b, heads, lk, d)]
    else:
        shapes = [(b, lq, heads * d), (b, lk, heads * d), (b, lk, heads * d)]
    return [torch.randn(s, dtype=dtype) for s in shapes]


def must_not_run(*args, **kwargs):
    raise AssertionError("ComfyUI's function must not run when a backend takes the call")


def call(ov, q, k, v, heads, func=must_not_run, **kw):
    """Call the override the way ComfyUI's wrap_attn does."""
    kw.setdefault("transformer_options", {})
    return ov(func, q, k, v, heads=heads, _inside_attn_wrapper=True, **kw)


@pytest.fixture(autouse=True)
def fresh_probes():
    backends.reset_probes()
    TUNER.clear()
    yield
    backends.reset_probes()
    TUNER.clear()


@pytest.fixture
def notes():
    """The attention_backend telemetry notes emitted during the test."""
    events: list = []
    phases.add_listener(events.append)
    yield lambda: [e for e in events if e.get("name") == "attention_backend"]
    phases.remove_listener(events.append)


CPU_BACKENDS = ["sdpa", "sdpa_math", "sdpa_flash", "sub_quad"]


# ---------------------------------------------------------------------------------------------
# every backend that runs on CPU equals SDPA math in fp32
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("lq,lk,d", [(37, 37, 32), (64, 19, 64), (5, 130, 128)])
def test_cpu_backend_equals_sdpa_math_fp32(name, lq, lk, d):
    assert backends.get(name).available, backends.get(name).unavailable_reason()
    q, k, v = make_qkv(lq=lq, lk=lk, d=d, skip_reshape=True)
    c = AttnCall.from_args((q, k, v, 3), {"skip_reshape": True, "skip_output_reshape": True})
    assert backends.get(name).unsupported_reason(c) is None
    got = backends.get(name).run(c)
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        want = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got.double(), ref_attention(q, k, v, 3, skip_reshape=True, skip_output_reshape=True),
                               atol=2e-5, rtol=2e-5)


def test_sub_quad_chunks_under_a_tiny_budget_and_stays_exact():
    q, k, v = make_qkv(b=1, heads=2, lq=200, lk=300, d=16, skip_reshape=True)
    mask = torch.randn(1, 1, 200, 300)
    budget = 2 * 2 * 8 * 100  # forces key chunks of ~100 and one query row per chunk
    qc, kc = sub_quad.chunk_sizes(2, 200, 300, budget)
    assert kc < 300 and qc == 1
    got = sub_quad.attention(q, k, v, mask, budget_bytes=budget)
    want = ref_attention(q, k, v, 2, mask=mask, skip_reshape=True, skip_output_reshape=True)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)
    # with a generous budget the keys stay whole
    assert sub_quad.chunk_sizes(2, 200, 300, 2**30) == (200, 300)


def test_sub_quad_bool_mask_with_a_fully_masked_key_block():
    q, k, v = make_qkv(b=1, heads=1, lq=8, lk=200, d=16, skip_reshape=True)
    keep = torch.ones(1, 1, 8, 200, dtype=torch.bool)
    keep[..., :150] = False  # the first key chunks are entirely masked out
    got = sub_quad.attention(q, k, v, keep, budget_bytes=8 * 64)
    want = ref_attention(q, k, v, 1, mask=keep, skip_reshape=True, skip_output_reshape=True)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=2e-5)


# ---------------------------------------------------------------------------------------------
# the calling contract: layout flags x masks x positional/keyword arguments
# ---------------------------------------------------------------------------------------------
MASKS = {
    "none": lambda b, h, lq, lk: None,
    "2d_additive": lambda b, h, lq, lk: torch.randn(lq, lk),
    "3d_bool": lambda b, h, lq, lk: torch.rand(b, lq, lk) > 0.3,
    "4d_per_head": lambda b, h, lq, lk: torch.randn(b, h, lq, lk),
    "4d_key_padding": lambda b, h, lq, lk: torch.where(torch.arange(lk) < lk - 5, 0.0, float("-inf")).expand(b, 1, 1, lk),
}


@pytest.mark.parametrize("name", ["sdpa", "sdpa_math", "sub_quad"])
@pytest.mark.parametrize("skip_reshape", [False, True])
@pytest.mark.parametrize("skip_output_reshape", [False, True])
@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_contract_layouts_and_masks(name, skip_reshape, skip_output_reshape, mask_kind):
    b, h, lq, lk, d = 2, 3, 21, 17, 16
    q, k, v = make_qkv(b, h, lq, lk, d, skip_reshape=skip_reshape)
    mask = MASKS[mask_kind](b, h, lq, lk)
    ov = AttentionOverride(name, fallback="comfy_default", verify=False)
    out = call(ov, q, k, v, h, mask=mask, skip_reshape=skip_reshape, skip_output_reshape=skip_output_reshape)
    assert ov.last_used == name
    want = ref_attention(q, k, v, h, mask, skip_reshape, skip_output_reshape)
    assert out.shape == want.shape
    assert out.dtype == q.dtype
    torch.testing.assert_close(out.double(), want, atol=3e-5, rtol=3e-5)


def test_contract_positional_mask_and_heads():
    """Other models call optimized_attention(q, k, v, heads, mask) positionally."""
    q, k, v = make_qkv(1, 2, 9, 9, 8)
    mask = torch.randn(9, 9)
    ov = AttentionOverride("sub_quad", verify=False)
    out = ov(must_not_run, q, k, v, 2, mask, transformer_options={}, _inside_attn_wrapper=True)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2, mask), atol=3e-5, rtol=3e-5)


def test_bf16_in_bf16_out():
    q, k, v = make_qkv(1, 2, 33, 33, 64, dtype=torch.bfloat16)
    ov = AttentionOverride("sub_quad", verify=True)
    out = call(ov, q, k, v, 2)
    assert out.dtype == torch.bfloat16 and ov.last_used == "sub_quad"
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2), atol=2e-2, rtol=2e-2)


def test_comfy_default_passes_the_call_through_untouched():
    q, k, v = make_qkv(1, 2, 5, 5, 4)
    seen = {}

    def func(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return "from comfy"

    topts = {"block_index": 3}
    ov = AttentionOverride("comfy_default", fallback="comfy_default")
    out = ov(func, q, k, v, heads=2, transformer_options=topts, _inside_attn_wrapper=True)
    assert out == "from comfy"
    assert seen["args"][0] is q and seen["args"][2] is v
    assert seen["kwargs"] == {"heads": 2, "transformer_options": topts, "_inside_attn_wrapper": True}


# ---------------------------------------------------------------------------------------------
# fallbacks: package absent, unsupported inputs, errors, verification
# ---------------------------------------------------------------------------------------------
def test_missing_package_falls_back_and_logs_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "sageattention", None)  # import raises ImportError
    monkeypatch.setattr(registry, "need_cuda", lambda: None)
    reason = backends.get("sage").unavailable_reason()
    assert reason and "Error" in reason and "install sageattention" in reason
    ov = AttentionOverride("sage", fallback="sub_quad", verify=False)
    q, k, v = make_qkv(1, 2, 12, 12, 64)
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        for _ in range(3):
            out = call(ov, q, k, v, 2)
    assert ov.last_used == "sub_quad" and ov.counts == {"sub_quad": 3}
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2), atol=3e-5, rtol=3e-5)
    lines = [r.getMessage() for r in caplog.records if "sage unavailable" in r.getMessage()]
    assert len(lines) == 2  # the reason once, the fallback once (not per call)


@pytest.mark.parametrize("name,module", [("sage", "sageattention"), ("sage3", "sageattn3"), ("flash_attn", "flash_attn"),
                                         ("flash_attn_4", "flash_attn.cute"), ("xformers", "xformers.ops"),
                                         ("kitchen_int8", "comfy_kitchen"), ("cudnn_fp8", "cudnn")])
def test_every_package_backend_reports_absence(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)
    if name == "flash_attn":
        monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    monkeypatch.setattr(registry, "need_cuda", lambda: None)
    b = backends.get(name)
    assert not b.available
    assert "unavailable" in b.unavailable_reason()
    assert name not in available()


def _sdpa_bhld(q, k, v, mask=None):
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.float()
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)


class FakePackages:
    """Installs fake sageattention / flash_attn / comfy_kitchen / xformers that compute exact attention
    and record how they were called; lifts the CUDA requirement so the glue runs on the CPU."""

    def __init__(self, monkeypatch):
        self.calls = []
        mp = monkeypatch
        mp.setattr(registry, "need_cuda", lambda: None)
        for name in ("sage", "sage3", "flash_attn", "flash_attn_4", "xformers", "kitchen_int8"):
            mp.setattr(backends.get(name), "devices", ("cuda", "cpu"))
        mp.setattr(backends.get("sage3"), "min_capability", None)
        mp.setattr(backends.get("flash_attn_4"), "min_capability", None)
        sage = types.ModuleType("sageattention")

        def sageattn(q, k, v, tensor_layout="HND", is_causal=False, **kw):
            self.calls.append(("sage", tensor_layout, kw))
            assert not is_causal
            if tensor_layout == "NHD":
                return _sdpa_bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
            return _sdpa_bhld(q, k, v)

        sage.sageattn = sageattn
        mp.setitem(sys.modules, "sageattention", sage)

        fa = types.ModuleType("flash_attn")

        def flash_attn_func(q, k, v, causal=False, **kw):  # (B, L, H, D)
            self.calls.append(("flash_attn", tuple(q.shape), q.stride(-1)))
            assert q.stride(-1) == 1
            return _sdpa_bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

        fa.flash_attn_func = flash_attn_func
        mp.setitem(sys.modules, "flash_attn", fa)
        mp.setitem(sys.modules, "flash_attn_interface", None)

        cute = types.ModuleType("flash_attn.cute")

        def fa4_func(q, k, v, causal=False, **kw):  # (B, L, H, D); returns (out, lse) like flash-attn-4
            self.calls.append(("flash_attn_4", tuple(q.shape)))
            out = _sdpa_bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
            return out, None

        cute.flash_attn_func = fa4_func
        fa.cute = cute
        mp.setitem(sys.modules, "flash_attn.cute", cute)

        s3 = types.ModuleType("sageattn3")

        def sageattn3_blackwell(q, k, v, is_causal=False):  # (B, H, L, D) contiguous
            self.calls.append(("sage3", q.is_contiguous()))
            assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
            return _sdpa_bhld(q, k, v)

        s3.sageattn3_blackwell = sageattn3_blackwell
        mp.setitem(sys.modules, "sageattn3", s3)

        ck = types.ModuleType("comfy_kitchen")

        def int8_attention(q, k, v, *, scale=None, attn_mask=None):
            self.calls.append(("kitchen_int8", attn_mask is not None))
            return _sdpa_bhld(q, k, v, attn_mask)

        ck.int8_attention = int8_attention
        ck.int8_attention_is_available = lambda device=None: True
        mp.setitem(sys.modules, "comfy_kitchen", ck)

        xf = types.ModuleType("xformers")
        xops = types.ModuleType("xformers.ops")

        def memory_efficient_attention(q, k, v, attn_bias=None):
            self.calls.append(("xformers", None if attn_bias is None else tuple(attn_bias.shape)))
            m = None if attn_bias is None else attn_bias.float()
            return _sdpa_bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), m).transpose(1, 2)

        xops.memory_efficient_attention = memory_efficient_attention
        xf.ops = xops
        mp.setitem(sys.modules, "xformers", xf)
        mp.setitem(sys.modules, "xformers.ops", xops)
        backends.reset_probes()


@pytest.fixture
def fakes(monkeypatch):
    return FakePackages(monkeypatch)


@pytest.mark.parametrize("name", ["sage", "sage3", "flash_attn", "flash_attn_4", "kitchen_int8", "xformers"])
@pytest.mark.parametrize("skip_reshape", [False, True])
def test_present_package_glue(fakes, name, skip_reshape):
    lq = 1100 if name == "sage3" else 24  # sage3 declines <= 1024 queries
    q, k, v = make_qkv(2, 2, lq, lq, 64, skip_reshape=skip_reshape, dtype=torch.bfloat16)
    ov = AttentionOverride(name, fallback="sub_quad", verify=True)
    out = call(ov, q, k, v, 2, skip_reshape=skip_reshape)
    assert ov.last_used == name, ov.counts
    assert fakes.calls and fakes.calls[0][0] == name
    if name == "sage":  # handed over without a copy, in the layout its memory has
        assert fakes.calls[0][1] == ("HND" if skip_reshape else "NHD")
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2, skip_reshape=skip_reshape), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["sage", "flash_attn"])
def test_backend_that_would_ignore_a_mask_hands_it_over(fakes, name, caplog):
    q, k, v = make_qkv(1, 2, 16, 16, 64, dtype=torch.bfloat16)
    mask = torch.randn(16, 16, dtype=torch.bfloat16)
    ov = AttentionOverride(name, fallback="sub_quad", verify=False)
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        out = call(ov, q, k, v, 2, mask=mask)
    assert ov.last_used == "sub_quad" and fakes.calls == []
    assert any("would ignore the attention mask" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2, mask), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["kitchen_int8", "xformers"])
def test_backends_that_take_masks_get_them(fakes, name):
    q, k, v = make_qkv(2, 2, 16, 13, 64, dtype=torch.bfloat16)
    mask = torch.randn(2, 16, 13, dtype=torch.bfloat16)
    ov = AttentionOverride(name, fallback="comfy_default", verify=True)
    out = call(ov, q, k, v, 2, mask=mask)
    assert ov.last_used == name
    if name == "xformers":
        assert fakes.calls[0] == ("xformers", (2, 2, 16, 13))
    else:
        assert fakes.calls[0] == ("kitchen_int8", True)
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2, mask), atol=3e-2, rtol=3e-2)


def test_sage3_declines_short_sequences(fakes):
    ov = AttentionOverride("sage3", fallback="sub_quad", verify=False)
    q, k, v = make_qkv(1, 2, 64, 64, 64, dtype=torch.bfloat16)
    call(ov, q, k, v, 2)
    assert ov.last_used == "sub_quad" and fakes.calls == []


def test_fp8_quantisation_roundtrip():
    """cudnn_fp8's per-tensor quantisation: within e4m3's precision, no value past the fp8 range."""
    t = torch.randn(2, 3, 500, 64, dtype=torch.bfloat16) * 7
    t[0, 0, 0, 0] = 300.0  # an outlier sets the scale
    q8, descale = cudnn_fp8.quant_fp8(t)
    assert q8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    back = q8.float() * descale
    assert torch.isfinite(back).all() and q8.float().abs().max() <= 448
    big = t.float().abs() > 1.0  # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 in the normal range
    assert ((back - t.float()).abs()[big] / t.float().abs()[big]).max() <= 2 ** -4 + 1e-3


def test_unsupported_head_dim_dtype_and_precision_fall_back(fakes):
    ov = AttentionOverride("sage", fallback="sub_quad", verify=False)
    q, k, v = make_qkv(1, 2, 8, 8, 48, dtype=torch.bfloat16)  # head dim 48
    call(ov, q, k, v, 2)
    assert ov.last_used == "sub_quad"
    q, k, v = make_qkv(1, 2, 8, 8, 64, dtype=torch.float32)  # fp32 input
    call(ov, q, k, v, 2)
    assert ov.last_used == "sub_quad"
    q, k, v = make_qkv(1, 2, 8, 8, 64, dtype=torch.bfloat16)
    call(ov, q, k, v, 2, attn_precision=torch.float32)  # a quantising kernel must not take it
    assert ov.last_used == "sub_quad"
    call(ov, q, k, v, 2)
    assert ov.last_used == "sage"
    assert [c[0] for c in fakes.calls] == ["sage"]


def test_exception_falls_back_and_is_not_retried(fakes, monkeypatch):
    boom = {"n": 0}

    def broken(*a, **kw):
        boom["n"] += 1
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(sys.modules["sageattention"], "sageattn", broken)
    ov = AttentionOverride("sage", fallback="sub_quad", verify=False)
    q, k, v = make_qkv(1, 2, 8, 8, 64, dtype=torch.bfloat16)
    for _ in range(3):
        out = call(ov, q, k, v, 2)
    assert boom["n"] == 1 and ov.counts == {"sub_quad": 3}
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("bad", ["scaled", "nan"])
def test_verification_failure_uses_fallback_and_warns_once(fakes, monkeypatch, caplog, bad):
    def wrong(q, k, v, tensor_layout="HND", **kw):
        out = _sdpa_bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return out * 1.3 if bad == "scaled" else out * float("nan")

    monkeypatch.setattr(sys.modules["sageattention"], "sageattn", wrong)
    q, k, v = make_qkv(1, 2, 40, 40, 64, dtype=torch.bfloat16)
    ov = AttentionOverride("sage", fallback="sub_quad", verify=True)
    with caplog.at_level(logging.WARNING, logger="wan_accel.attention"):
        out1 = call(ov, q, k, v, 2)
        out2 = call(ov, q, k, v, 2)
    assert ov.counts == {"sub_quad": 2}
    assert torch.isfinite(out1).all()
    torch.testing.assert_close(out2.double(), ref_attention(q, k, v, 2), atol=2e-2, rtol=2e-2)
    warns = [r for r in caplog.records if "failed verification" in r.getMessage()]
    assert len(warns) == 1 and ("non-finite" in warns[0].getMessage()) == (bad == "nan")
    # without verification the wrong kernel would have been used
    ov2 = AttentionOverride("sage", fallback="sub_quad", verify=False)
    call(ov2, q, k, v, 2)
    assert ov2.last_used == "sage"


def test_verification_reference_on_a_subset_of_rows():
    from wan_accel.attention import verify as V

    q, k, v = make_qkv(1, 2, 3000, 50, 16, skip_reshape=True)
    c = AttnCall.from_args((q, k, v, 2), {"skip_reshape": True})
    idx, ref = V.reference_rows(c, max_rows=100)
    assert idx.numel() == 100 and idx[0] == 0 and idx[-1] == 2999
    full = ref_attention(q, k, v, 2, skip_reshape=True, skip_output_reshape=True)
    torch.testing.assert_close(ref.double(), full[:, :, idx], atol=2e-5, rtol=2e-5)
    good = V.compare(full.float(), idx, ref)
    assert good.ok and good.cosine > 0.99999
    noisy = V.compare(full.float() + 0.2 * torch.randn_like(full.float()), idx, ref)
    assert not noisy.ok


# ---------------------------------------------------------------------------------------------
# chaining an existing override
# ---------------------------------------------------------------------------------------------
def test_chains_previous_override():
    q, k, v = make_qkv(1, 2, 10, 10, 8)
    log_prev = []

    def previous(func, *args, **kwargs):
        log_prev.append((func, kwargs.get("transformer_options", {}).get("block_index")))
        return func(*args, **kwargs)

    def comfy_func(q, k, v, heads, **kw):
        assert kw.get("_inside_attn_wrapper") is True
        return ref_attention(q, k, v, heads).float()

    # blocks 0-1 use sub_quad; the rest go to comfy_default = the previous override
    ov = AttentionOverride("sub_quad", fallback="comfy_default", verify=False,
                           schedule=Schedule(blocks="0-1"), previous=previous)
    for bi in range(4):
        out = ov(comfy_func, q, k, v, heads=2, transformer_options={"block_index": bi}, _inside_attn_wrapper=True)
        torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2), atol=3e-5, rtol=3e-5)
    assert log_prev == [(comfy_func, 2), (comfy_func, 3)]
    assert ov.counts == {"sub_quad": 2, "comfy_default": 2}


def test_deepcopy_shares_the_override():
    ov = AttentionOverride("sdpa")
    opts = {"transformer_options": {"optimized_attention_override": ov}}
    assert copy.deepcopy(opts)["transformer_options"]["optimized_attention_override"] is ov


# ---------------------------------------------------------------------------------------------
# schedule: attention kind, steps, blocks
# ---------------------------------------------------------------------------------------------
def test_parse_ranges():
    assert parse_ranges("") is None and parse_ranges("all") is None
    assert parse_ranges("0-3, 7, 10-") == ((0, 3), (7, 7), (10, None))
    assert parse_ranges("-2") == ((0, 2),)
    for bad in ("a", "3-1", "1-2-3", ","):
        with pytest.raises(ValueError):
            parse_ranges(bad)


def test_schedule_by_step_and_block():
    sample_sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False, schedule=Schedule(steps="1-2", blocks="0, 2-"))
    q, k, v = make_qkv(1, 2, 6, 6, 8)
    used = {}
    for step, sig in enumerate(sample_sigmas[:-1]):
        sig_t = torch.tensor([float(sig)] * 2)  # cond + uncond batch
        for block in range(4):
            call(ov, q, k, v, 2, transformer_options={"sigmas": sig_t, "sample_sigmas": sample_sigmas,
                                                      "block_index": block})
            used[(step, block)] = ov.last_used
    want = {(s, b_): "sub_quad" if s in (1, 2) and b_ != 1 else "sdpa" for s in range(4) for b_ in range(4)}
    assert used == want
    # outside sampling (no sigmas) and outside the block loop, the schedule does not exclude the call
    call(ov, q, k, v, 2)
    assert ov.last_used == "sub_quad"


@pytest.mark.parametrize("kind", ["self", "cross", "all"])
def test_schedule_self_vs_cross(kind):
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False, schedule=Schedule(attention=kind))
    q, k, v = make_qkv(1, 2, 30, 30, 8)
    call(ov, q, k, v, 2)
    self_used = ov.last_used
    qc, kc, vc = make_qkv(1, 2, 30, 12, 8)  # text context: 12 keys
    call(ov, qc, kc, vc, 2)
    cross_used = ov.last_used
    assert (self_used, cross_used) == {"self": ("sub_quad", "sdpa"), "cross": ("sdpa", "sub_quad"),
                                       "all": ("sub_quad", "sub_quad")}[kind]


def test_bad_names_and_kinds_are_refused():
    with pytest.raises(ValueError):
        AttentionOverride("nope")
    with pytest.raises(ValueError):
        Schedule(attention="both")


# ---------------------------------------------------------------------------------------------
# auto
# ---------------------------------------------------------------------------------------------
def fixed_clock(ms_by_backend: dict):
    """A timer for AutoTuner.time_ms that reports fixed milliseconds per backend: no wall time in tests."""
    def time_ms(b, call):
        return ms_by_backend[b.name]
    return time_ms


@pytest.mark.parametrize("slow", ["sdpa", "sub_quad"])
def test_auto_picks_the_fastest_and_caches_it(monkeypatch, slow):
    fast = {"sdpa": "sub_quad", "sub_quad": "sdpa"}[slow]
    runs = {"sdpa": 0, "sub_quad": 0}
    for name in runs:
        orig = backends.get(name).run

        def counted(c, _orig=orig, _name=name):
            runs[_name] += 1
            return _orig(c)

        monkeypatch.setattr(backends.get(name), "run", counted)
    events = []
    phases.add_listener(events.append)
    try:
        tuner = AutoTuner(reps=2, candidates=("sdpa", "sub_quad"))
        monkeypatch.setattr(tuner, "time_ms", fixed_clock({slow: 30.0, fast: 1.0}))
        ov = AttentionOverride("auto", fallback="sdpa", verify=True, tuner=tuner, label="m1")
        q, k, v = make_qkv(1, 2, 50, 50, 16)
        out = call(ov, q, k, v, 2)
        assert ov.last_used == fast
        torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2), atol=3e-5, rtol=3e-5)
        after_tune = dict(runs)
        for _ in range(3):
            call(ov, q, k, v, 2)
        # cached: no more tuning runs, only the chosen backend's three calls
        assert runs[slow] == after_tune[slow]
        assert runs[fast] == after_tune[fast] + 3
        assert list(tuner.choices.values()) == [fast]
        table = next(iter(tuner.results.values()))
        assert (table[slow]["ms"], table[fast]["ms"]) == (30.0, 1.0)
        picks = [e for e in events if e.get("name") == "attention_backend"]
        assert len(picks) == 1 and picks[0]["backend"] == fast and picks[0]["model"] == "m1"
        # a new shape tunes again
        q2, k2, v2 = make_qkv(1, 2, 20, 20, 16)
        call(ov, q2, k2, v2, 2)
        assert len(tuner.choices) == 2
    finally:
        phases.remove_listener(events.append)


def test_auto_skips_a_fast_backend_that_fails_verification(fakes, monkeypatch):
    def wrong(q, k, v, tensor_layout="HND", **kw):
        return torch.zeros_like(q)

    monkeypatch.setattr(sys.modules["sageattention"], "sageattn", wrong)
    tuner = AutoTuner(reps=1, candidates=("sage", "sub_quad"))
    monkeypatch.setattr(tuner, "time_ms", fixed_clock({"sage": 0.1, "sub_quad": 20.0}))
    ov = AttentionOverride("auto", fallback="sdpa", tuner=tuner)
    q, k, v = make_qkv(1, 2, 30, 30, 64, dtype=torch.bfloat16)
    call(ov, q, k, v, 2)
    assert ov.last_used == "sub_quad"
    table = next(iter(tuner.results.values()))
    assert "failed verification" in table["sage"]


def test_auto_on_cpu_with_every_real_backend():
    ov = AttentionOverride("auto", fallback="sdpa")
    q, k, v = make_qkv(1, 2, 64, 64, 32)
    out = call(ov, q, k, v, 2)
    table = next(iter(TUNER.results.values()))
    timed = {n for n, r in table.items() if isinstance(r, dict)}
    assert timed == set(CPU_BACKENDS)  # the GPU-only ones say why they were skipped
    assert all(isinstance(table[n], str) for n in backends.names(False) if n not in CPU_BACKENDS)
    assert ov.last_used in CPU_BACKENDS
    torch.testing.assert_close(out.double(), ref_attention(q, k, v, 2), atol=3e-5, rtol=3e-5)


def test_block_index_inferred_when_comfyui_does_not_set_it():
    """ComfyUI 0.3.64's Wan loop sets no block_index: blocks are counted by self-attention calls per
    forward pass (one transformer_options dict per pass)."""
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False, schedule=Schedule(blocks="1"))
    qs, ks, vs = make_qkv(1, 2, 30, 30, 8)
    qc, kc, vc = make_qkv(1, 2, 30, 12, 8)
    used = []
    for _pass in range(2):
        topts = {"sigmas": torch.tensor([1.0])}
        for _block in range(3):
            call(ov, qs, ks, vs, 2, transformer_options=topts)
            used.append(ov.last_used)
            call(ov, qc, kc, vc, 2, transformer_options=topts)
            used.append(ov.last_used)
    per_pass = ["sdpa", "sdpa", "sub_quad", "sub_quad", "sdpa", "sdpa"]
    assert used == per_pass * 2


def test_every_model_reports_the_backend_it_runs_once_per_shape():
    """Telemetry sees which kernel each model ran: a fixed backend, and auto's cached choice for a second model."""
    events = []
    phases.add_listener(events.append)
    try:
        tuner = AutoTuner(reps=1, candidates=("sdpa", "sub_quad"))
        fixed = AttentionOverride("sub_quad", fallback="sdpa", verify=False, label="high")
        first = AttentionOverride("auto", fallback="sdpa", verify=True, tuner=tuner, label="low")
        second = AttentionOverride("auto", fallback="sdpa", verify=True, tuner=tuner, label="low2")
        q, k, v = make_qkv(1, 2, 24, 24, 16)
        for ov in (fixed, first, second):
            for _ in range(3):
                call(ov, q, k, v, 2)
        picks = [(e["model"], e["backend"], e["reason"]) for e in events if e.get("name") == "attention_backend"]
        assert [p[0] for p in picks] == ["high", "low", "low2"]
        assert picks[0] == ("high", "sub_quad", "as set")
        assert picks[2][1] == picks[1][1] and picks[2][2] == "auto (cached)"
    finally:
        phases.remove_listener(events.append)
