"""FP8 attention through the cuDNN frontend graph API (Hopper and Blackwell).

Owns its caches (built graphs, handles, which call keys need an fp8 output) and forgets them on
:func:`~.registry.reset_probes` through its own hook.
"""
from __future__ import annotations

import math

import torch

from ..contract import AttnCall
from . import registry
from .registry import HALF, Backend, on_reset, register

FP8_MAX = 448.0  # float8_e4m3fn
QUANT_MAX = 440.0  # head room: a bf16-rounded product must not cross 448 (casts above it give NaN)
GRAPHS: dict = {}  # (call key, strides, out dtype) -> built graph and its tensors
FP8_OUT: set = set()  # call keys whose graph needs an fp8 output (half/bf16 output refused)
HANDLES: dict = {}  # device index -> cudnn handle


def probe_cudnn_fp8() -> None:
    cudnn = registry.load("cudnn")
    if not hasattr(cudnn, "pygraph"):
        raise ImportError("cudnn (nvidia-cudnn-frontend) has no pygraph")
    if not hasattr(torch, "float8_e4m3fn"):
        raise RuntimeError("this torch has no float8_e4m3fn")
    registry.need_cuda()
    cudnn.backend_version()  # loads libcudnn; raises when it cannot


def quant_fp8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled float8_e4m3fn copy of ``t`` and its descale (float32, shape (1,1,1,1))."""
    amax = t.abs().amax().float().clamp_min(1e-12)
    scale = (QUANT_MAX / amax).to(t.dtype)  # applied in t's dtype: no float32 copy of a 1.7 GB tensor
    q8 = (t * scale).to(torch.float8_e4m3fn)
    return q8, (1.0 / scale.float()).reshape(1, 1, 1, 1)


def cudnn_graph(call: AttnCall, q8, k8, v8, out_dtype):
    import cudnn

    dev = call.device
    key = (call.key(), tuple(q8.stride()), tuple(k8.stride()), tuple(v8.stride()), str(out_dtype))
    hit = GRAPHS.get(key)
    if hit is not None:
        return hit
    handle = HANDLES.get(dev.index)
    if handle is None:
        handle = HANDLES[dev.index] = cudnn.create_handle()
    g = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                      compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    tq, tk, tv = g.tensor_like(q8), g.tensor_like(k8), g.tensor_like(v8)

    def scalar():
        return g.tensor(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=cudnn.data_type.FLOAT)

    dq, dk, dv, ds, ss, so = (scalar() for _ in range(6))
    o, _stats, amax_s, amax_o = g.sdpa_fp8(q=tq, k=tk, v=tv, descale_q=dq, descale_k=dk, descale_v=dv,
                                            descale_s=ds, scale_s=ss, scale_o=so, is_inference=True,
                                            attn_scale=1.0 / math.sqrt(call.head_dim), use_causal_mask=False)
    b, h, lq, d = call.q.shape
    o.set_output(True).set_dim([b, h, lq, d]).set_stride([lq * h * d, d, h * d, 1])  # (B, L, H, D) memory
    o.set_data_type(cudnn.data_type.BFLOAT16 if out_dtype == torch.bfloat16 else
                    cudnn.data_type.HALF if out_dtype == torch.float16 else cudnn.data_type.FP8_E4M3)
    for a in (amax_s, amax_o):
        a.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
    g.validate()
    g.build_operation_graph()
    g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    g.check_support()
    g.build_plans()
    ws = torch.empty(max(1, g.get_workspace_size()), device=dev, dtype=torch.uint8)
    entry = (g, handle, ws, tq, tk, tv, dq, dk, dv, ds, ss, so, o, amax_s, amax_o)
    GRAPHS[key] = entry
    return entry


def run_cudnn_fp8(call: AttnCall) -> torch.Tensor:
    import cudnn

    q8, descale_q = quant_fp8(call.q)
    k8, descale_k = quant_fp8(call.k)
    v8, descale_v = quant_fp8(call.v)
    # a bf16/fp16 output first (no output quantisation error; cuDNN builds it on Blackwell with cuDNN
    # >= 9.13), an fp8 output where cuDNN refuses that (Hopper) -- decided once per call key
    out_dtype = call.dtype if call.key() not in FP8_OUT else torch.float8_e4m3fn
    try:
        entry = cudnn_graph(call, q8, k8, v8, out_dtype)
    except Exception:
        if out_dtype == torch.float8_e4m3fn:
            raise
        FP8_OUT.add(call.key())
        out_dtype = torch.float8_e4m3fn
        entry = cudnn_graph(call, q8, k8, v8, out_dtype)
    g, handle, ws, tq, tk, tv, dq, dk, dv, ds, ss, so, o, amax_s, amax_o = entry
    dev = call.device
    one = torch.ones(1, 1, 1, 1, device=dev, dtype=torch.float32)
    descale_s = one / FP8_MAX  # softmax probabilities in [0, 1] are stored as P * 448
    scale_s = one * FP8_MAX
    scale_o = one if out_dtype != torch.float8_e4m3fn else 1.0 / descale_v
    b, h, lq, d = call.q.shape
    out = torch.empty((b, lq, h, d), device=dev, dtype=out_dtype)
    a_s = torch.empty(1, 1, 1, 1, device=dev, dtype=torch.float32)
    a_o = torch.empty(1, 1, 1, 1, device=dev, dtype=torch.float32)
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(dev).cuda_stream)
    g.execute({tq: q8, tk: k8, tv: v8, dq: descale_q, dk: descale_k, dv: descale_v, ds: descale_s, ss: scale_s,
               so: scale_o, o: out, amax_s: a_s, amax_o: a_o}, ws, handle=handle)
    if out_dtype == torch.float8_e4m3fn:
        out = (out.float() * descale_v).to(call.dtype)
    return out.transpose(1, 2)


register(Backend("cudnn_fp8", "FP8 (e4m3, per-tensor scales) attention through the cuDNN frontend graph API",
                 run_cudnn_fp8, probe=probe_cudnn_fp8, devices=("cuda",), dtypes=HALF,
                 head_dims=lambda d: d in (64, 128), head_dims_doc="64, 128", mask=False,
                 min_capability=(9, 0), low_precision=True, package="nvidia-cudnn-frontend"))


@on_reset
def forget_graphs() -> None:
    GRAPHS.clear()
    FP8_OUT.clear()
