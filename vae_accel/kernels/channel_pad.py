"""Zero input channels that put a convolution on a faster cuDNN kernel.

Measured on an H200 (bench/results/conv_micro_h200.json, bf16, channels-last): the Wan VAE's
full-resolution 3x3x3 convs have 96 input channels, and for those cuDNN picks an sm80 kernel at
~260 TFLOP/s (3.77 ms for one decoder step's conv). With the input padded to 128 channels by zeros,
and the weights by zero input channels, it picks an sm90 wgmma kernel: 2.87 ms, though it multiplies
a third more. The added products are exact zeros, so the result is the same sum in another order.

:class:`~.fused.NormConv` applies it where the norm kernel writes the conv's input buffer anyway:
the buffer gets the extra channels, zeroed, and the norm writes the real ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .memo import memo

PAD_DEVICES = {"cuda"}  # where cuDNN's kernel choice makes it pay; tests add "cpu" to check the arithmetic
MULTIPLE = 64  # cuDNN's sm90 kernels take their reduction in 64-channel steps


def padded_channels(cin: int, device: torch.device) -> int:
    """The input width to run a conv with ``cin`` input channels at: ``cin`` itself unless it sits
    between two multiples of 64 above 32 (96 -> 128); thinner convs gain nothing measurable."""
    if device.type not in PAD_DEVICES or cin % MULTIPLE == 0 or cin < 32:
        return cin
    return -(-cin // MULTIPLE) * MULTIPLE


def padded_weights(ctx, conv, width: int):
    """(weight with ``width`` input channels, the zero ones last; bias or None), once per run, read
    through the run's weight source (the bias copied: a loaned one may be reused after the loan)."""

    def make():
        with ctx.weights(conv.key, conv.module, as_3d=True) as (w, b):
            w = F.pad(w, (0, 0, 0, 0, 0, 0, 0, width - w.shape[1]))
            if ctx.channels_last:
                w = w.contiguous(memory_format=torch.channels_last_3d)
            return w, (b.clone() if b is not None else None)

    return memo(ctx, ("padded", conv.key, width), make)
