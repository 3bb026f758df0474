"""The keywords newer ComfyUI passes to attention (CPU, no ComfyUI): ``low_precision_attention``,
``preferred_attention``, ``scale``, ``enable_gqa`` and unknown ones."""
from __future__ import annotations

import logging
import types

import pytest
import torch
import torch.nn.functional as F

from wan_accel.attention import AttentionOverride, AutoTuner
from wan_accel.attention.backends import registry

from test_attention import fresh_probes, notes  # noqa: F401  (fixtures: autouse fresh probes; telemetry notes)


@pytest.fixture
def quantising(monkeypatch):
    """A registered kernel that says it quantises (exact here, so outputs can be compared); counts its calls."""
    calls = []

    def run(call):
        calls.append(call.k_len)
        return F.scaled_dot_product_attention(call.q, call.k, call.v)

    monkeypatch.setitem(registry.REGISTRY, "lowp", registry.Backend("lowp", "test quantising kernel", run,
                                                                    low_precision=True))
    return calls


def qkv(lq=24, lk=24, heads=2, d=64):
    return torch.randn(1, lq, heads * d), torch.randn(1, lk, heads * d), torch.randn(1, lk, heads * d)


class ComfyFunction:
    """Stands in for ComfyUI's attention function: records what it was given, returns SDPA."""

    def __init__(self):
        self.kwargs: list[dict] = []

    def __call__(self, q, k, v, heads, **kwargs):
        self.kwargs.append(dict(kwargs))
        b, lq, hd = q.shape
        d = hd // heads
        q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=kwargs.get("scale")).transpose(1, 2).reshape(b, lq, hd)


def attend(ov, func, q, k, v, **kw):
    kw.setdefault("transformer_options", {})
    return ov(func, q, k, v, heads=2, _inside_attn_wrapper=True, **kw)


# ---------------------------------------------------------------------------------------------
# low_precision_attention=False
# ---------------------------------------------------------------------------------------------
def test_full_precision_call_never_reaches_a_quantising_kernel(quantising, notes, caplog):
    ov = AttentionOverride("lowp", fallback="sub_quad", verify=False, label="m")
    func = ComfyFunction()
    q, k, v = qkv(lk=24)
    qi, ki, vi = qkv(lk=7)  # Wan i2v: the image tokens, with low_precision_attention=False
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        for _ in range(3):
            attend(ov, func, q, k, v)
            out = attend(ov, func, qi, ki, vi, low_precision_attention=False)
    assert quantising == [24, 24, 24], "only the text/self calls went to the quantising kernel"
    assert ov.counts == {"lowp": 3, "sub_quad": 3} and func.kwargs == []
    torch.testing.assert_close(out, ComfyFunction()(qi, ki, vi, 2), atol=1e-5, rtol=1e-5)
    said = [r.getMessage() for r in caplog.records if "low_precision_attention=False" in r.getMessage()]
    assert len(said) == 2  # the reason once, the fallback once
    image = [n for n in notes() if n["shape"].startswith("B1 H2 Lq24 Lk7")]
    assert len(image) == 1 and image[0]["backend"] == "sub_quad" and image[0]["fallback"] is True
    assert "low_precision_attention=False" in image[0]["reason"]


def test_a_quantising_fallback_too_leaves_the_call_to_comfyui_with_its_keywords(quantising, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "lowp2", registry.Backend("lowp2", "another", lambda c: 1 / 0,
                                                                     low_precision=True))
    ov = AttentionOverride("lowp", fallback="lowp2", verify=False)
    func = ComfyFunction()
    attend(ov, func, *qkv(lk=7), low_precision_attention=False)
    assert quantising == [] and ov.last_used == "comfy_default"
    assert func.kwargs == [{"transformer_options": {}, "_inside_attn_wrapper": True, "low_precision_attention": False}]


