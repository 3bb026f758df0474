"""Choose tile size and temporal slice length from a VRAM budget.

The memory model simulates one tile step of the op path (decode's upsampling path or
encode's downsampling path): each op adds its own facts (``Op.account``: kt - 1 frames of every
conv input at that conv's resolution for the causal caches, its widest activation), the widest
activation counts ``ACT_FACTOR`` times (input, padded buffer, output and residual alive together),
and the sum is scaled by a factor measured on the GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .op_base import CostTally, Seq
from .rect import Rect
from .schedule import slice_count

# Calibrated on an H100 (bench/vae_decode.py, bench/vae_encode.py; Wan 2.1 VAE, bf16,
# 81x1216x832): measured peak over the raw sum was up to 0.76 for decode and ~1.2 for encode.
ACT_FACTOR = 4.0
DECODE_CALIBRATION = 0.76
ENCODE_CALIBRATION = 1.2
# Wan 2.2's decoder peaks lower against this model than Wan 2.1's (H200, the kernels path, bf16, 81 frames
# 704x1280, extra GiB measured against estimated: three bands 4.18 / 5.99, two 5.4 / 7.01, the whole frame
# 9.17 / 10.22; bench/results/vae_kernels_dupup_h200.json, profile_vae_wan22_budgets_h200.json). 0.9 keeps
# each at or under its estimate and lets the two bands fit an 8 GiB budget (1.08x faster than three).
VERSION_SCALE = {"2.2": 0.9}
SAFETY = 0.85  # share of the budget the estimate may use
MIN_TILE = 8  # latent pixels; below this the halo dominates and we stop splitting
MAX_SLICE = 2  # latent frames; measured: 2 beats 1 by ~15%, 4 is slower than 2


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

    def describe(self, latent_size: tuple[int, int], frames: int, space_factor: int) -> str:
        """One line for people: tiles and slices in image pixels and latent frames, and the budget."""
        n = len(self.tiles(latent_size))
        slices = slice_count(frames, self.slice_len)
        budget = "no budget" if self.budget_bytes is None else f"budget {self.budget_bytes / 2**30:.2f} GiB"
        return (f"{n} tile{'s' * (n != 1)} of at most {self.tile_h * space_factor}x{self.tile_w * space_factor} px, "
                f"{slices} slice{'s' * (slices != 1)} of the {frames} latent frames (1, then up to {self.slice_len} "
                f"each), estimated {self.est_bytes / 2**30:.2f} GiB; {budget} ({self.reason})")

    def facts(self, latent_size: tuple[int, int], frames: int, space_factor: int) -> dict:
        """The plan as figures for a record (telemetry's ``vae.plan`` note): what ran, not what was asked."""
        n = len(self.tiles(latent_size))
        slices = slice_count(frames, self.slice_len)
        mib = lambda b: None if b is None else round(b / 2**20, 1)  # noqa: E731 - one-line unit change
        return {"tiles": n, "tile_px": f"{self.tile_h * space_factor}x{self.tile_w * space_factor}", "slices": slices,
                "slice_frames": self.slice_len, "steps": n * slices, "estimated_mb": mib(self.est_bytes),
                "budget_mb": mib(self.budget_bytes)}


def grid(size: tuple[int, int], th: int, tw: int) -> list[Rect]:
    """Near-equal tiles no larger than th x tw covering an image of ``size``, row-major."""
    H, W = size
    ny, nx = math.ceil(H / th), math.ceil(W / tw)
    ys = [round(i * H / ny) for i in range(ny + 1)]
    xs = [round(i * W / nx) for i in range(nx + 1)]
    return [Rect(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(ny) for j in range(nx)]


def estimate_bytes(path: Seq, tile_h: int, tile_w: int, slice_len: int, elem: int, in_scale: int = 1,
                   in_frames: int = 1, calibration: float = DECODE_CALIBRATION) -> int:
    """Peak bytes of one tile step of ``path``: a tile of ``tile_h x tile_w`` latent pixels (times
    ``in_scale`` at the path's input, plus its halo) and ``slice_len`` latent frames (times
    ``in_frames`` at the input)."""
    halo = math.ceil(path.halo())
    tally = CostTally(size=(tile_h * in_scale + 2 * halo, tile_w * in_scale + 2 * halo), frames=slice_len * in_frames)
    path.account(tally)
    return int(calibration * (tally.cache + ACT_FACTOR * tally.peak) * elem)


def decode_calibration(version: str) -> float:
    """The decode's measured-peak factor for a VAE ``version`` ("2.1", "2.2")."""
    return DECODE_CALIBRATION * VERSION_SCALE.get(version, 1.0)


def plan_decode(up: Seq, latent_size, frames: int, elem: int, budget_bytes, tile=None, slice_len=None,
                calibration: float = DECODE_CALIBRATION) -> Plan:
    return plan_tiles(up, latent_size, frames, elem, budget_bytes, tile, slice_len, calibration=calibration)


def plan_encode(down: Seq, latent_size, frames: int, elem: int, budget_bytes, space_factor: int, time_factor: int,
                tile=None, slice_len=None) -> Plan:
    """Encode prefers whole frames whenever they fit: its halo costs work at full resolution."""
    return plan_tiles(down, latent_size, frames, elem, budget_bytes, tile, slice_len, in_scale=space_factor,
                      in_frames=time_factor, whole_frame_first=True, calibration=ENCODE_CALIBRATION)


def plan_tiles(
    path: Seq,
    latent_size: tuple[int, int],
    frames: int,
    elem: int,
    budget_bytes: int | None,
    tile: int | None = None,
    slice_len: int | None = None,
    in_scale: int = 1,
    in_frames: int = 1,
    whole_frame_first: bool = False,
    calibration: float = DECODE_CALIBRATION,
) -> Plan:
    """Largest work per step that fits ``budget_bytes``; ``tile``/``slice_len`` pin a choice.

    Candidates are full-width row bands first (their rows land contiguous in the output), then
    square tiles; among those that fit, the one with the least halo overhead and fewest steps.
    """
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be at least 1 latent pixel, got {tile}")
    if slice_len is not None and slice_len < 1:
        raise ValueError(f"slice_len must be at least 1 latent frame, got {slice_len}")
    if budget_bytes is not None and not budget_bytes > 0:
        raise ValueError(f"budget_bytes must be positive (or None for no budget), got {budget_bytes}")
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
    halo = path.halo() / in_scale  # in latent pixels
    best = None
    for th, tw in dict.fromkeys(shapes):
        tiles = grid((H, W), th, tw)
        work = sum((r.height + 2 * halo) * (r.width + 2 * halo) for r in tiles) / (H * W)
        for k in slices:
            est = estimate_bytes(path, th, tw, k, elem, in_scale, in_frames, calibration)
            fits = budget_bytes is None or est <= budget_bytes * SAFETY
            steps = len(tiles) * (1 + math.ceil(max(frames - 1, 0) / k))
            cost = work + 0.01 * steps - (1.0 if whole_frame_first and len(tiles) == 1 else 0.0)
            key = (not fits, cost if fits else est)
            if best is None or key < best[0]:
                best = (key, Plan(th, tw, k, est, budget_bytes, "fits" if fits else "smallest; over budget"))
    plan = best[1]
    if tile or slice_len:
        plan = Plan(plan.tile_h, plan.tile_w, plan.slice_len, plan.est_bytes, budget_bytes, "user override")
    return plan
