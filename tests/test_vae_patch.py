"""WanAccelVAEPatch against a real ComfyUI (COMFYUI_PATH): it takes only Wan video VAEs, and the VAE it
returns behaves exactly as core's in everything it accepts."""
from __future__ import annotations

import copy
import inspect
import logging

import pytest
import torch

from comfy_support import comfy_vae, load_our_nodes, random_wan_vae_sd


@pytest.fixture(scope="module")
def mappings(comfyui):
    return load_our_nodes()


@pytest.fixture(scope="module")
def vae21(comfyui):
    return comfy_vae(random_wan_vae_sd("2.1"))


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
