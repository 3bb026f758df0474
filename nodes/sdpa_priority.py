"""Does this ComfyUI run PyTorch's SDPA with FlashAttention-2 first on a GPU where cuDNN is the faster kernel?

ComfyUI 0.33's ``comfy/ops.py`` wraps every large SDPA call in ``sdpa_kernel([FLASH, CUDNN, EFFICIENT, MATH],
set_priority=True)`` on CUDA (0.8.0 did so on Windows only, with cuDNN first). PyTorch itself puts cuDNN
first where it is faster: Hopper and Blackwell datacenter GPUs (sm90, sm100, sm103) with cuDNN newer than
9.15, unless ``TORCH_CUDNN_SDPA_DEPRIORITIZED`` is set (its ``check_prefer_cudnn_attention``). On an H200 at
the Wan 14B shape FlashAttention-2 takes 392.7 ms and cuDNN 247.3 ms
(bench/results/triton_q8_stages_h200.json). The telemetry turns the answer into advice on the samplers.
"""
from __future__ import annotations

import os

PREFERS_CUDNN = {(9, 0), (10, 0), (10, 3)}  # PyTorch's rule: major 9 or 10, minor 0 or 3
MIN_CUDNN = 91500  # cuDNN newer than 9.15 (PyTorch: the fix for lengths not divisible by 128)


def flash_first(ops=None, torch=None, attention=None) -> str | None:
    """A one-line description (GPU, what ComfyUI forces) when ComfyUI's attention is PyTorch's SDPA and its
    priority puts FlashAttention ahead of cuDNN on a GPU where PyTorch would pick cuDNN; None otherwise or
    when it cannot tell. ``ops``/``torch``/``attention`` (comfy.ldm.modules.attention): the modules (tests pass
    fakes)."""
    try:
        if ops is None:
            import comfy.ops as ops
        if attention is None:
            import comfy.ldm.modules.attention as attention
        if torch is None:
            import torch
        # ComfyUI's own attention must be its SDPA one (not --use-sage-attention, xformers, split, ...)
        if getattr(getattr(attention, "optimized_attention", None), "__name__", "") != "attention_pytorch":
            return None
        priority = getattr(ops, "SDPA_BACKEND_PRIORITY", None)
        if not priority or not torch.cuda.is_available():
            return None
        first = getattr(priority[0], "name", str(priority[0]))
        if "FLASH" not in first.upper():
            return None
        if os.environ.get("TORCH_CUDNN_SDPA_DEPRIORITIZED", "").strip().lower() in ("1", "true", "on", "yes"):
            return None
        capability = tuple(torch.cuda.get_device_capability())
        version = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        if capability not in PREFERS_CUDNN or not version or version <= MIN_CUDNN:
            return None
        return f"{torch.cuda.get_device_name()} (sm{capability[0]}{capability[1]}, cuDNN {version})"
    except Exception:  # a probe must never stop a prompt; no advice then
        return None
