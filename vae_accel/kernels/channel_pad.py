"""Zero input channels that put a convolution on a faster cuDNN kernel.

Measured on an H200 (bench/results/conv_micro_h200.json, bf16, channels-last): the Wan VAE's
full-resolution 3x3x3 convs have 96 input channels, and for those cuDNN picks an sm80 kernel at
~260 TFLOP/s (3.77 ms for one decoder step's conv). With the input padded to 128 channels by zeros,
and the weights by zero input channels, it picks an sm90 wgmma kernel: 2.87 ms, though it multiplies
a third more. The encoder's first conv reads 3 colour channels, which cuDNN runs on a generic kernel
without tensor cores (bench/results/conv_padding_h200.json): 3.60 ms, 2.52 ms at 16 channels. The added
products are exact zeros, so the result is the same sum in another order.

:class:`~.fused.NormConv` applies it where the norm kernel writes the conv's input buffer anyway:
the buffer gets the extra channels, zeroed, and the norm writes the real ones;
:class:`~.fused.ThinInputConv` copies a thin input into such a buffer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .memo import memo

PAD_DEVICES = {"cuda"}  # where cuDNN's kernel choice makes it pay; tests add "cpu" to check the arithmetic
MULTIPLE = 64  # cuDNN's sm90 kernels take their reduction in 64-channel steps


THIN = 4  # an input this thin (the encoder's 3 colour channels) runs at THIN_WIDTH
THIN_WIDTH = 16  # H200: the encoder's first conv 3.60 ms plain, 2.59 ms at 8 channels, 2.52 at 16


def padded_channels(cin: int, device: torch.device) -> int:
    """The input width to run a conv with ``cin`` input channels at: 16 for a 3-channel input, whose
    plain conv cuDNN runs without tensor cores; the next multiple of 64 for widths between two above 32
    (96 -> 128); else ``cin``: the widths between gain nothing measurable."""
    if device.type not in PAD_DEVICES or cin % MULTIPLE == 0:
        return cin
    if cin <= THIN:
        return THIN_WIDTH
    return cin if cin < 32 else -(-cin // MULTIPLE) * MULTIPLE


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
