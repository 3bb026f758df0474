"""CPU tests of the telemetry recorder (no ComfyUI, no GPU: the CUDA calls are faked).

Over 400 lines: one case per recorder transition, all on the same faked CUDA calls.
"""
from __future__ import annotations

import pytest

from wan_accel.telemetry import phases
from wan_accel.telemetry.probes import MB, CudaProbe, NullProbe
from wan_accel.telemetry.recorder import Recorder


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t

    def tick(self, dt):
        self.t += dt


def make(models=None, probe=None, events=None):
    clock = Clock()
    rec = Recorder(probe=probe or NullProbe(rss=lambda: 1000 * MB), models=models, clock=clock,
                   on_event=(lambda n, p: events.append((n, p))) if events is not None else None)
    return rec, clock


def by_id(run):
    return {r["node_id"]: r for r in run["nodes"]}


def test_nodes_recorded_with_time_share_and_totals():
    events = []
    rec, clock = make(events=events)
    rec.begin_run("p1")
    clock.tick(0.5)
    rec.node_start("1", "EmptyImage")
    clock.tick(1.0)
    rec.node_finish("1")
    rec.node_start("2", "ImageScale")
    clock.tick(2.5)
    rec.node_finish("2")
    clock.tick(1.0)
    run = rec.end_run()
    nodes = by_id(run)
    assert run["status"] == "success" and run["prompt_id"] == "p1"
    assert run["wall_s"] == pytest.approx(5.0)
    assert nodes["1"]["seconds"] == pytest.approx(1.0) and nodes["2"]["seconds"] == pytest.approx(2.5)
    assert nodes["2"]["share"] == pytest.approx(0.5)
    assert nodes["1"]["type"] == "EmptyImage" and nodes["1"]["status"] == "ok"
    assert nodes["1"]["ram_rss_mb"] == 1000.0 and nodes["1"]["ram_delta_mb"] == 0.0
    assert nodes["1"]["gpu_s"] is None  # no GPU probe
    assert run["totals"]["executed"] == 2 and run["totals"]["overhead_s"] == pytest.approx(1.5)
    names = [n for n, _ in events]
    assert names == ["run_start", "node", "node", "run"]
    assert events[1][1]["record"]["seconds"] == pytest.approx(1.0)


def test_cached_node_finishes_without_start():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_finish("5", "SaveImage")
    run = rec.end_run(cached={"5": "SaveImage", "1": "EmptyImage"})
    nodes = by_id(run)
    assert nodes["5"]["cached"] is True and nodes["5"]["status"] == "cached" and nodes["5"]["seconds"] == 0
    # reported cached by the executor but never visited: recorded as cached too
    assert nodes["1"]["cached"] is True and nodes["1"]["type"] == "EmptyImage"
    assert run["totals"]["cached"] == 2 and run["totals"]["executed"] == 0


def test_lazy_node_started_twice_counts_only_its_own_segments():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("8", "ComfySwitchNode")
    clock.tick(0.1)
    rec.node_start("6", "ImageInvert")  # the switch asked for its lazy input
    clock.tick(2.0)
    rec.node_finish("6")
    rec.node_start("8")
    clock.tick(0.2)
    rec.node_finish("8")
    nodes = by_id(rec.end_run())
    assert nodes["8"]["seconds"] == pytest.approx(0.3)
    assert nodes["8"]["span_s"] == pytest.approx(2.3)
    assert nodes["8"]["starts"] == 2
    assert nodes["6"]["seconds"] == pytest.approx(2.0)


def test_subgraph_ids_kept():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("65:70:63", "KSampler", display_id="65:70:63", parent_id="65:70")
    rec.node_finish("65:70:63")
    node = rec.end_run()["nodes"][0]
    assert node["node_id"] == node["display_node_id"] == "65:70:63" and node["parent_node_id"] == "65:70"


