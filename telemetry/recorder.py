"""The recorder: per-node and per-phase records of one run (a ComfyUI prompt or a benchmark).

It knows nothing of ComfyUI. The ComfyUI adapter (``nodes/telemetry_nodes.py``) feeds it node
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

Every public method swallows its own errors (logged once per run) so telemetry can never fail
the work it measures.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from . import phases as _phases
from .probes import MB, NullProbe, default_probe

log = logging.getLogger("wan_accel.telemetry")

ModelInfo = dict  # {"name": str, "size": int bytes, "loaded": int bytes}
ModelSnapshot = Callable[[], dict]  # key -> ModelInfo

SCHEMA = 1
MAX_EVENTS = 2000  # phases / notes kept per node (and per run outside nodes)


def new_run_id(now: float | None = None) -> str:
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
    return stamp.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


def _mb(value: int | float | None) -> float | None:
    return None if value is None else round(value / MB, 1)


class _Node:
    __slots__ = (
        "id", "display_id", "parent_id", "type", "title", "first_start", "seg_start", "active_s",
        "finish", "starts", "probe_token", "gpu_pending", "gpu_s", "mem", "rss_before", "rss_after",
        "models_before", "models_after", "progress", "load_s", "load_end", "model_loads", "phases", "notes",
        "cached", "status", "error", "order",
    )

    def __init__(self, node_id: str, order: int):
        self.id = node_id
        self.display_id = node_id
        self.parent_id = None
        self.type = None
        self.title = None
        self.first_start = None
        self.seg_start = None
        self.active_s = 0.0
        self.finish = None
        self.starts = 0
        self.probe_token = None
        self.gpu_pending: list = []
        self.gpu_s = 0.0
        self.mem: dict = {}
        self.rss_before = None
        self.rss_after = None
        self.models_before: dict | None = None
        self.models_after: dict | None = None
        self.progress: list = []
        self.load_s = 0.0
        self.load_end = None
        self.model_loads: list = []
        self.phases: list = []
        self.notes: list = []
        self.cached = False
        self.status = "pending"
        self.error = None
        self.order = order


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
        self._nodes: dict[str, _Node] = {}
        self._gpu_waiting: list[_Node] = []
        self._last_rss: int | None = None
        self._active: _Node | None = None
        self._t0 = 0.0
        self._complained = False
        self.last_run: dict | None = None
        self.failures = 0

    # ------------------------------------------------------------------ safety
    def _fail(self, where: str, exc: BaseException) -> None:
        self.failures += 1
        if not self._complained:
            self._complained = True
            log.warning("wan_accel telemetry: %s failed (%s: %s); the prompt goes on", where, type(exc).__name__, exc)

    def _emit(self, name: str, payload: dict) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, payload)
        except Exception as exc:
            self._fail("sending an event", exc)

    # ------------------------------------------------------------------ runs
    def begin_run(self, prompt_id: str | None = None, **meta) -> None:
        try:
            if self.run is not None:
                self.end_run(status="abandoned")
            self.probe = self._fixed_probe or default_probe()
            self._complained = False
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
            self._gpu_waiting: list[_Node] = []
            self._last_rss = None
            self._active = None
            self._run_phases: list = []
            self._run_notes: list = []
            self._t0 = self.clock()
            _phases.add_listener(self._on_phase)
            self._emit("run_start", {"run_id": self.run["id"], "prompt_id": prompt_id})
        except Exception as exc:
            self._fail("begin_run", exc)

    def _node(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node(node_id, len(self._nodes))
        return node

    def _close_segment(self, node: _Node, now: float) -> None:
        if node.seg_start is None:
            return
        node.active_s += now - node.seg_start
        node.seg_start = None
        if node.probe_token is not None:
            try:
                out = self.probe.end(node.probe_token)
                pending = out.pop("gpu_events", None)
                if pending is not None:
                    if not node.gpu_pending:
                        self._gpu_waiting.append(node)
                    node.gpu_pending.append(pending)
                for key in ("vram_peak_allocated", "vram_peak_reserved"):
                    if key in out:
                        node.mem[key] = max(node.mem.get(key, 0), out[key])
                for key in ("vram_allocated", "vram_reserved"):
                    if key in out:
                        node.mem[key] = out[key]
            except Exception as exc:
                self._fail("reading GPU counters", exc)
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
                if self.models is not None:
                    node.models_before = self.models()
            if node.seg_start is None:
                node.seg_start = now
                try:
                    node.probe_token = self.probe.begin()
                except Exception as exc:
                    self._fail("starting GPU counters", exc)
            self._active = node
        except Exception as exc:
            self._fail("node_start", exc)

    def node_progress(self, node_id: str, value: float, max_value: float) -> None:
        if self.run is None:
            return
        try:
            node = self._nodes.get(node_id)
            if node is None or node.first_start is None:
                return
            node.progress.append((self.clock(), float(value), float(max_value)))
        except Exception as exc:
            self._fail("node_progress", exc)

    def model_load(self, seconds: float, models: list[ModelInfo]) -> None:
        """A model load (``load_models_gpu``) finished inside the running node."""
        if self.run is None:
            return
        try:
            node = self._active
            target = node.model_loads if node is not None else self._run_notes
            entry = {"seconds": round(seconds, 4), "models": [_model_entry(m) for m in models]}
            target.append(entry if node is not None else {"name": "model_load", **entry})
            if node is not None:
                node.load_s += seconds
                node.load_end = self.clock()
        except Exception as exc:
            self._fail("model_load", exc)

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
                target.append(_clean(event))
            elif len(target) == MAX_EVENTS:  # an engine firing per slice: keep the record bounded
                target.append({"kind": "note", "name": "telemetry.events_dropped",
                               "message": f"more than {MAX_EVENTS} events; the rest were not recorded"})
        except Exception as exc:
            self._fail("phase listener", exc)

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
            record = self._live_record(node)
            self._emit("node", {"run_id": self.run["id"], "record": record})
            return record
        except Exception as exc:
            self._fail("node_finish", exc)
            return None

    def _snapshot_after(self, node: _Node) -> None:
        if self.models is not None and node.models_before is not None:
            try:
                node.models_after = self.models()
            except Exception as exc:
                self._fail("listing loaded models", exc)

    def _resolve_gpu(self, block: bool, waiting: list | None = None, probe: NullProbe | None = None) -> None:
        """Read finished CUDA event pairs; ``block`` waits for the rest (only ever after the prompt)."""
        if waiting is None:
            if not self._gpu_waiting:
                return
            waiting, self._gpu_waiting = self._gpu_waiting, []
            left_over = self._gpu_waiting
        else:
            left_over = []
        probe = probe or self.probe
        for node in waiting:
            left = []
            for pending in node.gpu_pending:
                try:
                    secs = probe.resolve(pending, block=block)
                except Exception as exc:
                    self._fail("reading CUDA events", exc)
                    secs = 0.0
                if secs is None:
                    left.append(pending)
                else:
                    node.gpu_s += secs
            node.gpu_pending = left
            if left:
                left_over.append(node)

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
                   self._run_phases, self._run_notes)
        except Exception as exc:
            self._fail("end_run", exc)
            job = None
        finally:
            _phases.remove_listener(self._on_phase)
            self.run = None
            self._active = None
            self._gpu_waiting = []
        if job is None:
            return run
        if self.save_in_background:
            # records, GPU read-back, saving and the run event happen off the prompt's thread
            threading.Thread(target=self._finalize, args=job, name="wan_accel-telemetry", daemon=True).start()
            return run
        return self._finalize(*job)

    def _finalize(self, run, nodes, gpu_waiting, probe, wall, status, error, run_phases, run_notes) -> dict:
        try:
            self._resolve_gpu(True, gpu_waiting, probe)  # after the prompt: costs the prompt nothing
            records = [self._node_record(n) for n in nodes]
            run["wall_s"] = round(wall, 6)
            run["status"] = status
            if error:
                run["error"] = error
            run["nodes"] = records
            run["phases"] = run_phases
            run["notes"] = run_notes
            run["totals"] = _totals(records, wall)
            run["telemetry_failures"] = self.failures
        except Exception as exc:
            self._fail("finishing the run record", exc)
        self.last_run = run
        if self.store is not None:
            self._save(run)
        self._emit("run", run)
        return run

    def _save(self, run: dict) -> None:
        try:
            self.store.save(run)
        except Exception as exc:
            self._fail("saving the run", exc)

    # ------------------------------------------------------------------ records
    def _live_record(self, node: _Node) -> dict:
        """The few figures the overlay draws while the run goes on; the full record comes at the end."""
        rec = {"node_id": node.id, "display_node_id": node.display_id, "type": node.type,
               "status": node.status, "cached": node.cached, "seconds": round(node.active_s, 6)}
        mem = node.mem
        if mem:
            rec["vram_peak_allocated_mb"] = _mb(mem.get("vram_peak_allocated"))
        if node.model_loads:
            off = [m for e in node.model_loads for m in e["models"] if m.get("offloaded_mb")]
            if off:
                rec["partial_load"] = True
                rec["offloaded_mb"] = round(sum(m["offloaded_mb"] for m in off), 1)
        if node.notes:
            rec["oom_retries"] = sum(1 for n in node.notes if "oom" in str(n.get("name", "")).lower())
        if node.progress:
            steps = _steps(node)
            if steps:
                rec["steps"] = {k: steps[k] for k in ("count", "mean_s", "max_s")}
        return rec

    def _node_record(self, node: _Node) -> dict:
        rec: dict[str, Any] = {
            "node_id": node.id,
            "display_node_id": node.display_id,
            "type": node.type,
            "status": node.status,
            "cached": node.cached,
        }
        if node.parent_id:
            rec["parent_node_id"] = node.parent_id
        if node.title:
            rec["title"] = node.title
        if node.cached:
            rec["seconds"] = 0.0
            return rec
        rec["seconds"] = round(node.active_s, 6)
        end = node.finish if node.finish is not None else node.first_start
        rec["span_s"] = round((end or 0) - (node.first_start or 0), 6)
        rec["starts"] = node.starts
        rec["gpu_s"] = round(node.gpu_s, 6) if (node.gpu_s or node.mem) else None
        if node.gpu_pending:
            rec["gpu_s_pending"] = True
        for key, value in node.mem.items():
            rec[key + "_mb"] = _mb(value)
        rec["ram_rss_mb"] = _mb(node.rss_after)
        if node.rss_after is not None and node.rss_before is not None:
            rec["ram_delta_mb"] = _mb(node.rss_after - node.rss_before)
        self._models_diff(node, rec)
        steps = _steps(node)
        if steps:
            rec["steps"] = steps
        if node.phases:
            rec["phases"] = node.phases
        if node.notes:
            rec["notes"] = node.notes
        rec["oom_retries"] = sum(1 for n in node.notes if "oom" in str(n.get("name", "")).lower())
        if node.error:
            rec["error"] = node.error
        return rec

    def _models_diff(self, node: _Node, rec: dict) -> None:
        loaded, unloaded, partial = [], [], {}
        if node.model_loads:
            rec["model_load_s"] = round(node.load_s, 4)
            for entry in node.model_loads:
                for m in entry["models"]:
                    if m.get("offloaded_mb"):
                        partial[m["name"]] = m
        if node.models_before is not None and node.models_after is not None:
            after = node.models_after
            before = node.models_before
            for key, m in after.items():
                old = before.get(key)
                if old is None or m.get("loaded", 0) > old.get("loaded", 0) + MB:
                    entry = _model_entry(m)
                    if old is not None:
                        entry["was_loaded_mb"] = _mb(old.get("loaded", 0))
                    loaded.append(entry)
                    if entry.get("offloaded_mb"):
                        partial.setdefault(entry["name"], entry)
            for key, m in before.items():
                new = after.get(key)
                if new is None:
                    unloaded.append({"name": m.get("name"), "freed_mb": _mb(m.get("loaded", 0))})
                elif new.get("loaded", 0) < m.get("loaded", 0) - MB:
                    unloaded.append({"name": m.get("name"), "freed_mb": _mb(m["loaded"] - new.get("loaded", 0)),
                                     "partial": True})
        if loaded:
            rec["models_loaded"] = loaded
        if unloaded:
            rec["models_unloaded"] = unloaded
        if partial:
            rec["partial_load"] = True
            rec["offloaded_mb"] = round(sum(m.get("offloaded_mb") or 0 for m in partial.values()), 1)
            rec["partial_models"] = list(partial.values())
        else:
            rec["partial_load"] = False

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


def _clean(event: dict) -> dict:
    out = {}
    for key, value in event.items():
        if key == "seconds" and isinstance(value, float):
            value = round(value, 6)
        elif isinstance(value, dict):
            value = {str(k): v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in value.items()}
        elif not isinstance(value, (str, int, float, bool, type(None))):
            value = str(value) if not isinstance(value, (list, tuple)) else [str(v) for v in value]
        out[key] = value
    return out


def _model_entry(m: ModelInfo) -> dict:
    size = m.get("size") or 0
    loaded = m.get("loaded") or 0
    entry = {"name": m.get("name") or "model", "size_mb": _mb(size), "loaded_mb": _mb(loaded)}
    if size and loaded < size - MB:
        entry["offloaded_mb"] = _mb(size - loaded)
    return entry


def _steps(node: _Node) -> dict | None:
    """Per-step seconds from progress updates: ``value`` counts steps done of ``max``."""
    if len(node.progress) < 1:
        return None
    anchor = node.first_start
    if node.load_end is not None and node.load_end < node.progress[0][0]:
        anchor = max(anchor, node.load_end)
    prev_t, prev_v = anchor, 0.0
    times: list[float] = []
    total = node.progress[-1][2]
    for t, value, max_value in node.progress:
        if value < prev_v:  # a new progress bar inside the same node restarts its count
            prev_v = 0.0
        done = value - prev_v
        if done <= 0:
            prev_t = t
            continue
        per = (t - prev_t) / done
        times.extend([round(per, 6)] * int(round(done)) if done >= 1 else [round(t - prev_t, 6)])
        prev_t, prev_v = t, value
    if not times:
        return None
    return {
        "count": len(times),
        "total": total,
        "seconds": times[:1000],
        "mean_s": round(sum(times) / len(times), 6),
        "max_s": max(times),
    }


def _totals(records: list[dict], wall: float) -> dict:
    executed = [r for r in records if not r.get("cached")]
    node_s = sum(r.get("seconds") or 0 for r in executed)
    gpu = [r["gpu_s"] for r in executed if r.get("gpu_s") is not None]
    peaks = [r.get("vram_peak_allocated_mb") for r in executed if r.get("vram_peak_allocated_mb") is not None]
    for r in records:
        r["share"] = round((r.get("seconds") or 0) / wall, 4) if wall > 0 else 0.0
    return {
        "nodes": len(records),
        "executed": len(executed),
        "cached": len(records) - len(executed),
        "node_s": round(node_s, 6),
        "overhead_s": round(max(wall - node_s, 0.0), 6),
        "gpu_s": round(sum(gpu), 6) if gpu else None,
        "vram_peak_allocated_mb": max(peaks) if peaks else None,
        "model_load_s": round(sum(r.get("model_load_s") or 0 for r in executed), 4),
        "partial_loads": sum(1 for r in executed if r.get("partial_load")),
        "offloaded_mb": round(sum(r.get("offloaded_mb") or 0 for r in executed), 1),
        "oom_retries": sum(r.get("oom_retries") or 0 for r in executed),
        "errors": sum(1 for r in records if r.get("status") in ("error", "interrupted")),
    }
