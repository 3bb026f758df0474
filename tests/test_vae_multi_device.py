"""Decode and encode spread over several devices (vae_accel.multi_device), with CPU "devices" as worker
threads: tiles are dealt to every worker, the output equals the one-device output bitwise (with the stem on
the main device, the default; split by rows, ``split_stem=True``, it is equal within float rounding), a
failing worker hands its tile back, nothing outlives the call."""
from __future__ import annotations

import gc
import logging
import threading
import weakref

import pytest
import torch

from wan_accel.vae_accel import decode, encode
from wan_accel.vae_accel import sink as sink_module
from wan_accel.vae_accel.devices import devices_problem, parse_devices, resolve_devices
from wan_accel.vae_accel.multi_device import plan_for_devices
from wan_accel.vae_accel.decode import decoder_graph
from wan_accel.vae_accel.planner import Plan

from wan_fixtures import reference_decode, wan21, wan22

TWO = ["cpu", "cpu"]
TOL = 1e-5


def _latent(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class _Workers:
    """A fault hook that records which worker ran which tile step, makes sure every worker gets a tile
    (worker 0 waits, on its first step, until worker 1 has started one) and raises ``fail`` on the
    ``at``-th step of worker ``who``."""

    def __init__(self, who=None, at=None, fail=None):
        self.who, self.at, self.fail = who, at, fail
        self.steps = {}
        self.lock = threading.Lock()
        self.second_started = threading.Event()

    def __call__(self, stage, info):
        if "rect" not in info:  # stem and middle-block steps run on the caller, outside the workers
            return
        w = info["worker"]
        with self.lock:
            self.steps.setdefault(w, []).append((stage, info["rect"], info["frames"]))
            n = len(self.steps[w])
        if w != 0:
            self.second_started.set()
        elif n == 1:
            assert self.second_started.wait(60), "worker 1 never started a tile"
        if w == self.who and (self.at is None or n == self.at):
            raise self.fail


class _Coverage:
    """How often each element of the host output is written (HostSink.write from any thread)."""

    def __init__(self, monkeypatch):
        self.count = None
        self.lock = threading.Lock()
        original = sink_module.HostSink.write

        def write(sink, index, piece):
            with self.lock:
                if self.count is None:
                    self.count = torch.zeros(sink.out.shape, dtype=torch.int32)
                self.count[index] += 1
            original(sink, index, piece)

        monkeypatch.setattr(sink_module.HostSink, "write", write)


def _source_noting_threads(threads: set):
    """A caller's weight source (as the bridge passes ComfyUI's cast) that notes the threads asking it."""
    from contextlib import contextmanager

    from wan_accel.vae_accel.ops import module_weights

    @contextmanager
    def source(module, device, dtype):
        threads.add(threading.current_thread())
        with module_weights(module, device, dtype) as held:
            yield held

    return source


def _wan_threads():
    return [t for t in threading.enumerate() if t.name.startswith("wan_accel")]


def test_two_workers_share_the_tiles_and_equal_one_device_bitwise(monkeypatch):
    model = wan21()
    z = _latent((1, 16, 4, 11, 13), seed=1)
    one = decode(model, z, tile=4, slice_len=2, progress=False)
    coverage = _Coverage(monkeypatch)
    workers = _Workers()
    two = decode(model, z, tile=4, slice_len=2, progress=False, devices=TWO, fault=workers, split_stem=False)
    assert torch.equal(one, two)
    assert set(workers.steps) == {0, 1}  # both workers ran tiles
    tiles = {w: {r for _, r, _ in steps} for w, steps in workers.steps.items()}
    assert not tiles[0] & tiles[1] and len(tiles[0] | tiles[1]) == 12  # each of the 3x4 tiles on one worker
    assert coverage.count.min().item() == 1 and coverage.count.max().item() == 1
    assert (two.clamp(-1, 1) - reference_decode(model, z)).abs().max().item() <= TOL
    assert not _wan_threads()


def test_wan22_and_comfy_layout_over_two_workers():
    model = wan22()
    z = _latent((2, 48, 3, 5, 7), seed=2)
    one = decode(model, z, layout="comfy", tile=2, slice_len=1, progress=False)
    two = decode(model, z, layout="comfy", tile=2, slice_len=1, progress=False, devices=TWO, fault=_Workers(), split_stem=False)
    assert torch.equal(one, two)


@pytest.mark.parametrize("fail", [RuntimeError("injected device failure"), torch.OutOfMemoryError("injected")],
                         ids=["error", "out_of_memory"])
def test_failing_worker_hands_its_tile_back_whole(monkeypatch, caplog, fail):
    """Worker 1 fails on its second step (frames 1-2 of its first tile, frame 0 already streamed): the
    tile restarts from its first frame on worker 0, and the output is still bitwise the one-device one.
    Out of memory does not shrink the tile while another device can take it whole."""
    model = wan21()
    z = _latent((1, 16, 4, 9, 10), seed=3)
    one = decode(model, z, tile=5, slice_len=2, progress=False)
    coverage = _Coverage(monkeypatch)
    workers = _Workers(who=1, at=2, fail=fail)
    with caplog.at_level(logging.INFO, logger="wan_accel"):
        two = decode(model, z, tile=5, slice_len=2, progress=False, devices=TWO, fault=workers, split_stem=False)
    assert torch.equal(one, two)
    failed_rect = workers.steps[1][-1][1]
    assert len(workers.steps[1]) == 2  # worker 1 stopped after its failure
    assert (("decode", failed_rect, (0, 1)) in workers.steps[0])  # restarted from its first frame on worker 0
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "goes to the other devices" in lines[0] and type(fail).__name__ in lines[0]
    assert coverage.count.min().item() >= 1  # the restarted tile rewrites its first frame: same values
    assert not _wan_threads()


def test_last_device_shrinks_on_out_of_memory_as_one_device_does(caplog):
    """Worker 1 fails at once; out of memory on worker 0, now the last one, halves its slice as the
    one-device engine does instead of giving up."""
    model = wan21()
    z = _latent((1, 16, 5, 8, 10), seed=4)
    ref = reference_decode(model, z)
    seen = {0: 0}
    one_failed = threading.Event()

    def fault(stage, info):
        if "rect" not in info:
            return
        if info["worker"] == 1:
            one_failed.set()
            raise RuntimeError("injected device failure")
        seen[0] += 1
        if seen[0] == 1:  # wait until worker 1 has failed and its thread is gone
            assert one_failed.wait(60)
            for t in _wan_threads():
                t.join(60)
        if seen[0] == 2:
            raise torch.OutOfMemoryError("injected")

    with caplog.at_level(logging.INFO, logger="wan_accel"):
        out = decode(model, z, tile=5, slice_len=4, progress=False, devices=TWO, fault=fault, split_stem=False)
    assert (out.clamp(-1, 1) - ref).abs().max().item() <= TOL
    messages = [r.getMessage() for r in caplog.records]
    assert sum("goes to the other devices" in m for m in messages) == 1
    assert sum("retrying with 2-frame slices" in m for m in messages) == 1


def test_a_callers_weight_source_is_asked_on_the_calling_thread_only():
    """ComfyUI's cast (the bridge's weight source) must not run on worker threads: the other devices get
    copies fetched through it up front, on the caller's thread; the output is unchanged."""
    model = wan21()
    z = _latent((1, 16, 3, 8, 9), seed=10)
    threads = set()
    source = _source_noting_threads(threads)

    one = decode(model, z, tile=4, slice_len=1, progress=False, weights=source)
    workers = _Workers()
    two = decode(model, z, tile=4, slice_len=1, progress=False, weights=source, devices=TWO, fault=workers, split_stem=False)
    assert torch.equal(one, two) and set(workers.steps) == {0, 1}
    assert threads == {threading.current_thread()}


def test_every_device_failing_names_the_fix():
    model = wan21()
    z = _latent((1, 16, 2, 6, 6), seed=5)

    def always(stage, info):
        if "rect" in info:
            raise RuntimeError(f"injected on worker {info['worker']}")

    with pytest.raises(RuntimeError, match=r"failed on every device .*set devices to the main GPU alone") as err:
        decode(model, z, tile=3, slice_len=1, progress=False, devices=TWO, fault=always)
    assert "injected on worker" in str(err.value.__cause__)
    assert not _wan_threads()


def test_progress_is_reported_on_the_calling_thread_and_an_interrupt_stops_every_worker():
    model = wan21()
    z = _latent((1, 16, 3, 8, 8), seed=6)
    calls = []
    decode(model, z, tile=4, slice_len=1, devices=TWO, fault=_Workers(),
           progress=lambda d, t: calls.append((d, t, threading.current_thread())))
    assert calls[-1][0] == calls[-1][1] == 3 * 5  # stem + 4 tiles, 3 steps each
    assert {c[2] for c in calls} == {threading.current_thread()}

    class Interrupted(Exception):
        pass

    def progress(done, total):
        if done == 5:
            raise Interrupted()

    with pytest.raises(Interrupted):
        decode(model, z, tile=4, slice_len=1, devices=TWO, fault=_Workers(), progress=progress)
    assert not _wan_threads()


def test_encode_deals_its_tiles_and_equals_one_device_bitwise(caplog):
    model = wan21()
    video = torch.rand((1, 3, 9, 40, 48), generator=torch.Generator().manual_seed(7)) * 2 - 1
    one = encode(model, video, tile=2, slice_len=1, progress=False)
    workers = _Workers()
    two = encode(model, video, tile=2, slice_len=1, progress=False, devices=TWO, fault=workers)
    assert torch.equal(one, two)
    assert set(workers.steps) == {0, 1}
    failing = _Workers(who=1, at=1, fail=RuntimeError("injected device failure"))
    with caplog.at_level(logging.WARNING, logger="wan_accel"):
        again = encode(model, video, tile=2, slice_len=1, progress=False, devices=TWO, fault=failing)
    assert torch.equal(one, again)
    assert sum("goes to the other devices" in r.getMessage() for r in caplog.records) == 1


def test_one_whole_frame_encode_tile_runs_on_the_main_device_alone():
    model = wan21()
    video = torch.rand((1, 3, 5, 32, 32), generator=torch.Generator().manual_seed(8)) * 2 - 1
    seen = []
    out = encode(model, video, progress=False, devices=TWO, fault=lambda s, i: seen.append(i))
    assert torch.equal(out, encode(model, video, progress=False))
    assert seen and not any("worker" in i for i in seen)


def test_nothing_outlives_a_multi_device_call():
    import diffusers

    model = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                       temperal_downsample=[False, True, True]).eval()
    ref = weakref.ref(model)
    decode(model, torch.randn(1, 16, 2, 6, 6), tile=3, slice_len=1, progress=False, devices=TWO)
    encode(model, torch.rand(1, 3, 5, 32, 32) * 2 - 1, tile=2, slice_len=1, progress=False, devices=TWO)
    del model
    gc.collect()
    assert ref() is None, "a multi-device run kept the VAE alive"
    assert not _wan_threads()