def test_error_inside_node_closes_it_with_the_message():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("1", "EmptyImage")
    rec.node_finish("1")
    rec.node_start("2", "Broken")
    clock.tick(0.7)
    run = rec.end_run(status="error", error={"node_id": "2", "type": "ValueError", "message": "boom"})
    nodes = by_id(run)
    assert run["status"] == "error"
    assert nodes["2"]["status"] == "error" and nodes["2"]["error"]["message"] == "boom"
    assert nodes["2"]["seconds"] == pytest.approx(0.7)
    assert nodes["1"]["status"] == "ok"
    assert run["totals"]["errors"] == 1


def test_interrupted_run():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("3", "KSampler")
    run = rec.end_run(status="interrupted", error={"node_id": "3", "type": "interrupted", "message": "interrupted"})
    assert by_id(run)["3"]["status"] == "interrupted" and run["totals"]["errors"] == 1


class Exploding(NullProbe):
    def __init__(self):
        super().__init__(rss=lambda: 1)

    def begin(self):
        raise RuntimeError("probe broke")

    def end(self, token):
        raise RuntimeError("probe broke")


def test_errors_inside_telemetry_never_escape(caplog):
    def bad_models(report):
        raise RuntimeError("models broke")

    def bad_event(name, payload):
        raise RuntimeError("event broke")

    rec = Recorder(probe=Exploding(), models=bad_models, on_event=bad_event)
    rec.begin_run("p")
    rec.node_start("1", "X")
    rec.node_progress("1", 1, 2)
    rec.model_load(0.1, [{"name": "m"}])  # missing sizes
    rec.node_finish("1")
    rec.node_progress("nope", "x", None)  # garbage in
    run = rec.end_run()
    assert run is not None and run["nodes"][0]["status"] == "ok"
    assert rec.failures >= 2
    assert run["telemetry_failures"] >= 2
    assert {"starting GPU counters", "listing loaded models", "sending an event"} <= set(run["telemetry_failure_sites"])
    warnings = [r for r in caplog.records if "wan_accel telemetry" in r.getMessage()]
    assert len(warnings) == 1  # one log line per run, not one per failure
    # the line also counts sending the finished run, which fails after the record was made
    assert f"{run['telemetry_failures'] + 1} error(s) inside telemetry" in warnings[0].getMessage()
    assert "RuntimeError" in warnings[0].getMessage()


def test_failure_count_is_per_run(caplog):
    flaky = {"broken": True}

    def models(report):
        if flaky["broken"]:
            raise RuntimeError("models broke")
        return {}

    rec = Recorder(probe=NullProbe(rss=lambda: 1), models=models)
    runs = []
    for broken in (True, False):
        flaky["broken"] = broken
        rec.begin_run("p")
        rec.node_start("1", "X")
        rec.node_finish("1")
        runs.append(rec.end_run())
    assert runs[0]["telemetry_failures"] == 1 and runs[0]["telemetry_failure_sites"] == {"listing loaded models": 1}
    assert runs[0]["nodes"][0]["status"] == "ok" and "span_s" in runs[0]["nodes"][0]  # timed all the same
    assert runs[1]["telemetry_failures"] == 0 and "telemetry_failure_sites" not in runs[1]
    assert rec.failures == 1  # the recorder's lifetime total still says something failed once
    assert len([r for r in caplog.records if "inside telemetry" in r.getMessage()]) == 1


def test_failures_between_runs_are_reported_with_the_next_run():
    rec, _ = make()
    rec.report_failure("model load hook", KeyError("x"))  # e.g. a hook firing while no prompt runs
    rec.begin_run("p")
    run = rec.end_run()
    assert run["telemetry_failures"] == 1 and run["telemetry_failure_sites"] == {"model load hook": 1}


