"""Wan VAE module trees for use outside ComfyUI (CLI, benchmarks, tests), via diffusers.

diffusers is optional: only these helpers need it, and they say how to install it.
"""
from __future__ import annotations

import torch

WAN21 = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
WAN22 = dict(base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
             temperal_downsample=[False, True, True], is_residual=True, patch_size=2, in_channels=12,
             out_channels=12, scale_factor_spatial=16)


def _diffusers_wan():
    try:
        from diffusers import AutoencoderKLWan
    except ImportError as exc:
        raise ImportError(
            "this needs diffusers' AutoencoderKLWan outside ComfyUI: pip install 'comfyui-wan-accel[demo]' "
            "(or pip install diffusers)"
        ) from exc
    return AutoencoderKLWan


def random_wan_vae(version: str = "2.1", seed: int = 0, **overrides) -> torch.nn.Module:
    """A Wan VAE of the real architecture with random weights (no download)."""
    cls = _diffusers_wan()
    config = dict(WAN21 if version == "2.1" else WAN22)
    config.update(overrides)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(**config).eval()


def load_wan_vae(path: str) -> torch.nn.Module:
    """Load a ComfyUI-layout Wan 2.1 VAE checkpoint (wan_2.1_vae.safetensors) into diffusers' module."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from safetensors.torch import load_file

    cls = _diffusers_wan()
    sd = load_file(path)
    if "decoder.middle.0.residual.0.gamma" not in sd:
        raise ValueError(f"{path} is not a Wan VAE checkpoint (no decoder.middle.0.residual.0.gamma key)")
    if sd["decoder.conv1.weight"].shape[1] != 16:
        raise ValueError(f"{path}: only the Wan 2.1 VAE (16 latent channels) loads outside ComfyUI; "
                         "run the Wan 2.2 VAE through ComfyUI's Load VAE and our nodes")
    dim = sd["decoder.head.0.gamma"].shape[0]
    model = cls(**dict(WAN21, base_dim=dim)).eval()
    model.load_state_dict(convert_wan_vae_to_diffusers(sd), strict=True)
    return model
