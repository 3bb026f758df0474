"""The VAE engine's fast kernels equal the ops they replace: sub-pixel upsampling conv, fused RMS
norm + SiLU (torch path, and the Triton kernel under Triton's CPU interpreter), the fused ops and
the rewritten decode graph against diffusers' untiled decode.

Just over 400 lines: each kernel beside the op it replaces and its reference.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wan_accel.vae_accel.kernels import availability
from wan_accel.vae_accel.kernels.fused import NormConv, PendingSum
from wan_accel.vae_accel.kernels.norm_act import norm_act, norm_act_torch
from wan_accel.vae_accel.kernels.rewrite import KernelChoice, accelerate_graph
from wan_accel.vae_accel.kernels.subpixel import SubPixelConv, phase_weights, subpixel_conv
from wan_accel.vae_accel.ops import Conv, ExecContext, NormAct, Seq, TileState, Upsample2x
from wan_accel.vae_accel.rect import Rect

TOL = 1e-5
CL = torch.channels_last_3d
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="the Triton kernel tests need triton (pip install triton)")


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _upsample_conv(x, w, b):
    """The reference: Wan's per-frame nearest 2x upsample, then the 3x3 conv with zero padding 1."""
    up = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
    return F.conv3d(up, w.unsqueeze(2), b, padding=(0, 1, 1))


def _close(a, b, tol=TOL):
    scale = max(1.0, b.abs().max().item())
    return (a.float() - b.float()).abs().max().item() <= tol * scale


# ---------------------------------------------------------------- sub-pixel upsampling conv


def test_subpixel_whole_frame_equals_upsample_then_conv():
    x, w, b = _rand(2, 6, 3, 7, 9, seed=1), _rand(4, 6, 3, 3, seed=2), _rand(4, seed=3)
    full = Rect(0, 7, 0, 9)
    out = subpixel_conv(x, phase_weights(w), b, full, Rect(0, 14, 0, 18), (7, 9))
    ref = _upsample_conv(x, w, b)
    assert out.shape == ref.shape == (2, 4, 3, 14, 18)
    assert _close(out, ref)


@pytest.mark.parametrize("channels_last", [False, True])
def test_subpixel_tiles_read_only_their_need_and_match_every_parity(channels_last):
    """Every start/end parity, tiles at each border and inside, input cropped to exactly what the
    tile needs: a wrong phase tap, an off-by-one window or zero padding inside the image shows."""
    H, W = 7, 9
    x, w, b = _rand(1, 5, 2, H, W, seed=4), _rand(3, 5, 3, 3, seed=5), _rand(3, seed=6)
    ref = _upsample_conv(x, w, b)
    phases = phase_weights(w)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    conv2d = torch.nn.Conv2d(5, 3, 3, padding=1)  # ops hold their module weakly: the test keeps it alive
    sp = SubPixelConv(Conv(conv2d))
    rects = [Rect(y0, y1, x0, x1) for y0, y1 in [(0, 14), (0, 3), (1, 6), (2, 9), (5, 14), (13, 14), (3, 4)]
             for x0, x1 in [(0, 18), (0, 1), (1, 8), (4, 11), (7, 18), (17, 18)]]
    for r in rects:
        need = sp.need(r, (H, W))
        tile_in = x[..., need.y0 : need.y1, need.x0 : need.x1]
        out = subpixel_conv(tile_in, phases, b, need, r, (H, W), channels_last=channels_last)
        assert out.shape[-2:] == (r.height, r.width)
        assert _close(out, ref[..., r.y0 : r.y1, r.x0 : r.x1]), r


def test_subpixel_op_matches_engine_ops_and_plans_the_same_rectangles():
    H, W = 6, 5
    conv2d = torch.nn.Conv2d(4, 2, 3, padding=1)
    with torch.no_grad():
        conv2d.weight.copy_(_rand(2, 4, 3, 3, seed=7))
        conv2d.bias.copy_(_rand(2, seed=8))
    conv = Conv(conv2d)
    engine, ours = Seq([Upsample2x(), conv]), SubPixelConv(conv)
    ctx = ExecContext(torch.device("cpu"), torch.float32)
    x = _rand(1, 4, 3, H, W, seed=9)
    full = Rect(0, H, 0, W)
    for r in [Rect(0, 12, 0, 10), Rect(3, 8, 1, 10), Rect(0, 5, 5, 10), Rect(7, 12, 0, 3), Rect(4, 5, 4, 5)]:
        assert ours.need(r, (H, W)) == engine.need(r, (H, W))
        assert ours.halo() == engine.halo() and ours.space_scale() == engine.space_scale()
        want = engine.run(x, full, r, (H, W), TileState(), ctx)
        got = ours.run(x, full, r, (H, W), TileState(), ctx)
        assert _close(got, want), r


