"""Nearest 2x upsampling followed by a 3x3 convolution, computed as one sub-pixel convolution.

Wan's spatial upsampler is ``Upsample(2x, nearest)`` then ``Conv2d(3x3, padding=1)`` per frame.
Output pixel (2i + a, 2j + b) only ever sees input rows {i - 1 + a, i + a} and columns
{j - 1 + b, j + b}: the nine 3x3 taps fold into a 2x2 kernel per output phase (a, b). So one
2x2 convolution with 4 x Cout outputs over the 1-padded input gives every phase at every input
pixel (16 taps per input pixel instead of 36: 2.25x fewer FLOPs) and no upsampled tensor
exists; one strided copy interleaves the phases into the output.

Zero padding of the upsampled image by one pixel is exactly zero padding of the input by one
pixel, so tiles stay exact: inside the image a tile reads its neighbours' pixels, and only true
image borders see zeros (see :meth:`SubPixelConv.run`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fractions import Fraction

from ..ops import Conv, ExecContext, Op, TileState
from ..rect import Rect, crop
from .fused import PendingSum
from .memo import memo

# For output phase a (0: even row, 1: odd row): which of the 3x3 kernel's rows land on the two
# input rows i - 1 + a and i + a. Even rows see row i - 1 through tap 0 and row i through taps
# 1 and 2; odd rows see row i through taps 0 and 1 and row i + 1 through tap 2.
PHASE_TAPS = ((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def phase_weights(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3) -> (2, 2, Cout, Cin, 2, 2): the 2x2 kernel of each output phase (a, b).

    Summed in float32 (float64 stays float64), so a bf16 engine rounds each folded tap once.
    """
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"sub-pixel form needs a 3x3 Conv2d weight, got {tuple(weight.shape)}")
    dtype = torch.promote_types(weight.dtype, torch.float32)
    taps = torch.tensor(PHASE_TAPS, dtype=dtype, device=weight.device)  # (phase, 2, 3)
    return torch.einsum("ayk,bxl,oikl->aboiyx", taps, taps, weight.to(dtype))


def phase_order(y0: int, x0: int) -> tuple[tuple[int, int], ...]:
    """Phases in the order of the output's local parity (sy, sx): an output rectangle starting at
    an odd row sees the odd phase first."""
    return tuple(((y0 + sy) % 2, (x0 + sx) % 2) for sy in (0, 1) for sx in (0, 1))


def stacked_weights(phases: torch.Tensor, bias: torch.Tensor | None, y0: int, x0: int):
    """One conv weight (4 Cout, Cin, 1, 2, 2) whose output channel blocks follow :func:`phase_order`."""
    w = torch.cat([phases[a, b] for a, b in phase_order(y0, x0)]).unsqueeze(2)
    return w, (bias.repeat(4) if bias is not None else None)


def windows(lo: int, hi: int, have_lo: int) -> tuple[int, int, int]:
    """Along one axis, for output pixels [lo, hi) read from input starting at pixel ``have_lo``:
    (first 2x2 window in the conv output, extra window offset of the second local parity, pairs).

    The conv runs with padding 1 on both sides, so its window w covers local input pixels
    w - 1 and w. Output pixel Y uses window ceil(Y / 2) in image coordinates."""
    first = (lo + 1) // 2 - have_lo
    second_shift = 1 if lo % 2 == 0 else 0
    return first, second_shift, (hi - lo + 1) // 2


def interleave(phase_grid: torch.Tensor, starts: tuple[int, int], shifts: tuple[int, int], pairs: tuple[int, int],
               out: torch.Tensor) -> None:
    """Copy the phase grid (N, 4C, T, Hq, Wq) into ``out`` (N, C, T, 2 pairs_y, 2 pairs_x) in one
    strided copy: ``out[..., 2m + sy, 2n + sx] = grid[block(sy, sx), ..., m + start + sy * shift, ...]``."""
    n, c4, t, _, _ = phase_grid.shape
    c = c4 // 4
    sn, sc, st, sh, sw = phase_grid.stride()
    (y_start, x_start), (y_shift, x_shift), (my, mx) = starts, shifts, pairs
    src = phase_grid.as_strided(
        (n, c, t, my, 2, mx, 2),
        (sn, sc, st, sh, y_shift * sh + 2 * c * sc, sw, x_shift * sw + c * sc),
        phase_grid.storage_offset() + y_start * sh + x_start * sw,
    )
    out.view(n, c, t, my, 2, mx, 2).copy_(src)


