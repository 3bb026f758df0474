"""The engine's encode equals diffusers' untiled encode, for every plan, OOM retry and input."""
from __future__ import annotations

import sys

import pytest
import torch

from wan_accel.vae_accel import BadVideo, UnsupportedVAE, build_encoder, encode
from wan_accel.vae_accel.encode import encoder_graph

from wan_fixtures import fail_after, wan21, wan22

TOL = 1e-5


def _video(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _ref(model, x):
    with torch.no_grad():
        return model.encode(x).latent_dist.mean


@pytest.mark.parametrize("tile,slice_len", [(None, None), (2, 1), (3, 2), (4, 3)])
def test_sliced_tiled_encode_equals_untiled_wan21(tile, slice_len):
    model = wan21()
    x = _video((1, 3, 13, 56, 40))  # 7x5 latent: no tile size divides it
    ref = _ref(model, x)
    out = encode(model, x, tile=tile, slice_len=slice_len, progress=False)
    assert out.shape == ref.shape == (1, 16, 4, 7, 5)
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("tile,slice_len", [(None, None), (2, 1), (3, 2)])
def test_sliced_tiled_encode_equals_untiled_wan22(tile, slice_len):
    model = wan22()
    x = _video((1, 3, 9, 64, 80), seed=1)
    ref = _ref(model, x)
    out = encode(model, x, tile=tile, slice_len=slice_len, progress=False)
    assert out.shape == ref.shape == (1, 48, 3, 4, 5)
    assert (out - ref).abs().max().item() <= TOL


def test_single_image_and_batch():
    model = wan21()
    x = _video((2, 3, 1, 32, 24), seed=2)
    ref = torch.cat([_ref(model, x[i : i + 1]) for i in range(2)])
    out = encode(model, x, tile=2, progress=False)
    assert out.shape == (2, 16, 1, 4, 3)
    assert (out - ref).abs().max().item() <= TOL


def test_comfy_layout_and_frame_trim(caplog):
    model = wan21()
    x = _video((1, 3, 7, 32, 32), seed=3)  # 7 frames: core encodes 5 and drops 2
    ref = _ref(model, x[:, :, :5])
    frames01 = ((x + 1) / 2).permute(0, 2, 3, 4, 1)  # B, T, H, W, C in [0, 1]
    with caplog.at_level("INFO", logger="wan_accel"):
        out = encode(model, frames01, layout="comfy", tile=2, slice_len=1, progress=False)
    assert out.shape == ref.shape == (1, 16, 2, 4, 4)
    assert (out - ref).abs().max().item() <= 2e-5  # x -> (x+1)/2 -> 2y-1 rounds once more
    assert any("the last 2 are dropped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("layout", ["raw", "comfy"])
@pytest.mark.parametrize("stage_share", [0.0, 1.0])
def test_pixels_read_from_the_host_or_staged_on_the_device_encode_the_same(monkeypatch, layout, stage_share):
    """With room in the budget the video is staged on the device once; without, each tile reads its pixels
    from host memory. Both equal the untiled encode, in either layout, and the staged pixels leave the
    plan less of the budget."""
    encode_module = sys.modules["wan_accel.vae_accel.encode"]  # the package exports the function under that name

    model = wan21()
    x = _video((1, 3, 9, 40, 48), seed=6)
    ref = _ref(model, x)
    plans, stages = [], []
    real_plan, real_stage = encode_module.plan_encode, encode_module.stage_video
    monkeypatch.setattr(encode_module, "plan_encode", lambda *a, **k: plans.append(a[4]) or real_plan(*a, **k))
    monkeypatch.setattr(encode_module, "stage_video", lambda *a, **k: stages.append(1) or real_stage(*a, **k))
    monkeypatch.setattr(encode_module, "STAGE_SHARE", stage_share)
    monkeypatch.setattr(encode_module, "STAGE_CHUNK_FRAMES", 2)  # several chunks over 9 frames
    video = x if layout == "raw" else ((x + 1) / 2).permute(0, 2, 3, 4, 1)
    budget = 2**30
    out = encode(model, video, layout=layout, budget_bytes=budget, tile=3, slice_len=1, progress=False)
    assert (out - ref).abs().max().item() <= TOL
    staged_bytes = x.numel() * x.element_size()
    assert stages == ([1] if stage_share else [])
    assert plans == [budget - staged_bytes if stage_share else budget]


def test_no_room_to_stage_the_video_falls_back_to_host_reads(monkeypatch, caplog):
    """Staging that runs out of memory loses nothing: the encode reads from host memory with the whole
    budget, and equals the untiled encode."""
    encode_module = sys.modules["wan_accel.vae_accel.encode"]
    model = wan21()
    x = _video((1, 3, 5, 32, 40), seed=8)
    plans, real_plan = [], encode_module.plan_encode

    def no_room(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(encode_module, "stage_video", no_room)
    monkeypatch.setattr(encode_module, "plan_encode", lambda *a, **k: plans.append(a[4]) or real_plan(*a, **k))
    with caplog.at_level("INFO", logger="wan_accel"):
        out = encode(model, x, budget_bytes=2**30, tile=2, progress=False)
    assert (out - _ref(model, x)).abs().max().item() <= TOL
    assert plans == [2**30] and "host memory" in caplog.text


def test_a_video_with_nan_is_refused_whether_staged_or_not(monkeypatch):
    encode_module = sys.modules["wan_accel.vae_accel.encode"]  # the package exports the function under that name

    x = _video((1, 3, 5, 32, 32), seed=7)
    x[0, 1, 3, 5, 7] = float("nan")
    for share in (0.0, 1.0):
        monkeypatch.setattr(encode_module, "STAGE_SHARE", share)
        with pytest.raises(BadVideo, match="NaN"):
            encode(wan21(), x, budget_bytes=2**30, progress=False)


def test_injected_oom_in_encode_keeps_finished_work():
    model = wan21()
    x = _video((1, 3, 13, 48, 48), seed=4)
    ref = _ref(model, x)
    seen = {"n": 0, "failed": []}

    def fault(stage, info):
        seen["n"] += 1
        if seen["n"] in (2, 5, 9, 14):
            seen["failed"].append(stage)
            raise torch.OutOfMemoryError("injected")

    out = encode(model, x, tile=3, slice_len=2, fault=fault, progress=False)
    assert (out - ref).abs().max().item() <= TOL
    assert len(seen["failed"]) == 4 and "encode" in seen["failed"]


def test_oom_after_a_step_staged_its_state_rolls_it_back(monkeypatch):
    model = wan21()
    graph = encoder_graph(model)
    x = _video((1, 3, 13, 48, 48), seed=7)
    ref = _ref(model, x)
    down = fail_after(monkeypatch, graph.down.ops[-1], {2, 5})  # the whole down path of the step staged
    tail = fail_after(monkeypatch, graph.tail.ops[-1], {2})  # the middle block and head staged
    out = encode(model, x, tile=3, slice_len=2, progress=False)
    assert down["failed"] == [2, 5] and tail["failed"] == [2]
    assert (out - ref).abs().max().item() <= TOL


def test_tile_split_mid_video_inherits_the_caches(monkeypatch, caplog):
    model = wan21()
    graph = encoder_graph(model)
    x = _video((1, 3, 13, 48, 48), seed=8)
    ref = _ref(model, x)
    down = fail_after(monkeypatch, graph.down.ops[-1], {3})  # one tile, one latent frame per step: frame 2
    out = encode(model, x, tile=6, slice_len=1, progress=False)
    assert down["failed"] == [3]
    assert any("splitting it" in r.getMessage() for r in caplog.records)
    assert (out - ref).abs().max().item() <= TOL


def test_encoder_halo_comes_from_the_module_tree():
    # 5 convs + the stride-2 conv at full res, then 5, 5 and 4 convs at 1/2, 1/4, 1/8: 6+10+20+32 px
    assert build_encoder(wan21()).halo_pixels == pytest.approx(68.0)


@pytest.mark.parametrize(
    "video,layout,match",
    [
        (torch.zeros(3, 5, 32, 32), "raw", "5-D video"),
        (torch.zeros(1, 4, 5, 32, 32), "raw", "4 channels"),
        (torch.zeros(1, 3, 5, 30, 32), "raw", "multiple of 8"),
        (torch.zeros(1, 3, 0, 32, 32), "raw", "empty"),
        (torch.full((1, 5, 32, 32, 3), float("inf")), "comfy", "NaN or infinite"),
    ],
)
def test_bad_videos_get_clear_errors(video, layout, match):
    with pytest.raises(BadVideo, match=match):
        encode(wan21(), video, layout=layout, progress=False)


def test_encode_rejects_non_wan_vae():
    with pytest.raises(UnsupportedVAE, match="Wan 2.1 VAE"):
        encode(torch.nn.Linear(2, 2), torch.zeros(1, 3, 1, 8, 8), progress=False)


def test_the_plans_that_ran_are_in_the_telemetry_record():
    """Each engine call notes its plan (tiles, slices, steps, budget, staged input); the node record lists
    them, so a graph shows how the VAE ran, not only how long it took."""
    from wan_accel.telemetry.recorder import Recorder
    from wan_accel.vae_accel import decode

    model = wan21()
    x = _video((1, 3, 9, 40, 48), seed=9)
    rec = Recorder()
    with rec.session("bench.vae"):
        latent = encode(model, x, budget_bytes=2**30, tile=3, slice_len=1, progress=False)
        decode(model, latent, tile=2, slice_len=2, progress=False)
    enc, dec = rec.last_run["nodes"][0]["vae_plan"]
    assert enc["stage"] == "encode" and dec["stage"] == "decode"
    assert enc["tiles"] == 4 and enc["slices"] == 3 and enc["steps"] == 12  # 5x6 latent in 3x3 tiles; 1+1+1 frames
    assert enc["staged_mb"] == round(x.numel() * 4 / 2**20, 1) and enc["budget_mb"] == round(1024 - enc["staged_mb"], 1)
    assert dec["tiles"] == 9 and dec["slices"] == 2 and dec["tile_px"] == "16x16" and dec["budget_mb"] is None
