"""Helpers for tests that run against a real ComfyUI (COMFYUI_PATH)."""
from __future__ import annotations

import asyncio
import math
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def load_our_nodes() -> dict:
    """Load this repo the way ComfyUI loads custom_nodes/<folder>, return ComfyUI's node mappings."""
    import nodes as comfy_nodes

    if "WanAccelVAEDecode" not in comfy_nodes.NODE_CLASS_MAPPINGS:
        ok = asyncio.run(comfy_nodes.load_custom_node(str(REPO)))
        assert ok, "ComfyUI refused to load the package (see its log above)"
    return comfy_nodes.NODE_CLASS_MAPPINGS


def random_wan_vae_sd(version: str = "2.1", dim: int = 96, seed: int = 0) -> dict:
    """A state dict with the real key names and shapes of wan_2.1_vae / wan2.2_vae.safetensors
    (ComfyUI 0.3.64 builds the 2.1 VAE at dim 96 whatever the file holds), random values."""
    if version == "2.1":
        import comfy.ldm.wan.vae as wv

        model = wv.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    else:
        import comfy.ldm.wan.vae2_2 as wv

        # comfy.sd.VAE builds the Wan 2.2 VAE at its real widths (160 / 256) whatever the file says
        model = wv.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if p.dim() >= 2:
            sd[name] = torch.randn(p.shape, generator=g) * (1.5 / p[0].numel()) ** 0.5
        else:
            sd[name] = torch.rand(p.shape, generator=g) + 0.5
    return sd


def comfy_vae(sd: dict):
    import comfy.sd

    return comfy.sd.VAE(sd=sd, dtype=torch.float32)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)
