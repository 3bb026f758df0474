"""PyTorch SDPA: its own kernel choice, and SDPA pinned to one kernel."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..contract import AttnCall
from . import registry
from .registry import HALF, Backend, register


def run_sdpa(call: AttnCall) -> torch.Tensor:
    mask = call.mask
    if mask is not None and mask.dtype != torch.bool and mask.dtype != call.dtype:
        mask = mask.to(call.dtype)
    return F.scaled_dot_product_attention(call.q, call.k, call.v, attn_mask=mask)


def pinned(kernel_name: str) -> Callable[[AttnCall], torch.Tensor]:
    def run(call: AttnCall) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, kernel_name)]):
            return run_sdpa(call)

    return run


def probe_kernel(kernel_name: str, need_cuda: bool) -> Callable[[], None]:
    def probe() -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401  (torch >= 2.3)

        getattr(SDPBackend, kernel_name)
        if need_cuda:
            registry.need_cuda()

    return probe


def upto_256(d: int) -> bool:
    return d % 8 == 0 and d <= 256


register(Backend("sdpa", "PyTorch scaled_dot_product_attention, PyTorch picks the kernel (under ComfyUI 0.33 "
                 "FlashAttention-2 first, which on Hopper is 1.6x slower than cuDNN: take sdpa_cudnn or auto there)",
                 run_sdpa))
register(Backend("sdpa_cudnn", "SDPA pinned to the cuDNN attention kernel", pinned("CUDNN_ATTENTION"),
                 probe=probe_kernel("CUDNN_ATTENTION", True), devices=("cuda",), dtypes=HALF,
                 head_dims=upto_256, head_dims_doc="multiples of 8 up to 256", min_capability=(8, 0)))
register(Backend("sdpa_flash", "SDPA pinned to its FlashAttention-2 kernel (CUDA; also PyTorch's CPU flash kernel)",
                 pinned("FLASH_ATTENTION"), probe=probe_kernel("FLASH_ATTENTION", False),
                 head_dims=upto_256, head_dims_doc="multiples of 8 up to 256",
                 mask=False, extra_check=lambda c: None if c.device.type == "cpu" or c.dtype in HALF
                 else "sdpa_flash on CUDA takes fp16/bf16 only"))
register(Backend("sdpa_efficient", "SDPA pinned to the memory-efficient (xformers-derived) kernel",
                 pinned("EFFICIENT_ATTENTION"), probe=probe_kernel("EFFICIENT_ATTENTION", True),
                 devices=("cuda",)))
register(Backend("sdpa_math", "SDPA pinned to the reference math path (materialises L x L scores)",
                 pinned("MATH"), probe=probe_kernel("MATH", False)))
