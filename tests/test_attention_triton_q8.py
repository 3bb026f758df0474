"""CPU tests of ``triton_q8`` as the registry sees it and of its tuner: registration, declines, the
dispatcher's verification and fallback, ``auto``, and a tuner that only ever picks a config whose
output passed the check. The kernels run under ``TRITON_INTERPRET=1`` (fixture ``q8`` of
``test_triton_q8``); the tuner's measurements are given, not timed.
"""
from __future__ import annotations

import json

import pytest
import torch

from test_triton_q8 import assert_close, call_of, comfy_qkv, q8, reference  # noqa: F401  (q8: fixture)
from wan_accel.attention import triton_q8_tune as tune
from wan_accel.attention.contract import AttnCall
from wan_accel.attention.triton_q8_tune import Config, Tuner


# ---------------------------------------------------------------------------------------------
# the tuner (pure Python: measurements are given, not timed)
# ---------------------------------------------------------------------------------------------
CANDS = [Config(128, 128, 8, 2, use_tma=True), Config(128, 64, 4, 3), Config(64, 64, 4, 3)]
FAKE_MS = {CANDS[0]: 5.0, CANDS[1]: 3.0, CANDS[2]: 4.0}


def passes(cfg):
    return None


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    monkeypatch.setenv(tune.CACHE_ENV, str(path))
    monkeypatch.delenv(tune.CONFIG_ENV, raising=False)
    monkeypatch.delenv(tune.AUTOTUNE_ENV, raising=False)
    return path


def test_tuner_picks_the_fastest_once_and_persists(cache_file):
    calls = []
    measure = lambda c: calls.append(c) or FAKE_MS[c]  # noqa: E731
    tuner = Tuner()
    assert tuner.pick("gpu|shape", CANDS, measure, passes) == CANDS[1]
    assert calls == CANDS and tuner.timings["gpu|shape"][CANDS[1].label()] == 3.0
    assert tuner.pick("gpu|shape", CANDS, measure, passes) == CANDS[1] and len(calls) == 3
    assert json.loads(cache_file.read_text())["gpu|shape"]["block_n"] == 64
    fresh = Tuner()  # another process: reads the file, times nothing
    assert fresh.pick("gpu|shape", CANDS, lambda c: pytest.fail("timed again"), passes) == CANDS[1]


def test_tuner_skips_failing_candidates(cache_file):
    def measure(c):
        if c.use_tma:
            raise RuntimeError("out of shared memory")
        return FAKE_MS[c]

    tuner = Tuner()
    assert tuner.pick("k", CANDS, measure, passes) == CANDS[1]
    assert "out of shared memory" in tuner.timings["k"][CANDS[0].label()]
    with pytest.raises(tune.NoVerifiedConfig, match="out of shared memory"):  # nothing left to pick
        tuner.pick("k2", [CANDS[0], CANDS[0]], measure, passes)


def test_tuner_tries_the_next_pv_kind_only_when_the_preferred_one_fails(cache_file):
    """Each try compiles a kernel: once an FP8 candidate passes, the 16-bit ones are not run at all;
    when every FP8 candidate fails the check, the 16-bit ones are tried and one is picked."""
    fp8 = [Config(64, 128, 4, 3, pv="fp8"), Config(64, 64, 4, 3, pv="fp8")]
    b16 = [Config(64, 128, 4, 3, pv="16bit"), Config(64, 64, 4, 3, pv="16bit")]
    speed = {fp8[0]: 5.0, fp8[1]: 4.0, b16[0]: 1.0, b16[1]: 2.0}  # 16-bit "faster": still not tried
    checked = []

    def check(c):
        checked.append(c)
        return None

    tuner = Tuner()
    assert tuner.pick("a", fp8 + b16, speed.__getitem__, check) == fp8[1]
    assert checked == fp8 and "not tried" in tuner.timings["a"][b16[0].label()]
    checked.clear()
    failing_fp8 = lambda c: (checked.append(c), "cosine 0.99" if c.pv == "fp8" else None)[1]  # noqa: E731
    assert tuner.pick("b", fp8 + b16, speed.__getitem__, failing_fp8) == b16[0]
    assert checked == fp8 + b16


def test_tuner_ignores_a_corrupt_cache(cache_file, caplog):
    cache_file.write_text("{not json")
    assert Tuner().pick("k", CANDS, FAKE_MS.__getitem__, passes) == CANDS[1]
    assert "ignoring the tuning cache" in caplog.text
    assert "k" in json.loads(cache_file.read_text())


def test_tuner_env_overrides(cache_file, monkeypatch):
    monkeypatch.setenv(tune.AUTOTUNE_ENV, "0")
    assert Tuner().pick("k", CANDS, lambda c: pytest.fail("timed"), passes) == CANDS[0]
    monkeypatch.setenv(tune.CONFIG_ENV, "64,128,8,3,tma,ws,pv=16bit,i2fadd")
    assert (Tuner().pick("k", CANDS, lambda c: pytest.fail("timed"), passes)
            == Config(64, 128, 8, 3, True, True, "16bit", i2f_add=True))
    monkeypatch.setenv(tune.CACHE_ENV, "")
    assert tune.cache_path() is None


