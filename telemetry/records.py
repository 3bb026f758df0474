"""The run record's format: pure functions from the recorder's :class:`~.node_state.NodeState` to dicts.

Nothing here reads a clock, a probe or a file: the same inputs render the same record, so the
format is tested without running anything.
"""
from __future__ import annotations

from typing import Any

from . import model_records
from .advice import node_advice
from .model_records import mb
from .node_state import NodeState

SCHEMA = 1


def clean_event(event: dict) -> dict:
    """An engine event made JSON-safe: tuples and objects become strings, nested dicts one level deep."""
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


ATTENTION_FIELDS = ("model", "shape", "backend", "requested", "fallback", "reason", "node_id")


def attention(node: NodeState) -> list[dict]:
    """The attention kernels that ran in this node, from the ``attention_backend`` notes the attention
    override emits once per (model, shape, outcome): ``model``, ``shape``, ``backend`` (what ran),
    ``requested``, ``fallback``, ``reason``, ``node_id`` (the WanAccelAttention node that asked)."""
    out, seen = [], set()
    for n in node.notes:
        if n.get("name") != "attention_backend":
            continue
        entry = {k: n.get(k) for k in ATTENTION_FIELDS}
        reason = str(entry["reason"] or "")
        entry["fallback"] = bool(entry["fallback"]) or reason.startswith("fallback")
        if entry["node_id"] is not None:
            entry["node_id"] = str(entry["node_id"])
        key = tuple(entry.values())
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def vae_plans(node: NodeState) -> list[dict]:
    """The VAE engine's plans in this node (its ``vae.plan`` notes): stage, tiles, slices, steps, budget."""
    return [{k: v for k, v in n.items() if k not in ("kind", "name")} for n in node.notes if n.get("name") == "vae.plan"]


def oom_retries(node: NodeState) -> int:
    return sum(1 for n in node.notes if "oom" in str(n.get("name", "")).lower())


def step_unit(node: NodeState) -> str:
    """What one progress tick of this node is: a sampler step only for samplers."""
    kind = (node.type or "").lower()
    if "sampler" in kind:
        return "sampler step"
    if "vae" in kind or any(str(p.get("name", "")).startswith("vae.") for p in node.phases):
        return "VAE step"  # our engine ticks once per tile and frame slice, core tiled VAE once per tile
    return "step"


def steps(node: NodeState) -> dict | None:
    """Per-step seconds from progress updates: ``value`` counts steps done of ``max``."""
    if len(node.progress) < 1:
        return None
    anchor = node.first_start
    load_end = node.models.load_end
    if load_end is not None and load_end < node.progress[0][0]:
        anchor = max(anchor, load_end)
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
        "unit": step_unit(node),
        "total": total,
        "seconds": times[:1000],
        "mean_s": round(sum(times) / len(times), 6),
        "max_s": max(times),
    }


def live_record(node: NodeState) -> dict:
    """The few figures the overlay draws while the run goes on; the full record comes at the end."""
    rec = {"node_id": node.id, "display_node_id": node.display_id, "type": node.type,
           "status": node.status, "cached": node.cached, "seconds": round(node.active_s, 6)}
    mem = node.mem
    if mem:
        rec["vram_peak_allocated_mb"] = mb(mem.get("vram_peak_allocated"))
    partial, offloaded = model_records.offloaded_in_loads(node.models)
    if partial:
        rec["partial_load"] = True
        rec["offloaded_mb"] = offloaded
    if node.notes:
        rec["oom_retries"] = oom_retries(node)
        kernels = attention(node)
        if kernels:
            rec["attention"] = kernels
    if node.progress:
        done = steps(node)
        if done:
            rec["steps"] = {k: done[k] for k in ("count", "unit", "mean_s", "max_s")}
    return rec


def node_record(node: NodeState) -> dict:
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
        rec[key + "_mb"] = mb(value)
    rec["ram_rss_mb"] = mb(node.rss_after)
    if node.rss_after is not None and node.rss_before is not None:
        rec["ram_delta_mb"] = mb(node.rss_after - node.rss_before)
    model_records.render(node.models, rec)
    done = steps(node)
    if done:
        rec["steps"] = done
    if node.phases:
        rec["phases"] = node.phases
    if node.notes:
        rec["notes"] = node.notes
    rec["oom_retries"] = oom_retries(node)
    kernels = attention(node)
    if kernels:
        rec["attention"] = kernels
    plans = vae_plans(node)
    if plans:
        rec["vae_plan"] = plans
    if node.error:
        rec["error"] = node.error
    return rec


def totals(records: list[dict], wall: float) -> dict:
    """Run totals; also sets each record's ``share`` of the wall time."""
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
        "model_unload_s": round(sum(r.get("model_unload_s") or 0 for r in executed), 4),
        "model_moves_s": round(sum(r.get("model_moves_s") or 0 for r in executed), 4),
        "model_swaps": sum(1 for r in executed if r.get("model_swap")),
        "lora_patch_s": round(sum(r.get("lora_patch_s") or 0 for r in executed), 4),
        "lora_patch_steps_s": round(sum(r.get("lora_patch_steps_s") or 0 for r in executed), 4),
        "lora_patch_gpu_s": _sum_known(executed, "lora_patch_gpu_s"),
        "lora_patch_steps_gpu_s": _sum_known(executed, "lora_patch_steps_gpu_s"),
        "dynamic_loads": sum(1 for r in executed if r.get("dynamic_load")),
        "partial_loads": sum(1 for r in executed if r.get("partial_load")),
        "offloaded_mb": round(sum(r.get("offloaded_mb") or 0 for r in executed), 1),
        "oom_retries": sum(r.get("oom_retries") or 0 for r in executed),
        "attention_fallbacks": sum(1 for r in executed for a in r.get("attention") or () if a["fallback"]),
        "errors": sum(1 for r in records if r.get("status") in ("error", "interrupted")),
    }


def _sum_known(records: list[dict], key: str) -> float | None:
    """Sum of ``key`` over the records that have it; None when none has (not measured, unlike 0)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return round(sum(values), 4) if values else None


def run_record(run: dict, nodes: list[NodeState], wall: float, status: str, error: dict | None,
               run_phases: list, run_notes: list) -> dict:
    """Fill ``run`` (the header made at the run's start) with its nodes, totals and outcome."""
    records = [node_record(n) for n in nodes]
    run["wall_s"] = round(wall, 6)
    run["status"] = status
    if error:
        run["error"] = error
    run["nodes"] = records
    run["phases"] = run_phases
    run["notes"] = run_notes
    run["totals"] = totals(records, wall)
    model_records.name_models_apart(records)
    findings = []
    for rec in records:
        advice = node_advice(rec, wall, run.get("sdpa_flash_first"))
        if advice:
            rec["advice"] = advice
            findings += [{"node_id": rec["node_id"], "type": rec.get("type"), **a} for a in advice]
    run["advice"] = findings
    return run
