"""``triton_q8``: our 8-bit Triton attention kernel (:mod:`...triton_q8`) as a registry backend.

The kernel module says what it declines (``unsupported_reason``: masks, head dims, short key
sequences, float32); the registry adds the rest (availability, low precision, devices). Its tuned
launch configs are forgotten on :func:`~.registry.reset_probes`.
"""
from __future__ import annotations

from .. import triton_q8 as kernel
from .registry import HALF, Backend, on_reset, register

register(Backend("triton_q8", kernel.DOC, kernel.run, probe=kernel.probe, devices=("cuda",), dtypes=HALF,
                 head_dims=lambda d: d in kernel.HEAD_DIMS, head_dims_doc="64, 128", mask=False,
                 min_capability=kernel.MIN_CAPABILITY, low_precision=True, extra_check=kernel.unsupported_reason,
                 package="triton"))


@on_reset
def forget_tuning() -> None:
    kernel.reset()