@pytest.mark.parametrize("text,match", [("128,64", "BLOCK_M,BLOCK_N"), ("128,64,4,3,fast", "unknown flags"),
                                        ("100,64,4,3", "block_m"), ("128,256,4,3", "block_n")])
def test_config_parse_errors(text, match):
    with pytest.raises(ValueError, match=match):
        Config.parse(text)


def test_candidates_and_length_classes():
    assert all(c.use_tma for c in tune.candidates((9, 0), 128))
    assert not any(c.use_tma for c in tune.candidates((8, 9), 128))
    assert tune.candidates(None, 64) == [Config(64, 64, 4, 2)]
    assert [tune.length_class(n) for n in (1, 512, 513, 82992)] == [1, 512, 1024, 131072]


def test_tuner_never_picks_a_config_that_failed_verification(cache_file, monkeypatch):
    """The fastest candidate gives a wrong output: it is not picked, not cached, not saved, whatever
    the mode (timed, untimed first-that-passes, forced by the env var)."""
    fastest = CANDS[1]
    check = lambda c: "cosine 0.5" if c == fastest else None  # noqa: E731
    tuner = Tuner()
    assert tuner.pick("k", CANDS, FAKE_MS.__getitem__, check) == CANDS[2]
    assert tuner.timings["k"][fastest.label()] == "failed verification: cosine 0.5"
    assert json.loads(cache_file.read_text())["k"]["block_m"] == 64
    with pytest.raises(tune.NoVerifiedConfig, match="failed verification"):
        tuner.pick("k2", [fastest], FAKE_MS.__getitem__, check)
    assert "k2" not in tuner.picks and "k2" not in json.loads(cache_file.read_text())
    monkeypatch.setenv(tune.AUTOTUNE_ENV, "0")
    assert Tuner().pick("k3", [fastest, CANDS[0]], lambda c: pytest.fail("timed"), check) == CANDS[0]
    monkeypatch.setenv(tune.CONFIG_ENV, "128,64,4,3")  # = fastest
    with pytest.raises(tune.NoVerifiedConfig):
        Tuner().pick("k4", CANDS, FAKE_MS.__getitem__, check)
    assert "k4" not in json.loads(cache_file.read_text())


def test_attention_tunes_among_verified_outputs_only(q8, monkeypatch, cache_file):
    """Through the kernel: a candidate whose output is wrong and that times fastest loses to a right one."""
    broken, good = Config(32, 64, 4, 2), Config(64, 64, 4, 2)
    monkeypatch.setattr(q8, "candidates", lambda cap, d, kinds: [broken, good])
    real = q8.launch_attention

    def launch(q, kv, out, cfg, *args):
        compiled = real(q, kv, out, cfg, *args)
        if cfg.block_m == broken.block_m:
            out.mul_(-1)
        return compiled

    monkeypatch.setattr(q8, "launch_attention", launch)
    timed = []
    monkeypatch.setattr(q8, "time_ms", lambda fn, reps=3: (fn(), timed.append(1), float(len(timed)))[2])
    q8.reset()
    q, k, v = comfy_qkv(1, 2, 70, 70, 64, torch.bfloat16, seed=11)
    out = q8.attention(q, k, v)
    (key, pick), = q8.TUNER.picks.items()
    assert pick.block_m == good.block_m and pick.pv == q8.kinds(None)[1]
    labels = {c.split("_pv")[0]: r for c, r in q8.TUNER.timings[key].items()}
    assert labels[broken.label()].startswith("failed verification") and isinstance(labels[good.label()], float)
    assert_close(out, reference(q, k, v), q8.kinds(None))
    q8.reset()


# ---------------------------------------------------------------------------------------------
# the registry backend: listed with its status, declines, verification, fallback, auto
# ---------------------------------------------------------------------------------------------
def comfy_call(ov, q, k, v, heads):
    """Call an override the way ComfyUI's wrap_attn does ((B, L, H*D) tensors)."""
    def must_not_run(*args, **kwargs):
        raise AssertionError("ComfyUI's own attention ran")
    return ov(must_not_run, q, k, v, heads=heads, _inside_attn_wrapper=True, transformer_options={})


def blhd(b, length, heads, d, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, heads * d, generator=g).to(dtype)


@pytest.fixture
def interpreted_backend(q8, monkeypatch):
    """The registered ``triton_q8`` backend, allowed to run its interpreted kernels on CPU tensors."""
    from wan_accel.attention import backends

    b = backends.get("triton_q8")
    backends.reset_probes()
    monkeypatch.setattr(b, "devices", ("cuda", "cpu"))
    monkeypatch.setattr(b, "probe", lambda: None)
    monkeypatch.setenv(tune.CONFIG_ENV, "64,64,4,2")
    monkeypatch.setenv(q8.MIN_KV_ENV, "64")
    yield b
    backends.reset_probes()


