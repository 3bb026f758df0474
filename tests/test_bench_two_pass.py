"""The logic of bench/two_pass.py that its GPU figures rest on: which prompt each run submits, the run
plan, how the steady state, the first-run ratio and the 40-block scaling are computed (bench/run_report.py).
(Its timings live in bench/results/.)"""
from __future__ import annotations

import statistics
from types import SimpleNamespace

import pytest

from bench_support import load_bench


@pytest.fixture(scope="module")
def two_pass():
    return load_bench("two_pass")


@pytest.fixture(scope="module")
def report():
    return load_bench("run_report")


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
    assert outputs == ["9001"] and capture["class_type"] == "WanAccelBenchCapture" and capture["inputs"]["keep"]
    assert prompt[capture["inputs"]["images"][0]]["class_type"] == "VAEDecode"
    attention = [n["inputs"]["backend"] for n in prompt.values() if n["class_type"] == "WanAccelAttention"]
    assert attention == ([] if variant == "stock" else ["auto", "auto"])


def test_prompt_backend_override_sets_both_experts(two_pass):
    path = two_pass.WF / "wan22_i2v_14B_4step_ab_accel.api.json"
    prompt, _ = two_pass.bench_prompt(path, opts(), "accel_sdpa", repeat=0, backend="sdpa")
    assert [n["inputs"]["backend"] for n in prompt.values() if n["class_type"] == "WanAccelAttention"] == ["sdpa"] * 2


def test_plan_runs_each_path_cold_then_warm_in_the_order_given(two_pass):
    assert two_pass.plan(["stock", "accel_sdpa"], warm=1) == [("stock", 0), ("stock", 1), ("accel_sdpa", 0),
                                                              ("accel_sdpa", 1)]
    assert two_pass.PATHS["accel_sdpa"] == ("accel", "sdpa") and two_pass.PATHS["stock"] == ("stock", None)


def test_unknown_path_is_refused_with_the_choices(two_pass, capsys):
    with pytest.raises(SystemExit):
        two_pass.parse_args(["--comfy", "x", "--out", "y", "--paths", "stock,fast"])
    assert "unknown ['fast']" in capsys.readouterr().err


def fake_run(report, variant, repeat, wall, sampler_each, layers=10, loads=()):
    prompt = {"17": {"class_type": "KSamplerAdvanced"}, "18": {"class_type": "KSamplerAdvanced"},
              "19": {"class_type": "VAEDecode"}}
    rec = {"nodes": [{"node_id": "17", "type": "KSamplerAdvanced", "seconds": sampler_each,
                      "models_loaded": list(loads), "partial_load": bool(loads),
                      "offloaded_mb": sum(m.get("offloaded_mb", 0) for m in loads) or None},
                     {"node_id": "18", "type": "KSamplerAdvanced", "seconds": sampler_each},
                     {"node_id": "19", "type": "VAEDecode", "seconds": wall - 2 * sampler_each}]}
    return report.describe_run(variant, repeat, wall, prompt, rec, layers, cuda=False)


def test_scaling_to_40_blocks_scales_only_the_samplers(report):
    run = fake_run(report, "stock", 1, wall=20.0, sampler_each=6.0)
    assert run["sampler_s"] == 12.0 and run["sampler_s_per_40_blocks"] == 48.0
    assert run["e2e_s_at_40_blocks"] == 20.0 - 12.0 + 48.0


def test_run_counts_model_loads_and_reports_each_experts_partial_load(report):
    loads = [{"name": "WAN21", "size_mb": 14000.0, "loaded_mb": 9000.0, "offloaded_mb": 5000.0}]
    run = fake_run(report, "stock", 0, wall=20.0, sampler_each=6.0, loads=loads)
    assert run["model_loads"] == 1
    assert run["experts"][0] == {"node_id": "17", "partial_load": True, "offloaded_mb": 5000.0, "loaded": loads}
    assert run["experts"][1]["partial_load"] is None and run["experts"][1]["loaded"] == []