def test_subpixel_rejects_other_convs():
    conv1x1 = torch.nn.Conv2d(4, 2, 1)
    with pytest.raises(ValueError, match="3x3"):
        SubPixelConv(Conv(conv1x1))
    with pytest.raises(ValueError, match="3x3 Conv2d"):
        phase_weights(torch.zeros(2, 4, 3, 3, 3))


# ---------------------------------------------------------------- RMS norm + SiLU


class GainNorm(torch.nn.Module):
    """The parameters of Wan's RMS_norm: ``gamma`` (C, 1, 1, 1) and a ``bias`` tensor or 0."""

    def __init__(self, gamma, bias=None):
        super().__init__()
        self.gamma = torch.nn.Parameter(gamma.reshape(-1, 1, 1, 1))
        self.bias = torch.nn.Parameter(bias.reshape(-1, 1, 1, 1)) if bias is not None else 0.0


def _engine_norm(x, gamma, bias=None, act=True):
    ctx = ExecContext(torch.device("cpu"), x.dtype)
    r = Rect(0, x.shape[-2], 0, x.shape[-1])
    module = GainNorm(gamma, bias)
    return NormAct(module, act=act).run(x, r, r, (x.shape[-2], x.shape[-1]), TileState(), ctx)


@pytest.mark.parametrize("with_bias,act", [(False, True), (True, True), (True, False)])
def test_torch_norm_equals_engine_norm(with_bias, act):
    x, gamma = _rand(1, 12, 2, 5, 6, seed=10), torch.rand(12) + 0.5
    bias = _rand(12, seed=11) if with_bias else None
    g = gamma * 12**0.5
    assert _close(norm_act_torch(x, g, bias, act=act), _engine_norm(x, gamma, bias, act))


def test_torch_norm_add_and_out_buffer():
    h, s, g = _rand(1, 8, 3, 4, 5, seed=12), _rand(1, 8, 3, 4, 5, seed=13), torch.rand(8) + 0.5
    expected_sum = h + s
    buf = torch.full((1, 8, 5, 4, 5), 7.0)
    norm_act_torch(h, g, add=s, out=buf[:, :, 2:])
    assert torch.equal(h, expected_sum)  # the sum lands in h, like h.add_(s)
    assert _close(buf[:, :, 2:], norm_act_torch(expected_sum, g))
    assert (buf[:, :, :2] == 7.0).all()  # frames before the out view untouched


@pytest.fixture
def kernel_mode(monkeypatch):
    """Kernels would be tried on CPU tensors (interpreter mode) but nothing below runs one."""
    if not HAS_TRITON:
        pytest.skip("the Triton kernel tests need triton (pip install triton)")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    availability.reset()
    yield
    availability.reset()


def _in_interpreter(check: str, tmp: Path, timeout: int = 900) -> None:
    """Run ``check()`` of this file in a fresh Python with ``TRITON_INTERPRET=1`` set before Triton
    is imported (Triton's own jitted helpers such as ``tl.sum`` only interpret when it was), with
    the torch fallback disabled so a kernel that does not run fails instead of passing silently."""
    if not HAS_TRITON:
        pytest.skip("the Triton kernel tests need triton (pip install triton)")
    tests = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {tests!r}); import conftest, {Path(__file__).stem} as t; t.{check}()"
    # the child's conftest makes its own session folder in TMPDIR: inside tmp, removed with it
    env = dict(os.environ, TRITON_INTERPRET="1", TMPDIR=str(tmp))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _kernel_only():
    """In the interpreter process: make the torch fallback of ``norm_act`` an error."""
    from wan_accel.vae_accel.kernels import norm_act as module

    def no_fallback(*args, **kwargs):
        raise AssertionError("norm_act fell back to torch: the Triton kernel did not run")

    module.norm_act_torch = no_fallback


