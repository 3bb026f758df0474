"""xformers' memory_efficient_attention (takes masks, as an 8-aligned bias)."""
from __future__ import annotations

import torch

from ..contract import AttnCall
from . import registry
from .flash import blhd
from .registry import Backend, probe_for, register


def aligned_bias(call: AttnCall) -> torch.Tensor:
    """The mask as the (B, H, Lq, Lk) additive bias xformers wants, its last dim stored 8-aligned."""
    bias = call.mask
    b, h, lq, lk = call.batch, call.heads, call.q_len, call.k_len
    if bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=call.dtype, device=bias.device).masked_fill_(~bias, float("-inf"))
    pad = (-lk) % 8
    full = torch.empty((b, h, lq, lk + pad), dtype=call.dtype, device=bias.device)[..., :lk]
    full.copy_(bias.to(call.dtype).expand(b, h, lq, lk))
    return full


def run_xformers(call: AttnCall) -> torch.Tensor:
    xops = registry.load("xformers.ops")
    bias = None if call.mask is None else aligned_bias(call)
    out = xops.memory_efficient_attention(blhd(call.q), blhd(call.k), blhd(call.v), attn_bias=bias)
    return out.transpose(1, 2)


register(Backend("xformers", "xformers memory_efficient_attention", run_xformers,
                 probe=probe_for("xformers.ops", "memory_efficient_attention"), devices=("cuda",), package="xformers"))