def subpixel_conv(x: torch.Tensor, phases: torch.Tensor, bias: torch.Tensor | None, have: Rect, out: Rect,
                  size: tuple[int, int], channels_last: bool | None = None, weights=None,
                  add_bias: bool = True) -> torch.Tensor:
    """``conv3x3(upsample2x(x))`` restricted to ``out`` (a rectangle of the 2x image).

    ``x`` (N, Cin, T, h, w) covers ``have`` of an image of ``size`` (input resolution) and must
    contain :func:`need_rect` ``(out, size)``. ``phases`` comes from :func:`phase_weights` (cast
    to the compute dtype); ``weights(y0, x0)`` may return cached :func:`stacked_weights`.
    ``add_bias=False``: the result without the bias (the caller adds it later).
    """
    inr = need_rect(out, size)
    x = crop(x, have, inr)
    if channels_last is None:
        channels_last = x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    w, b = weights(out.y0, out.x0) if weights is not None else stacked_weights(phases, bias, out.y0, out.x0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    grid = F.conv3d(x, w, b if add_bias else None, padding=(0, 1, 1))
    y_first, y_shift, my = windows(out.y0, out.y1, inr.y0)
    x_first, x_shift, mx = windows(out.x0, out.x1, inr.x0)
    nb, _, t, _, _ = x.shape
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    full = torch.empty((nb, w.shape[0] // 4, t, 2 * my, 2 * mx), dtype=grid.dtype, device=grid.device, memory_format=fmt)
    interleave(grid, (y_first, x_first), (y_shift, x_shift), (my, mx), full)
    return full[..., : out.height, : out.width]


def need_rect(out: Rect, size: tuple[int, int]) -> Rect:
    """Input rows/columns [(lo - 1) // 2, hi // 2 + 1), clipped: the same rectangle as
    ``Upsample2x`` after ``Conv(3x3)`` need, so the op swaps in without changing any plan."""
    return out.grow(1, (2 * size[0], 2 * size[1])).cover_div(2)


class SubPixelConv(Op):
    """Drop-in for ``Seq([Upsample2x(), Conv(conv2d_3x3)])``: same rectangles, same result. With
    ``defer_bias`` the bias is left to the next op (a kept :class:`~.fused.PendingSum`: the next
    block's shortcut reads the sum again)."""

    defer_bias = False

    def __init__(self, conv: Conv):
        w = conv.module.weight
        if conv.kt != 1 or conv.k != 3 or w.dim() != 4:
            raise ValueError(f"sub-pixel form replaces a 3x3 Conv2d, got weight {tuple(w.shape)}")
        self.conv = conv
        self.key = conv.key

    def children(self):
        return [self.conv]

    def out_size(self, size):
        return size[0] * 2, size[1] * 2

    def need(self, out: Rect, size) -> Rect:
        return need_rect(out, size)

    def halo(self) -> float:
        return 0.5  # one pixel of the 3x3 kernel at the doubled resolution

    def space_scale(self) -> Fraction:
        return Fraction(2)

    def account(self, tally) -> None:
        # the planner's model of what it replaces (the upsample, then the conv at twice the size), so a
        # graph plans the same with and without the kernels
        tally.size = self.out_size(tally.size)
        self.conv.account(tally)

    def run(self, x: torch.Tensor, have: Rect, out: Rect, size, st: TileState, ctx: ExecContext) -> torch.Tensor:
        def weights(y0: int, x0: int):
            def make():
                # through the run's weight source (ComfyUI's cast in the bridge), held only for the fold;
                # the folded phases (16/9 of the 3x3 weight) are kept for this run only
                with ctx.weights(self.key, self.conv.module, as_3d=True) as (w3, b3):
                    phases = phase_weights(w3.squeeze(2))
                    bias = b3.float() if b3 is not None else None
                    w, b = stacked_weights(phases, bias, y0, x0)
                w = w.to(ctx.dtype)
                if ctx.channels_last:
                    w = w.contiguous(memory_format=torch.channels_last_3d)
                return w, (b.to(ctx.dtype) if b is not None else None)

            return memo(ctx, ("subpixel", self.key, y0 % 2, x0 % 2), make)

        y = subpixel_conv(x, None, None, have, out, size, channels_last=ctx.channels_last, weights=weights,
                          add_bias=not self.defer_bias)
        if not self.defer_bias:
            return y
        b = weights(out.y0, out.x0)[1]  # the stacked bias repeats the conv's once per phase
        return PendingSum(y, pre=b[: y.shape[1]]) if b is not None else y