def test_broken_phase_listener_does_not_break_engine_and_is_counted(caplog):
    def broken(event):
        raise RuntimeError("listener broke")

    rec, _ = make()
    phases.add_listener(broken)
    try:
        rec.begin_run("p")
        rec.node_start("1", "WanVAEDecode")
        with phases.phase("vae.stem"):
            pass
        phases.note("oom_retry")
        rec.node_finish("1")
        run = rec.end_run()
        assert run["telemetry_failures"] == 2
        assert run["telemetry_failure_sites"] == {"phase listener test_broken_phase_listener_does_not_break_engine_and_is_counted.<locals>.broken": 2}
        assert run["nodes"][0]["phases"][0]["name"] == "vae.stem"  # the recorder's own listener still ran
        with phases.phase("vae.stem"):  # no run, no recorder: logged once per listener
            pass
        phases.note("again")
    finally:
        phases.remove_listener(broken)
    assert len([r for r in caplog.records if "listener broke" in r.getMessage()]) == 2  # the run's line + one


def test_node_methods_outside_a_run_are_ignored():
    rec, _ = make()
    rec.node_start("1")
    rec.node_finish("1")
    assert rec.end_run() is None


# ---------------------------------------------------------------------------- models
GB = 1024 * MB


def test_partial_load_detected_from_loaded_model_list():
    """The 2.3 GB case: WAN loaded with 2299.82 MB left offloaded."""
    loaded = {}
    rec, clock = make(models=lambda report: dict(loaded))
    loaded["clip"] = {"name": "UMT5", "size": 5 * GB, "loaded": 5 * GB}
    rec.begin_run("p")
    rec.node_start("3", "KSampler")
    loaded["wan"] = {"name": "WAN21", "size": int(16 * GB), "loaded": int(16 * GB - 2299.82 * MB)}
    del loaded["clip"]  # freed to make room
    clock.tick(35)
    rec.node_finish("3")
    node = rec.end_run()["nodes"][0]
    assert node["partial_load"] is True
    assert node["offloaded_mb"] == pytest.approx(2299.8, abs=0.1)
    assert node["models_loaded"][0]["name"] == "WAN21"
    assert node["models_unloaded"] == [{"name": "UMT5", "freed_mb": 5120.0}]


def test_full_load_is_not_partial_and_model_load_hook_times_it():
    loaded = {}
    rec, clock = make(models=lambda report: dict(loaded))
    rec.begin_run("p")
    rec.node_start("7", "VAEDecode")
    clock.tick(1.5)
    loaded["vae"] = {"name": "WanVAE", "size": 250 * MB, "loaded": 250 * MB}
    rec.model_load(1.5, [loaded["vae"]])
    rec.node_finish("7")
    run = rec.end_run()
    node = run["nodes"][0]
    assert node["partial_load"] is False and node["model_load_s"] == 1.5
    assert run["totals"]["model_load_s"] == 1.5 and run["totals"]["partial_loads"] == 0


def test_partial_load_from_model_load_hook_only():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("3", "KSampler")
    rec.model_load(4.0, [{"name": "WAN21", "size": 16 * GB, "loaded": 16 * GB - 2300 * MB}])
    rec.node_finish("3")
    run = rec.end_run()
    assert run["nodes"][0]["offloaded_mb"] == 2300.0
    assert run["totals"]["partial_loads"] == 1 and run["totals"]["offloaded_mb"] == 2300.0


def test_partial_unload_of_a_resident_model():
    loaded = {"wan": {"name": "WAN21", "size": 16 * GB, "loaded": 16 * GB}}
    rec, clock = make(models=lambda report: {k: dict(v) for k, v in loaded.items()})
    rec.begin_run("p")
    rec.node_start("9", "VAEDecode")
    loaded["wan"]["loaded"] = 10 * GB
    rec.node_finish("9")
    node = rec.end_run()["nodes"][0]
    assert node["models_unloaded"] == [{"name": "WAN21", "freed_mb": 6144.0, "partial": True}]


