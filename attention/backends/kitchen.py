"""comfy-kitchen's INT8 attention (INT8 Q/K/V and P, Hadamard-rotated; takes masks)."""
from __future__ import annotations

import torch

from ..contract import AttnCall
from . import registry
from .registry import Backend, register


def probe_kitchen() -> None:
    ck = registry.load("comfy_kitchen")
    if not hasattr(ck, "int8_attention"):
        raise ImportError("comfy_kitchen has no int8_attention (needs comfy-kitchen >= 0.2.40)")
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
