"""The decoded video's home: one preallocated host tensor, filled by async device copies.

On CUDA the copies run on a side stream so the next tile computes while the last one
travels; pieces whose destination is contiguous (full-width rows of one frame) go straight
into the pinned output, others through a small pool of pinned staging buffers. The video is
never assembled on the GPU, so device memory does not grow with the frame count.
"""
from __future__ import annotations

from collections import deque

import torch


class HostSink:
    def __init__(self, shape, device: torch.device, dtype=torch.float32, max_in_flight: int = 3,
                 out: torch.Tensor | None = None):
        """``out``: an existing host tensor to fill instead of a new one (several devices, one video)."""
        self.cuda = device.type == "cuda"
        self.out = out if out is not None else torch.empty(shape, dtype=dtype, pin_memory=self.cuda)
        self.max_in_flight = max_in_flight
        if self.cuda:
            self.stream = torch.cuda.Stream(device=device)
            self.pending: deque = deque()
            self.pool: dict[tuple, list[torch.Tensor]] = {}

    def write(self, index: tuple, piece: torch.Tensor) -> None:
        """Copy ``piece`` (on the compute device) into ``self.out[index]``."""
        dst = self.out[index]
        if dst.shape != piece.shape:
            raise AssertionError(f"sink: piece {tuple(piece.shape)} does not match {tuple(dst.shape)}")
        if not self.cuda:
            dst.copy_(piece)
            return
        self.stream.wait_stream(torch.cuda.current_stream(piece.device))
        staging = None
        with torch.cuda.stream(self.stream):
            if dst.is_contiguous():
                dst.copy_(piece, non_blocking=True)
            else:
                staging = self._take(tuple(piece.shape))
                staging.copy_(piece, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        piece.record_stream(self.stream)  # keep the allocator from reusing it before the copy ends
        self.pending.append((done, staging, dst))
        self._drain(self.max_in_flight)

    def _take(self, shape: tuple) -> torch.Tensor:
        free = self.pool.get(shape)
        if free:
            return free.pop()
        return torch.empty(shape, dtype=self.out.dtype, pin_memory=True)

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            done, staging, dst = self.pending.popleft()
            done.synchronize()
            if staging is not None:
                dst.copy_(staging)
                self.pool.setdefault(tuple(staging.shape), []).append(staging)

    def finish(self) -> torch.Tensor:
        if self.cuda:
            self._drain(0)
        return self.out
