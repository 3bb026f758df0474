"""The kernel warm-up (vae_accel/warmup.py): it compiles what a real call needs, in the background, and
real calls wait for it rather than compile beside it; a failing warm-up never stops anything."""
from __future__ import annotations

import logging
import sys
import threading
import time

import pytest
import torch

from wan_accel.vae_accel import warmup
from wan_accel.vae_accel.kernels import availability, channel_pad


def _pattern(v: int) -> str:
    """How Triton specialises an integer argument: 1, a multiple of 16, or neither."""
    return "1" if v == 1 else "16" if v % 16 == 0 else "-"


def _strides(t: torch.Tensor) -> tuple:
    pixel = tuple(t.stride(d) if t.shape[d] > 1 else 0 for d in (0, 2, 3, 4))
    return pixel + (t.stride(1) if t.shape[1] > 1 else 1,)


class _RecordingKernel:
    """Stands in for the Triton norm module: records each launch's compile key as Triton would form it
    (block width, pointer dtypes and 16-byte alignment, the specialised integers) and computes with torch."""

    def __init__(self):
        self.keys: set = set()

    def launch(self, x, g, bias, add, out, act, pre=None, store_sum=True):
        from wan_accel.vae_accel.kernels.norm_act import norm_act_torch

        stand_in = {"add": add if add is not None else x, "pre": pre if pre is not None else x,
                    "bias": bias if bias is not None else g}
        tensors = (x, stand_in["add"], stand_in["pre"], g, stand_in["bias"], out)
        ints = [*_strides(x)[:4], *_strides(stand_in["add"])[:4], *_strides(out)[:4],
                _strides(x)[4], _strides(stand_in["add"])[4], _strides(out)[4], x.shape[1]]
        block_c = 1 << (x.shape[1] - 1).bit_length()
        self.keys.add((block_c, tuple((t.dtype, t.data_ptr() % 16 == 0) for t in tensors), tuple(map(_pattern, ints))))
        norm_act_torch(x, g, bias, act=act, add=add, out=out, pre=pre)


@pytest.fixture
def recording(monkeypatch):
    """The engine's norm calls take the kernel path on the CPU (as on CUDA) through a recorder; the
    CUDA-only channel padding on too, so the calls are those a GPU run makes."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # norm_act tries the kernel on CPU tensors
    availability.reset()
    kernel = _RecordingKernel()
    availability._modules["norm_act_triton"] = kernel  # noqa: SLF001 - the test's stand-in module
    monkeypatch.setattr(channel_pad, "PAD_DEVICES", {"cpu", "cuda"})
    conv3d = torch.nn.functional.conv3d
    cl = torch.channels_last_3d

    def cudnn_like_conv3d(x, *args, **kwargs):
        # on CUDA a convolution comes back in its input's layout, read from the strides (channels innermost,
        # a cropped view included: channels-last; a contiguous input stays contiguous, as the frame attention's
        # projection showed on an H200); the CPU's convolution here always returns it contiguous
        y = conv3d(x, *args, **kwargs)
        return y.contiguous(memory_format=cl) if x.shape[1] > 1 and x.stride(1) == 1 else y

    monkeypatch.setattr(torch.nn.functional, "conv3d", cudnn_like_conv3d)
    yield kernel
    availability.reset()


def test_warm_up_compiles_every_kernel_variant_a_larger_real_decode_and_encode_need(recording):
    """Sizes are not part of a binary's key, but layouts, widths and alignments are: a warm-up on a tiny
    video must meet every key that a real-size call of the same VAE meets, whole-frame or tiled."""
    from wan_fixtures import wan21

    from wan_accel.vae_accel import decode, encode

    model = wan21(base_dim=16)  # widths 16-64: multiples of 16, as the real VAEs' are (96-1024)
    warmup.warm_up(model, "cpu", torch.float32, channels_last=True)
    warmed = set(recording.keys)
    assert len({k[0] for k in warmed}) >= 3  # several widths: the check below is not empty

    z = torch.randn(1, 16, 4, 20, 24, generator=torch.Generator().manual_seed(3))  # sizes unlike the warm-up's
    video = torch.rand(1, 3, 5, 80, 96, generator=torch.Generator().manual_seed(4)) * 2 - 1
    calls = {f"decode {extra}": lambda extra=extra: decode(model, z, channels_last=True, progress=False, **extra)
             for extra in ({}, {"tile": 10, "slice_len": 2})}
    calls["encode"] = lambda: encode(model, video, channels_last=True, progress=False)
    missed = {}
    for name, call in calls.items():
        recording.keys.clear()
        call()
        assert recording.keys, name
        new = recording.keys - warmed
        if new:
            missed[name] = sorted(" ".join(k[2]) for k in new)
    assert not missed  # the name of each call and the integer patterns of the binaries it would compile


def test_a_warm_up_in_another_dtype_misses_keys(recording):
    """The check above can fail: the keys hold the dtype, so a warm-up in float32 does not cover a bfloat16
    call (the node warms up in ComfyUI's VAE dtype for that reason)."""
    from wan_fixtures import wan21

    from wan_accel.vae_accel import decode

    model = wan21()
    z = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    decode(model, z, channels_last=True, progress=False)
    fp32 = set(recording.keys)
    recording.keys.clear()
    decode(model, z, channels_last=True, progress=False, dtype=torch.bfloat16)
    assert recording.keys and not recording.keys & fp32


def _tiny_vae():
    from wan_fixtures import wan21

    return wan21()


def test_background_warm_up_runs_each_vae_and_says_so(caplog):
    caplog.set_level(logging.INFO, logger="wan_accel")
    thread = warmup.start_background(lambda: iter([("tiny", _tiny_vae())]), "cpu", torch.float32)
    assert thread is not None
    thread.join(120)  # (warmup.wait() would stop it early)
    assert not thread.is_alive()
    assert set(warmup.last_result) >= {"tiny", "seconds"} and "error" not in warmup.last_result
    assert warmup.last_result["tiny"]["decode_s"] > 0 and warmup.last_result["tiny"]["encode_s"] > 0
    assert "VAE kernels ready on cpu" in caplog.text


def test_a_failing_warm_up_logs_once_and_raises_nothing(caplog):
    def broken():
        yield "broken", torch.nn.Linear(2, 2)  # not a Wan VAE: the engine refuses it

    caplog.set_level(logging.INFO, logger="wan_accel")
    warmup.start_background(broken, "cpu", torch.float32)
    warmup.wait()
    assert "UnsupportedVAE" in warmup.last_result["error"]
    assert "kernel warm-up on cpu stopped" in caplog.text and "first VAE call compiles" in caplog.text


def test_decode_and_encode_wait_for_a_running_warm_up(monkeypatch):
    """A call that comes while the warm-up still runs starts only after its current pass ends (no compile
    beside it)."""
    from wan_accel.vae_accel import decode, encode

    release, order = threading.Event(), []

    def slow_warm_up(vae, device, dtype, **options):
        release.wait(10)
        order.append("warm-up pass done")
        return {}

    monkeypatch.setattr(warmup, "warm_up", slow_warm_up)
    warmup.start_background(lambda: iter([("slow", None)]), "cpu", torch.float32)
    model = _tiny_vae()
    z = torch.randn(1, 16, 2, 4, 4)

    def call():
        decode(model, z, progress=False)
        order.append("decode")
        encode(model, torch.zeros(1, 3, 5, 32, 32), progress=False)
        order.append("encode")

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)
    assert order == [] and caller.is_alive()  # waiting, not decoding
    release.set()
    caller.join(60)
    assert order == ["warm-up pass done", "decode", "encode"]
    assert warmup.wait() == 0.0  # nothing running now: no wait


