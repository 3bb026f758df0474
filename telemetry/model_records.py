"""The models part of a node record (pure): loads and unloads with their seconds, partial loads,
Dynamic VRAM residency, LoRA patching. Rendered from :class:`~.model_activity.ModelActivity`."""
from __future__ import annotations

from .model_activity import ModelActivity, ModelInfo
from .probes import MB


def mb(value: int | float | None) -> float | None:
    return None if value is None else round(value / MB, 1)


def model_entry(m: ModelInfo) -> dict:
    """A model as records show it. A dynamic model with little resident is not a partial load."""
    size = m.get("size") or 0
    loaded = m.get("loaded") or 0
    entry = {"name": m.get("name") or "model", "size_mb": mb(size), "loaded_mb": mb(loaded)}
    if m.get("id"):
        entry["id"] = m["id"]
    if m.get("dynamic"):
        entry["dynamic"] = True
    elif size and loaded < size - MB:
        entry["offloaded_mb"] = mb(size - loaded)
    return entry


def offloaded_in_loads(activity: ModelActivity) -> tuple[dict, float]:
    """Partial loads the load hook saw: {name: entry}, MB left offloaded."""
    partial = {}
    for load in activity.loads:
        for m in load["models"]:
            entry = model_entry(m)
            if entry.get("offloaded_mb"):
                partial[entry["name"]] = entry
    return partial, round(sum(m["offloaded_mb"] for m in partial.values()), 1)


def _diff(activity: ModelActivity) -> tuple[list, list, dict]:
    loaded, unloaded, partial = [], [], {}
    before, after = activity.before, activity.after
    if before is None or after is None:
        return loaded, unloaded, partial
    for key, m in after.items():
        old = before.get(key)
        if old is None or m.get("loaded", 0) > old.get("loaded", 0) + MB:
            entry = model_entry(m)
            if old is not None:
                entry["was_loaded_mb"] = mb(old.get("loaded", 0))
            loaded.append(entry)
            if entry.get("offloaded_mb"):
                partial.setdefault(entry["name"], entry)
    for key, m in before.items():
        new = after.get(key)
        out = {"name": m.get("name")}
        if m.get("id"):
            out["id"] = m["id"]
        if new is None:
            unloaded.append({**out, "freed_mb": mb(m.get("loaded", 0))})
        elif new.get("loaded", 0) < m.get("loaded", 0) - MB:
            unloaded.append({**out, "freed_mb": mb(m["loaded"] - new.get("loaded", 0)), "partial": True})
    return loaded, unloaded, partial


def resident(activity: ModelActivity) -> list[dict]:
    """How much of each model was in VRAM during the node: at its start, at its end, at most.

    ``used``: the node loaded it (so it ran, rather than waiting in VRAM for a later node)."""
    used = {m.get("id") for load in activity.loads for m in load["models"] if m.get("id")}
    out = []
    for key, m in activity.resident.items():
        if not m["peak"]:
            continue
        entry = {"name": m["name"] or "model", "size_mb": mb(m["size"]), "start_mb": mb(m["first"]),
                 "end_mb": mb(m["last"]), "peak_mb": mb(m["peak"])}
        if m.get("id"):
            entry["id"] = m["id"]
        if m["dynamic"]:
            entry["dynamic"] = True
        if m.get("id") in used:
            entry["used"] = True
        out.append(entry)
    return out


def render(activity: ModelActivity, rec: dict) -> None:
    """Add the node's model fields to its record."""
    loaded, unloaded, partial = _diff(activity)
    hooked, _ = offloaded_in_loads(activity)
    partial = {**partial, **hooked}  # the load hook's figures are exact; the snapshot diff catches the rest
    if activity.loads:
        rec["model_load_s"] = round(activity.load_s, 4)
    if activity.unload_s:
        rec["model_unload_s"] = round(activity.unload_s, 4)
    moves = activity.load_s + activity.unload_outside_s
    if moves:
        rec["model_moves_s"] = round(moves, 4)
    if loaded:
        rec["models_loaded"] = loaded
    if unloaded:
        rec["models_unloaded"] = unloaded
    if (loaded or activity.loads) and unloaded:
        rec["model_swap"] = True
    if partial:
        rec["partial_load"] = True
        rec["offloaded_mb"] = round(sum(m.get("offloaded_mb") or 0 for m in partial.values()), 1)
        rec["partial_models"] = list(partial.values())
    else:
        rec["partial_load"] = False
    if any(m.get("dynamic") for load in activity.loads for m in load["models"]) or any(e.get("dynamic") for e in loaded):
        rec["dynamic_load"] = True
    res = resident(activity)
    if res:
        rec["models_resident"] = res
    if activity.lora_calls:
        rec["lora_patch_s"] = round(activity.lora_s, 4)
        rec["lora_patch_steps_s"] = round(activity.lora_s - activity.lora_load_s, 4)
        rec["lora_patches"] = activity.lora_calls
    if activity.lora_gpu_calls:
        rec["lora_patch_gpu_s"] = round(activity.lora_gpu_s, 4)
        rec["lora_patch_steps_gpu_s"] = round(activity.lora_gpu_s - activity.lora_load_gpu_s, 4)


def name_models_apart(records: list[dict]) -> None:
    """Two loaded models of one class (Wan 2.2's two experts are both WAN22) get ``name@id``."""
    ids: dict[str, set] = {}
    entries = []
    for rec in records:
        for field in ("models_loaded", "models_unloaded", "partial_models", "models_resident"):
            for entry in rec.get(field) or ():
                entries.append(entry)
                if entry.get("id"):
                    ids.setdefault(entry["name"], set()).add(entry["id"])
    for entry in entries:
        if entry.get("id") and len(ids.get(entry["name"], ())) > 1:
            entry["name"] = f"{entry['name']}@{entry['id']}"