# --- the devices input and the plan ---------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ("", "is empty"),
    ("gpu", "is not understood"),
    ("0,,1", "is not understood"),
    ("-1", "is not understood"),
    ("0,0", "names a device twice"),
    (3, "must be text"),
])
def test_bad_devices_text_names_the_fix(text, needle):
    problem = devices_problem(text)
    assert problem and needle in problem and ("'auto'" in problem or "'0,1'" in problem)


def test_devices_text_against_the_visible_devices():
    assert devices_problem("auto", visible=0) is None
    assert devices_problem(" 0, cuda:1 ", visible=2) is None
    assert "there is no CUDA device 2" in devices_problem("0,2", visible=2)
    assert "sees none" in devices_problem("0", visible=0)
    assert parse_devices(" 0, cuda:1 ") == [0, 1] and parse_devices("AUTO") is None


def test_resolve_puts_the_main_device_first_and_auto_off_cuda_is_the_main_device():
    cpu = torch.device("cpu")
    assert resolve_devices(None, cpu) == [cpu]
    assert resolve_devices("auto", cpu) == [cpu]
    assert resolve_devices(TWO, cpu) == [cpu, cpu]
    assert resolve_devices(["cuda:1", "cuda:0"], "cuda:0") == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert resolve_devices([1], "cuda:0") == [torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="devices is empty"):
        resolve_devices([], cpu)


