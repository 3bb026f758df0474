"""What one run of the engine carries besides the graph: each tile's causal state and how it computes.

:class:`TileState` holds a tile's causal caches with staged writes, so a step that fails (out of memory)
leaves them as they were; :class:`ExecContext` holds the device, dtype, memory layout, fused norm and the
source of the weights.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch


class TileState:
    """Causal caches of one tile. Writes are staged until :meth:`commit`, so a step that
    fails half way (out of memory) leaves the committed state intact for the retry."""

    def __init__(self, committed: dict | None = None):
        self.committed: dict = committed if committed is not None else {}
        self.staged: dict = {}

    def get(self, key):
        if key in self.staged:
            return self.staged[key]
        return self.committed.get(key)

    def put(self, key, value) -> None:
        self.staged[key] = value

    def commit(self) -> None:
        self.committed.update(self.staged)
        self.staged = {}

    def rollback(self) -> None:
        self.staged = {}

    def child(self) -> "TileState":
        """State for a sub-tile: shares the committed tensors (they are cropped on read)."""
        return TileState(dict(self.committed))


WeightSource = Callable[[torch.nn.Module, torch.device, torch.dtype], ContextManager[tuple]]


def module_weights(module: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """The engine's own weight source: the module's weight and bias on the run's device and dtype."""
    bias = module.bias.detach().to(device, dtype) if module.bias is not None else None
    return nullcontext((module.weight.detach().to(device, dtype), bias))


@dataclass
class ExecContext:
    """How this run computes: device, dtype, memory layout, the fused norm+SiLU and where weights come from.

    ``source`` hands out a module's (weight, bias) for the span of one use (a context manager); None
    means :func:`module_weights`, whose results are kept for the whole run. A caller's source is asked
    every time and nothing it hands out is kept: ComfyUI's own cast path (the bridge) accounts for the
    weights it moves, streams them under Dynamic VRAM and applies the patcher's weight patches."""

    device: torch.device
    dtype: torch.dtype
    channels_last: bool = False
    norm_act: Callable | None = None
    source: WeightSource | None = None
    _kept: dict = field(default_factory=dict)

    def weights(self, key, module: torch.nn.Module, as_3d: bool) -> ContextManager[tuple]:
        """``with ctx.weights(key, module, as_3d) as (w, b):`` the conv's weights in this run's layout."""
        hit = self._kept.get(key)
        if hit is not None:
            return nullcontext(hit)
        return self._fetch(key, module, as_3d)

    @contextmanager
    def _fetch(self, key, module, as_3d):
        with (self.source or module_weights)(module, self.device, self.dtype) as (w, b):
            if as_3d and w.dim() == 4:
                w = w.unsqueeze(2)
            if self.channels_last:
                w = w.contiguous(memory_format=torch.channels_last_3d)
            if self.source is None:
                self._kept[key] = (w, b)
            yield w, b

    def param(self, key, tensor: torch.Tensor) -> torch.Tensor:
        """A small derived parameter (a norm's gain or bias), kept for the run."""
        hit = self._kept.get(key)
        if hit is None:
            hit = self._kept[key] = tensor.detach().to(self.device, self.dtype)
        return hit

    def empty(self, shape) -> torch.Tensor:
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        return torch.empty(shape, device=self.device, dtype=self.dtype, memory_format=fmt)
