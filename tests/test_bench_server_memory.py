"""bench/server_memory.py's verdict and prompts (the server run itself: docs/benchmarks.md)."""
from __future__ import annotations

import pytest

from bench_support import load_bench


@pytest.fixture(scope="module")
def server():
    return load_bench("server_memory")


def rounds(phase, rss, gpu=None):
    return [{"phase": phase, "round": i + 1, "rss_mb": v, "gpu_used_mib": None if gpu is None else gpu[i], "errors": []}
            for i, v in enumerate(rss)]


def test_flat_session_passes_and_drift_is_measured_from_round_one(server):
    v = server.verdict(rounds("ab", [1000, 1030, 990, 1040]) + rounds("vae", [3000, 3010]), leaks=0, tolerance=5)
    assert v["ab"]["rss_drift_pct"] == 4.0 and v["vae"]["rss_drift_pct"] == 0.33 and v["flat"]


def test_growth_leak_warning_or_failed_prompt_is_not_flat(server):
    assert not server.verdict(rounds("ab", [1000, 1030, 1080]), leaks=0, tolerance=5)["flat"]
    assert server.verdict(rounds("ab", [1000, 1000], gpu=[500, 800]), 0, 5)["ab"]["vram_drift_pct"] == 60.0
    assert not server.verdict(rounds("ab", [1000, 1000]), leaks=1, tolerance=5)["flat"]
    failed = rounds("ab", [1000, 1000])
    failed[1]["errors"] = ["execution_error: out of memory"]
    assert not server.verdict(failed, leaks=0, tolerance=5)["flat"]


def test_one_round_cannot_be_called_flat(server):
    assert server.verdict(rounds("ab", [1000]), leaks=0, tolerance=5)["flat"] is False


def test_each_round_reruns_the_graph_and_holds_no_frames(server):
    opts = server.parse_args(["--comfy", "c", "--out", "o"])
    one, two = server.ab_prompt("accel", opts, 1), server.ab_prompt("accel", opts, 2)
    assert one["9001"]["inputs"]["keep"] is False
    seeds = [n["inputs"]["noise_seed"] for p in (one, two) for n in p.values()
             if n["class_type"] == "KSamplerAdvanced" and n["inputs"]["add_noise"] == "enable"]
    assert seeds[0] != seeds[1]
    vae = server.vae_prompt("wan2.2_vae.safetensors", opts, 3)
    assert vae["1"]["inputs"]["image"] != server.vae_prompt("wan2.2_vae.safetensors", opts, 4)["1"]["inputs"]["image"]
    assert vae["4"]["class_type"] == "WanAccelVAEPatch" and vae["7"]["inputs"]["keep"] is False


def test_the_stock_control_runs_cores_vae_alone(server):
    opts = server.parse_args(["--comfy", "c", "--out", "o", "--vae-stock"])
    vae = server.vae_prompt("wan_2.1_vae.safetensors", opts, 1)
    assert all(n["class_type"] != "WanAccelVAEPatch" for n in vae.values())
    assert vae["5"]["inputs"]["vae"] == ["3", 0] and vae["6"]["inputs"]["vae"] == ["3", 0]
