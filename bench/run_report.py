"""What a bench reports of one ComfyUI prompt run, read from our telemetry's run record, and the summary
over runs (steady state = the warm re-queues, ratios stock / ours). Shared by the in-process benches."""
from __future__ import annotations

import math
import statistics

SAMPLERS = ("KSamplerAdvanced", "KSampler", "SamplerCustomAdvanced")


def compare_frames(a, b) -> dict:
    """Max / mean abs difference and PSNR (dB) of two frame tensors in [0, 1]."""
    d = (a - b).abs()
    mse = float((a - b).pow(2).mean())
    return {"shape": list(a.shape), "max_abs": round(float(d.max()), 6), "mean_abs": round(float(d.mean()), 7),
            "psnr_db": math.inf if mse == 0 else round(10 * math.log10(1 / mse), 2)}


def _models(entries) -> list:
    return [{k: m.get(k) for k in ("name", "size_mb", "loaded_mb", "offloaded_mb", "freed_mb", "partial")
             if m.get(k) is not None} for m in entries or []]


def describe_node(r: dict) -> dict:
    entry = {k: r.get(k) for k in ("node_id", "type", "status", "seconds", "gpu_s", "vram_peak_allocated_mb",
                                   "model_load_s", "partial_load", "offloaded_mb", "oom_retries", "error")
             if r.get(k) is not None}
    if r.get("steps"):
        entry["steps"] = {k: r["steps"].get(k) for k in ("count", "mean_s", "max_s")}
    notes = [n for n in r.get("notes", []) if n.get("name") == "attention_backend"]
    if notes:
        entry["attention"] = sorted({f"{n.get('backend')} ({str(n.get('reason'))[:60]})" for n in notes})
    phases: dict = {}
    for p in r.get("phases", []):
        phases[p["name"]] = round(phases.get(p["name"], 0.0) + p.get("seconds", 0.0), 4)
    if phases:
        entry["phases_s"] = phases
    if r.get("vae_plan"):
        entry["vae_plan"] = r["vae_plan"]
    for key in ("models_loaded", "models_unloaded"):
        if r.get(key):
            entry[key] = _models(r[key])
    return entry


def describe_run(key: str, repeat: int, wall: float, prompt: dict, rec: dict, layers: int, cuda: bool) -> dict:
    """One run: wall, per-node telemetry, sampler seconds (and scaled to 40 blocks), model loads, the
    experts' partial loads, the largest per-node VRAM peak."""
    per_node, experts = [], []
    sampler_s = 0.0
    for r in rec.get("nodes", []):
        entry = describe_node(r)
        if prompt.get(r["node_id"], {}).get("class_type") in SAMPLERS:
            sampler_s += r.get("seconds", 0.0)
            experts.append({"node_id": r["node_id"], "partial_load": r.get("partial_load"),
                            "offloaded_mb": r.get("offloaded_mb"), "loaded": _models(r.get("models_loaded"))})
        per_node.append(entry)
    nodes_ = rec.get("nodes", [])
    return {"variant": key, "repeat": repeat, "wall_s": round(wall, 3), "telemetry_wall_s": rec.get("wall_s"),
            "sampler_s": round(sampler_s, 3),
            "sampler_s_per_40_blocks": round(sampler_s * 40 / layers, 3),
            # the blocks are all of a step's work: the rest of the run (VAE, loads) is not scaled
            "e2e_s_at_40_blocks": round(wall - sampler_s + sampler_s * 40 / layers, 3),
            "model_loads": sum(len(r.get("models_loaded") or []) for r in nodes_),
            "experts": experts,
            # telemetry resets the allocator's peak at every node start: the run's peak is the nodes' max
            "peak_vram_allocated_mb": max((r.get("vram_peak_allocated_mb") or 0 for r in nodes_), default=None)
            if cuda else None,
            "peak_vram_node": max(nodes_, key=lambda r: r.get("vram_peak_allocated_mb") or 0, default={}).get("type")
            if cuda else None,
            "totals": rec.get("totals"), "nodes": per_node}


def summarize(runs: list[dict], repeats: int, baseline: str = "stock") -> dict:
    """Per variant: the median of the steady-state repeats (all but repeat 0, the first run, when there
    are more), each node's median seconds; the first run's wall; ratios baseline / variant."""
    ok = [r for r in runs if not r.get("error")]
    steady = [r for r in ok if r["repeat"] >= (1 if repeats > 1 else 0)]
    out: dict = {"repeats_used": sorted({r["repeat"] for r in steady})}
    for key in sorted({r["variant"] for r in steady}):
        rs = [r for r in steady if r["variant"] == key]
        entry = {k: round(statistics.median(r[k] for r in rs), 3)
                 for k in ("wall_s", "sampler_s", "sampler_s_per_40_blocks", "e2e_s_at_40_blocks")}
        entry["peak_vram_allocated_mb"] = max((r.get("peak_vram_allocated_mb") or 0 for r in rs), default=None)
        first = [r for r in ok if r["variant"] == key and r["repeat"] == 0]
        if first and repeats > 1:
            entry["first_run_wall_s"] = first[0]["wall_s"]
        per_type: dict = {}
        for r in rs:
            for n in r["nodes"]:
                per_type.setdefault(f"{n['node_id']} {n['type']}", []).append(n.get("seconds", 0.0))
        entry["node_s"] = {k: round(statistics.median(v), 3) for k, v in per_type.items()}
        out[key] = entry
    if baseline in out:
        base = out[baseline]
        out["speedup"] = {}
        for key in (k for k in out if k not in (baseline, "repeats_used", "speedup")):
            ratios = {k: round(base[k] / out[key][k], 3)
                      for k in ("wall_s", "sampler_s", "e2e_s_at_40_blocks") if out[key][k]}
            if base.get("first_run_wall_s") and out[key].get("first_run_wall_s"):
                ratios["first_run_wall_s"] = round(base["first_run_wall_s"] / out[key]["first_run_wall_s"], 3)
            out["speedup"][key] = ratios
    failed = sorted({r["variant"] for r in runs if r.get("error")})
    if failed:
        out["failed"] = failed
    return out
