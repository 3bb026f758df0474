"""Small random-weight Wan VAEs of the real architecture (diffusers' AutoencoderKLWan)."""
from __future__ import annotations

import functools

import torch
from diffusers import AutoencoderKLWan  # the test extra has it; conftest fails the session without it


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial norms and biases, so a misplaced pixel or frame shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / p[0].numel()) ** 0.5)
            else:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model.eval()


@functools.lru_cache(maxsize=None)
def wan21(base_dim: int = 8, num_res_blocks: int = 2, seed: int = 0) -> torch.nn.Module:
    m = AutoencoderKLWan(base_dim=base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=num_res_blocks,
                         temperal_downsample=[False, True, True])
    return _randomise(m, seed)


@functools.lru_cache(maxsize=None)
def wan22(seed: int = 1) -> torch.nn.Module:
    m = AutoencoderKLWan(base_dim=8, decoder_base_dim=12, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                         temperal_downsample=[False, True, True], is_residual=True, patch_size=2,
                         in_channels=12, out_channels=12, scale_factor_spatial=16)
    return _randomise(m, seed)


def reference_decode(model, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.decode(z, return_dict=False)[0]


def fail_after(monkeypatch, op, calls_to_fail):
    """Make ``op`` run, then raise out-of-memory, on the given calls: by then the step has staged the
    causal state of every op before it (and its own), so only a real rollback makes the retry exact.
    Returns ``{"n": calls so far, "failed": the calls that raised}``."""
    real, seen = op.run, {"n": 0, "failed": []}

    def run(*args):
        y = real(*args)
        seen["n"] += 1
        if seen["n"] in calls_to_fail:
            seen["failed"].append(seen["n"])
            raise torch.OutOfMemoryError("injected after staging")
        return y

    monkeypatch.setattr(op, "run", run)
    return seen
