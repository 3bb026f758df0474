"""WanAccelVAEPatch against a real ComfyUI (COMFYUI_PATH): it takes only Wan video VAEs, and the VAE it
returns behaves exactly as core's in everything it accepts."""
from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch

from comfy_support import comfy_vae


def _patch(mappings, vae, **inputs):
    return mappings["WanAccelVAEPatch"].execute(vae=vae, **inputs).result[0]


def _randomised_sd(module: torch.nn.Module, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * (1.0 / max(1, v[0].numel())) ** 0.5 if v.dim() > 1
                else torch.rand(v.shape, generator=g) + 0.5) for k, v in module.state_dict().items()}


def test_sd_image_vae_passes_through_and_gives_cores_output(mappings, caplog):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    config = {"params": {"embed_dim": 4, "ddconfig": ddconfig}}
    vae = comfy.sd.VAE(sd=_randomised_sd(AutoencoderKL(**config["params"])), config=config, dtype=torch.float32)
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        patched = _patch(mappings, vae)
    assert patched is vae
    assert any("leaves this VAE unchanged" in r.getMessage() for r in caplog.records)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(patched.decode(z), vae.decode(z))
    assert torch.equal(patched.encode(images), vae.encode(images))


def test_image_vae_built_from_wan22_modules_passes_through(mappings):
    """Newer ComfyUI builds the Qwen Image 2.1 VAE (64 latent channels, no patchify, temporal kernel 1)
    from comfy.ldm.wan.vae2_2 with image latents; it must reach core untouched."""
    import comfy.ldm.wan.vae2_2 as vae2_2

    params = inspect.signature(vae2_2.WanVAE.__init__).parameters
    if not {"patch_size", "temporal_kernel", "image_channels"} <= set(params):
        pytest.skip("this ComfyUI's vae2_2.WanVAE has no patch_size/temporal_kernel: it cannot build the Qwen "
                    "Image 2.1 VAE (a newer ComfyUI can); the wrapper-level test below covers the rule")
    module = vae2_2.WanVAE(dim=16, dec_dim=16, z_dim=64, dim_mult=[1, 2, 4, 8, 8], num_res_blocks=1,
                           attn_scales=[], temperal_downsample=[False, True, True, True], image_channels=4,
                           patch_size=1, temporal_kernel=1)
    vae = comfy_vae(_randomised_sd(module))
    if getattr(vae, "latent_dim", None) != 2:
        pytest.skip("this ComfyUI's comfy.sd.VAE does not recognise the Qwen Image 2.1 VAE layout")
    assert _patch(mappings, vae) is vae
    z = torch.randn(2, 64, 2, 3, generator=torch.Generator().manual_seed(3))
    images = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(_patch(mappings, vae).decode(z), vae.decode(z))
    assert _patch(mappings, vae).encode(images).shape[0] == 2  # a batch of images, not one video


@pytest.mark.parametrize("change", [
    {"latent_dim": 2},  # ComfyUI says its latents are images (the Qwen Image 2.1 VAE's wrapper)
    {"not_video": True},  # encodes a batch of frames as separate images
    {"upscale_ratio": (lambda a: max(0, a * 8 - 7), 8, 8)},  # 8x in time: not the Wan video layout
    {"upscale_ratio": (lambda a: max(0, a * 4 - 3), 16, 16)},  # 16x in space with an 8x module tree
    {"latent_channels": 64},
])
def test_wan_modules_under_a_non_wan_video_wrapper_pass_through(mappings, vae21, change, caplog):
    vae = copy.copy(vae21)
    for name, value in change.items():
        setattr(vae, name, value)
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        assert _patch(mappings, vae) is vae
    assert any("leaves this VAE unchanged" in r.getMessage() for r in caplog.records)


def test_the_wan_video_vae_itself_is_patched(mappings, vae21):
    assert _patch(mappings, vae21) is not vae21


# --- the patched VAE accepts what core's accepts and returns what core's returns -------------------

def _bridge(mappings):
    import sys

    return sys.modules[mappings["WanAccelVAEPatch"].__module__.rsplit(".", 1)[0] + ".vae_bridge"]