# ---------------------------------------------------------------------------- steps, phases, notes
def test_sampler_steps_read_off_the_node():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("3", "KSampler")
    clock.tick(3.0)
    rec.model_load(3.0, [{"name": "WAN21", "size": GB, "loaded": GB}])
    clock.tick(17.4)
    rec.node_progress("3", 1, 2)
    clock.tick(17.4)
    rec.node_progress("3", 2, 2)
    rec.node_finish("3")
    steps = rec.end_run()["nodes"][0]["steps"]
    assert steps["count"] == 2 and steps["total"] == 2 and steps["unit"] == "sampler step"
    assert steps["seconds"] == [pytest.approx(17.4), pytest.approx(17.4)]  # the model load is not step 1
    assert steps["mean_s"] == pytest.approx(17.4)


@pytest.mark.parametrize("node_type, phase, unit", [
    ("KSamplerAdvanced", None, "sampler step"), ("SamplerCustomAdvanced", None, "sampler step"),
    ("VAEDecodeTiled", None, "VAE step"), ("WanAccelVAEDecode", "vae.tiles", "VAE step"),
    ("VAEDecode", "vae.tiles", "VAE step"), ("UpscaleModelLoader", None, "step"),
])
def test_progress_ticks_are_named_for_what_they_are(node_type, phase, unit):
    events = []
    rec, clock = make(events=events)
    rec.begin_run("p")
    rec.node_start("8", node_type)
    if phase:
        with phases.phase(phase):
            pass
    clock.tick(1.0)
    rec.node_progress("8", 1, 4)
    rec.node_finish("8")
    assert events[-1][1]["record"]["steps"]["unit"] == unit  # live, for the overlay
    assert rec.end_run()["nodes"][0]["steps"]["unit"] == unit


def test_progress_jumps_spread_over_steps():
    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("3", "KSampler")
    clock.tick(4.0)
    rec.node_progress("3", 4, 8)
    rec.node_finish("3")
    steps = rec.end_run()["nodes"][0]["steps"]
    assert steps["count"] == 4 and steps["seconds"] == [1.0] * 4


def test_engine_phases_and_oom_notes_land_on_the_running_node():
    rec, clock = make()
    listeners = phases.listener_count()
    rec.begin_run("p")
    assert phases.listener_count() == listeners + 1
    with phases.phase("outside.any.node"):
        pass
    rec.node_start("8", "WanVAEDecode")
    with phases.phase("vae.tiles", tiles=12, shape=(1, 16, 21, 60, 104)):
        pass
    phases.note("attention.backend", backend="sdpa", model="wan")
    rec.note("oom_retry", message="Ran out of memory when regular VAE decoding")
    rec.node_finish("8")
    run = rec.end_run()
    node = run["nodes"][0]
    assert [p["name"] for p in node["phases"]] == ["vae.tiles"]
    assert node["phases"][0]["tiles"] == 12 and node["phases"][0]["shape"] == ["1", "16", "21", "60", "104"]
    assert {n["name"] for n in node["notes"]} == {"attention.backend", "oom_retry"}
    assert node["oom_retries"] == 1 and run["totals"]["oom_retries"] == 1
    assert [p["name"] for p in run["phases"]] == ["outside.any.node"]
    # listener detached after the run
    assert phases.listener_count() == listeners


def test_session_outside_comfyui_times_engine_phases():
    rec = Recorder()
    with rec.session("bench.vae", shape="480p"):
        with phases.phase("vae.stem"):
            pass
        with phases.phase("vae.copy"):
            pass
    run = rec.last_run
    assert run["source"] == "bench.vae" and run["shape"] == "480p" and run["status"] == "success"
    assert [p["name"] for p in run["nodes"][0]["phases"]] == ["vae.stem", "vae.copy"]

    with pytest.raises(ZeroDivisionError):
        with rec.session("bench.fail"):
            1 / 0
    assert rec.last_run["status"] == "error"


# ---------------------------------------------------------------------------- GPU (fake CUDA)
class FakeEvent:
    def __init__(self, cuda, enable_timing=False):
        self.cuda = cuda
        self.t = None
        self.ready = False
        cuda.events.append(self)

    def record(self, stream=None):
        assert stream == "stream0"
        self.t = self.cuda.gpu_clock

    def query(self):
        return self.ready

    def synchronize(self):
        assert not self.cuda.inside_node, "synchronize inside a node"
        self.cuda.syncs += 1
        self.ready = True

    def elapsed_time(self, other):
        assert other.ready, "elapsed_time on an event the GPU has not reached"
        return (other.t - self.t) * 1000.0


