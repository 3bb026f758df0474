"""The one owner of the default VRAM budget: how much device memory a decode or encode may plan for
when the user sets none. Callers say what is free; ComfyUI's bridge and the plain engine differ only
in how they measure it (what ComfyUI's patcher can reclaim, or what PyTorch reports).

Policy: a share of the free memory, kept between a floor and a cap, never more than is free, and never
more than ComfyUI's own VAE would reserve for the same call (``stock``: its memory_used_decode/encode).
Smaller budgets mean smaller tiles, which recompute more halo: measured warm on an H100 at 81x1216x832,
bf16 (bench/vae_budget_sweep.py): decode 8.1 s at 2 GiB, 5.4 s at 3, 4.8 s at 6 (native 5.4 s, 10.2 GiB).
With the kernels, on an H200 after a 14B expert's sampler on a 16 GiB card (ComfyUI 0.33, Dynamic VRAM;
bench/results/vae_after_sampler_033_budgets_h200.json): decode 3.30 s at the old 3 GiB default (25 % of
free), 2.74 s at 8 GiB (6.3 GiB peak), 2.55 s at 12 (8.2 GiB peak, above stock's 8.0); encode 4.19 s, 3.27 s
(4.4 GiB peak), 2.67 s (8.0 GiB peak, above stock's 5.7). Stock decoded in 4.34 s and encoded in 2.77 s there,
and its larger reservation cost the next sampler nothing measurable (bench/results/two_pass_*_h200.json:
equal sampler seconds). Hence half of the free memory, capped at 8 GiB; the cap at stock's own
reservation still holds.
"""
from __future__ import annotations

GIB = 2**30
FREE_SHARE = 0.5
DECODE_FLOOR = 3 * GIB
DECODE_CAP = 8 * GIB
ENCODE_FLOOR = 2 * GIB  # peak 2.0 GiB at 81 frames
ENCODE_CAP = 8 * GIB
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
