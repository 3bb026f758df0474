"""The engine and nodes inside a real ComfyUI (skipped unless COMFYUI_PATH is set)."""
from __future__ import annotations

import logging

import pytest
import torch

from comfy_support import comfy_vae, random_wan_vae_sd

TOL = 1e-5


def _z(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_nodes_registered_from_custom_nodes(mappings):
    for node_id in ("WanAccelVAEDecode", "WanAccelVAEPatch", "WanAccelAttention"):
        assert node_id in mappings, f"{node_id} not registered"


@pytest.mark.parametrize("tile,slice_len", [(None, None), (3, 1), (5, 2)])
def test_engine_equals_comfy_vae_decode(vae21, tile, slice_len):
    from wan_accel.vae_accel import decode

    z = _z((1, 16, 4, 9, 7))
    core = vae21.decode(z)  # B, T, H, W, C in [0, 1]
    ours = decode(vae21.first_stage_model, z, layout="comfy", tile=tile, slice_len=slice_len, progress=False)
    assert ours.shape == core.shape == (1, 13, 72, 56, 3)
    assert (ours - core).abs().max().item() <= TOL


def _bridge(mappings):
    """The bridge module as ComfyUI imported it (under the custom_nodes path, not as wan_accel)."""
    import sys

    package = mappings["WanAccelVAEPatch"].__module__.rsplit(".", 1)[0]
    return sys.modules[package + ".vae_bridge"]


def test_patch_makes_core_vae_decode_use_the_engine(mappings, vae21, monkeypatch):
    import nodes as comfy_nodes

    bridge = _bridge(mappings)
    z = {"samples": _z((1, 16, 3, 6, 5), seed=1)}
    plain = comfy_nodes.VAEDecode().decode(vae21, z)[0]
    patched = mappings["WanAccelVAEPatch"].execute(vae=vae21).result[0]
    assert patched is not vae21 and patched.first_stage_model is vae21.first_stage_model
    calls = []
    real = bridge.engine_decode
    monkeypatch.setattr(bridge, "engine_decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    via_patch = comfy_nodes.VAEDecode().decode(patched, z)[0]
    assert calls, "core VAE Decode did not go through the engine"
    assert via_patch.shape == plain.shape == (9, 48, 40, 3)
    assert (via_patch - plain).abs().max().item() <= TOL


def test_decode_node_output_matches_core_node(mappings, vae21):
    import nodes as comfy_nodes

    z = {"samples": _z((2, 16, 2, 5, 9), seed=2)}  # 9 latent columns: two tiles of the smallest size, 64 px
    core = comfy_nodes.VAEDecode().decode(vae21, z)[0]
    ours = mappings["WanAccelVAEDecode"].execute(samples=z, vae=vae21, tile_size=64, slice_frames=1).result[0]
    assert ours.shape == core.shape == (10, 40, 72, 3)
    assert (ours - core).abs().max().item() <= TOL


def test_wan22_vae_through_comfy_sd(comfyui):
    from wan_accel.vae_accel import decode

    vae = comfy_vae(random_wan_vae_sd("2.2"))
    assert vae.latent_channels == 48
    z = _z((1, 48, 3, 4, 5), seed=3)
    core = vae.decode(z)
    ours = decode(vae.first_stage_model, z, layout="comfy", tile=2, slice_len=2, progress=False)
    assert ours.shape == core.shape
    assert (ours - core).abs().max().item() <= TOL


class _NotWan:
    first_stage_model = torch.nn.Conv2d(4, 4, 1)

    def throw_exception_if_invalid(self):
        pass


def test_unsupported_vae_patch_passes_through_and_decode_names_supported(mappings, caplog):
    vae = _NotWan()
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        out = mappings["WanAccelVAEPatch"].execute(vae=vae).result[0]
    assert out is vae
    assert any("leaves this VAE unchanged" in r.getMessage() for r in caplog.records)
    for node, inputs in (("WanAccelVAEDecode", {"samples": {"samples": torch.zeros(1, 4, 1, 4, 4)}}),
                         ("WanAccelVAEEncode", {"pixels": torch.zeros(1, 8, 8, 3)})):
        with pytest.raises(TypeError, match="Wan 2.1 VAE") as err:
            mappings[node].execute(vae=vae, **inputs)
        message = str(err.value)
        assert message.count("wan_2.1_vae.safetensors") == 1, message  # the supported list, once
        assert "this VAE is not one: Conv2d" in message and "\n" not in message


def test_decode_node_rejects_image_latent(mappings, vae21):
    with pytest.raises(ValueError, match="4-D latent"):
        mappings["WanAccelVAEDecode"].execute(samples={"samples": torch.zeros(1, 16, 8, 8)}, vae=vae21)


def _patched(mappings, vae):
    return mappings["WanAccelVAEPatch"].execute(vae=vae, tile_size=64, slice_frames=1).result[0]


def test_patched_vae_gives_wan_image_to_video_the_same_conditioning(mappings, vae21, monkeypatch):
    from comfy_extras.nodes_wan import WanImageToVideo

    start = torch.rand(1, 40, 32, 3, generator=torch.Generator().manual_seed(4))
    cond = [[torch.zeros(1, 4, 8), {}]]

    def run(vae):
        out = WanImageToVideo.execute(positive=cond, negative=cond, vae=vae, width=32, height=40, length=9,
                                      batch_size=1, start_image=start)
        return out.result[0][0][1]["concat_latent_image"]

    bridge = _bridge(mappings)
    calls = []
    real = bridge.engine_encode
    monkeypatch.setattr(bridge, "engine_encode", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = run(vae21)
    assert not calls
    ours = run(_patched(mappings, vae21))
    assert calls, "WanImageToVideo's encode did not go through the engine"
    assert ours.shape == plain.shape == (1, 16, 3, 5, 4)
    assert (ours - plain).abs().max().item() <= 1e-4 * max(1.0, plain.abs().max().item())


def test_encode_node_and_core_vae_encode_agree(mappings, vae21):
    import nodes as comfy_nodes

    frames = torch.rand(5, 48, 72, 3, generator=torch.Generator().manual_seed(5))  # 9 latent columns: two tiles
    core = comfy_nodes.VAEEncode().encode(vae21, frames)[0]["samples"]
    ours = mappings["WanAccelVAEEncode"].execute(pixels=frames, vae=vae21, tile_size=64).result[0]["samples"]
    assert ours.shape == core.shape == (1, 16, 2, 6, 9)
    assert (ours - core).abs().max().item() <= 1e-4 * max(1.0, core.abs().max().item())


def test_wan22_vae_encode_through_comfy_sd(comfyui):
    from wan_accel.vae_accel import encode

    vae = comfy_vae(random_wan_vae_sd("2.2"))
    frames = torch.rand(5, 64, 48, 3, generator=torch.Generator().manual_seed(6))
    core = vae.encode(frames)
    ours = encode(vae.first_stage_model, frames.unsqueeze(0), layout="comfy", tile=2, slice_len=1, progress=False)
    assert ours.shape == core.shape == (1, 48, 2, 4, 3)
    assert (ours - core).abs().max().item() <= 1e-4 * max(1.0, core.abs().max().item())
