"""What the attention engine tells the graph: the telemetry note per model, shape and outcome, and each
backend's state on this machine (CPU, no ComfyUI)."""
from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from wan_accel.attention import AttentionOverride, AutoTuner, Schedule, backends, override
from wan_accel.attention.backends import registry

from test_attention import fresh_probes, notes  # noqa: F401  (fixtures: autouse fresh probes; telemetry notes)


def qkv(lq=24, lk=24, heads=2, d=64, dtype=torch.float32):
    return (torch.randn(1, lq, heads * d, dtype=dtype), torch.randn(1, lk, heads * d, dtype=dtype),
            torch.randn(1, lk, heads * d, dtype=dtype))


def attend(ov, q, k, v, heads=2, **kw):
    def comfy_default(*args, **kwargs):
        raise AssertionError("ComfyUI's function must not run here")

    kw.setdefault("transformer_options", {})
    return ov(comfy_default, q, k, v, heads=heads, _inside_attn_wrapper=True, **kw)


def subset(note: dict, **want) -> dict:
    return {k: note.get(k) for k in want}


def test_a_fixed_backend_is_reported_once_per_shape_with_the_node(notes):
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False, label="high", node_id="12")
    for _ in range(3):
        attend(ov, *qkv())
    (only,) = notes()
    assert subset(only, model="high", backend="sub_quad", requested="sub_quad", fallback=False, reason="as set",
                  node_id="12") == dict(model="high", backend="sub_quad", requested="sub_quad", fallback=False,
                                        reason="as set", node_id="12")
    assert only["shape"] == "B1 H2 Lq24 Lk24 D64 float32"


def test_a_missing_backend_is_marked_a_fallback(notes, monkeypatch):
    monkeypatch.setitem(sys.modules, "sageattention", None)
    ov = AttentionOverride("sage", fallback="sub_quad", verify=False, label="m", node_id="7")
    for _ in range(2):
        attend(ov, *qkv(dtype=torch.bfloat16))
    (only,) = notes()
    assert (only["backend"], only["requested"], only["fallback"], only["node_id"]) == ("sub_quad", "sage", True, "7")
    assert only["reason"].startswith("fallback: sage unavailable")


def test_auto_choice_is_not_a_fallback_and_a_reused_choice_says_so(notes):
    tuner = AutoTuner(reps=1, candidates=("sdpa", "sub_quad"))
    first = AttentionOverride("auto", fallback="sdpa", tuner=tuner, label="low", node_id="3")
    second = AttentionOverride("auto", fallback="sdpa", tuner=tuner, label="low2", node_id="4")
    attend(first, *qkv())
    attend(second, *qkv())
    a, b = notes()
    assert (a["requested"], a["fallback"], a["reason"], a["node_id"]) == ("auto", False, "auto", "3")
    assert (b["requested"], b["fallback"], b["reason"], b["node_id"]) == ("auto", False, "auto (cached)", "4")
    assert a["backend"] == b["backend"] in ("sdpa", "sub_quad")
    assert set(a["timings"]) == {"sdpa", "sub_quad"} and a["timings"] == b["timings"]


def test_a_call_the_schedule_gives_the_fallback_is_no_fallback(notes):
    ov = AttentionOverride("sub_quad", fallback="sdpa", verify=False, schedule=Schedule(attention="self"), label="m")
    attend(ov, *qkv(lq=24, lk=24))
    attend(ov, *qkv(lq=24, lk=9))  # cross-attention: the schedule hands it to the fallback
    selfn, cross = notes()
    assert (selfn["backend"], selfn["requested"], selfn["fallback"]) == ("sub_quad", "sub_quad", False)
    assert (cross["backend"], cross["requested"], cross["fallback"]) == ("sdpa", "sdpa", False)
    assert cross["reason"].startswith("scheduled")


