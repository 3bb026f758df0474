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


class BadVideo(ValueError):
    pass


def check_video(video, channels: int, space_factor: int, layout: str, finite: bool = True) -> torch.Tensor:
    """A 5-D video whose frame size the VAE can encode exactly (``finite``: and no NaN or infinity; the
    encoder checks that itself where the pixels are staged on the device, which is faster)."""
    if not isinstance(video, torch.Tensor):
        raise BadVideo(f"expected an image/video tensor, got {type(video).__name__}")
    if video.dim() != 5:
        want = "(batch, frames, height, width, 3)" if layout == "comfy" else "(batch, 3, frames, height, width)"
        raise BadVideo(f"expected a 5-D video {want}, got shape {tuple(video.shape)}")
    c = video.shape[-1] if layout == "comfy" else video.shape[1]
    frames, (h, w) = (video.shape[1], video.shape[2:4]) if layout == "comfy" else (video.shape[2], video.shape[3:5])
    if c != channels:
        raise BadVideo(f"video has {c} channels but this VAE encodes {channels} (RGB); drop alpha first")
    if video.numel() == 0 or frames == 0:
        raise BadVideo(f"video is empty: shape {tuple(video.shape)}")
    if h % space_factor or w % space_factor:
        raise BadVideo(f"frame size {h}x{w} is not a multiple of {space_factor}; resize or crop it "
                       f"(ComfyUI's VAE Encode crops to a multiple of {space_factor} for you)")
    if finite and not torch.isfinite(video).all():
        raise BadVideo("video contains NaN or infinite values")
    return video
