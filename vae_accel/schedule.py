"""The two loops both engines run, with out-of-memory retries that never lose finished work.

``frame_loop``: whole frames, temporal slices (first slice one frame), one causal state.
``tile_loop``: each spatial tile over all temporal slices with its own causal state; an OOM
first halves the slice, then splits the tile (the halves inherit its state, cropped on read).
Steps mutate state only through :class:`TileState`, committed after a step succeeds.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..telemetry.phases import note
from .context import TileState
from .rect import Rect
from .runtime import is_oom, release_memory

log = logging.getLogger("wan_accel")


def slice_end(f: int, k: int, total: int) -> int:
    return 1 if f == 0 else min(f + k, total)


def frame_loop(total: int, k: int, step: Callable[[int, int, TileState], None], *, device, fault, bar, stage: str) -> None:
    state = TileState()
    f = 0
    while f < total:
        f1 = slice_end(f, k, total)
        try:
            if fault is not None:
                fault(stage, {"frames": (f, f1)})
            step(f, f1, state)
        except Exception as exc:
            if not is_oom(exc):
                raise
            state.rollback()
            release_memory(device)
            if f1 - f <= 1:
                raise RuntimeError(
                    f"Wan VAE {stage}: out of memory on a single latent frame of whole-frame work; "
                    "free VRAM (unload models, lower other nodes' use) or run the VAE on the CPU"
                ) from exc
            k = max(1, (f1 - f) // 2)
            log.warning("wan_accel: out of memory in the VAE %s, retrying with %d-frame slices", stage, k)
            note("vae.oom_retry", stage=stage, slice_len=k)
            continue
        state.commit()
        f = f1
        bar.advance()


@dataclass
class _Tile:
    rect: Rect  # latent pixels
    state: TileState
    next_frame: int
    slice_len: int


def tile_loop(tiles: list[Rect], total: int, k: int, step: Callable[[Rect, int, int, TileState], None], *,
              device, fault, bar, stage: str) -> None:
    work = deque(_Tile(r, TileState(), 0, k) for r in tiles)
    while work:
        t = work[0]
        f0 = t.next_frame
        f1 = slice_end(f0, t.slice_len, total)
        try:
            if fault is not None:
                fault(stage, {"rect": t.rect, "frames": (f0, f1)})
            step(t.rect, f0, f1, t.state)
        except Exception as exc:
            if not is_oom(exc):
                raise
            t.state.rollback()
            release_memory(device)
            _shrink(work, t, f1 - f0, exc, stage)
            continue
        t.state.commit()
        bar.advance()
        if f1 >= total:
            work.popleft()
        else:
            t.next_frame = f1


def _shrink(work: deque, t: _Tile, frames: int, exc: BaseException, stage: str) -> None:
    """Make the failed step smaller: fewer frames first, then split the tile in two.

    A split tile's halves inherit its committed caches (cropped on read), so no finished frame
    or tile is recomputed and none is written twice.
    """
    if frames > 1:
        t.slice_len = max(1, frames // 2)
        log.warning("wan_accel: out of memory in VAE %s tile %s, retrying with %d-frame slices", stage, t.rect, t.slice_len)
        note("vae.oom_retry", stage=stage, slice_len=t.slice_len)
        return
    r = t.rect
    if max(r.height, r.width) < 2:
        raise RuntimeError(
            f"Wan VAE {stage}: out of memory even for a {r.height}x{r.width} latent tile and one frame; "
            "free VRAM or run the VAE on the CPU"
        ) from exc
    if r.height >= r.width:
        mid = (r.y0 + r.y1) // 2
        halves = [Rect(r.y0, mid, r.x0, r.x1), Rect(mid, r.y1, r.x0, r.x1)]
    else:
        mid = (r.x0 + r.x1) // 2
        halves = [Rect(r.y0, r.y1, r.x0, mid), Rect(r.y0, r.y1, mid, r.x1)]
    work.popleft()
    for half in reversed(halves):
        work.appendleft(_Tile(half, t.state.child(), t.next_frame, t.slice_len))
    log.warning("wan_accel: out of memory in VAE %s tile %s, splitting it into %s and %s", stage, r, *halves)
    note("vae.oom_retry", stage=stage, split=str(r))


def slice_count(total: int, k: int) -> int:
    """Temporal slices of one pass over ``total`` latent frames: the first frame alone, then ``k`` at a time."""
    return 1 + -(-(total - 1) // k) if total > 1 else 1


def steps_for(n_tiles: int, total: int, k: int) -> int:
    """Progress steps of one whole-frame pass plus ``n_tiles`` tile passes."""
    return slice_count(total, k) * (1 + n_tiles)