class FakeCuda:
    def __init__(self):
        self.events = []
        self.gpu_clock = 0.0
        self.inside_node = False
        self.syncs = 0
        self.peak = 0
        self.current = 0
        self.resets = 0

    def Event(self, enable_timing=False):
        return FakeEvent(self, enable_timing)

    def current_stream(self, device=None):
        return "stream0"

    def get_device_name(self, device=None):
        return "Fake H100"

    def reset_peak_memory_stats(self, device=None):
        self.resets += 1
        self.peak = self.current

    def memory_stats(self, device=None):
        return {"allocated_bytes.all.peak": self.peak, "reserved_bytes.all.peak": self.peak + 512 * MB,
                "allocated_bytes.all.current": self.current, "reserved_bytes.all.current": self.current + 512 * MB}


def test_gpu_seconds_from_events_without_synchronize_inside_nodes():
    cuda = FakeCuda()
    rec, clock = make(probe=CudaProbe(cuda, 0, rss=lambda: 1))
    rec.begin_run("p")
    assert rec.run["device"] == "Fake H100"
    cuda.inside_node = True
    rec.node_start("3", "KSampler")
    cuda.gpu_clock += 12.0
    cuda.peak, cuda.current = 20 * GB, 14 * GB
    rec.node_finish("3")  # its end event is not reached yet: GPU time stays pending
    rec.node_start("4", "VAEDecode")
    cuda.events[1].ready = True  # node 3's end event completed meanwhile
    cuda.gpu_clock += 3.0
    cuda.peak = 16 * GB
    rec.node_finish("4")
    cuda.inside_node = False
    run = rec.end_run()
    nodes = by_id(run)
    assert nodes["3"]["gpu_s"] == pytest.approx(12.0)
    assert nodes["4"]["gpu_s"] == pytest.approx(3.0)
    assert cuda.syncs == 1  # node 4's end event, waited for after the prompt
    assert nodes["3"]["vram_peak_allocated_mb"] == 20480.0 and nodes["3"]["vram_allocated_mb"] == 14336.0
    assert nodes["3"]["vram_peak_reserved_mb"] == 20992.0
    assert nodes["4"]["vram_peak_allocated_mb"] == 16384.0
    assert cuda.resets == 2
    assert run["totals"]["gpu_s"] == pytest.approx(15.0) and run["totals"]["vram_peak_allocated_mb"] == 20480.0


def test_raw_allocator_stats_used_when_available_and_dropped_when_their_layout_changes():
    cuda = FakeCuda()
    cuda.peak, cuda.current = 3 * GB, 2 * GB
    raw = {"allocated_bytes": {"all": {"peak": 5 * GB, "current": 4 * GB}},
           "reserved_bytes": {"all": {"peak": 6 * GB, "current": 6 * GB}}}
    probe = CudaProbe(cuda, 0, rss=lambda: 1, raw_stats=lambda dev: raw)
    out = probe.end(probe.begin())
    assert out["vram_peak_allocated"] == 5 * GB and out["vram_reserved"] == 6 * GB
    reported = []
    probe.report = lambda where, exc: reported.append((where, type(exc).__name__))
    probe.raw_stats = lambda dev: {"something": "else"}
    out = probe.end(probe.begin())
    assert out["vram_peak_allocated"] == cuda.peak and probe.raw_stats is None
    assert reported == [("reading the allocator's raw stats (public memory_stats() from now on)", "KeyError")]


