"""How one decode or encode runs: the options both take, in one object with one description.

``decode(vae, z, RunOptions(tile=4))``, ``decode(vae, z, tile=4)`` and ``decode(vae, z, opts, tile=4)``
(keywords override the object's fields) all work, so existing keyword callers (benches, the CLI,
tests) need no change.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

from .context import ExecContext, WeightSource
from .runtime import context_for

LAYOUTS = ("raw", "comfy")


@dataclass(frozen=True)
class RunOptions:
    """``budget_bytes``: device memory the plan may use (None: budget.plan_budget of the free memory on
    CUDA, no limit on the CPU). ``tile`` (latent pixels) and ``slice_len`` (latent frames per step
    after the first) pin the planner's choices. ``device``/``dtype``: where and in what to compute
    (default: the module's). ``progress(done, total)`` is called after every step (None: a tqdm bar if
    tqdm is installed; False: silence). ``fault(stage, info)`` runs before every step and may raise
    (tests inject out-of-memory errors with it). ``channels_last``/``fused_norm``: the CUDA layout and
    the compiled norm+SiLU (default: channels-last on CUDA; fused norm only with
    WAN_ACCEL_FUSED_NORM=1). ``weights`` (context.WeightSource) hands out each conv's weights for one
    use at a time (the bridge passes ComfyUI's own cast); by default the module's own tensors are moved
    to the device once and kept for the run. ``kernels``: run the op graph rewritten with the exact fast
    kernels (kernels.rewrite: sub-pixel upsampling convs, RMS norm + SiLU written into the causal conv's
    buffer with the residual add fused in, by Triton on CUDA, else torch); None (default) and True: on,
    False: the plain ops (benches compare the two). ``devices`` spreads the tiles over several devices
    (multi_device; devices.resolve_devices reads it): None, the main device alone; ``"auto"``; or a
    sequence such as ``("cuda:0", "cuda:1")``. The encode's middle block stays on ``device``, and so does
    the decode's stem unless ``split_stem`` (stem_split: by rows over the devices). Off by default: it
    paid while the stem took a fifth of the decode, but with the fast kernels the stem takes 0.08 s of a
    2.06 s Wan 2.1 decode and the split's exchanges cost more than they save (two H200s, warm, 1.48x
    against 1.41x split; bench/results/vae_multi_gpu_2xh200.json).
    ``conv_autotune``: cuDNN's algorithm search (benchmark mode) for this call's convolutions, restored after
    it; off: on an H200 it gained nothing warm and cost 5.7 s on a process's first decode
    (bench/results/vae_kernels_autotune_h200.json), kept for other GPUs' benches."""

    budget_bytes: int | None = None
    tile: int | None = None
    slice_len: int | None = None
    device: torch.device | str | None = None
    dtype: torch.dtype | None = None
    progress: Callable | bool | None = None
    fault: Callable | None = None
    channels_last: bool | None = None
    fused_norm: bool | None = None
    weights: WeightSource | None = None
    kernels: bool | None = None
    devices: tuple | str | None = None
    split_stem: bool = False
    conv_autotune: bool = False

    @classmethod
    def of(cls, options: "RunOptions | None" = None, **changes) -> "RunOptions":
        """``options`` (or the defaults) with ``changes``; an unknown name is a TypeError, as for a function."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown engine option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
        return replace(options or cls(), **changes)

    def context(self, module: torch.nn.Module) -> ExecContext:
        return context_for(module, self.device, self.dtype, self.channels_last, self.fused_norm, self.weights)


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