def test_auto_leaves_quantising_kernels_out_of_a_full_precision_call(quantising, notes, caplog):
    tuner = AutoTuner(reps=1, candidates=("lowp", "sub_quad"))
    ov = AttentionOverride("auto", fallback="sdpa", tuner=tuner)
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        for _ in range(2):
            attend(ov, ComfyFunction(), *qkv(lk=7), low_precision_attention=False)
        assert quantising == [] and ov.last_used == "sub_quad"
        attend(ov, ComfyFunction(), *qkv(lk=7))  # the same shape, quantising allowed: tuned on its own
    assert quantising and len(tuner.choices) == 2
    table = next(iter(tuner.results.values()))
    assert "low_precision_attention=False" in table["lowp"]
    full, allowed = notes()
    assert (full["backend"], full["fallback"], full["reason"], full.get("full_precision")) == \
        ("sub_quad", False, "auto", True)
    assert "full_precision" not in allowed
    assert sum("low_precision_attention=False" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------------------------------------
# preferred_attention (a model's per-layer choice), honoured when ComfyUI's function runs
# ---------------------------------------------------------------------------------------------
def test_preferred_attention_runs_where_comfyuis_function_would():
    preferred = ComfyFunction()
    func = ComfyFunction()
    ov = AttentionOverride("comfy_default", fallback="comfy_default")
    q, k, v = qkv()
    attend(ov, func, q, k, v, preferred_attention=types.SimpleNamespace(function=preferred))
    assert func.kwargs == [] and preferred.kwargs == [{"transformer_options": {}, "_inside_attn_wrapper": True}]
    attend(ov, func, q, k, v, preferred_attention=types.SimpleNamespace(function=None))  # layer has no preference
    assert func.kwargs == [{"transformer_options": {}, "_inside_attn_wrapper": True}]


def test_preferred_attention_does_not_stop_the_chosen_backend_and_reaches_a_chained_override():
    seen = []

    def previous(func, *args, **kwargs):
        seen.append(kwargs.get("preferred_attention"))
        return func(*args, **{k: v for k, v in kwargs.items() if k != "preferred_attention"})

    pref = types.SimpleNamespace(function=None)
    ov = AttentionOverride("sub_quad", fallback="comfy_default", verify=False, previous=previous)
    attend(ov, ComfyFunction(), *qkv(), preferred_attention=pref)
    assert ov.last_used == "sub_quad" and seen == []  # an override wins over the layer's preference, as in core
    ov = AttentionOverride("comfy_default", fallback="comfy_default", previous=previous)
    attend(ov, ComfyFunction(), *qkv(), preferred_attention=pref)
    assert seen == [pref]


# ---------------------------------------------------------------------------------------------
# keywords the kernels here do not implement reach ComfyUI's function unchanged
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{"scale": 0.5}, {"enable_gqa": True}, {"attention_tag": "x"}])
def test_keywords_the_kernels_would_ignore_go_to_comfyui_unchanged(extra, notes, caplog):
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False, label="m")
    func = ComfyFunction()
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger="wan_accel.attention"):
        for _ in range(2):
            out = attend(ov, func, q, k, v, **extra)
    assert ov.counts == {"comfy_default": 2}
    assert func.kwargs == [{"transformer_options": {}, "_inside_attn_wrapper": True, **extra}] * 2
    if "scale" in extra:  # ComfyUI's function honoured it: the output is not the default-scale one
        assert not torch.allclose(out, ComfyFunction()(q, k, v, 2), atol=1e-3)
    assert sum("ComfyUI's attention runs such calls" in r.getMessage() for r in caplog.records) == 1
    (only,) = notes()
    assert (only["backend"], only["requested"], only["fallback"]) == ("comfy_default", "sub_quad", True)


def test_the_default_scale_and_no_gqa_stay_on_the_backend():
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False)
    func = ComfyFunction()
    attend(ov, func, *qkv(d=64), scale=64 ** -0.5, enable_gqa=False)
    assert ov.last_used == "sub_quad" and func.kwargs == []


# ---------------------------------------------------------------------------------------------
# comfy-kitchen: ComfyUI pins it exactly; say plainly when the installed one has no int8 attention
# ---------------------------------------------------------------------------------------------
def test_kitchen_without_int8_attention_says_which_version_is_installed(monkeypatch):
    import importlib.metadata
    import sys

    from wan_accel.attention.backends import get, kitchen

    old = types.ModuleType("comfy_kitchen")  # an older release: no int8_attention
    monkeypatch.setitem(sys.modules, "comfy_kitchen", old)
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.2.3" if name == "comfy-kitchen" else "0")
    monkeypatch.setattr(registry, "need_cuda", lambda: None)
    assert kitchen.installed_version() == "0.2.3"
    status = get("kitchen_int8").status()
    assert status.startswith("not usable here (the installed comfy-kitchen 0.2.3 has no int8_attention")
    assert "pip install" not in status  # it is installed: installing it again is not the fix


def test_kitchen_probe_accepts_the_comfy_kitchen_comfyui_pins(monkeypatch):
    """The real comfy-kitchen of this environment (ComfyUI 0.33 pins 0.2.31) passes the symbol check; only the
    CPU (no int8 attention kernel here) stops it."""
    pytest.importorskip("comfy_kitchen")
    from wan_accel.attention.backends import get

    monkeypatch.setattr(registry, "need_cuda", lambda: None)
    status = get("kitchen_int8").status()
    assert status in ("ready", "not usable here (comfy_kitchen.int8_attention_is_available() is False on this GPU)")