def test_probe_failures_reach_the_run_record():
    cuda = FakeCuda()

    def no_name(device=None):
        raise RuntimeError("driver hiccup")

    cuda.get_device_name = no_name
    reported = []
    probe = CudaProbe(cuda, 0, rss=lambda: 1, raw_stats=lambda dev: {}, report=lambda w, e: reported.append(w))
    assert probe.device == "cuda" and reported == ["reading the GPU's name"]
    rec, _ = make(probe=probe)
    rec.begin_run("p")
    rec.node_start("1", "X")
    rec.node_finish("1")  # raw stats without the expected keys: reported, public call used
    run = rec.end_run()
    assert run["telemetry_failure_sites"] == {"reading the allocator's raw stats (public memory_stats() from now on)": 1}


def test_events_per_node_are_bounded_and_dicts_kept():
    from wan_accel.telemetry.recorder import MAX_EVENTS

    rec, clock = make()
    rec.begin_run("p")
    rec.node_start("1", "WanVAEDecode")
    phases.note("attention_backend", backend="sdpa", timings={"sdpa": 1.5, "sage": 0.9})
    for i in range(MAX_EVENTS + 50):
        with phases.phase("vae.slice", i=i):
            pass
    rec.node_finish("1")
    node = rec.end_run()["nodes"][0]
    assert node["notes"][0]["timings"] == {"sdpa": 1.5, "sage": 0.9}
    assert len(node["phases"]) == MAX_EVENTS + 1 and node["phases"][-1]["name"] == "telemetry.events_dropped"


# ---------------------------------------------------------------------------- attention kernels
def test_attention_kernels_that_ran_are_on_the_sampler_once_each():
    events = []
    rec, clock = make(events=events)
    rec.begin_run("p")
    rec.node_start("62", "WanAccelAttention")  # patches the model; runs nothing
    rec.node_finish("62")
    rec.node_start("57", "KSamplerAdvanced")
    for _ in range(3):  # the override emits once per (model, shape, outcome); repeats must not multiply
        phases.note("attention_backend", model="WanModel@a1b2c3", shape="1x40x1560x128", backend="sage",
                    requested="sage", fallback=False, reason="as set", node_id="62")
    phases.note("attention_backend", model="WanModel@a1b2c3", shape="1x40x512x128", backend="sdpa",
                requested="sage", fallback=True, reason="sage: head dim 72 unsupported", node_id=62)
    rec.node_finish("57")
    run = rec.end_run()
    sampler = by_id(run)["57"]
    assert sampler["attention"] == [
        {"model": "WanModel@a1b2c3", "shape": "1x40x1560x128", "backend": "sage", "requested": "sage", "fallback": False,
         "reason": "as set", "node_id": "62"},
        {"model": "WanModel@a1b2c3", "shape": "1x40x512x128", "backend": "sdpa", "requested": "sage", "fallback": True,
         "reason": "sage: head dim 72 unsupported", "node_id": "62"}]
    assert events[-2][1]["record"]["attention"] == sampler["attention"]  # live, for the overlay
    assert "attention" not in by_id(run)["62"]
    assert run["totals"]["attention_fallbacks"] == 1


def test_attention_notes_without_the_new_fields_still_show():
    rec, _ = make()
    rec.begin_run("p")
    rec.node_start("57", "KSamplerAdvanced")
    phases.note("attention_backend", model="m", shape="s", backend="sub_quad", reason="fallback: sage unavailable")
    rec.node_finish("57")
    [entry] = rec.end_run()["nodes"][0]["attention"]
    assert entry["fallback"] is True and entry["requested"] is None and entry["node_id"] is None


def test_facts_noted_once_per_run_are_in_every_run():
    rec, _ = make()
    runs = []
    for _ in range(2):  # e.g. a second prompt whose attention node is cached: the kernel is still reported
        rec.begin_run("p")
        rec.node_start("57", "KSamplerAdvanced")
        for _ in range(40):  # once per attention call
            phases.note_once_per_run(("attention_backend", "m", "s", "sage"), "attention_backend", model="m",
                                     shape="s", backend="sage")
        rec.node_finish("57")
        runs.append(rec.end_run())
    for run in runs:
        assert [n["backend"] for n in run["nodes"][0]["notes"]] == ["sage"]
