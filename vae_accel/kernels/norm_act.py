"""Wan's RMS norm over channels then SiLU, optionally after the residual add, in one pass.

``F.normalize(x, dim=1) * sqrt(C) * gamma (+ bias)`` then SiLU, on (N, C, T, H, W) tensors:
float32 math whatever the storage dtype, one rounding at the end. On CUDA tensors with the
channels contiguous this is one Triton kernel (``norm_act_triton``, any other layout a slower
variant of it) that reads the input once and writes the output once, also through strided crops
(a tile's view) and into a caller's buffer
(``out=``, e.g. the frames after a causal conv's cached ones, so no concatenation copy follows).
Everywhere else, and whenever Triton is missing or fails, the torch path computes the same.

``add=`` fuses the residual add of the block before: ``x += add`` (rounded to x's dtype, in
place, as ``x.add_(add)`` would) and the norm of that sum, with one read of each. ``pre=`` (a
per-channel vector: the bias of the conv that made ``x``) is added before ``add``, rounded likewise.
``store_sum=False``: the sum is not written back (nobody reads it again).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .availability import count, disable, interpreting, say_once, triton_module

EPS_SQUARED = 1e-24  # F.normalize's eps (1e-12) on the norm, squared
KERNEL = "norm_act_triton"


def norm_act_torch(x: torch.Tensor, g: torch.Tensor, bias: torch.Tensor | None = None, *, act: bool = True,
                   add: torch.Tensor | None = None, out: torch.Tensor | None = None, pre: torch.Tensor | None = None,
                   store_sum: bool = True) -> torch.Tensor:
    """The reference math (and the fallback): same arguments and results as :func:`norm_act` (the sum
    lands in ``x`` whatever ``store_sum`` says: it only allows the kernel to skip that write)."""
    if pre is not None:
        x.add_(pre.reshape(1, -1, 1, 1, 1))
    if add is not None:
        x.add_(add)
    xf = x.float()
    y = xf * torch.rsqrt(torch.clamp((xf * xf).sum(dim=1, keepdim=True), min=EPS_SQUARED)) * _channels(g)
    if bias is not None:
        y = y + _channels(bias)
    if act:
        y = F.silu(y)
    if out is None:
        return y.to(x.dtype)
    out.copy_(y)
    return out


def _channels(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, 1, 1, 1).float()


def norm_act(x: torch.Tensor, g: torch.Tensor, bias: torch.Tensor | None = None, *, act: bool = True,
             add: torch.Tensor | None = None, out: torch.Tensor | None = None, pre: torch.Tensor | None = None,
             store_sum: bool = True) -> torch.Tensor:
    """``silu(rms_norm(x (+= add)) * g + bias)`` over dim 1 of a 5-D tensor.

    ``g`` holds ``gamma * sqrt(C)`` (any shape with C elements, any float dtype); ``out`` (same
    shape as ``x``) receives the result, else a new tensor in x's memory format is returned.
    ``pre`` (C elements) then ``add`` are added into ``x`` in place first (``store_sum=False``: the kernel
    may leave ``x`` as it was). Also usable as ``ExecContext.norm_act(x, g)``.
    """
    if x.dim() != 5:
        raise ValueError(f"norm_act takes 5-D (N, C, T, H, W) tensors, got shape {tuple(x.shape)}")
    for name, t in (("add", add), ("out", out)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"norm_act: {name} has shape {tuple(t.shape)}, x has {tuple(x.shape)}")
    if not (x.is_cuda or interpreting()):
        say_once("no CUDA tensors: RMS norm + SiLU on the torch path", logging.DEBUG)
        count("norm_act", "torch (no CUDA)")
        return norm_act_torch(x, g, bias, act=act, add=add, out=out, pre=pre)
    triton_kernel = triton_module(KERNEL)
    if triton_kernel is None:
        count("norm_act", "torch (no Triton)")
        return norm_act_torch(x, g, bias, act=act, add=add, out=out, pre=pre)
    fmt = torch.channels_last_3d if x.stride(1) == 1 else torch.contiguous_format
    dest = out if out is not None else torch.empty_like(x, memory_format=fmt)
    g = g.reshape(-1).contiguous()
    bias = bias.reshape(-1).contiguous() if bias is not None else None
    pre = pre.reshape(-1).contiguous() if pre is not None else None
    try:
        triton_kernel.launch(x, g, bias, add, dest, act, pre=pre, store_sum=store_sum)
    except Exception as exc:  # a Triton that cannot compile for this GPU must not stop a decode
        disable(KERNEL, exc)
        count("norm_act", "torch (Triton failed)")
        return norm_act_torch(x, g, bias, act=act, add=add, out=out, pre=pre)
    count("norm_act", "triton")
    return dest
