"""The Triton implicit-GEMM conv (``vae_accel/kernels/conv3d_triton.py``) equals ``F.conv3d`` under
Triton's CPU interpreter, and refuses what it does not implement with ValueError.

Tiny sizes, chosen so that borders, partial pixel blocks, partial channel chunks (48 input channels
in 32-channel steps), partial output-channel blocks and the missing second frame of a two-frame block
are all hit. The interpreter computes the same algorithm with numpy: GPU code generation and speed
are bench/conv_micro.py's (which also checks bf16, whose ``tl.dot`` the interpreter gets wrong).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

CL = torch.channels_last_3d
HAS_TRITON = importlib.util.find_spec("triton") is not None

# (name, N, Cin, Cout, T, H, W, kt, k, padding, bias, dtype, config): each is one F.conv3d call
CASES = [
    ("3x3x3 pad 1", 1, 32, 48, 4, 7, 9, 3, 3, (0, 1, 1), True, torch.float32, dict(BLOCK_M=32, BLOCK_N=64)),
    ("3x3x3 Cin 48, pad w only, two frames a program, odd T", 1, 48, 32, 5, 6, 9, 3, 3, (0, 0, 1), False,
     torch.float32, dict(BLOCK_M=32, T_BLOCK=2)),
    ("two output-channel blocks, batch 2", 2, 32, 48, 3, 5, 6, 3, 3, (0, 1, 1), True, torch.float32,
     dict(BLOCK_M=64, BLOCK_N=32)),
    ("head: 3 output channels", 1, 32, 3, 3, 5, 8, 3, 3, (0, 1, 1), True, torch.float32, None),
    ("1x3x3", 1, 32, 32, 2, 6, 7, 1, 3, (0, 1, 1), True, torch.float32, dict(BLOCK_M=16, T_BLOCK=2)),
    ("3x1x1", 1, 48, 32, 4, 5, 5, 3, 1, (0, 0, 0), True, torch.float32, dict(BLOCK_M=32, T_BLOCK=2)),
    ("1x1x1", 1, 32, 48, 2, 5, 9, 1, 1, (0, 0, 0), False, torch.float32, dict(BLOCK_M=64)),
    ("3x3x3 unpadded", 1, 32, 32, 3, 6, 6, 3, 3, (0, 0, 0), True, torch.float32, dict(BLOCK_M=16)),
    ("float16: one rounding of a float32 sum", 1, 32, 32, 3, 5, 6, 3, 3, (0, 1, 1), True, torch.float16,
     dict(BLOCK_M=32)),
]
# max |y - ref| / max |ref|: float32 sums in another order (~1e-7); float16's one rounding (~5e-4)
TOL = {torch.float32: 1e-4, torch.float16: 1e-3}


def _rand(*shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def _in_interpreter(check: str, tmp: Path, timeout: int = 300) -> None:
    """Run ``check()`` of this file in a fresh Python with ``TRITON_INTERPRET=1`` set before Triton is
    imported (Triton's own jitted helpers only interpret when it was)."""
    if not HAS_TRITON:
        pytest.skip("the Triton kernel tests need triton (pip install triton)")
    tests = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import conftest, {Path(__file__).stem} as t; t.{check}()"
    # the child's conftest makes its own session folder in TMPDIR: inside tmp, removed with it
    env = dict(os.environ, TRITON_INTERPRET="1", TMPDIR=str(tmp))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_matches_f_conv3d(tmp_path):
    _in_interpreter("check_matches_f_conv3d", tmp_path)


def check_matches_f_conv3d():
    from wan_accel.vae_accel.kernels import conv3d_triton

    for i, (name, n, cin, cout, t, h, w, kt, k, padding, has_bias, dtype, config) in enumerate(CASES):
        x = _rand(n, cin, t, h, w, seed=i).to(dtype).contiguous(memory_format=CL)
        weight = _rand(cout, cin, kt, k, k, seed=100 + i, scale=(cin * kt * k * k) ** -0.5).to(dtype)
        bias = _rand(cout, seed=200 + i).to(dtype) if has_bias else None
        y = conv3d_triton.conv3d(x, weight, bias, padding, config)
        ref = F.conv3d(x.double(), weight.double(), bias.double() if has_bias else None, padding=padding)
        assert y.shape == ref.shape and y.dtype == dtype, name
        assert y.is_contiguous(memory_format=CL), name
        err = ((y.double() - ref).abs().max() / ref.abs().max()).item()
        assert err <= TOL[dtype], f"{name}: relative error {err:.3g}"

    # a tile's crop (a strided view, not copied) and weights packed once by the caller
    x = _rand(1, 32, 4, 9, 11, seed=7).contiguous(memory_format=CL)[:, :, :, 1:8, 2:]
    weight, bias = _rand(32, 32, 3, 3, 3, seed=8, scale=0.03), _rand(32, seed=9)
    packed = conv3d_triton.pack_weight(weight)
    y = conv3d_triton.conv3d(x, weight, bias, (0, 1, 1), dict(BLOCK_M=32), packed=packed)
    ref = F.conv3d(x.double(), weight.double(), bias.double(), padding=(0, 1, 1))
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() <= TOL[torch.float32]

    # masked-off loads read nothing: x is a view inside NaNs (channels past Cin=48 in the last
    # 32-channel chunk, the frame after the last, the pixels around), and a NaN times a zero
    # weight would still be NaN
    full = torch.full((1, 64, 6, 9, 10), float("nan")).contiguous(memory_format=CL)
    x = full[:, :48, :5, 1:-1, 1:-1]
    x.copy_(_rand(1, 48, 5, 7, 8, seed=10))
    weight, bias = _rand(32, 48, 3, 3, 3, seed=11, scale=0.03), _rand(32, seed=12)
    ref = F.conv3d(x.double(), weight.double(), bias.double(), padding=(0, 1, 1))
    for config in (dict(BLOCK_M=32, T_BLOCK=2), dict(BLOCK_M=64, BLOCK_N=16)):
        y = conv3d_triton.conv3d(x, weight, bias, (0, 1, 1), config)
        assert ((y.double() - ref).abs().max() / ref.abs().max()).item() <= TOL[torch.float32], config


def test_rejects_unsupported_arguments(tmp_path):
    _in_interpreter("check_rejects_unsupported_arguments", tmp_path)


def check_rejects_unsupported_arguments():
    from wan_accel.vae_accel.kernels import conv3d_triton

    x = _rand(1, 32, 4, 6, 6, seed=0).contiguous(memory_format=CL)
    w = _rand(32, 32, 3, 3, 3, seed=1)
    # the baseline call is fine, F.conv3d's default arguments spelled out too
    conv3d_triton.conv3d(x, w, None, (0, 1, 1), dict(BLOCK_M=64), stride=[1, 1, 1], dilation=1, groups=1)
    rejected = [
        dict(padding=(1, 1, 1)),  # time padding: the caller's frames are the causal padding
        dict(stride=(1, 2, 2)),
        dict(dilation=2),
        dict(groups=2),
        dict(x=x.contiguous()),  # channels-first
        dict(w=_rand(32, 32, 3, 5, 5, seed=2)),  # 5x5
        dict(w=_rand(32, 32, 2, 3, 3, seed=3)),  # kt 2
        dict(w=_rand(32, 32, 3, 3, 1, seed=4)),  # not square
        dict(w=_rand(32, 16, 3, 3, 3, seed=5)),  # Cin mismatch
        dict(x=x.double()),
        dict(x=x[:, :, :2]),  # fewer frames than time taps
        dict(bias=torch.zeros(31)),
        dict(packed=w),  # the weight itself, not pack_weight(w)
    ]
    for case in rejected:
        args = dict(x=x, w=w, bias=None, padding=(0, 1, 1))
        args.update(case)
        extra = {key: args.pop(key) for key in ("stride", "dilation", "groups", "packed") if key in args}
        with pytest.raises(ValueError):
            conv3d_triton.conv3d(args["x"], args["w"], args["bias"], args["padding"], **extra)
    os.environ["TRITON_INTERPRET"] = "0"  # CPU tensors without the interpreter: nothing can run them
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        conv3d_triton.conv3d(x, w, None, (0, 1, 1))
