"""The plan inputs users type (nodes and command line), in one set of units with one set of checks.

Units everywhere a person types them: the memory budget in GiB, the tile in pixels of the image
(decode's output, encode's input), the slice in latent frames. Each check answers with one line
that names the fix, so ComfyUI can refuse a prompt before it runs and the command line can exit.
"""
from __future__ import annotations

import math

from .planner import MIN_TILE

# The smallest tile the planner itself would use is MIN_TILE latent pixels: 64 image pixels for
# the Wan 2.1 VAE (8x), 128 for the Wan 2.2 VAE (16x). Below it each tile's halo (about 13 latent
# pixels of reach for decode) dwarfs the tile and a decode takes many times as long.
SMALLEST_SPACE_FACTOR = 8
MIN_TILE_PIXELS = MIN_TILE * SMALLEST_SPACE_FACTOR
MAX_TILE_PIXELS = 8192
MAX_VRAM_GB = 512.0
MAX_SLICE_FRAMES = 64


def min_tile_pixels(space_factor: int = SMALLEST_SPACE_FACTOR) -> int:
    return MIN_TILE * space_factor


def vram_problem(max_vram_gb, name: str = "max_vram_gb") -> str | None:
    """Why ``max_vram_gb`` (GiB, 0: planner) is not usable, or None; ``name`` is what the user typed."""
    if max_vram_gb is None:
        return None
    if isinstance(max_vram_gb, bool) or not isinstance(max_vram_gb, (int, float)):
        return f"{name} must be a number of GiB, got {max_vram_gb!r}"
    if math.isnan(max_vram_gb):
        return f"{name} is NaN: set a number of GiB (0 lets the planner choose)"
    if not 0 <= max_vram_gb <= MAX_VRAM_GB:
        return (f"{name} {max_vram_gb:g} is out of range: set 0 (the planner chooses) or a budget in GiB "
                f"above 0 and at most {MAX_VRAM_GB:g}")
    return None


def tile_problem(tile_size, space_factor: int | None = None, name: str = "tile_size") -> str | None:
    """Why ``tile_size`` (image pixels, 0: planner) is not usable, or None. With ``space_factor``
    (8 for Wan 2.1, 16 for Wan 2.2) the minimum is that VAE's; without it, the least of any."""
    if tile_size is None or tile_size == 0:
        return None
    if isinstance(tile_size, bool) or not isinstance(tile_size, int):
        return f"{name} must be a whole number of pixels, got {tile_size!r}"
    smallest = min_tile_pixels(space_factor or SMALLEST_SPACE_FACTOR)
    if tile_size < 0 or tile_size > MAX_TILE_PIXELS:
        return (f"{name} {tile_size} is out of range: set 0 (the planner chooses) or a tile side in pixels "
                f"from {smallest} to {MAX_TILE_PIXELS}")
    if tile_size < smallest:
        which = f"this VAE ({space_factor}x)" if space_factor else "any supported VAE"
        return (f"{name} {tile_size} px is below the smallest tile the planner uses for {which}, {smallest} px "
                f"({MIN_TILE} latent pixels); smaller tiles mostly recompute their halo. Set 0 (the planner "
                f"chooses) or at least {smallest}")
    return None


def slice_problem(slice_frames, name: str = "slice_frames") -> str | None:
    """Why ``slice_frames`` (latent frames per step, 0: planner) is not usable, or None."""
    if slice_frames is None or slice_frames == 0:
        return None
    if isinstance(slice_frames, bool) or not isinstance(slice_frames, int):
        return f"{name} must be a whole number of latent frames, got {slice_frames!r}"
    if not 0 < slice_frames <= MAX_SLICE_FRAMES:
        return (f"{name} {slice_frames} is out of range: set 0 (the planner chooses) or 1 to "
                f"{MAX_SLICE_FRAMES} latent frames")
    return None


def plan_input_problem(max_vram_gb=0.0, tile_size=0, slice_frames=0, space_factor: int | None = None) -> str | None:
    """The first problem with the three plan inputs, or None when all are usable."""
    return vram_problem(max_vram_gb) or tile_problem(tile_size, space_factor) or slice_problem(slice_frames)


def tile_latent(tile_size: int, space_factor: int) -> int | None:
    """A tile in image pixels as the engine's latent pixels (None: planner)."""
    return tile_size // space_factor if tile_size else None


def budget_bytes(max_vram_gb: float) -> int | None:
    """A budget in GiB as bytes (None: planner)."""
    return int(max_vram_gb * 2**30) if max_vram_gb else None
