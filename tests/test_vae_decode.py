"""The engine's decode equals diffusers' untiled decode, for every plan, OOM retry and shape."""
from __future__ import annotations

import pytest
import torch

from wan_accel.vae_accel import BadLatent, UnsupportedVAE, build_decoder, decode
from wan_accel.vae_accel import sink as sink_module
from wan_accel.vae_accel.decode import decoder_graph

from wan_fixtures import fail_after, reference_decode, wan21, wan22

TOL = 1e-5


def _latent(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _raw(model, z, **kw):
    # diffusers clamps its output; the engine returns the module's raw values
    return decode(model, z, progress=False, **kw).clamp(-1, 1)


@pytest.mark.parametrize("tile,slice_len", [(None, None), (4, 1), (5, 2), (3, 3), (7, 8), (64, 2)])
def test_tiled_sliced_decode_equals_untiled(tile, slice_len):
    model = wan21()
    z = _latent((1, 16, 4, 11, 13))  # 11x13: no tile size divides it
    ref = reference_decode(model, z)
    out = _raw(model, z, tile=tile, slice_len=slice_len)
    assert out.shape == ref.shape == (1, 3, 13, 88, 104)
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("frames", [1, 2])
def test_short_videos(frames):
    model = wan21()
    z = _latent((1, 16, frames, 6, 7), seed=frames)
    ref = reference_decode(model, z)
    out = _raw(model, z, tile=3, slice_len=2)
    assert out.shape == ref.shape == (1, 3, 1 + 4 * (frames - 1), 48, 56)
    assert (out - ref).abs().max().item() <= TOL


def test_batch_of_two_decodes_each_video():
    model = wan21()
    z = _latent((2, 16, 3, 6, 5), seed=3)
    ref = torch.cat([reference_decode(model, z[i : i + 1]) for i in range(2)])
    out = _raw(model, z, tile=4, slice_len=1)
    assert (out - ref).abs().max().item() <= TOL
    assert (out[0] - out[1]).abs().max() > 0.1  # the two videos really differ


def test_comfy_layout_matches_vae_decode_contract():
    model = wan21()
    z = _latent((1, 16, 3, 5, 6), seed=4)
    ref = reference_decode(model, z)
    out = decode(model, z, layout="comfy", tile=2, slice_len=2, progress=False)
    expected = ((ref + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)  # B, T, H, W, C
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert (out - expected).abs().max().item() <= TOL


def test_wan22_vae_decode_exact():
    model = wan22()
    z = _latent((1, 48, 3, 5, 7), seed=5)
    ref = reference_decode(model, z)
    for tile, k in [(None, None), (2, 1), (3, 2)]:
        out = _raw(model, z, tile=tile, slice_len=k)
        assert out.shape == ref.shape == (1, 3, 9, 80, 112)
        assert (out - ref).abs().max().item() <= TOL


def test_halo_comes_from_the_module_tree():
    # Wan 2.1 decoder: 6 convs at 1/8, 7 at 1/4, 7 at 1/2, 8 at full resolution -> 12.25 latent px
    assert build_decoder(wan21()).halo_latent == pytest.approx(12.25)
    # one residual block fewer per level shrinks the reach
    assert build_decoder(wan21(num_res_blocks=1)).halo_latent == pytest.approx(8.5)


class _Coverage:
    """Counts how often each output element is written."""

    def __init__(self, monkeypatch):
        self.count = None
        original = sink_module.HostSink.write

        def write(sink, index, piece):
            if self.count is None or self.count.shape != sink.out.shape:
                self.count = torch.zeros(sink.out.shape, dtype=torch.int32)
            self.count[index] += 1
            original(sink, index, piece)

        monkeypatch.setattr(sink_module.HostSink, "write", write)


def _oom_at(calls_to_fail):
    seen = {"n": 0, "stages": []}

    def fault(stage, info):
        seen["n"] += 1
        if seen["n"] in calls_to_fail:
            seen["stages"].append((stage, info["frames"]))
            raise torch.OutOfMemoryError("injected")

    return fault, seen


def test_injected_oom_resumes_without_lost_or_duplicated_frames(monkeypatch, caplog):
    model = wan21()
    z = _latent((1, 16, 6, 9, 10), seed=6)
    ref = reference_decode(model, z)
    coverage = _Coverage(monkeypatch)
    # calls 1-5: stem (frame 0, then 4 frames fail -> 2+2, then the last frame); 6-10: tile 1 with its
    # 4-frame step failing (-> 2+2+1); 11: tile 2's first frame fails (-> split), 12: the half fails again
    fault, seen = _oom_at({2, 7, 11, 12, 20})
    out = _raw(model, z, tile=5, slice_len=4, fault=fault)
    assert (out - ref).abs().max().item() <= TOL
    assert coverage.count.min().item() == 1 and coverage.count.max().item() == 1
    assert len(seen["stages"]) == 5
    assert any(s == "stem" for s, _ in seen["stages"]) and any(s == "decode" for s, _ in seen["stages"])
    retries = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(retries) == 5  # one log line per retry


def test_oom_on_first_frame_splits_the_tile(monkeypatch, caplog):
    model = wan21()
    z = _latent((1, 16, 3, 8, 8), seed=7)
    ref = reference_decode(model, z)
    fault, seen = _oom_at({3})  # stem has 2 steps (1 + 2 frames); step 3 is the first tile's first frame
    out = _raw(model, z, tile=8, slice_len=2, fault=fault)
    assert seen["stages"] == [("decode", (0, 1))]
    assert (out - ref).abs().max().item() <= TOL
    assert any("splitting it" in r.getMessage() for r in caplog.records)


def test_oom_after_a_step_staged_its_state_rolls_it_back(monkeypatch, caplog):
    model = wan21()
    graph = decoder_graph(model)
    z = _latent((1, 16, 5, 9, 10), seed=12)
    ref = reference_decode(model, z)
    coverage = _Coverage(monkeypatch)
    stem = fail_after(monkeypatch, graph.stem.ops[-1], {2})  # the stem's 2-frame step, all its caches staged
    head = fail_after(monkeypatch, graph.up.ops[-1], {2, 6})  # the head conv: the whole up path staged
    out = _raw(model, z, tile=5, slice_len=2)
    assert stem["failed"] == [2] and head["failed"] == [2, 6]
    assert (out - ref).abs().max().item() <= TOL
    assert coverage.count.min().item() == 1 and coverage.count.max().item() == 1
    assert len([r for r in caplog.records if "out of memory" in r.getMessage()]) == 3


def test_tile_split_mid_video_inherits_the_caches(monkeypatch, caplog):
    """An OOM on a one-frame step after frames 0 and 1 of a tile are done splits the tile; its halves
    go on from frame 2 with the tile's causal caches (cropped), not from empty ones."""
    model = wan21()
    graph = decoder_graph(model)
    z = _latent((1, 16, 4, 8, 8), seed=13)
    ref = reference_decode(model, z)
    coverage = _Coverage(monkeypatch)
    head = fail_after(monkeypatch, graph.up.ops[-1], {3})  # one 8x8 tile, one frame per step: frame 2
    out = _raw(model, z, tile=8, slice_len=1)
    assert head["failed"] == [3]
    assert any("splitting it" in r.getMessage() for r in caplog.records)
    assert (out - ref).abs().max().item() <= TOL
    assert coverage.count.min().item() == 1 and coverage.count.max().item() == 1


def test_oom_that_cannot_shrink_further_raises_clear_error():
    model = wan21()
    z = _latent((1, 16, 1, 2, 2), seed=8)

    def always(stage, info):
        raise torch.OutOfMemoryError("injected")

    with pytest.raises(RuntimeError, match="out of memory"):
        decode(model, z, tile=1, slice_len=1, fault=always, progress=False)


def test_progress_reports_every_step():
    model = wan21()
    z = _latent((1, 16, 4, 6, 6), seed=9)
    calls = []
    decode(model, z, tile=3, slice_len=2, progress=lambda d, t: calls.append((d, t)), layout="raw")
    # stem: 1 + 2 steps; 4 tiles x (1 + 2) steps
    assert [d for d, _ in calls] == list(range(1, 16))
    assert calls[-1] == (15, 15)


@pytest.mark.parametrize(
    "latent,match",
    [
        (torch.zeros(1, 16, 8, 8), "4-D latent"),
        (torch.zeros(1, 4, 2, 8, 8), "4 channels but this VAE expects 16"),
        (torch.zeros(1, 48, 2, 8, 8), "Wan 2.2 VAE"),
        (torch.zeros(1, 16, 0, 8, 8), "empty"),
        (torch.full((1, 16, 2, 4, 4), float("nan")), "NaN"),
        (torch.zeros(16, 2, 8), "5-D latent"),
    ],
)
def test_bad_latents_get_clear_errors(latent, match):
    with pytest.raises(BadLatent, match=match):
        decode(wan21(), latent, progress=False)


def test_unsupported_vae_names_the_supported_ones():
    from diffusers import AutoencoderKL

    sd_vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4)
    with pytest.raises(UnsupportedVAE, match="Wan 2.1 VAE") as err:
        decode(sd_vae, torch.zeros(1, 4, 1, 4, 4), progress=False)
    assert str(err.value).count("wan_2.1_vae.safetensors") == 1
    with pytest.raises(UnsupportedVAE, match="expected a VAE module"):
        build_decoder("not a model")


@pytest.mark.parametrize("channels_last", [True, False])
def test_gpu_layout_options_are_exact_on_cpu(channels_last, monkeypatch):
    """channels_last_3d buffers and the fusable norm+SiLU (the CUDA defaults) give the same frames."""
    from wan_accel.vae_accel import runtime

    # the CUDA path's wrapper around the compiled kernel, with the kernel run eagerly here
    monkeypatch.setattr(runtime, "_fused_norm", lambda: runtime.make_fused_norm(runtime.norm_silu_last))
    for model, z in [(wan21(), _latent((1, 16, 3, 7, 6), seed=10)), (wan22(), _latent((1, 48, 3, 4, 5), seed=11))]:
        ref = reference_decode(model, z)
        out = _raw(model, z, tile=3, slice_len=2, channels_last=channels_last, fused_norm=True)
        assert (out - ref).abs().max().item() <= TOL


def test_options_object_and_keywords_are_the_same_call():
    from wan_accel.vae_accel import RunOptions

    model = wan21()
    z = _latent((1, 16, 3, 6, 7), seed=14)
    by_keywords = decode(model, z, tile=3, slice_len=2, progress=False)
    by_object = decode(model, z, RunOptions(tile=3, slice_len=2, progress=False))
    overridden = decode(model, z, RunOptions(tile=5, slice_len=1, progress=False), tile=3, slice_len=2)
    assert torch.equal(by_keywords, by_object) and torch.equal(by_keywords, overridden)
    with pytest.raises(TypeError, match="unknown engine option\\(s\\) tiles"):
        decode(model, z, tiles=3)


@pytest.mark.parametrize("run", ["decode", "encode"])
def test_conv_autotune_holds_only_inside_the_call(run):
    """``conv_autotune`` turns cuDNN's benchmark mode on for every step of the call and gives the caller's
    setting back after it, also when the call fails; off by default."""
    from wan_accel.vae_accel import encode

    model = wan21()
    seen = []

    def fault(stage, info):
        seen.append(torch.backends.cudnn.benchmark)

    def call(**kw):
        if run == "decode":
            return decode(model, _latent((1, 16, 2, 4, 5)), progress=False, tile=2, fault=fault, **kw)
        return encode(model, torch.rand(1, 3, 5, 32, 40) * 2 - 1, progress=False, tile=2, fault=fault, **kw)

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        call()
        assert seen and not any(seen)
        seen.clear()
        call(conv_autotune=True)
        assert seen and all(seen) and torch.backends.cudnn.benchmark is False

        def failing(stage, info):
            raise ValueError("stop")

        with pytest.raises(ValueError):
            decode(model, _latent((1, 16, 2, 4, 5)), progress=False, fault=failing, conv_autotune=True)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("in_ch,out_ch,ft", [(8, 8, 2), (8, 4, 1), (4, 4, 1), (2, 4, 2)])
@pytest.mark.parametrize("out", [(0, 8, 0, 10), (1, 7, 3, 9), (2, 5, 1, 4), (3, 4, 0, 10)])
def test_dup_up_added_as_a_view_equals_the_built_shortcut(in_ch, out_ch, ft, out):
    """Wan 2.2's upsampling shortcut added into the main path without building it (whole 2x2 blocks as a
    broadcast view, strips and channel groupings a view cannot express the plain way) equals adding the
    built one, for aligned and odd rectangles and every grouping Wan 2.2 uses (and one it does not)."""
    from wan_accel.vae_accel.context import ExecContext, TileState
    from wan_accel.vae_accel.op_resample import DupUp
    from wan_accel.vae_accel.rect import Rect

    op = DupUp(in_ch, out_ch, ft, 2)
    op.key = 0
    ctx = ExecContext(torch.device("cpu"), torch.float32)
    size, out = (4, 5), Rect(*out)
    have = op.need(out, size)
    x = torch.randn(1, in_ch, 3, have.height, have.width)
    y = torch.randn(1, out_ch, 3 * ft, out.height, out.width)
    done = TileState({0: True})  # a later chunk: the first one drops frames and takes the plain path
    want = y + op.run(x, have, out, size, done, ctx)
    got = op.add_into(y.clone(), x, have, out, size, done, ctx)
    assert torch.equal(got, want)
    assert (op.block_view(x) is None) == (op.repeats not in (1, 2, 4, 4 * ft))
    y = y[:, :, ft - 1 :]  # the first chunk keeps the last of its first frame's ft frames
    assert torch.equal(op.add_into(y.clone(), x, have, out, size, TileState(), ctx), y + op.run(x, have, out, size, TileState(), ctx))