@pytest.fixture
def engine_calls(mappings, monkeypatch):
    """Counts the engine's decode and encode runs behind the patched VAE."""
    bridge, calls = _bridge(mappings), []
    for name in ("engine_decode", "engine_encode"):
        real = getattr(bridge, name)
        monkeypatch.setattr(bridge, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    return calls


def _close(ours, core, tol=1e-5):
    assert ours.shape == core.shape and ours.dtype == core.dtype and ours.device == core.device
    assert (ours.float() - core.float()).abs().max().item() <= tol * max(1.0, core.float().abs().max().item())


Z = torch.randn(1, 16, 2, 5, 4, generator=torch.Generator().manual_seed(10))
FRAMES = torch.rand(5, 40, 32, 3, generator=torch.Generator().manual_seed(11))


def test_patched_methods_have_cores_signatures(mappings, vae21):
    patched = _patch(mappings, vae21)
    for name in ("decode", "encode"):
        assert inspect.signature(getattr(patched, name)) == inspect.signature(getattr(vae21, name))


def test_arguments_the_engine_cannot_honour_go_to_core_logged_once(mappings, vae21, engine_calls, caplog):
    """A newer ComfyUI's extra parameters (here not_video, and vae_options with content) reach core's own
    method; at their defaults the engine runs. The signature is read when the VAE is patched."""
    import comfy.sd

    class NewerVAE(comfy.sd.VAE):
        seen = []

        def encode(self, pixel_samples, not_video=None):
            NewerVAE.seen.append(not_video)
            return super().encode(pixel_samples)

    vae = copy.copy(vae21)
    vae.__class__ = NewerVAE
    patched = _patch(mappings, vae)
    assert list(inspect.signature(patched.encode).parameters) == ["pixel_samples", "not_video"]
    core = vae.encode(FRAMES)
    NewerVAE.seen.clear()
    _close(patched.encode(FRAMES), core, 1e-4)
    _close(patched.encode(FRAMES, not_video=None), core, 1e-4)
    assert engine_calls == ["engine_encode"] * 2 and NewerVAE.seen == []
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        for _ in range(2):
            assert torch.equal(patched.encode(FRAMES, not_video=True), vae.encode(FRAMES, not_video=True))
        with pytest.raises(TypeError):  # core's Wan decode takes no options: core's own error
            patched.decode(Z, vae_options={"octree_resolution": 8})
        with pytest.raises(TypeError):
            patched.encode(FRAMES, bogus=1)
    assert engine_calls == ["engine_encode"] * 2 and NewerVAE.seen == [True, True, True, True]
    told = [r.getMessage() for r in caplog.records if "leaves" in r.getMessage()]
    assert len(told) == 2 and "not_video set" in told[0] and "vae_options set" in told[1], told
    _close(patched.decode(Z, vae_options={}), vae.decode(Z))
    assert engine_calls[-1] == "engine_decode"


def test_inputs_the_engine_refuses_go_to_core(mappings, vae21, caplog):
    patched = _patch(mappings, vae21)
    nan = torch.full((1, 16, 2, 5, 4), float("nan"))
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        ours = patched.decode(nan)
    assert torch.equal(ours.isnan(), vae21.decode(nan).isnan())  # core decodes it (to NaN); so does the patch
    assert any("does not take to ComfyUI's own VAE.decode (latent contains NaN" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("change", ["process", "format_encoded", "fp16_intermediates"])
def test_patched_output_equals_cores_in_every_mode(mappings, vae21, engine_calls, monkeypatch, change):
    vae = copy.copy(vae21)
    if change == "process":  # whatever the VAE's own pixel mapping is, it applies
        vae.process_output = lambda image: image.mul_(0.25).add_(0.5)
        vae.process_input = lambda image: image * 1.5 - 0.75
    elif change == "format_encoded":
        if not hasattr(vae, "format_encoded"):
            pytest.skip("this ComfyUI's VAE.encode has no format_encoded step (0.33 added it)")
        vae.format_encoded = lambda samples: samples[:, :8] * 2.0
    else:
        if not hasattr(vae, "vae_output_dtype"):
            pytest.skip("this ComfyUI has no intermediate dtype (--fp16-intermediates came later)")
        from comfy.cli_args import args

        monkeypatch.setattr(args, "fp16_intermediates", True, raising=False)
    patched = _patch(mappings, vae)
    tol = 1e-3 if change == "fp16_intermediates" else 1e-4
    _close(patched.decode(Z), vae.decode(Z), tol)
    _close(patched.encode(FRAMES), vae.encode(FRAMES), tol)
    assert engine_calls == ["engine_decode", "engine_encode"]
