"""The one owner of the default VRAM budget: how much device memory a decode or encode may plan for
when the user sets none. Callers say what is free; ComfyUI's bridge and the plain engine differ only
in how they measure it (what ComfyUI's patcher can reclaim, or what PyTorch reports).

Policy: a share of the free memory, kept between a floor and a cap, never more than is free, and never
more than ComfyUI's own VAE would reserve for the same call (``stock``: its memory_used_decode/encode).
Smaller budgets mean smaller tiles, which recompute more halo: measured warm on an H100 at 81x1216x832,
bf16 (bench/vae_budget_sweep.py): decode 8.1 s at 2 GiB, 5.4 s at 3, 4.8 s at 6 and no faster past
that (native 5.4 s, 10.2 GiB); encode 6.2 s at 2 GiB, 4.4 s at 3, 3.5 s at 6 GiB with a 4.7 GiB peak,
3.2 s at 12 GiB with an 8.3 GiB peak. The encode cap is 6 GiB, not 12: on a roomy card our encode took
8.1 GiB where ComfyUI 0.33's own took 5.7 (issue 11), and the default must never use more than stock.
"""
from __future__ import annotations

GIB = 2**30
FREE_SHARE = 0.25
DECODE_FLOOR = 3 * GIB
DECODE_CAP = 6 * GIB
ENCODE_FLOOR = 2 * GIB  # peak 2.0 GiB at 81 frames
ENCODE_CAP = 6 * GIB
LIMITS = {"decode": (DECODE_FLOOR, DECODE_CAP), "encode": (ENCODE_FLOOR, ENCODE_CAP)}


def share_of_free(free: int | None, floor: int, cap: int, share: float = FREE_SHARE) -> int | None:
    """``share`` of ``free``, at least ``floor``, at most ``cap``, never more than ``free``; None: no limit."""
    if free is None:
        return None
    return int(min(free, max(floor, min(cap, free * share))))


def plan_budget(kind: str, free: int | None, stock: int | None = None) -> int | None:
    """The default budget of a ``kind`` ("decode" or "encode") call with ``free`` bytes available
    (None: no device limit, as on the CPU); ``stock`` caps it at what ComfyUI's VAE would reserve."""
    floor, cap = LIMITS[kind]
    budget = share_of_free(free, floor, cap)
    if budget is not None and stock is not None and stock > 0:
        budget = min(budget, int(stock))
    return budget
