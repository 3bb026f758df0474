"""comfy-kitchen's INT8 attention (INT8 Q/K/V and P, Hadamard-rotated; takes masks)."""
from __future__ import annotations

import importlib.metadata

import torch

from ..contract import AttnCall
from . import registry
from .registry import Backend, register


def installed_version() -> str:
    try:
        return importlib.metadata.version("comfy-kitchen")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def probe_kitchen() -> None:
    ck = registry.load("comfy_kitchen")
    if not hasattr(ck, "int8_attention"):
        # ComfyUI pins comfy-kitchen exactly (0.33: 0.2.31, which has it); 0.8.0 allows older ones
        raise RuntimeError(f"the installed comfy-kitchen {installed_version()} has no int8_attention "
                           "(0.2.31, the version ComfyUI 0.33 pins, and later have it)")
    registry.need_cuda()
    if hasattr(ck, "int8_attention_is_available") and not ck.int8_attention_is_available():
        raise RuntimeError("comfy_kitchen.int8_attention_is_available() is False on this GPU")


def run_kitchen(call: AttnCall) -> torch.Tensor:
    ck = registry.load("comfy_kitchen")
    if call.mask is None:
        return ck.int8_attention(call.q, call.k, call.v)
    return ck.int8_attention(call.q, call.k, call.v, attn_mask=call.mask)


register(Backend("kitchen_int8", "comfy-kitchen int8_attention (INT8 Q/K/V and P, Hadamard-rotated)",
                 run_kitchen, probe=probe_kitchen, devices=("cuda",),
                 head_dims=lambda d: d <= 256, head_dims_doc="up to 256", low_precision=True,
                 package="comfy-kitchen"))
