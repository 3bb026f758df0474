"""Runs the engine on a ComfyUI ``comfy.sd.VAE``: its device, dtype, memory manager and progress bar."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import comfy.utils

from ..vae_accel import SUPPORTED_VAES, UnsupportedVAE, build_decoder, build_encoder
from ..vae_accel import decode as engine_decode
from ..vae_accel import encode as engine_encode
from ..vae_accel import options
from ..vae_accel.planner import DECODE_BUDGET_CAP, DEFAULT_BUDGET, ENCODE_BUDGET_CAP, ENCODE_DEFAULT_BUDGET
from ..vae_accel.runtime import default_budget

@dataclass(frozen=True)
class Overrides:
    max_vram_gb: float = 0.0
    tile_size: int = 0  # output pixels
    slice_frames: int = 0  # latent frames


def unsupported_reason(vae) -> str | None:
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        return f"not a ComfyUI VAE ({type(vae).__name__})"
    try:
        build_decoder(model)
    except UnsupportedVAE as exc:
        return exc.reason
    return None


def _require_supported(vae):
    reason = unsupported_reason(vae)
    if reason:
        raise UnsupportedVAE(reason, f"Wan Accel VAE nodes support {SUPPORTED_VAES}; this VAE is not one: "
                                     f"{reason}. Use core VAE Decode or VAE Encode for it.")
    return build_decoder(vae.first_stage_model)


def _progress():
    bar = comfy.utils.ProgressBar(1)
    return lambda done, total: bar.update_absolute(done, total)


def _plan_args(vae, overrides: Overrides, space_factor: int, floor: int, cap: int) -> dict:
    # the nodes' own check runs before the prompt; this one also sees linked values and the VAE's factor
    problem = options.plan_input_problem(overrides.max_vram_gb, overrides.tile_size, overrides.slice_frames,
                                         space_factor=space_factor)
    if problem:
        raise ValueError(problem)
    mm.load_models_gpu([vae.patcher], memory_required=0, force_full_load=getattr(vae, "disable_offload", False))
    device = vae.device
    budget = options.budget_bytes(overrides.max_vram_gb) or (
        default_budget(device, mm.get_free_memory(device), floor, cap) if device.type == "cuda" else None)
    return dict(device=device, dtype=vae.vae_dtype, budget_bytes=budget,
                tile=options.tile_latent(overrides.tile_size, space_factor),
                slice_len=overrides.slice_frames or None, progress=_progress())


def encode(vae, pixels, overrides: Overrides):
    """Same contract as ``comfy.sd.VAE.encode``: frames (T, H, W, C) or (B, T, H, W, C) in [0, 1] ->
    latent (B, C, T', h, w) on the intermediate device. Frames are cropped to the VAE's grid first,
    exactly as core does."""
    vae.throw_exception_if_invalid()
    _require_supported(vae)
    graph = build_encoder(vae.first_stage_model)
    pixels = vae.vae_encode_crop_pixels(pixels)
    if pixels.dim() == 4:
        pixels = pixels.unsqueeze(0)
    out = engine_encode(vae.first_stage_model, pixels, layout="comfy",
                        **_plan_args(vae, overrides, graph.space_factor, ENCODE_DEFAULT_BUDGET, ENCODE_BUDGET_CAP))
    return out.to(vae.output_device)


def decode(vae, latent, overrides: Overrides):
    """Same contract as ``comfy.sd.VAE.decode``: (B, T, H, W, C) float in [0, 1] on the intermediate device."""
    vae.throw_exception_if_invalid()
    graph = _require_supported(vae)
    out = engine_decode(vae.first_stage_model, latent, layout="comfy",
                        **_plan_args(vae, overrides, graph.space_factor, DEFAULT_BUDGET, DECODE_BUDGET_CAP))
    return out.to(vae.output_device)
