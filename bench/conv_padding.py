"""Do the VAE's thin convolutions run faster with their 3-channel side zero-padded? cuDNN takes the
encoder's first conv (3 -> 96 channels, 3x3x3) with a generic, non-tensor-core kernel (H200: 3.5 ms a
call, 10 TFLOP/s) and the decoder's head (96 -> 3) at ~24 TFLOP/s. Padding the thin side with zero
channels (and zero weights) gives the same numbers with more multiply-adds but may reach tensor-core
kernels; folding the 3 causal frames into channels (9 -> 16 channels, a 1x3x3 conv) is another way.
Median milliseconds of each form, and each form's max difference from the plain conv, in one JSON.

    . bench/gpu/setup.sh && cd bench && python3 conv_padding.py --out $OUT/conv_padding.json      # ~20 s
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from _common import load_wan_accel, write_json


def median_ms(fn, reps: int = 15) -> float:
    """Median CUDA-event milliseconds after one untimed call (the attention tuner's timer)."""
    from wan_accel.attention.triton_q8_tune import time_ms

    fn()
    torch.cuda.synchronize()
    return time_ms(fn, reps)


def pad_channels(t: torch.Tensor, dim: int, to: int) -> torch.Tensor:
    shape = list(t.shape)
    shape[dim] = to - shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results/conv_padding.json")
    a = p.parse_args()
    load_wan_accel()
    dev, dt = torch.device("cuda"), torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version()}

    # encoder's first conv: 4 new frames of a 676-row band (two bands of 1216x832), 2 cached frames in front
    x = cl(torch.randn(1, 3, 6, 676, 832, device=dev, dtype=dt, generator=g))
    w = cl(torch.randn(96, 3, 3, 3, 3, device=dev, dtype=dt, generator=g) * 0.2)
    b = torch.randn(96, device=dev, dtype=dt, generator=g)
    ref = F.conv3d(x, w, b, padding=(0, 1, 1))
    forms = {"plain": lambda: F.conv3d(x, w, b, padding=(0, 1, 1))}
    for to in (8, 16):
        xp, wp = cl(pad_channels(x, 1, to)), cl(pad_channels(w, 1, to))
        forms[f"cin_padded_{to}"] = (lambda xp=xp, wp=wp: F.conv3d(xp, wp, b, padding=(0, 1, 1)))
    # frames into channels: output frame j reads input frames j..j+2 -> 9 channels (frame-major), padded to 16
    frames = torch.stack([x[:, :, j:j + 4] for j in range(3)], dim=1).reshape(1, 9, 4, 676, 832)
    xf = cl(pad_channels(frames, 1, 16))
    wf = cl(pad_channels(w.permute(0, 2, 1, 3, 4).reshape(96, 9, 1, 3, 3), 1, 16))
    forms["frames_in_channels_16"] = lambda: F.conv3d(xf, wf, b, padding=(0, 1, 1))
    res["encoder_first_conv"] = {}
    for name, fn in forms.items():
        res["encoder_first_conv"][name] = {"ms": round(median_ms(fn), 3),
                                           "max_abs_vs_plain": (fn().float() - ref.float()).abs().max().item()}

    # decoder head: 96 -> 3 over 4 new frames of a 609-row band
    x = cl(torch.randn(1, 96, 6, 609, 832, device=dev, dtype=dt, generator=g))
    w = cl(torch.randn(3, 96, 3, 3, 3, device=dev, dtype=dt, generator=g) * 0.02)
    b = torch.randn(3, device=dev, dtype=dt, generator=g)
    ref = F.conv3d(x, w, b, padding=(0, 1, 1))
    forms = {"plain": lambda: F.conv3d(x, w, b, padding=(0, 1, 1))}
    for to in (8, 16, 32):
        wp, bp = cl(pad_channels(w, 0, to)), pad_channels(b, 0, to)
        forms[f"cout_padded_{to}"] = (lambda wp=wp, bp=bp: F.conv3d(x, wp, bp, padding=(0, 1, 1))[:, :3])
    res["decoder_head"] = {}
    for name, fn in forms.items():
        res["decoder_head"][name] = {"ms": round(median_ms(fn), 3),
                                     "max_abs_vs_plain": (fn().float() - ref.float()).abs().max().item()}
    write_json(a.out, res)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