def _ulps(dtype):
    return {torch.float32: TOL, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def test_triton_norm_equals_torch_on_crops_with_bias_and_add(tmp_path):
    _in_interpreter("check_triton_norm_equals_torch", tmp_path)


def check_triton_norm_equals_torch():
    _kernel_only()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # interpreter bf16 truncates: one ulp
        x = _rand(1, 24, 3, 7, 9, seed=14, dtype=dtype).contiguous(memory_format=CL)
        g, bias = torch.rand(24) + 0.5, _rand(24, seed=15)
        tol = _ulps(dtype)
        crop = x[..., 1:6, 2:8]  # a tile's view: strided, not copied
        assert _close(norm_act(crop, g, bias), norm_act_torch(crop, g, bias), tol)
        assert _close(norm_act(crop, g, act=False), norm_act_torch(crop, g, act=False), tol)
        s = _rand(1, 24, 4, 9, 10, seed=16, dtype=dtype).contiguous(memory_format=CL)[:, :, 1:, 2:, 1:]  # other strides
        h1, h2 = x.clone(), x.clone()
        buf = torch.zeros((1, 24, 5, 7, 9), dtype=dtype).contiguous(memory_format=CL)
        norm_act(h1, g, add=s, out=buf[:, :, 2:])
        ref = norm_act_torch(h2, g, add=s)
        assert _close(h1, h2, tol)  # the sum written back in place
        assert _close(buf[:, :, 2:], ref, tol)
        assert (buf[:, :, :2] == 0).all()
        # a conv's bias then the residual, each rounded; without store_sum x is left as it was
        pre = _rand(24, seed=30)
        h1, h2, h3 = x.clone(), x.clone(), x.clone()
        ref = norm_act_torch(h2, g, add=s, pre=pre)
        assert _close(norm_act(h1, g, add=s, pre=pre), ref, tol) and _close(h1, h2, tol)
        assert _close(norm_act(h3, g, pre=pre, store_sum=False), norm_act_torch(x.clone(), g, pre=pre), tol)
        assert torch.equal(h3, x)
        # channels not contiguous (the CPU's conv outputs): the element-stride variant, mixed layouts
        plain = _rand(1, 6, 2, 3, 4, seed=17, dtype=dtype)
        assert _close(norm_act(plain, g[:6]), norm_act_torch(plain, g[:6]), tol)
        h1, h2, other = plain.clone(), plain.clone(), plain.contiguous(memory_format=CL) * 0.5
        assert _close(norm_act(h1, g[:6], add=other), norm_act_torch(h2, g[:6], add=other), tol)
        assert _close(h1, h2, tol)


def test_norm_act_rejects_bad_shapes():
    x, g = _rand(1, 6, 2, 3, 4, seed=17), torch.rand(6) + 0.5
    with pytest.raises(ValueError, match="5-D"):
        norm_act(x[0], g)
    with pytest.raises(ValueError, match="out has shape"):
        norm_act(x, g, out=torch.empty(1, 6, 2, 3, 5))


def test_missing_triton_falls_back_with_one_log_line(kernel_mode, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton -> ImportError
    monkeypatch.delitem(sys.modules, "wan_accel.vae_accel.kernels.norm_act_triton", raising=False)
    x, g = _rand(1, 8, 2, 3, 4, seed=18).contiguous(memory_format=CL), torch.rand(8) + 0.5
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        outs = [norm_act(x, g) for _ in range(3)]
    assert all(_close(y, norm_act_torch(x, g)) for y in outs)
    lines = [r.getMessage() for r in caplog.records if "Triton unavailable" in r.getMessage()]
    assert len(lines) == 1 and "torch path" in lines[0]
    assert availability.paths_taken() == {"norm_act": {"torch (no Triton)": 3}}  # what benches report


def test_kernel_failure_disables_it_with_one_warning(kernel_mode, monkeypatch, caplog):
    module = availability.triton_module("norm_act_triton")

    def broken(*args, **kwargs):
        raise RuntimeError("PTX for this GPU failed")

    monkeypatch.setattr(module, "launch", broken)
    x, g = _rand(1, 8, 2, 3, 4, seed=19).contiguous(memory_format=CL), torch.rand(8) + 0.5
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        outs = [norm_act(x, g) for _ in range(2)]
    assert all(_close(y, norm_act_torch(x, g)) for y in outs)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "PTX for this GPU failed" in warnings[0].getMessage()
    assert availability.paths_taken() == {"norm_act": {"torch (Triton failed)": 1, "torch (no Triton)": 1}}


def _ptxas_available() -> bool:
    if not HAS_TRITON:
        return False
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists() or shutil.which("ptxas") is not None


@pytest.mark.skipif(not _ptxas_available(), reason="compiling for sm90 needs triton with its bundled ptxas")
@pytest.mark.parametrize("dtype,contiguous_channels", [("bf16", True), ("fp32", False)])
def test_triton_norm_compiles_for_hopper(dtype, contiguous_channels, monkeypatch, tmp_path):
    """The real compiler is stricter than the interpreter (globals, casts): compile for sm90 here,
    and the channels-last variant must load channels as 16-byte vectors although the channel count
    and the flags are run-time values (what Triton specialises: a channel stride of 1 becomes a
    constant, strides and counts that are multiples of 16 are marked as such)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from wan_accel.vae_accel.kernels import norm_act_triton as k

    names = list(inspect.signature(k.norm_act_kernel).parameters)
    pointers = names[:6]
    consts = dict(BLOCK_C=128, BLOCK_P=32)
    multiples_of_16 = list(pointers)
    if contiguous_channels:
        consts |= dict(xs_c=1, as_c=1, ys_c=1)
        multiples_of_16 += [n for n in names if n[1:3] == "s_" and n[-1] != "c"] + ["C"]
    sig = {n: (f"*{dtype}" if n in pointers else "constexpr" if n in consts else "i32") for n in names}
    src = ASTSource(triton.jit(k.norm_act_kernel, do_not_specialize=k.NOT_SPECIALISED), sig,
                    constexprs={(names.index(n),): v for n, v in consts.items()},
                    attrs={(names.index(n),): [["tt.divisibility", 16]] for n in multiples_of_16})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
    assert ("ld.global.v4" in ptx) == contiguous_channels


# ---------------------------------------------------------------- fused ops and the rewritten graph


def test_pending_sum_is_added_once_and_crops_materialize():
    h, s = _rand(1, 4, 1, 3, 3, seed=20), _rand(1, 4, 1, 3, 3, seed=21)
    p = PendingSum(h.clone(), s)
    part = p[..., 1:, 1:]
    assert part.shape == (1, 4, 1, 2, 2)
    assert torch.equal(p.materialize(), h + s) and torch.equal(p.materialize(), h + s)


def test_pending_bias_is_added_before_the_sum_and_a_single_use_sum_cannot_be_reused():
    h, s, b = _rand(1, 4, 1, 3, 3, seed=20), _rand(1, 4, 1, 3, 3, seed=21), _rand(4, seed=22)
    p = PendingSum(h.clone(), s, pre=b)
    assert torch.equal(p.materialize(), (h + b.reshape(1, -1, 1, 1, 1)) + s)
    once = PendingSum(h.clone(), pre=b, keep=False)
    once.take()
    with pytest.raises(AssertionError, match="used once"):
        once.materialize()


def test_norm_conv_equals_norm_then_causal_conv_across_slices():
    norm_module, conv3d = GainNorm(torch.rand(6) + 0.5, _rand(6, seed=27)), torch.nn.Conv3d(6, 5, 3, padding=(0, 1, 1))
    norm, conv = NormAct(norm_module), Conv(conv3d)
    norm.key, conv.key = 0, 1
    engine, ours = Seq([norm, conv]), NormConv(norm, conv)
    ctx = ExecContext(torch.device("cpu"), torch.float32)
    x = _rand(1, 6, 5, 6, 7, seed=22)
    full, out = Rect(0, 6, 0, 7), Rect(1, 5, 0, 4)
    se, so = TileState(), TileState()
    for f0, f1 in [(0, 1), (1, 3), (3, 5)]:  # the cached frames carry across slices
        want = engine.run(x[:, :, f0:f1], full, out, (6, 7), se, ctx)
        got = ours.run(x[:, :, f0:f1], full, out, (6, 7), so, ctx)
        assert _close(got, want)
        se.commit(), so.commit()


@pytest.fixture
def accelerated_decode(monkeypatch):
    """The engine's decode with the rewritten graph patched in (as the engine would wire it)."""
    import wan_accel.vae_accel  # noqa: F401

    decode_module = sys.modules["wan_accel.vae_accel.decode"]
    original = decode_module.decoder_graph

    def use(choice: KernelChoice = KernelChoice()):
        monkeypatch.setattr(decode_module, "decoder_graph", lambda vae, kernels=None: accelerate_graph(original(vae, False), choice))
        return decode_module.decode

    return use


@pytest.mark.parametrize("choice,plans", [(KernelChoice(), [(None, None), (3, 2)]),
                                          (KernelChoice(norm_conv=False), [(3, 2)]),
                                          (KernelChoice(subpixel=False, defer_residual=False), [(3, 2)])])
def test_accelerated_decode_equals_untiled_reference(accelerated_decode, choice, plans):
    from wan_fixtures import reference_decode, wan21

    model, z = wan21(), _rand(1, 16, 3, 4, 5, seed=23)
    ref = reference_decode(model, z)
    decode = accelerated_decode(choice)
    for tile, k in plans:
        out = decode(model, z, tile=tile, slice_len=k, progress=False).clamp(-1, 1)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= TOL


def test_zero_padded_input_channels_give_the_same_decode_and_encode(accelerated_decode, monkeypatch):
    """The channel padding cuDNN needs for its fast kernels (CUDA only) computed on the CPU: the fixture's
    32-channel convs run at 64 channels, and the decode and encode still equal the untiled module's."""
    from wan_fixtures import reference_decode, wan21

    from wan_accel.vae_accel import encode
    from wan_accel.vae_accel.kernels import channel_pad

    monkeypatch.setattr(channel_pad, "PAD_DEVICES", {"cpu", "cuda"})
    widths = []
    real = channel_pad.padded_weights
    monkeypatch.setattr(sys.modules["wan_accel.vae_accel.kernels.fused"], "padded_weights",
                        lambda ctx, conv, width: widths.append((conv.cin, width)) or real(ctx, conv, width))
    model, z = wan21(), _rand(1, 16, 3, 4, 5, seed=23)
    out = accelerated_decode()(model, z, tile=3, slice_len=2, progress=False).clamp(-1, 1)
    assert (out - reference_decode(model, z)).abs().max().item() <= TOL
    assert widths and all(w == 64 for c, w in widths if c == 32)
    x = _rand(1, 3, 5, 24, 32, seed=26).clamp(-1, 1)
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean
    widths.clear()
    assert (encode(model, x, tile=2, slice_len=1, progress=False) - ref).abs().max().item() <= TOL
    assert (3, 16) in widths  # the colour channels' conv ran at 16 channels


def test_accelerated_wan22_decode_is_exact(accelerated_decode):
    from wan_fixtures import reference_decode, wan22

    model, z = wan22(), _rand(1, 48, 3, 4, 5, seed=24)
    ref = reference_decode(model, z)
    out = accelerated_decode()(model, z, tile=2, slice_len=2, progress=False).clamp(-1, 1)
    assert (out - ref).abs().max().item() <= TOL


def test_accelerated_encode_is_exact(monkeypatch):
    """The norm/residual rewrites apply to the encoder's graph too (no upsampler there)."""
    import wan_accel.vae_accel  # noqa: F401
    from wan_fixtures import wan21

    encode_module = sys.modules["wan_accel.vae_accel.encode"]
    original = encode_module.encoder_graph
    monkeypatch.setattr(encode_module, "encoder_graph", lambda vae, kernels=None: accelerate_graph(original(vae, False)))
    model = wan21()
    x = _rand(1, 3, 5, 24, 32, seed=26).clamp(-1, 1)
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean
    out = encode_module.encode(model, x, tile=2, slice_len=1, progress=False)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL


def test_rewrite_replaces_every_upsample_conv_and_norm_conv():
    from wan_fixtures import wan21

    from wan_accel.vae_accel import build_decoder

    graph = build_decoder(wan21())
    fast = accelerate_graph(graph)
    names = [type(op).__name__ for op in fast.up.ops]
    assert names.count("SubPixelConv") == 3 and "Upsample2x" not in names and "Seq" not in names
    blocks = [op for op in fast.up.ops if type(op).__name__ == "FusedResBlock"]
    assert len(blocks) == 12
    # each block's add is deferred into the next norm, except before an upsampler
    assert [b.defer for b in blocks] == [True, True, False] * 3 + [True, True, True]
    # every conv's bias goes into the next norm: conv1's used once, conv2's into the block's sum, the
    # upsampler's into the next block's input (kept: its shortcut reads it); the head's is added by the conv
    assert all(b.main.ops[0].defer_bias and not b.main.ops[0].keep_pending and b.main.ops[1].defer_bias for b in blocks)
    assert all(op.defer_bias for op in fast.up.ops if type(op).__name__ == "SubPixelConv")
    assert not fast.up.ops[-1].defer_bias
    assert names[-1] == "NormConv"
    assert [type(op).__name__ for op in graph.up.ops].count("Upsample2x") == 0  # original untouched
    assert fast.up.halo() == pytest.approx(graph.up.halo()) and fast.up.space_scale() == graph.up.space_scale()


def test_accelerated_decode_under_triton_interpreter(tmp_path):
    _in_interpreter("check_accelerated_decode_on_the_kernels", tmp_path)


def check_accelerated_decode_on_the_kernels():
    """The default decode on the kernel itself: channels-last buffers, Triton norms, sub-pixel convs."""
    from wan_fixtures import reference_decode, wan21

    from wan_accel.vae_accel import decode

    _kernel_only()
    model, z = wan21(), _rand(1, 16, 2, 3, 4, seed=25)
    ref = reference_decode(model, z)
    out = decode(model, z, slice_len=1, channels_last=True, progress=False).clamp(-1, 1)
    assert (out - ref).abs().max().item() <= TOL
