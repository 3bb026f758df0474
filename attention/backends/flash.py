"""flash-attn 2 / 3 and flash-attn-4 (CuTe DSL)."""
from __future__ import annotations

import torch

from ..contract import AttnCall
from . import registry
from .registry import HALF, Backend, probe_for, register
from .sdpa import upto_256


def flash_fn():
    """FlashAttention 3 (flash_attn_interface, Hopper) when installed, else flash-attn 2."""
    try:
        return registry.load("flash_attn_interface").flash_attn_func, 3
    except ImportError:
        return registry.load("flash_attn").flash_attn_func, 2


def probe_flash() -> None:
    flash_fn()
    registry.need_cuda()


def blhd(t: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) view -> (B, L, H, D) with a unit last stride, the layout flash-attn takes."""
    t = t.transpose(1, 2)
    return t if t.stride(-1) == 1 else t.contiguous()


def first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_flash(call: AttnCall) -> torch.Tensor:
    fn, _ = flash_fn()
    return first(fn(blhd(call.q), blhd(call.k), blhd(call.v), causal=False)).transpose(1, 2)


def run_flash4(call: AttnCall) -> torch.Tensor:
    fn = registry.load("flash_attn.cute").flash_attn_func
    return first(fn(blhd(call.q), blhd(call.k), blhd(call.v), causal=False)).transpose(1, 2)


register(Backend("flash_attn", "flash-attn 2 (flash_attn) or 3 (flash_attn_interface)", run_flash,
                 probe=probe_flash, devices=("cuda",), dtypes=HALF,
                 head_dims=upto_256, head_dims_doc="multiples of 8 up to 256",
                 mask=False, min_capability=(8, 0), package="flash-attn"))
register(Backend("flash_attn_4", "flash-attn-4 (CuTe DSL; Hopper and Blackwell)", run_flash4,
                 probe=probe_for("flash_attn.cute", "flash_attn_func"), devices=("cuda",), dtypes=HALF,
                 head_dims=lambda d: d in (64, 96, 128, 192, 256), head_dims_doc="64, 96, 128, 192, 256",
                 mask=False, min_capability=(9, 0), package="flash-attn-4"))
