"""Check a backend's output against SDPA in float32 on (a subset of) the query rows."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .contract import AttnCall

DEFAULT_MIN_COSINE = 0.999
DEFAULT_MAX_REL_ERROR = 0.05
MAX_REF_ROWS = 1024  # query rows the float32 reference is computed on, at most


@dataclass
class Verdict:
    ok: bool
    cosine: float
    rel_error: float  # ||out - ref|| / ||ref|| over the checked rows
    max_abs: float
    finite: bool
    rows: int

    def describe(self) -> str:
        if not self.finite:
            return "non-finite output"
        return f"cosine {self.cosine:.6f}, relative error {self.rel_error:.4f}, max abs {self.max_abs:.4g} on {self.rows} query rows"


def reference_rows(call: AttnCall, max_rows: int = MAX_REF_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, float32 reference (B, H, rows, D)). Rows are spread evenly over the queries."""
    lq = call.q_len
    if lq <= max_rows:
        idx = torch.arange(lq, device=call.device)
    else:
        idx = torch.linspace(0, lq - 1, max_rows, device=call.device).round().long().unique()
    q = call.q.index_select(2, idx).float()
    mask = call.mask
    if mask is not None:
        if mask.shape[-2] != 1:
            mask = mask.index_select(-2, idx)
        if mask.dtype != torch.bool:
            mask = mask.float()
    # float32 SDPA never drops to low precision; chunk over heads so the fp32 k/v copy stays small
    outs = []
    hstep = max(1, call.heads // 8) if call.k_len * call.batch * call.heads > 2**24 else call.heads
    for h in range(0, call.heads, hstep):
        m = mask
        if m is not None and m.shape[1] != 1:
            m = m[:, h:h + hstep]
        outs.append(F.scaled_dot_product_attention(q[:, h:h + hstep], call.k[:, h:h + hstep].float(),
                                                   call.v[:, h:h + hstep].float(), attn_mask=m))
    return idx, torch.cat(outs, dim=1)


def compare(out_bhld: torch.Tensor, idx: torch.Tensor, ref: torch.Tensor, min_cosine: float = DEFAULT_MIN_COSINE,
            max_rel_error: float = DEFAULT_MAX_REL_ERROR) -> Verdict:
    got = out_bhld.index_select(2, idx).float()
    ref_finite = torch.isfinite(ref)
    if not bool(ref_finite.all()):  # rows whose every key is masked out: compare the rest
        got, ref = got[ref_finite], ref[ref_finite]
    if not bool(torch.isfinite(got).all()):
        return Verdict(False, float("nan"), float("inf"), float("inf"), False, idx.numel())
    diff = (got - ref).flatten()
    refn = ref.flatten().norm().clamp_min(1e-30)
    rel = float(diff.norm() / refn)
    cos = float(F.cosine_similarity(got.flatten(), ref.flatten(), dim=0, eps=1e-30))
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    ok = cos >= min_cosine and rel <= max_rel_error
    return Verdict(ok, cos, rel, max_abs, True, idx.numel())
