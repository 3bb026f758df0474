"""Choose tile size and temporal slice length from a VRAM budget.

The memory model walks the op graph: for a tile of ``h x w`` latent pixels and ``k`` latent
frames it sums the causal caches (kt - 1 frames of every conv input, at that conv's level)
and the largest activation of any level times ``ACT_FACTOR`` (input, padded buffer, output
and residual alive together). ``bench/vae_decode.py`` measures peak memory against this
estimate; the factors below come from that calibration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .ops import AddShortcut, Conv, Op, Seq, TimeUpsample, _children
from .rect import Rect

ACT_FACTOR = 4.0  # live activation tensors at the widest point of a level, calibrated on GPU
SAFETY = 0.85  # share of the budget the estimate may use
MIN_TILE = 8  # latent pixels; below this the halo dominates and we stop splitting
MAX_SLICE = 8  # latent frames; past this the gain per step flattens out


@dataclass(frozen=True)
class Plan:
    tile_h: int  # latent pixels
    tile_w: int
    slice_len: int  # latent frames per step after the first (which is always one frame)
    est_bytes: int
    budget_bytes: int | None
    reason: str

    def tiles(self, size: tuple[int, int]) -> list[Rect]:
        return grid(size, self.tile_h, self.tile_w)


def grid(size: tuple[int, int], th: int, tw: int) -> list[Rect]:
    """Near-equal tiles no larger than th x tw covering an image of ``size``, row-major."""
    H, W = size
    ny, nx = math.ceil(H / th), math.ceil(W / tw)
    ys = [round(i * H / ny) for i in range(ny + 1)]
    xs = [round(i * W / nx) for i in range(nx + 1)]
    return [Rect(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(ny) for j in range(nx)]


@dataclass
class _Level:
    scale: int  # spatial factor relative to the latent grid
    frames: int  # temporal factor relative to latent frames
    cache_ch: int = 0  # sum of (kt - 1) * C_in over causal convs at this level
    max_ch: int = 0  # widest activation at this level


def _levels(up: Seq) -> list[_Level]:
    levels = [_Level(1, 1)]

    def visit(op: Op):
        lv = levels[-1]
        if isinstance(op, Conv):
            cin = op.module.weight.shape[1]
            cout = op.module.weight.shape[0]
            lv.cache_ch += (op.kt - 1) * cin
            lv.max_ch = max(lv.max_ch, cin, cout)
            return
        if isinstance(op, TimeUpsample):
            visit(op.conv)
            levels.append(_Level(lv.scale, lv.frames * 2, 0, lv.max_ch))
            return
        if isinstance(op, AddShortcut):  # the shortcut is parameter-free and shares the main's levels
            visit(op.main)
            return
        kids = _children(op)
        if kids:
            for child in kids:
                visit(child)
        elif op.scale() != 1:
            cur = levels[-1]
            levels.append(_Level(cur.scale * op.scale(), cur.frames, 0, cur.max_ch))

    visit(up)
    return levels


def estimate_bytes(up: Seq, tile_h: int, tile_w: int, slice_len: int, elem: int) -> int:
    """Peak bytes of one tile step: caches of the tile plus the widest level's activations."""
    halo = math.ceil(up.halo())
    total_cache, peak_act = 0, 0
    for lv in _levels(up):
        area = (tile_h * lv.scale + 2 * halo) * (tile_w * lv.scale + 2 * halo)
        total_cache += lv.cache_ch * area
        peak_act = max(peak_act, lv.max_ch * lv.frames * slice_len * area)
    return int((total_cache + ACT_FACTOR * peak_act) * elem)


def plan_decode(
    up: Seq,
    latent_size: tuple[int, int],
    frames: int,
    elem: int,
    budget_bytes: int | None,
    tile: int | None = None,
    slice_len: int | None = None,
) -> Plan:
    """Largest work per step that fits ``budget_bytes``; ``tile``/``slice_len`` pin a choice.

    Candidates are full-width row bands first (their rows land contiguous in the output), then
    square tiles; among those that fit, the one with the least halo overhead and fewest steps.
    """
    H, W = latent_size
    max_slice = max(1, min(MAX_SLICE, frames - 1)) if frames > 1 else 1
    slices = [slice_len] if slice_len else list(range(max_slice, 0, -1))
    shapes: list[tuple[int, int]] = []
    if tile:
        shapes.append((min(tile, H), min(tile, W)))
    else:
        for n in range(1, H // MIN_TILE + 2):
            shapes.append((math.ceil(H / n), W))
        side = max(H, W)
        while side >= MIN_TILE:
            shapes.append((min(side, H), min(side, W)))
            side //= 2
        shapes.append((min(MIN_TILE, H), min(MIN_TILE, W)))
    halo = up.halo()
    best = None
    for th, tw in dict.fromkeys(shapes):
        tiles = grid((H, W), th, tw)
        work = sum((r.height + 2 * halo) * (r.width + 2 * halo) for r in tiles) / (H * W)
        for k in slices:
            est = estimate_bytes(up, th, tw, k, elem)
            fits = budget_bytes is None or est <= budget_bytes * SAFETY
            steps = len(tiles) * (1 + math.ceil(max(frames - 1, 0) / k))
            cost = work + 0.01 * steps
            key = (not fits, cost if fits else est)
            if best is None or key < best[0]:
                best = (key, Plan(th, tw, k, est, budget_bytes, "fits" if fits else "smallest; over budget"))
    plan = best[1]
    if tile or slice_len:
        plan = Plan(plan.tile_h, plan.tile_w, plan.slice_len, plan.est_bytes, budget_bytes, "user override")
    return plan
