"""Input checks that name the problem and the fix."""
from __future__ import annotations

import torch


class BadLatent(ValueError):
    pass


def check_latent(latent, channels: int) -> torch.Tensor:
    if not isinstance(latent, torch.Tensor):
        raise BadLatent(f"expected a latent tensor, got {type(latent).__name__}")
    if latent.dim() == 4:
        raise BadLatent(
            f"got a 4-D latent {tuple(latent.shape)}; Wan video latents are 5-D (batch, {channels}, frames, "
            "height, width). This latent comes from an image model: decode it with that model's VAE"
        )
    if latent.dim() != 5:
        raise BadLatent(f"expected a 5-D latent (batch, {channels}, frames, height, width), got shape {tuple(latent.shape)}")
    if latent.shape[1] != channels:
        hint = " (a Wan 2.2 5B latent: use the Wan 2.2 VAE)" if latent.shape[1] == 48 else (
            " (a Wan 2.1/2.2-14B latent: use the Wan 2.1 VAE)" if latent.shape[1] == 16 else "")
        raise BadLatent(f"latent has {latent.shape[1]} channels but this VAE expects {channels}{hint}")
    if latent.numel() == 0:
        raise BadLatent(f"latent is empty: shape {tuple(latent.shape)}")
    if not torch.isfinite(latent).all():
        raise BadLatent("latent contains NaN or infinite values; the sampler diverged (try another seed, fewer LoRAs, or fp16->bf16)")
    return latent
