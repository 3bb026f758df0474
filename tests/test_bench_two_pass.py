"""The logic of bench/two_pass.py that its GPU figures rest on: which prompt each run submits, how
the steady state and the 40-block scaling are computed. (Its timings live in bench/results/.)"""
from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def two_pass():
    # the bench scripts import their sibling _common by plain name, as when run from bench/
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("wan_accel_bench_two_pass", BENCH / "two_pass.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def opts(**kw):
    base = dict(tokens=512, width=832, height=1216, frames=81, unet_dtype="fp8_e4m3fn", backend="auto", seed=42,
                split=2, save_video=False)
    return SimpleNamespace(**(base | kw))


@pytest.mark.parametrize("variant", ["stock", "accel"])
def test_prompt_replaces_text_encoder_and_varies_image_and_seed_per_repeat(two_pass, variant):
    path = two_pass.WF / f"wan22_i2v_14B_4step_ab_{variant}.api.json"
    prompt, outputs = two_pass.bench_prompt(path, opts(), variant, repeat=3)
    types = [n["class_type"] for n in prompt.values()]
    assert "CLIPLoader" not in types and "CLIPTextEncode" not in types
    assert types.count("WanAccelBenchConditioning") == 2
    assert "SaveVideo" not in types and "CreateVideo" not in types
    assert [n["inputs"]["image"] for n in prompt.values() if n["class_type"] == "LoadImage"] == ["wan_accel_start_3.png"]
    samplers = sorted((n["inputs"] for n in prompt.values() if n["class_type"] == "KSamplerAdvanced"),
                      key=lambda i: i["start_at_step"])
    assert [(s["start_at_step"], s["end_at_step"], s["steps"]) for s in samplers] == [(0, 2, 4), (2, 4, 4)]
    assert samplers[0]["noise_seed"] == 45 and samplers[1]["add_noise"] == "disable"
    assert {n["inputs"]["weight_dtype"] for n in prompt.values() if n["class_type"] == "UNETLoader"} == {"fp8_e4m3fn"}
    wi2v = next(n["inputs"] for n in prompt.values() if n["class_type"] == "WanImageToVideo")
    assert (wi2v["width"], wi2v["height"], wi2v["length"]) == (832, 1216, 81)
    capture = prompt[outputs[0]]
    assert outputs == ["9001"] and capture["class_type"] == "WanAccelBenchCapture"
    assert prompt[capture["inputs"]["images"][0]]["class_type"] == "VAEDecode"
    attention = [n["inputs"]["backend"] for n in prompt.values() if n["class_type"] == "WanAccelAttention"]
    assert attention == ([] if variant == "stock" else ["auto", "auto"])


def test_prompt_backend_override_sets_both_experts(two_pass):
    path = two_pass.WF / "wan22_i2v_14B_4step_ab_accel.api.json"
    prompt, _ = two_pass.bench_prompt(path, opts(), "accel_sdpa", repeat=0, backend="sdpa")
    assert [n["inputs"]["backend"] for n in prompt.values() if n["class_type"] == "WanAccelAttention"] == ["sdpa"] * 2


def fake_run(two_pass, variant, repeat, wall, sampler_each, layers=10):
    prompt = {"17": {"class_type": "KSamplerAdvanced"}, "18": {"class_type": "KSamplerAdvanced"},
              "19": {"class_type": "VAEDecode"}}
    rec = {"nodes": [{"node_id": "17", "type": "KSamplerAdvanced", "seconds": sampler_each},
                     {"node_id": "18", "type": "KSamplerAdvanced", "seconds": sampler_each},
                     {"node_id": "19", "type": "VAEDecode", "seconds": wall - 2 * sampler_each}]}
    return two_pass.describe_run(variant, repeat, wall, prompt, rec, layers, cuda=False)


def test_scaling_to_40_blocks_scales_only_the_samplers(two_pass):
    run = fake_run(two_pass, "stock", 1, wall=20.0, sampler_each=6.0)
    assert run["sampler_s"] == 12.0 and run["sampler_s_per_40_blocks"] == 48.0
    assert run["e2e_s_at_40_blocks"] == 20.0 - 12.0 + 48.0


def test_summary_drops_the_warm_up_and_reports_stock_over_accel(two_pass):
    runs = [fake_run(two_pass, "stock", 0, 40.0, 10.0), fake_run(two_pass, "accel", 0, 90.0, 40.0),
            fake_run(two_pass, "accel", 1, 16.0, 5.0), fake_run(two_pass, "stock", 1, 20.0, 7.0),
            fake_run(two_pass, "stock", 2, 22.0, 7.0), fake_run(two_pass, "accel", 2, 18.0, 5.0)]
    summary = two_pass.summarize(runs, repeats=3)
    assert summary["repeats_used"] == [1, 2]
    assert summary["stock"]["wall_s"] == 21.0 and summary["accel"]["wall_s"] == 17.0
    assert summary["stock"]["node_s"]["17 KSamplerAdvanced"] == 7.0
    stock_e2e = statistics.median([20 - 14 + 56, 22 - 14 + 56])
    accel_e2e = statistics.median([16 - 10 + 40, 18 - 10 + 40])
    assert summary["speedup"]["e2e_s_at_40_blocks"] == round(stock_e2e / accel_e2e, 3)
    assert summary["speedup"]["wall_s"] == round(21.0 / 17.0, 3)


def test_single_repeat_summary_uses_it(two_pass):
    runs = [fake_run(two_pass, "stock", 0, 30.0, 10.0), fake_run(two_pass, "accel", 0, 20.0, 5.0)]
    summary = two_pass.summarize(runs, repeats=1)
    assert summary["repeats_used"] == [0] and summary["speedup"]["wall_s"] == 1.5