def test_bands_are_cut_so_every_device_gets_an_equal_share():
    up = decoder_graph(wan21()).up
    three_bands = Plan(12, 40, 2, 1, None, "fits")  # 34 rows: 3 bands of 12 latent rows
    four = plan_for_devices(three_bands, up, (34, 40), 2, 4)
    assert len(four.tiles((34, 40))) == 4 and four.tile_w == 40 and four.slice_len == 2
    assert four.est_bytes < 10**12 and "4 bands for 2 devices" in four.reason
    assert plan_for_devices(three_bands, up, (34, 40), 3, 4) is three_bands  # already equal shares
    squares = Plan(12, 12, 2, 1, None, "fits")
    assert plan_for_devices(squares, up, (34, 40), 2, 4) is squares
    pinned = Plan(12, 40, 2, 1, None, "user override")
    assert plan_for_devices(pinned, up, (34, 40), 2, 4) is pinned


# --- inside a real ComfyUI (COMFYUI_PATH) -------------------------------------------------------

from test_vae_nodes import NODES, validate  # noqa: E402,F401  (the fixture: ComfyUI's own prompt validation)


@pytest.mark.parametrize("node", NODES)
def test_devices_input_is_validated_before_the_prompt_runs(validate, node):  # noqa: F811
    assert validate(node, devices="auto") == []
    assert validate(node, devices=" AUTO ") == []
    for text, needle in [("gpu", "is not understood"), ("0,0", "names a device twice"), ("", "is empty"),
                         ("0", "sees none")]:  # the test ComfyUI runs on the CPU
        errors = validate(node, devices=text)
        assert len(errors) == 1 and needle in errors[0], (text, errors)


