"""Device facts the engine needs: memory budget, OOM detection, the execution context."""
from __future__ import annotations

import gc
import logging

import torch

from .ops import ExecContext, rms_norm_silu

log = logging.getLogger("wan_accel")
_compiled_norm = None


def default_budget(device: torch.device) -> int | None:
    """Free device memory plus what PyTorch's cache holds but does not use; None on the CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached_idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached_idle)


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom_type)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fused_norm():
    """torch.compile'd RMS norm + SiLU: one pass over memory instead of four."""
    global _compiled_norm
    if _compiled_norm is None:
        _compiled_norm = torch.compile(rms_norm_silu, dynamic=True, fullgraph=True)
    return _compiled_norm


def make_context(device: torch.device, dtype: torch.dtype, channels_last: bool | None, fused_norm: bool | None) -> ExecContext:
    on_cuda = device.type == "cuda"
    if channels_last is None:
        channels_last = on_cuda
    if fused_norm is None:
        fused_norm = on_cuda and _triton_available()
    return ExecContext(device=device, dtype=dtype, channels_last=channels_last, norm_act=_fused_norm() if fused_norm else None)


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
