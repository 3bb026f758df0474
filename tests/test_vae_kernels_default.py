"""The engine's default path runs the fast kernels (vae_accel/kernels): decode and encode use their cached
graph rewritten with them, exact against the plain ops and the modules' own untiled decode/encode, planned
the same, and a VAE run on them is still freed (issue 10). The kernels themselves: test_vae_kernels.py."""
from __future__ import annotations

import pytest
import torch

from wan_accel.vae_accel.kernels.fused import FusedResBlock, NormConv
from wan_accel.vae_accel.kernels.subpixel import SubPixelConv

TOL = 1e-5


def _rand(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


KERNEL_OPS = (SubPixelConv, NormConv, FusedResBlock)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts of each kernel op's runs (a decode or encode that ran on the plain ops counts none)."""
    counts = {cls.__name__: 0 for cls in KERNEL_OPS}
    for cls in KERNEL_OPS:
        real = cls.run

        def run(self, *args, _real=real, _name=cls.__name__):
            counts[_name] += 1
            return _real(self, *args)

        monkeypatch.setattr(cls, "run", run)
    return counts


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_default_decode_runs_the_kernels_and_equals_the_plain_ops(version, kernel_calls):
    """No option needed: the engine's own graph is the rewritten one (so the exactness tests of
    test_vae_decode.py run on it); ``kernels=False`` runs the plain ops, planned the same."""
    from wan_fixtures import reference_decode, wan21, wan22

    from wan_accel.vae_accel import decode, decode_plan

    model = wan21() if version == "2.1" else wan22()
    z = _rand(1, model.config.z_dim, 3, 5, 4, seed=28)
    fast = decode(model, z, tile=3, slice_len=2, progress=False)
    assert all(kernel_calls[cls.__name__] > 0 for cls in KERNEL_OPS), kernel_calls
    before = dict(kernel_calls)
    plain = decode(model, z, tile=3, slice_len=2, kernels=False, progress=False)
    assert kernel_calls == before  # the plain ops only
    assert (fast - plain).abs().max().item() <= TOL
    assert (fast.clamp(-1, 1) - reference_decode(model, z)).abs().max().item() <= TOL
    for shape in [(1, model.config.z_dim, 21, 104, 152), (1, model.config.z_dim, 5, 9, 10)]:
        for budget in (2**28, 2**31, None):
            assert decode_plan(model, shape, budget_bytes=budget) == decode_plan(model, shape, budget_bytes=budget, kernels=False)


@pytest.mark.parametrize("version", ["2.1", "2.2"])
def test_default_encode_runs_the_kernels_and_equals_the_plain_ops(version, kernel_calls):
    from wan_fixtures import wan21, wan22

    from wan_accel.vae_accel import encode

    model = wan21() if version == "2.1" else wan22()
    x = _rand(1, 3, 9, 48, 32, seed=29).clamp(-1, 1)
    fast = encode(model, x, tile=2, slice_len=1, progress=False)
    assert kernel_calls["NormConv"] > 0 and kernel_calls["FusedResBlock"] > 0, kernel_calls
    before = dict(kernel_calls)
    plain = encode(model, x, tile=2, slice_len=1, kernels=False, progress=False)
    assert kernel_calls == before
    with torch.no_grad():
        ref = model.encode(x).latent_dist.mean
    assert (fast - plain).abs().max().item() <= TOL and (fast - ref).abs().max().item() <= TOL


def test_a_vae_run_on_the_kernels_is_still_collected():
    """The rewritten graph is cached per VAE like the plain one, and like it holds the VAE's modules only
    weakly (issue 10's leak): even while the graphs themselves are still held, the VAE and every one of
    its modules die with their owner; the graph then says so instead of running on freed weights."""
    import gc
    import weakref

    from diffusers import AutoencoderKLWan

    from wan_accel.vae_accel import decode, encode
    from wan_accel.vae_accel.decode import decoder_graph
    from wan_accel.vae_accel.encode import encoder_graph

    model = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                             temperal_downsample=[False, True, True]).eval()  # not the session's cached ones
    refs = [weakref.ref(m) for m in model.modules()]
    decode(model, torch.randn(1, 16, 2, 4, 4), tile=2, slice_len=1, channels_last=True, progress=False)
    encode(model, torch.rand(1, 3, 5, 32, 32) * 2 - 1, tile=2, slice_len=1, progress=False)
    graphs = [decoder_graph(model), encoder_graph(model)]
    subpixel = next(op for op in graphs[0].up.ops if isinstance(op, SubPixelConv))  # the rewritten graph is cached
    assert any(isinstance(op, FusedResBlock) for op in graphs[1].down.ops)
    del model
    gc.collect()
    alive = [type(r()).__name__ for r in refs if r() is not None]
    assert not alive, f"the rewritten graphs kept {len(alive)} of the VAE's modules alive: {sorted(set(alive))}"
    with pytest.raises(ReferenceError, match="no longer exists"):
        subpixel.conv.module