def test_devices_reach_the_engine_and_auto_on_the_cpu_is_the_one_device_run(comfyui, monkeypatch):
    import sys

    from comfy_support import comfy_vae, load_our_nodes, random_wan_vae_sd

    mappings = load_our_nodes()
    package = mappings["WanAccelVAEDecode"].__module__.rsplit(".", 2)[0]  # as ComfyUI imported it
    multi_device = sys.modules[package + ".vae_accel.multi_device"]
    vae = comfy_vae(random_wan_vae_sd("2.1"))
    z = {"samples": _latent((1, 16, 2, 5, 4), seed=9)}
    seen = []
    real = multi_device.make_workers

    def spy(devices, *args, **kwargs):
        seen.append(list(devices))
        return real(devices, *args, **kwargs)

    monkeypatch.setattr(multi_device, "make_workers", spy)
    default = mappings["WanAccelVAEDecode"].execute(samples=z, vae=vae).result[0]
    auto = mappings["WanAccelVAEDecode"].execute(samples=z, vae=vae, devices="auto").result[0]
    assert torch.equal(default, auto) and seen == [[torch.device("cpu")]] * 2
    with pytest.raises(ValueError, match="sees none"):  # a linked value is checked when the node runs
        mappings["WanAccelVAEDecode"].execute(samples=z, vae=vae, devices="1")
    patched = mappings["WanAccelVAEPatch"].execute(vae=vae, devices="0,1").result[0]
    assert patched.wan_accel_overrides.devices == "0,1"


class _StemBands:
    """A fault hook that records which worker computed which band of the split stem, and raises ``fail``
    on worker ``who``'s ``at``-th slice."""

    def __init__(self, who=None, at=None, fail=None):
        self.who, self.at, self.fail = who, at, fail
        self.bands: dict = {}
        self.lock = threading.Lock()

    def __call__(self, stage, info):
        if not info.get("split"):
            return
        with self.lock:
            self.bands.setdefault(info["worker"], []).append((info["rect"], info["frames"]))
            n = len(self.bands[info["worker"]])
        if info["worker"] == self.who and n == self.at:
            raise self.fail