def test_summary_drops_the_first_run_and_reports_stock_over_each_path(report):
    runs = [fake_run(report, "stock", 0, 40.0, 10.0), fake_run(report, "stock", 1, 20.0, 7.0),
            fake_run(report, "stock", 2, 22.0, 7.0), fake_run(report, "accel_sdpa", 0, 80.0, 30.0),
            fake_run(report, "accel_sdpa", 1, 16.0, 5.0), fake_run(report, "accel_sdpa", 2, 18.0, 5.0)]
    summary = report.summarize(runs, repeats=3)
    assert summary["repeats_used"] == [1, 2]
    assert summary["stock"]["wall_s"] == 21.0 and summary["accel_sdpa"]["wall_s"] == 17.0
    assert summary["stock"]["node_s"]["17 KSamplerAdvanced"] == 7.0
    stock_e2e = statistics.median([20 - 14 + 56, 22 - 14 + 56])
    accel_e2e = statistics.median([16 - 10 + 40, 18 - 10 + 40])
    ratios = summary["speedup"]["accel_sdpa"]
    assert ratios["e2e_s_at_40_blocks"] == round(stock_e2e / accel_e2e, 3)
    assert ratios["wall_s"] == round(21.0 / 17.0, 3) and ratios["first_run_wall_s"] == 0.5


def test_failed_runs_are_listed_and_left_out_of_the_medians(report):
    failed = fake_run(report, "stock", 1, 1.0, 0.1) | {"error": "KSamplerAdvanced: OutOfMemoryError"}
    runs = [fake_run(report, "stock", 0, 30.0, 10.0), failed, fake_run(report, "accel_sdpa", 0, 20.0, 5.0),
            fake_run(report, "accel_sdpa", 1, 10.0, 2.0)]
    summary = report.summarize(runs, repeats=2)
    assert summary["failed"] == ["stock"] and "stock" not in summary and "speedup" not in summary
    assert summary["accel_sdpa"]["wall_s"] == 10.0


def test_single_repeat_summary_uses_it(report):
    runs = [fake_run(report, "stock", 0, 30.0, 10.0), fake_run(report, "accel", 0, 20.0, 5.0)]
    summary = report.summarize(runs, repeats=1)
    assert summary["repeats_used"] == [0] and summary["speedup"]["accel"]["wall_s"] == 1.5


def test_frames_psnr(report):
    import torch

    a = torch.zeros(2, 4, 4, 3)
    assert report.compare_frames(a, a)["psnr_db"] == float("inf")
    assert report.compare_frames(a, a + 0.1)["psnr_db"] == 20.0


def test_small_run_in_real_comfyui_matches_stock_frames(comfyui, tmp_path):
    """The whole bench on the CPU at 64x64, 5 frames: ComfyUI started as main.py does, both paths' first
    runs, frames equal to float noise, every node recorded."""
    import json
    import subprocess
    import sys

    from bench_support import BENCH

    out = tmp_path / "small.json"
    done = subprocess.run([sys.executable, str(BENCH / "two_pass.py"), "--comfy", str(comfyui), "--out", str(out),
                           "--small", "--paths", "stock,accel_sdpa", "--warm", "0"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [(r["variant"], r["repeat"], r.get("error")) for r in result["runs"]] == [("stock", 0, None),
                                                                                     ("accel_sdpa", 0, None)]
    assert all(r["model_loads"] >= 2 for r in result["runs"])  # a first run loads the experts again
    assert result["frames"]["stock_vs_accel_sdpa_0"]["psnr_db"] > 100
    accel_nodes = {n["type"]: n for n in result["runs"][1]["nodes"]}
    assert "vae.tiles" in accel_nodes["VAEDecode"]["phases_s"]  # the patched VAE ran our engine
    assert [p["stage"] for p in accel_nodes["VAEDecode"]["vae_plan"]] == ["decode"]  # ... with this plan
    assert [p["stage"] for p in accel_nodes["WanImageToVideo"]["vae_plan"]] == ["encode"]
    assert result["comfy_boot"]["dynamic_vram"] in (None, False)  # on the CPU: off (0.33) or absent
