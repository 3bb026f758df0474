"""Compiles the VAE kernels in the background when ComfyUI loads the package (vae_accel/warmup.py says why).

On a CUDA VAE device with Triton installed, a daemon thread runs a tiny decode and encode of a Wan 2.1 and a
Wan 2.2 VAE of the real widths (uninitialised weights, built one at a time in ComfyUI's VAE dtype and dropped
after), so the first real call of the server finds every kernel compiled. It costs a few seconds of CPU
after start-up and, for those seconds, the module's weights on the device (0.25 GB for Wan 2.1, 1.4 GB for
Wan 2.2 in bf16; a module is skipped when the free memory would drop under 2 GiB). A VAE call that comes
sooner stops it after its current tiny pass and compiles the rest itself. ``WAN_ACCEL_WARMUP=0`` turns it off (the first call compiles, as before).
"""
from __future__ import annotations

import importlib.util
import logging
import os

import torch

from ..vae_accel import warmup

ENV = "WAN_ACCEL_WARMUP"
HEADROOM_BYTES = 2 * 2**30
# ComfyUI's own constructors for the two Wan VAEs, as comfy.sd.VAE builds them from a checkpoint
WAN_VAES = (
    ("wan2.1", "comfy.ldm.wan.vae", dict(dim=96, z_dim=16)),
    ("wan2.2", "comfy.ldm.wan.vae2_2", dict(dim=160, z_dim=48)),
)
log = logging.getLogger("wan_accel")


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def setup() -> None:
    """Start the warm-up on ComfyUI's VAE device, if it is a CUDA device with Triton to compile for."""
    if not enabled():
        log.info("wan_accel: VAE kernel warm-up off (%s=0)", ENV)
        return
    import comfy.model_management as mm

    device = mm.vae_device()
    if device.type != "cuda" or not triton_installed():
        return  # the kernels run on CUDA through Triton only: nothing to compile
    dtype = mm.vae_dtype(device, [torch.bfloat16, torch.float16, torch.float32])
    warmup.start_background(lambda: wan_vaes(device, dtype), device, dtype)


def wan_vaes(device: torch.device, dtype: torch.dtype):
    """``(name, module)`` for each Wan VAE, its weights uninitialised on ``device`` in ``dtype``; one that
    would leave less than HEADROOM_BYTES free there is skipped (one log line)."""
    for name, module_name, sizes in WAN_VAES:
        wan = importlib.import_module(module_name)
        with torch.device("meta"):
            module = wan.WanVAE(dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                temperal_downsample=[False, True, True], **sizes).to(dtype)
        need = sum(p.numel() for p in module.parameters()) * dtype.itemsize + HEADROOM_BYTES
        if device.type == "cuda" and torch.cuda.mem_get_info(device)[0] < need:
            log.info("wan_accel: %s VAE kernel warm-up skipped: less than %.1f GiB free on %s", name, need / 2**30, device)
            continue
        module = module.to_empty(device=device).eval()
        with torch.no_grad():
            for p in module.parameters():
                p.normal_(0.0, 0.02)  # the values do not matter; finite ones keep the run ordinary
        yield name, module
        del module