def test_registered_with_its_status_and_doc():
    from wan_accel.attention import backends
    from wan_accel.attention import triton_q8 as kernel

    backends.reset_probes()
    assert "triton_q8" in backends.names() and backends.names().index("triton_q8") < backends.names().index("auto")
    b = backends.get("triton_q8")
    assert b.low_precision and b.devices == ("cuda",) and b.doc == kernel.DOC and b.package == "triton"
    if not torch.cuda.is_available():
        assert backends.statuses()["triton_q8"].startswith(("not usable here", "not installed"))
        assert "triton_q8" not in backends.available()


def test_registry_declines_with_reasons(interpreted_backend, monkeypatch):
    b = interpreted_backend
    assert b.reason_not_to_run(call_of(lk=512, d=64)) is None  # MIN_KV is 64 here
    assert "head dim 96" in b.unsupported_reason(call_of(d=96))
    assert "float32" in b.unsupported_reason(call_of(dtype=torch.float32))
    assert "mask" in b.unsupported_reason(call_of(mask=torch.zeros(2048, 2048)))
    assert "attn_precision=float32" in b.unsupported_reason(call_of(precision=torch.float32))
    monkeypatch.delenv("WAN_ACCEL_TRITON_Q8_MIN_KV")
    assert "512 keys" in b.unsupported_reason(call_of(lk=512))  # Wan's text cross-attention
    full = AttnCall.from_args((torch.zeros(1, 2048, 128, dtype=torch.bfloat16),) * 3 + (2,),
                              {"low_precision_attention": False})
    assert "full precision" in b.unsupported_reason(full)  # Wan's i2v image cross-attention (ComfyUI 0.33+)
    monkeypatch.setattr(b, "devices", ("cuda",))
    assert "does not run on cpu" in b.unsupported_reason(call_of())


def test_runs_verified_through_the_dispatcher(interpreted_backend, caplog):
    from wan_accel.attention import AttentionOverride

    ov = AttentionOverride("triton_q8", fallback="sdpa")
    q, k, v = (blhd(1, 150, 2, 64, seed=s) for s in range(3))
    out = comfy_call(ov, q, k, v, 2)
    assert ov.last_used == "triton_q8" and ov.verified[("triton_q8", AttnCall.from_args((q, k, v, 2), {}).key())]
    ref = reference(*(t.view(1, 150, 2, 64).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(1, 150, 128)
    assert_close(out, ref, ("int8", "fp8"))


def test_short_keys_and_failed_verification_fall_back_logged_once(interpreted_backend, monkeypatch, caplog):
    """The fallback serves the call; the reason is logged on the first call of the shape, never again."""
    import logging

    from wan_accel.attention import AttentionOverride

    def lines(text):
        return [r for r in caplog.records if text in r.getMessage()]

    ov = AttentionOverride("triton_q8", fallback="sdpa")
    q = blhd(1, 150, 2, 64)
    kv = blhd(1, 40, 2, 64, seed=1)  # 40 keys < MIN_KV 64
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        comfy_call(ov, q, kv, kv, 2)
        first = len(lines("40 keys"))
        for _ in range(2):
            comfy_call(ov, q, kv, kv, 2)
    assert ov.last_used == "sdpa" and ov.counts == {"sdpa": 3}
    assert first >= 1 and len(lines("40 keys")) == first

    caplog.clear()
    monkeypatch.setattr(interpreted_backend, "run", lambda call: torch.zeros_like(call.q))  # a wrong kernel
    k = blhd(1, 150, 2, 64, seed=2)
    with caplog.at_level(logging.INFO, logger="wan_accel.attention"):
        for _ in range(3):
            comfy_call(ov, q, k, k, 2)
    assert ov.last_used == "sdpa" and ov.counts["sdpa"] == 6
    warnings = [r for r in lines("triton_q8 failed verification") if r.levelno == logging.WARNING]
    assert len(warnings) == 1


def test_auto_ranks_it(interpreted_backend, monkeypatch):
    from wan_accel.attention import AttentionOverride, AutoTuner

    tuner = AutoTuner(reps=1, candidates=("sdpa_math", "triton_q8"))
    ov = AttentionOverride("auto", fallback="sdpa", tuner=tuner)
    q, k, v = (blhd(1, 130, 2, 64, seed=s) for s in range(3))
    comfy_call(ov, q, k, v, 2)
    table = next(iter(tuner.results.values()))
    assert isinstance(table["triton_q8"], dict) and table["triton_q8"]["cosine"] > 0.999
    assert ov.last_used in ("sdpa_math", "triton_q8")
    monkeypatch.setattr(interpreted_backend, "run", lambda call: torch.zeros_like(call.q))
    tuner.clear()
    comfy_call(AttentionOverride("auto", fallback="sdpa", tuner=tuner), q, k, v, 2)
    assert "failed verification" in next(iter(tuner.results.values()))["triton_q8"]


def test_reset_probes_forgets_the_tuned_configs(q8):
    from wan_accel.attention import backends

    q8.TUNER.picks["k"] = Config(64, 64, 4, 2)
    backends.reset_probes()
    assert not q8.TUNER.picks
