"""SageAttention (any version: 1.x Triton, 2.x CUDA) and SageAttention 3 (Blackwell FP4)."""
from __future__ import annotations

import torch

from ..contract import AttnCall
from .registry import HALF, Backend, probe_for, register


def nhd_or_hnd(t: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Hand a (B, H, L, D) view over in the layout its memory already has, without a copy."""
    t_nhd = t.transpose(1, 2)
    if t_nhd.is_contiguous():
        return t_nhd, "NHD"
    if t.is_contiguous():
        return t, "HND"
    return t.contiguous(), "HND"


def run_sage(call: AttnCall) -> torch.Tensor:
    from sageattention import sageattn

    q, layout = nhd_or_hnd(call.q)
    k = call.k.transpose(1, 2) if layout == "NHD" else call.k
    v = call.v.transpose(1, 2) if layout == "NHD" else call.v
    if layout == "NHD" and not (k.is_contiguous() and v.is_contiguous()):
        q, k, v, layout = call.q.contiguous(), call.k.contiguous(), call.v.contiguous(), "HND"
    elif layout == "HND":
        k, v = k.contiguous(), v.contiguous()
    out = sageattn(q, k, v, tensor_layout=layout, is_causal=False)
    return out.transpose(1, 2) if layout == "NHD" else out


def run_sage3(call: AttnCall) -> torch.Tensor:
    from sageattn3 import sageattn3_blackwell

    return sageattn3_blackwell(call.q.contiguous(), call.k.contiguous(), call.v.contiguous(), is_causal=False)


register(Backend("sage", "SageAttention (the installed sageattention: 1.x INT8 QK + fp16 PV; 2.x INT8 QK + FP8 PV "
                         "on sm89/sm90)",
                 run_sage, probe=probe_for("sageattention", "sageattn"), devices=("cuda",), dtypes=HALF,
                 head_dims=lambda d: d in (64, 96, 128), head_dims_doc="64, 96, 128", mask=False,
                 min_capability=(8, 0), low_precision=True, package="sageattention"))
register(Backend("sage3", "SageAttention 3 (sageattn3, FP4 on Blackwell)", run_sage3,
                 probe=probe_for("sageattn3", "sageattn3_blackwell"),
                 devices=("cuda",), dtypes=HALF, head_dims=lambda d: d in (64, 128), head_dims_doc="64, 128",
                 mask=False, min_capability=(10, 0), low_precision=True, package="sageattn3",
                 extra_check=lambda c: None if c.q_len > 1024 else "sage3 is slower than SDPA at <= 1024 queries"))
