"""``sub_quad``: chunked attention in pure torch under a memory budget (for the CPU and small cards).

Queries are processed in chunks; for each query chunk the keys are swept in chunks with an
online (running max / running sum) softmax, accumulating in float32, so the largest temporary is
one ``(B, H, q_chunk, k_chunk)`` float32 score block, sized to fit ``budget_bytes``.
"""
from __future__ import annotations

import math
import os

import torch

from .registry import Backend, register

DEFAULT_BUDGET_MB = float(os.environ.get("WAN_ACCEL_SUBQUAD_MB", "256"))


def default_budget(device: torch.device) -> float:
    """WAN_ACCEL_SUBQUAD_MB when set; on CUDA an eighth of the free memory (256 MB to 4 GB); else 256 MB."""
    if "WAN_ACCEL_SUBQUAD_MB" in os.environ or device.type != "cuda":
        return DEFAULT_BUDGET_MB * 2**20
    free, _total = torch.cuda.mem_get_info(device)
    return float(min(max(free / 8, 256 * 2**20), 4 * 2**30))


def chunk_sizes(bh: int, q_len: int, k_len: int, budget_bytes: float) -> tuple[int, int]:
    """Pick (q_chunk, k_chunk) so that a float32 score block of bh*q_chunk*k_chunk (plus its
    exp copy) stays within the budget. Keys are kept whole when they fit (one pass, no rescaling)."""
    per_elem = 4 * 2  # scores + exp(scores), float32
    elems = max(1, int(budget_bytes // per_elem) // max(bh, 1))
    if elems >= k_len:  # at least one whole key row fits: keep the keys whole
        return max(1, min(q_len, elems // k_len)), k_len
    return 1, max(64, min(k_len, elems))


def _to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return mask.to(dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              budget_bytes: float | None = None) -> torch.Tensor:
    """q: (B, H, Lq, D), k/v: (B, H, Lk, D); mask broadcastable to (B, H, Lq, Lk). Returns (B, H, Lq, D)."""
    if budget_bytes is None:
        budget_bytes = default_budget(q.device)
    b, h, lq, d = q.shape
    lk = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    q_chunk, k_chunk = chunk_sizes(b * h, lq, lk, budget_bytes)
    out = torch.empty((b, h, lq, v.shape[-1]), dtype=q.dtype, device=q.device)
    if mask is not None:
        mask = _to_additive(mask, torch.float32)
    kf_chunks = [(j, min(j + k_chunk, lk)) for j in range(0, lk, k_chunk)]
    for i in range(0, lq, q_chunk):
        i2 = min(i + q_chunk, lq)
        qi = q[:, :, i:i2].float() * scale
        run_max = None
        run_sum = None
        acc = None
        for j, j2 in kf_chunks:
            s = qi @ k[:, :, j:j2].float().transpose(-1, -2)
            if mask is not None:
                mi = mask[..., i:i2, :] if mask.shape[-2] != 1 else mask
                s = s + mi[..., j:j2]
            blk_max = s.amax(dim=-1, keepdim=True)
            if run_max is None:
                new_max = blk_max
            else:
                new_max = torch.maximum(run_max, blk_max)
            # rows whose every key so far is masked out keep -inf; shift by 0 there to avoid nan
            safe_max = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
            p = torch.exp(s - safe_max)
            del s
            blk_sum = p.sum(dim=-1, keepdim=True)
            blk_out = p @ v[:, :, j:j2].float()
            del p
            if run_max is None:
                acc, run_sum = blk_out, blk_sum
            else:
                old_safe = torch.where(torch.isfinite(run_max), run_max, torch.zeros_like(run_max))
                corr = torch.exp(old_safe - safe_max)
                acc = acc * corr + blk_out
                run_sum = run_sum * corr + blk_sum
            run_max = new_max
        out[:, :, i:i2] = (acc / run_sum).to(out.dtype)
    return out


register(Backend("sub_quad", "chunked attention in pure torch under a memory budget (WAN_ACCEL_SUBQUAD_MB)",
                 lambda c: attention(c.q, c.k, c.v, c.mask)))