def test_a_call_stops_the_warm_up_after_its_current_pass(monkeypatch):
    """A real call must not wait for the kernels of VAEs it does not run: the pass under way ends, the
    rest is skipped (and the log says so)."""
    release, warmed = threading.Event(), []

    def slow_warm_up(vae, device, dtype, stop=lambda: False, **options):
        warmed.append(vae)
        release.wait(10)
        return {"stopped_early": stop()}

    monkeypatch.setattr(warmup, "warm_up", slow_warm_up)
    warmup.start_background(lambda: iter([("first", "a"), ("second", "b")]), "cpu", torch.float32)
    deadline = time.time() + 10  # the first pass under way (the thread may start late on a loaded machine)
    while warmed != ["a"] and time.time() < deadline:
        time.sleep(0.01)
    threading.Timer(0.3, release.set).start()
    assert warmup.wait() > 0.2  # waited for the pass under way only
    assert warmed == ["a"]
    assert warmup.last_result["first"] == {"stopped_early": True} and "second" not in warmup.last_result
    assert "stopped" in warmup.last_result


def test_stop_skips_the_passes_still_to_come(monkeypatch):
    from wan_fixtures import wan21

    decode_module = sys.modules["wan_accel.vae_accel.decode"]  # the package's name ``decode`` is the function
    real, tiles = decode_module.decode, []
    monkeypatch.setattr(decode_module, "decode", lambda *a, **k: tiles.append(k.get("tile")) or real(*a, **k))
    answers = iter([False])  # the first check lets a pass run; every later one says stop
    out = warmup.warm_up(wan21(), "cpu", torch.float32, stop=lambda: next(answers, True))
    assert tiles == [None] and out == {}  # one whole-frame decode ran; the tiled pass and the encode did not


def test_a_second_start_while_one_runs_is_refused():
    release = threading.Event()

    def blocked():
        release.wait(10)
        return iter(())

    first = warmup.start_background(blocked, "cpu", torch.float32)
    try:
        assert first is not None
        assert warmup.start_background(blocked, "cpu", torch.float32) is None
    finally:
        release.set()
        warmup.wait()
