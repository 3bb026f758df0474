"""Runs the engine on a ComfyUI ``comfy.sd.VAE``: its device, dtype, memory manager and progress bar."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management as mm
import comfy.utils

from ..vae_accel import SUPPORTED_VAES, UnsupportedVAE
from ..vae_accel.decode import decoder_graph
from ..vae_accel.encode import encoder_graph
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


def unsupported_reason(vae, uses=("decode", "encode")) -> str | None:
    """Why the engine must leave ``vae`` to core for ``uses`` (None: a Wan video VAE it runs exactly).

    Judged on ComfyUI's own description of the VAE first: a VAE whose latents have no frames (an image
    VAE, even one built from Wan's modules, as newer ComfyUI builds the Qwen Image 2.1 VAE from vae2_2)
    or whose compression differs from the module tree's is not ours, whatever its layers look like."""
    model = getattr(vae, "first_stage_model", None)
    if model is None:
        return f"not a ComfyUI VAE ({type(vae).__name__})"
    if getattr(vae, "latent_dim", 3) != 3 or getattr(vae, "not_video", False):
        return f"{type(model).__name__} is an image VAE here (latents without frames)"
    try:
        graphs = [decoder_graph(model) if use == "decode" else encoder_graph(model) for use in uses]
    except UnsupportedVAE as exc:
        return exc.reason
    facts = {"latent channels": getattr(vae, "latent_channels", None),
             "spatial compression": _call(vae, "spacial_compression_decode"),
             "temporal compression": _call(vae, "temporal_compression_decode")}
    for graph in graphs:
        ours = {"latent channels": graph.latent_channels, "spatial compression": graph.space_factor,
                "temporal compression": graph.time_factor}
        for name, value in facts.items():
            if value is not None and value != ours[name]:
                return f"its {name} is {value}, but its module tree is a Wan video VAE with {ours[name]}"
    return None


def _call(vae, method: str):
    fn = getattr(vae, method, None)
    return fn() if callable(fn) else None


def _require_supported(vae, use: str):
    reason = unsupported_reason(vae, (use,))
    if reason:
        raise UnsupportedVAE(reason, f"Wan Accel VAE nodes support {SUPPORTED_VAES}; this VAE is not one: "
                                     f"{reason}. Use core VAE Decode or VAE Encode for it.")
    return decoder_graph(vae) if use == "decode" else encoder_graph(vae)


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
    graph = _require_supported(vae, "encode")
    pixels = vae.vae_encode_crop_pixels(pixels)
    if pixels.dim() == 4:
        pixels = pixels.unsqueeze(0)
    out = engine_encode(vae.first_stage_model, pixels, layout="comfy",
                        **_plan_args(vae, overrides, graph.space_factor, ENCODE_DEFAULT_BUDGET, ENCODE_BUDGET_CAP))
    return out.to(vae.output_device)


def decode(vae, latent, overrides: Overrides):
    """Same contract as ``comfy.sd.VAE.decode``: (B, T, H, W, C) float in [0, 1] on the intermediate device."""
    vae.throw_exception_if_invalid()
    graph = _require_supported(vae, "decode")
    out = engine_decode(vae.first_stage_model, latent, layout="comfy",
                        **_plan_args(vae, overrides, graph.space_factor, DEFAULT_BUDGET, DECODE_BUDGET_CAP))
    return out.to(vae.output_device)
