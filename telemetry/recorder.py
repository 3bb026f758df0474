"""The recorder: per-node and per-phase records of one run (a ComfyUI prompt or a benchmark).

It knows nothing of ComfyUI. The ComfyUI hooks (``nodes/telemetry_hooks.py``) feed it node
start / progress / finish calls from ``comfy_execution.progress``; benchmarks use
:meth:`Recorder.session`. Engines' :mod:`.phases` events land on the node running when they
fire (or on the run when none is).

Node semantics the ComfyUI executor imposes:

* cached node: ``finish`` with no ``start`` -> recorded with ``cached: True`` and no cost;
* lazy node (and nodes that expand into a subgraph or wait on an async task): ``start`` more
  than once, or ``start`` then other nodes then ``finish``. ``seconds`` sums the node's own
  active segments (a segment ends when another node starts or it finishes); ``span_s`` is first
  start to finish;
* failing node: ``start`` and no ``finish`` -> closed by :meth:`end_run` with the error.

Every public method swallows its own errors so telemetry can never fail the work it measures;
each is counted in the run record and named in one log line per run (:mod:`.failures`). This module
is the state machine; :mod:`.records` renders the record from the node states kept here and
:mod:`.finish` reads GPU times back, saves and sends it once the run is closed.

Just over 400 lines: the node state machine only (rendering is records.py, finishing a run finish.py);
its transitions read best in one place.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from . import phases as _phases
from . import records
from .failures import RunFailures
from .finish import ClosedRun, finish_run
from .model_records import model_entry
from .node_state import NodeState
from .probes import NullProbe, default_probe, resolve_gpu_times
from .run_ids import new_run_id

log = logging.getLogger("wan_accel.telemetry")

ModelInfo = dict  # see model_activity.ModelInfo; snapshots are keyed by ModelInfo["key"]
ModelSnapshot = Callable[[Callable[[str, BaseException], None]], dict]  # (report_failure) -> {key: ModelInfo}

SCHEMA = records.SCHEMA
MAX_EVENTS = 2000  # phases / notes kept per node (and per run outside nodes)
RESIDENT_SAMPLE_S = 0.5  # Dynamic VRAM: how often progress ticks re-read what is resident (a few us each)


class Recorder:
    """Records runs. One run at a time (ComfyUI executes one prompt at a time)."""

    def __init__(
        self,
        probe: NullProbe | None = None,
        models: ModelSnapshot | None = None,
        on_event: Callable[[str, dict], None] | None = None,
        store: Any = None,
        clock: Callable[[], float] = time.perf_counter,
        save_in_background: bool = False,
    ):
        self.save_in_background = save_in_background
        self._fixed_probe = probe
        self.probe: NullProbe = probe or NullProbe()
        self.models = models
        self.on_event = on_event
        self.store = store
        self.clock = clock
        self.run: dict | None = None
        self._nodes: dict[str, NodeState] = {}
        self._gpu_waiting: list[NodeState] = []
        self._last_rss: int | None = None
        self._active: NodeState | None = None
        self._t0 = 0.0
        self.last_run: dict | None = None
        # failures since the last run closed: they count in the next run's record (a hook failing
        # between prompts is still reported, once, with that run)
        self._failures = RunFailures()
        self._failures_total = 0

    @property
    def failures(self) -> int:
        """Failures inside telemetry since this recorder was made (benchmarks check for 0); each run's
        own count is its record's ``telemetry_failures``."""
        return self._failures_total

    # ------------------------------------------------------------------ safety
    def report_failure(self, where: str, exc: BaseException) -> None:
        """A failure inside telemetry or its hooks, caught so the prompt goes on: counted in the run
        record and named in the run's one log line. Never raises."""
        self._failures_total += 1
        self._failures.add(where, exc)

    def _run_reporter(self, failures: RunFailures) -> Callable[[str, BaseException], None]:
        """report_failure for a run already closed (its record is finished on another thread)."""
        def report(where: str, exc: BaseException) -> None:
            self._failures_total += 1
            failures.add(where, exc)

        return report

    def _emit(self, name: str, payload: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, payload)
        except Exception as exc:
            self.report_failure("sending an event", exc)

    # ------------------------------------------------------------------ runs
    def begin_run(self, prompt_id: str | None = None, **meta) -> None:
        try:
            if self.run is not None:
                self.end_run(status="abandoned")
            self.probe = self._fixed_probe or default_probe(self.report_failure)
            self.probe.report = self.report_failure
            now = time.time()
            self.run = {
                "schema": SCHEMA,
                "id": new_run_id(now),
                "prompt_id": prompt_id,
                "started_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
                "device": getattr(self.probe, "device", "cpu"),
                **meta,
            }
            self._nodes = {}
            self._gpu_waiting: list[NodeState] = []
            self._last_rss = None
            self._active = None
            self._run_phases: list = []
            self._run_notes: list = []
            self._t0 = self.clock()
            _phases.run_started()
            _phases.add_listener(self._on_phase)
            _phases.add_error_sink(self.report_failure)
            self._emit("run_start", {"run_id": self.run["id"], "prompt_id": prompt_id})
        except Exception as exc:
            self.report_failure("begin_run", exc)

    def _node(self, node_id: str) -> NodeState:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = NodeState(node_id, len(self._nodes))
        return node

    def _close_segment(self, node: NodeState, now: float) -> None:
        if node.seg_start is None:
            return
        node.active_s += now - node.seg_start
        node.seg_start = None
        if node.probe_token is not None:
            try:
                out = self.probe.end(node.probe_token)
                pending = out.pop("gpu_events", None)
                if pending is not None:
                    node.gpu_pending.append(pending)
                    self._await_gpu(node)
                for key in ("vram_peak_allocated", "vram_peak_reserved"):
                    if key in out:
                        node.mem[key] = max(node.mem.get(key, 0), out[key])
                for key in ("vram_allocated", "vram_reserved"):
                    if key in out:
                        node.mem[key] = out[key]
            except Exception as exc:
                self.report_failure("reading GPU counters", exc)
            node.probe_token = None

    def node_start(self, node_id: str, node_type: str | None = None, display_id: str | None = None,
                   parent_id: str | None = None, title: str | None = None) -> None:
        if self.run is None:
            return
        try:
            now = self.clock()
            node = self._node(node_id)
            active = self._active
            if active is not None and active is not node:
                self._close_segment(active, now)
            if node_type:
                node.type = node_type
            if display_id:
                node.display_id = display_id
            if parent_id:
                node.parent_id = parent_id
            if title:
                node.title = title
            node.starts += 1
            node.status = "running"
            if node.first_start is None:
                node.first_start = now
                # the previous node's reading stands for "before" (nothing runs in between): one syscall saved
                node.rss_before = self._last_rss if self._last_rss is not None else self.probe.rss()
                node.models.before = self._loaded_models()
                node.models.observe(node.models.before)
            if node.seg_start is None:
                node.seg_start = now
                try:
                    node.probe_token = self.probe.begin()
                except Exception as exc:
                    self.report_failure("starting GPU counters", exc)
            self._active = node
        except Exception as exc:
            self.report_failure("node_start", exc)

    def node_progress(self, node_id: str, value: float, max_value: float) -> None:
        if self.run is None:
            return
        try:
            node = self._nodes.get(node_id)
            if node is None or node.first_start is None:
                return
            now = self.clock()
            node.progress.append((now, float(value), float(max_value)))
            activity = node.models
            # Dynamic VRAM pages weights in while the model runs: sample what is resident as the steps go
            if activity.has_dynamic() and (activity.last_sample is None or now - activity.last_sample >= RESIDENT_SAMPLE_S):
                activity.last_sample = now
                activity.observe(self._loaded_models())
        except Exception as exc:
            self.report_failure("node_progress", exc)

    def model_load(self, seconds: float, models: list[ModelInfo]) -> None:
        """A model load (``load_models_gpu``) finished inside the running node."""
        if self.run is None:
            return
        try:
            node = self._active
            if node is None:
                self._run_notes.append({"name": "model_load", "seconds": round(seconds, 4),
                                        "models": [model_entry(m) for m in models]})
                return
            node.models.loaded(seconds, models, self.clock())
            node.models.observe({m["key"]: m for m in models if "key" in m}, complete=False)
        except Exception as exc:
            self.report_failure("model_load", exc)

    def model_unload(self, seconds: float, during_load: bool) -> None:
        """ComfyUI freed VRAM (``free_memory``: unloading models) inside the running node."""
        node = self._active
        if self.run is None or node is None:
            return
        try:
            node.models.unloaded(seconds, during_load)
        except Exception as exc:
            self.report_failure("model_unload", exc)

    def gpu_stamp(self, device=None):
        """A GPU timestamp for :meth:`lora_patch` (None without a GPU or outside a run)."""
        if self.run is None or self._active is None:
            return None
        try:
            return self.probe.stamp(device)
        except Exception as exc:
            self.report_failure("recording a CUDA event", exc)
            return None

    def lora_patch(self, seconds: float, during_load: bool, gpu_events=None) -> None:
        """One LoRA-patched weight computed (at load, or on the fly during the steps) in the running node;
        ``gpu_events``: two :meth:`gpu_stamp` around it, read once the GPU has passed them."""
        node = self._active
        if self.run is None or node is None:
            return
        try:
            if gpu_events is not None and None in gpu_events:
                gpu_events = None
            node.models.lora(seconds, during_load, gpu_events)
            if gpu_events is not None:
                self._await_gpu(node)
        except Exception as exc:
            self.report_failure("lora_patch", exc)

    def note(self, name: str, **info) -> None:
        """An instant event on the running node (OOM retry, a log line worth flagging)."""
        self._on_phase({"kind": "note", "name": name, **info})

    def _on_phase(self, event: dict) -> None:
        if self.run is None:
            return
        try:
            node = self._active
            if event.get("kind") == "phase":
                target = node.phases if node is not None else self._run_phases
            else:
                target = node.notes if node is not None else self._run_notes
            if len(target) < MAX_EVENTS:
                target.append(records.clean_event(event))
            elif len(target) == MAX_EVENTS:  # an engine firing per slice: keep the record bounded
                target.append({"kind": "note", "name": "telemetry.events_dropped",
                               "message": f"more than {MAX_EVENTS} events; the rest were not recorded"})
        except Exception as exc:
            self.report_failure("phase listener", exc)

    def node_finish(self, node_id: str, node_type: str | None = None, display_id: str | None = None,
                    parent_id: str | None = None) -> dict | None:
        if self.run is None:
            return None
        try:
            now = self.clock()
            node = self._node(node_id)
            if node_type and not node.type:
                node.type = node_type
            if display_id:
                node.display_id = display_id
            if parent_id:
                node.parent_id = parent_id
            if node.first_start is None:
                node.cached = True
                node.first_start = now
            self._close_segment(node, now)
            node.finish = now
            node.status = "cached" if node.cached else "ok"
            if not node.cached:
                node.rss_after = self._last_rss = self.probe.rss()
                self._snapshot_after(node)
            if self._active is node:
                self._active = None
            self._resolve_gpu(block=False)
            if self.on_event is None:
                return None
            record = records.live_record(node)
            self._emit("node", {"run_id": self.run["id"], "record": record})
            return record
        except Exception as exc:
            self.report_failure("node_finish", exc)
            return None

    def _loaded_models(self) -> dict | None:
        """The loaded-model snapshot, or None (no source, or it failed: the node is timed all the same)."""
        if self.models is None:
            return None
        try:
            return self.models(self.report_failure)
        except Exception as exc:
            self.report_failure("listing loaded models", exc)
            return None

    def _snapshot_after(self, node: NodeState) -> None:
        if node.models.before is not None:
            node.models.after = self._loaded_models()
            node.models.observe(node.models.after)

    def _await_gpu(self, node: NodeState) -> None:
        """List ``node`` among those with CUDA events to read (once)."""
        if not any(n is node for n in self._gpu_waiting):
            self._gpu_waiting.append(node)

    def _resolve_gpu(self, block: bool) -> None:
        """Read finished CUDA event pairs of this run's nodes (never waits: ``block`` is for after the prompt)."""
        if self._gpu_waiting:
            self._gpu_waiting = resolve_gpu_times(self.probe, self._gpu_waiting, block, self.report_failure)

    def end_run(self, status: str = "success", error: dict | None = None,
                cached: dict[str, str | None] | None = None) -> dict | None:
        """Close the run.

        ``error``: {"node_id", "message", "type"} from the executor, if any. ``cached``: node id ->
        type of nodes the executor reported as cached; those it never visited (their cached output
        fed a node that did run) are recorded as cached too.
        """
        run = self.run
        if run is None:
            return None
        try:
            now = self.clock()
            for node_id, node_type in (cached or {}).items():
                if str(node_id) not in self._nodes:
                    node = self._node(str(node_id))
                    node.type = node_type
                    node.cached = True
                    node.status = "cached"
                    node.first_start = node.finish = now
            for node in self._nodes.values():
                if node.finish is None and node.first_start is not None:
                    self._close_segment(node, now)
                    node.finish = now
                    node.rss_after = self.probe.rss()
                    self._snapshot_after(node)
                    node.status = "interrupted" if status == "interrupted" else "error"
                    if error and str(error.get("node_id")) in (node.id, node.display_id):
                        node.error = {k: v for k, v in error.items() if k != "node_id"}
            nodes = sorted(self._nodes.values(), key=lambda n: n.order)
            job = (run, nodes, self._gpu_waiting, self.probe, now - self._t0, status, error,
                   self._run_phases, self._run_notes, self._failures)
        except Exception as exc:
            self.report_failure("end_run", exc)
            job = None
        finally:
            _phases.remove_listener(self._on_phase)
            _phases.remove_error_sink(self.report_failure)
            self.run = None
            self._active = None
            self._gpu_waiting = []
            failures, self._failures = self._failures, RunFailures()
        if job is None:
            failures.log_once(run.get("id"))
            return run
        if self.save_in_background:
            # records, GPU read-back, saving and the run event happen off the prompt's thread
            threading.Thread(target=self.finalize, args=job, name="wan_accel-telemetry", daemon=True).start()
            return run
        return self.finalize(*job)

    def finalize(self, *job) -> dict:
        """Finish a closed run (``job``: the fields of :class:`~.finish.ClosedRun`): records, GPU read-back,
        saving and the run event. ``end_run`` calls it (on a thread of its own when ``save_in_background``);
        the overhead bench calls it to time that part apart."""
        closed = ClosedRun(*job)
        return finish_run(closed, self.store, self.on_event, self._run_reporter(closed.failures),
                          rendered=lambda run: setattr(self, "last_run", run))

    # ------------------------------------------------------------------ outside ComfyUI
    @contextmanager
    def session(self, name: str = "session", **meta) -> Iterator["Recorder"]:
        """Time engine phases outside ComfyUI: ``with rec.session("bench"): ...``.

        Phases land on one pseudo node ``name``; ``rec.last_run`` holds the record afterwards.
        """
        self.begin_run(None, source=name, **meta)
        self.node_start(name, name)
        status = "success"
        try:
            yield self
        except BaseException:
            status = "error"
            raise
        finally:
            if status == "success":
                self.node_finish(name, name)
            self.end_run(status=status)