@pytest.mark.parametrize("n_devices", [2, 3])
def test_the_stem_split_by_rows_over_devices_equals_one_device(caplog, n_devices):
    """Each device computes a band of the stem's rows (its queries against every key of the attention);
    the decode equals the one-device decode within float32 rounding and the untiled reference."""
    model = wan21()
    z = _latent((1, 16, 4, 11, 13), seed=11)
    one = decode(model, z, tile=4, slice_len=2, progress=False)
    bands = _StemBands()
    with caplog.at_level(logging.WARNING, logger="wan_accel"):
        split = decode(model, z, tile=4, slice_len=2, progress=False, devices=["cpu"] * n_devices, split_stem=True,
                       fault=bands)
    assert (split - one).abs().max().item() <= TOL
    assert (split.clamp(-1, 1) - reference_decode(model, z)).abs().max().item() <= TOL
    assert sorted(bands.bands) == list(range(n_devices))  # every device computed a band
    rows = sorted({(r.y0, r.y1) for slices in bands.bands.values() for r, _ in slices})
    assert rows[0][0] == 0 and rows[-1][1] == 11 and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert all([f for _, f in slices] == [(0, 1), (1, 3), (3, 4)] for slices in bands.bands.values())
    assert not caplog.records and not _wan_threads()


def test_the_stem_split_for_wan22_in_comfy_layout_with_a_callers_weight_source():
    """The other devices' stem weights are copies fetched through the caller's source on its thread."""
    model = wan22()
    z = _latent((1, 48, 3, 5, 7), seed=12)
    threads = set()
    source = _source_noting_threads(threads)

    one = decode(model, z, layout="comfy", tile=2, slice_len=1, progress=False)
    bands = _StemBands()
    split = decode(model, z, layout="comfy", tile=2, slice_len=1, progress=False, weights=source, devices=TWO,
                   split_stem=True, fault=bands)
    assert (split - one).abs().max().item() <= TOL and sorted(bands.bands) == [0, 1]
    assert threads == {threading.current_thread()}


@pytest.mark.parametrize("fail", [RuntimeError("injected device failure"), torch.OutOfMemoryError("injected")],
                         ids=["error", "out_of_memory"])
def test_a_device_failing_in_the_split_stem_leaves_the_stem_to_the_main_device(caplog, fail):
    """Worker 1 fails on its second slice of the stem: every band stops, the main device runs the stem
    alone (one warning naming the cause), and the decode is still right; no thread outlives the call."""
    model = wan21()
    z = _latent((1, 16, 4, 9, 10), seed=13)
    one = decode(model, z, tile=5, slice_len=2, progress=False)
    calls = []
    bands = _StemBands(who=1, at=2, fail=fail)
    with caplog.at_level(logging.WARNING, logger="wan_accel"):
        split = decode(model, z, tile=5, slice_len=2, devices=TWO, split_stem=True, fault=bands,
                       progress=lambda done, total: calls.append((done, total)))
    assert (split - one).abs().max().item() <= TOL
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "stem split over 2 devices failed" in lines[0] and type(fail).__name__ in lines[0]
    assert calls[-1][0] == calls[-1][1]  # the progress counts the stem once
    assert not _wan_threads()


def test_the_stem_stays_on_the_main_device_by_default_and_is_split_when_asked():
    """With the fast kernels the stem is a twenty-fifth of a decode and its split costs more than it saves
    (bench/results/vae_multi_gpu_2xh200.json): off unless asked for."""
    model = wan21()
    z = _latent((1, 16, 2, 8, 8), seed=14)
    bands = _StemBands()
    decode(model, z, tile=4, slice_len=1, progress=False, devices=TWO, fault=bands)
    assert bands.bands == {}
    decode(model, z, tile=4, slice_len=1, progress=False, devices=TWO, fault=bands, split_stem=True)
    assert len(bands.bands) == 2
