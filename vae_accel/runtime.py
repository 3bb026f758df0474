"""Device facts the engine needs: memory budget, OOM detection, the execution context."""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import logging

import torch

from .budget import plan_budget
from .context import ExecContext
from .op_layers import rms_norm_silu

log = logging.getLogger("wan_accel")
_compiled_norm = None


def free_memory(device: torch.device) -> int | None:
    """Free device memory plus what PyTorch's cache holds but does not use; None on the CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached_idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached_idle)


def default_budget(device: torch.device, free: int | None = None, kind: str = "decode") -> int | None:
    """The engine's budget for a ``kind`` call when the caller sets none: budget.plan_budget of the
    memory PyTorch reports free (``free`` overrides it). None on the CPU (no limit)."""
    return plan_budget(kind, free_memory(device) if free is None else free)


def is_oom(exc: BaseException) -> bool:
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(exc, oom_type)


@contextlib.contextmanager
def conv_autotune(on: bool):
    """cuDNN benchmark mode inside the block when ``on`` (its searched algorithms stay cached per shape
    for the process), the caller's setting again after it."""
    if not on:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def norm_silu_last(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """RMS norm + SiLU over the last dim of a (frames, h, w, C) view."""
    xf = x.float()
    y = xf * torch.rsqrt(torch.clamp((xf * xf).sum(dim=-1, keepdim=True), min=1e-24)) * g.float()
    return torch.nn.functional.silu(y).to(x.dtype)


def make_fused_norm(kernel):
    """Wrap a (frames, h, w, C) kernel as the engine's ``norm_act(x, g)`` on (b, C, t, h, w).

    The kernel sees a channels-last view (a crop of a tile stays a view, no copy) and writes a
    dense result that is returned as a channels-last 5-D tensor. Frames, height and width are
    marked dynamic so tile and slice shapes reuse one compiled kernel per channel count.
    """
    state = {"ok": True}

    def norm_act(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        if state["ok"]:
            b, c, t, h, w = x.shape
            try:
                view = x.permute(0, 2, 3, 4, 1).flatten(0, 1)
                for dim in range(3):
                    if view.shape[dim] > 1:
                        torch._dynamo.mark_dynamic(view, dim)
                # tiles crop views with different strides; each is one more specialisation
                with torch._dynamo.config.patch(recompile_limit=64):
                    y = kernel(view, g.reshape(c))
                return y.view(b, t, h, w, c).permute(0, 4, 1, 2, 3)
            except Exception as exc:  # a missing compiler must not stop a decode
                state["ok"] = False
                log.warning("wan_accel: fused norm unavailable (%s); using eager math", exc)
        return rms_norm_silu(x, g)

    return norm_act


def _fused_norm():
    global _compiled_norm
    if _compiled_norm is None:
        _compiled_norm = make_fused_norm(torch.compile(norm_silu_last, dynamic=False))
    return _compiled_norm


def make_context(device: torch.device, dtype: torch.dtype, channels_last: bool | None, fused_norm: bool | None,
                 weights=None) -> ExecContext:
    on_cuda = device.type == "cuda"
    if channels_last is None:
        channels_last = on_cuda
    if fused_norm is None:
        # Off by default: warm it is 12% faster, but the first decode of a process pays ~8 s of
        # torch.compile (bench/vae_decode_warm.py). WAN_ACCEL_FUSED_NORM=1 turns it on.
        fused_norm = on_cuda and os.environ.get("WAN_ACCEL_FUSED_NORM") == "1" and _triton_available()
    return ExecContext(device=device, dtype=dtype, channels_last=channels_last, norm_act=_fused_norm() if fused_norm else None,
                       source=weights)


def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def context_for(module: torch.nn.Module, device, dtype, channels_last, fused_norm, weights=None) -> ExecContext:
    """Execution context on the module's device and dtype unless the caller names others."""
    param = next(module.parameters())
    device = torch.device(device) if device is not None else param.device
    return make_context(device, dtype or param.dtype, channels_last, fused_norm, weights)


def element_size(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8