def test_each_sampling_run_reports_again_without_verifying_again(notes, monkeypatch, caplog):
    checks = []
    real = override.reference_rows
    monkeypatch.setattr(override, "reference_rows", lambda c: checks.append(1) or real(c))
    monkeypatch.setitem(sys.modules, "sageattention", None)
    ov = AttentionOverride("sage", fallback="sub_quad", verify=True, label="m", node_id="5")
    q, k, v = qkv(dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        for _ in range(3):
            attend(ov, q, k, v)
        assert len(notes()) == 1 and len(checks) == 1
        ov.new_run()  # what the node's OUTER_SAMPLE wrapper calls when a sampler starts
        for _ in range(3):
            attend(ov, q, k, v)
    first, again = notes()
    assert again == first  # the same truth, told again for the new run's sampler node
    assert len(checks) == 1, "a new run must not verify a shape again"
    assert sum("sage unavailable" in r.getMessage() for r in caplog.records) == 2  # the log stays once per reason
    assert ov.counts == {"sub_quad": 6}


def test_backend_states_for_the_node_list(monkeypatch):
    assert backends.get("sdpa").status() == "ready"
    monkeypatch.setitem(sys.modules, "sageattention", None)
    assert backends.get("sage").status() == "not installed (pip install sageattention)"
    backends.reset_probes()
    monkeypatch.setitem(sys.modules, "sageattention", types.ModuleType("sageattention"))  # installed, no sageattn
    assert backends.get("sage").status() == "not usable here (the installed sageattention has no sageattn)"
    backends.reset_probes()
    sage = types.ModuleType("sageattention")
    sage.sageattn = lambda *a, **kw: None
    monkeypatch.setitem(sys.modules, "sageattention", sage)

    def no_gpu():
        raise RuntimeError("no CUDA device")

    monkeypatch.setattr(registry, "need_cuda", no_gpu)
    assert backends.get("sage").status() == "not usable here (no CUDA device)"
    backends.reset_probes()
    monkeypatch.setattr(registry, "need_cuda", lambda: None)
    assert backends.get("sage").status() == "ready" or backends.get("sage").status().startswith(
        "not usable here (needs compute capability")
    states = backends.statuses()
    assert list(states) == backends.names(include_meta=False) and states["sdpa"] == "ready"


# ---------------------------------------------------------------------------------------------
# out of memory: a fallback for that call only
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def flaky_kernel(monkeypatch):
    """A registered low-precision-free backend (exact) whose calls can be made to raise."""
    plan = {"raise": [], "calls": 0}

    def run(call):
        plan["calls"] += 1
        if plan["raise"]:
            raise plan["raise"].pop(0)
        return torch.nn.functional.scaled_dot_product_attention(call.q, call.k, call.v)

    monkeypatch.setitem(registry.REGISTRY, "flaky", registry.Backend("flaky", "test kernel", run))
    return plan


def oom():
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.20 GiB")


@pytest.mark.parametrize("when", ["first call", "later call"])
def test_out_of_memory_falls_back_for_that_call_only(flaky_kernel, notes, caplog, when):
    ov = AttentionOverride("flaky", fallback="sub_quad", verify=True, label="m", node_id="9")
    q, k, v = qkv()
    if when == "later call":
        attend(ov, q, k, v)
    flaky_kernel["raise"].append(oom())
    with caplog.at_level(logging.WARNING, logger="wan_accel.attention"):
        out = attend(ov, q, k, v)
    assert ov.last_used == "sub_quad"
    torch.testing.assert_close(out, attend(AttentionOverride("sdpa", verify=False), q, k, v), atol=1e-5, rtol=1e-5)
    for _ in range(3):  # memory is free again: the backend serves the shape as before
        attend(ov, q, k, v)
        assert ov.last_used == "flaky"
    assert ov.verified[("flaky", next(iter(ov.verified))[1])] is True
    assert ov.counts == {"flaky": 4 if when == "later call" else 3, "sub_quad": 1}
    assert sum("ran out of memory" in r.getMessage() for r in caplog.records) == 1
    mine = [n for n in notes() if n["model"] == "m"]
    detour = [n for n in mine if n["fallback"]]
    assert len(detour) == 1 and detour[0]["backend"] == "sub_quad" and detour[0]["requested"] == "flaky"
    assert detour[0]["reason"] == "fallback: flaky ran out of memory (this call only)"
    assert [n["backend"] for n in mine if not n["fallback"]] == ["flaky"]  # reported once, not per call


def test_out_of_memory_of_autos_choice_keeps_the_choice(flaky_kernel):
    tuner = AutoTuner(reps=1, candidates=("flaky",))
    ov = AttentionOverride("auto", fallback="sub_quad", tuner=tuner)
    q, k, v = qkv()
    attend(ov, q, k, v)
    flaky_kernel["raise"].append(oom())
    attend(ov, q, k, v)
    assert ov.last_used == "sub_quad"
    attend(ov, q, k, v)
    assert ov.last_used == "flaky" and list(tuner.choices.values()) == ["flaky"]


def test_any_other_error_still_disables_the_backend_for_the_shape(flaky_kernel):
    ov = AttentionOverride("flaky", fallback="sub_quad", verify=False)
    q, k, v = qkv()
    attend(ov, q, k, v)
    flaky_kernel["raise"].append(RuntimeError("illegal memory access"))
    for _ in range(3):
        attend(ov, q, k, v)
        assert ov.last_used == "sub_quad"
    assert flaky_kernel["calls"] == 2  # never tried again for this shape
