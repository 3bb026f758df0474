"""Which attention calls a model's override gives its backend: by kind (self/cross), sampling step
and transformer block. The rest go to the fallback."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .contract import AttnCall

ATTENTION_KINDS = ("all", "self", "cross")

_RANGE = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")


def parse_ranges(spec: str) -> tuple[tuple[int, int | None], ...] | None:
    """``""``/``"all"`` -> None (everything); ``"0-3, 7, 10-"`` -> ((0, 3), (7, 7), (10, None)).
    Bounds are inclusive and 0-based. Raises ValueError on anything else."""
    spec = (spec or "").strip().lower()
    if spec in ("", "all", "*"):
        return None
    out = []
    for part in spec.split(","):
        m = _RANGE.match(part)
        if not m or not (m.group(1) or m.group(3)):
            raise ValueError(f"bad range {part!r} in {spec!r}: use e.g. '0-3, 7, 10-'")
        lo_s, dash, hi_s = m.groups()
        lo = int(lo_s) if lo_s else 0
        hi = (int(hi_s) if hi_s else None) if dash else lo
        if hi is not None and hi < lo:
            raise ValueError(f"empty range {part!r} in {spec!r}")
        out.append((lo, hi))
    return tuple(out)


def in_ranges(value: int, ranges) -> bool:
    return any(lo <= value and (hi is None or value <= hi) for lo, hi in ranges)


@dataclass
class Schedule:
    """Which calls use the chosen backend; the rest use the fallback."""
    attention: str = "all"  # all | self | cross
    steps: str = ""  # sampling-step ranges, 0-based, counted in this sampler's sigmas
    blocks: str = ""  # transformer block ranges (transformer_options["block_index"])
    _steps: Any = field(init=False, repr=False)
    _blocks: Any = field(init=False, repr=False)
    _last_sigma: Any = field(default=None, init=False, repr=False)
    _last_step: Any = field(default=None, init=False, repr=False)
    _fw_topts: Any = field(default=None, init=False, repr=False)
    _fw_self_calls: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        self._steps = parse_ranges(self.steps)
        self._blocks = parse_ranges(self.blocks)

    @property
    def everything(self) -> bool:
        return self.attention == "all" and self._steps is None and self._blocks is None

    def step(self, topts: dict) -> int | None:
        """The sampling step: the index of ``sigmas`` (this call's) in ``sample_sigmas`` (the sampler's
        schedule). None outside sampling. Computed once per step (the sigma tensor changes per step)."""
        sig = topts.get("sigmas")
        sched = topts.get("sample_sigmas")
        if sig is None or sched is None:
            return None
        if sig is self._last_sigma:
            return self._last_step
        s = float(sig.flatten()[0])
        sched_t = torch.as_tensor(sched).flatten().float().cpu()
        step = int((sched_t - s).abs().argmin())
        self._last_sigma, self._last_step = sig, step
        return step

    def block(self, call: AttnCall, topts: dict) -> int:
        """``transformer_options["block_index"]`` (ComfyUI 0.8.0 sets it in Wan's block loop). Where it is
        missing (0.3.64 has no such key), count: each Wan block makes one self-attention call, then its cross-attention
        call(s); a forward pass gets a fresh transformer_options dict from the sampler."""
        bi = topts.get("block_index")
        if bi is not None:
            return int(bi)
        if topts is not self._fw_topts:
            self._fw_topts, self._fw_self_calls = topts, 0
        if call.is_self_attention:
            self._fw_self_calls += 1
        return max(self._fw_self_calls - 1, 0)

    def matches(self, call: AttnCall, topts: dict) -> bool:
        if self._blocks is not None:  # first: the block count must see every call
            if not in_ranges(self.block(call, topts), self._blocks):
                return False
        if self.attention != "all" and call.is_self_attention != (self.attention == "self"):
            return False
        if self._steps is not None:
            st = self.step(topts)
            if st is not None and not in_ranges(st, self._steps):
                return False
        return True
