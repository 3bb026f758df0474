"""Runs on disk (JSON + CSV, one pair per run) and the logic behind the HTTP routes.

The routes live in ``nodes/telemetry_nodes.py``; they only translate aiohttp requests into
:func:`handle_list` / :func:`handle_get` calls, so every rule here (ids validated, no path
from the client, nothing written outside the folder) is tested without a server.
"""
from __future__ import annotations

import csv
import io
import json
import os
import secrets
from pathlib import Path
from typing import Callable

from .run_ids import valid_run_id

SUBDIR = ("wan_accel", "telemetry")
MAX_LIST = 500

CSV_COLUMNS = [
    "run_id", "node_id", "display_node_id", "type", "status", "cached", "seconds", "share", "span_s",
    "gpu_s", "vram_peak_allocated_mb", "vram_peak_reserved_mb", "vram_allocated_mb", "vram_reserved_mb",
    "ram_rss_mb", "ram_delta_mb", "model_load_s", "model_unload_s", "model_moves_s", "models_loaded",
    "models_unloaded", "partial_load", "offloaded_mb", "dynamic_load", "lora_patch_s", "lora_patch_steps_s",
    "lora_patch_gpu_s", "lora_patch_steps_gpu_s", "steps",
    "step_unit", "step_mean_s", "step_max_s", "oom_retries", "phases", "advice", "error",
]


def _cell(value: object) -> object:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # keep spreadsheets from evaluating text as a formula
    return value


def run_to_csv(run: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for rec in run.get("nodes", []):
        steps = rec.get("steps") or {}
        error = rec.get("error") or {}
        row = {key: rec.get(key) for key in CSV_COLUMNS}
        row.update(
            run_id=run.get("id"),
            models_loaded=";".join(m.get("name", "") for m in rec.get("models_loaded", [])),
            models_unloaded=";".join(m.get("name", "") for m in rec.get("models_unloaded", [])),
            steps=steps.get("count"),
            step_unit=steps.get("unit"),
            step_mean_s=steps.get("mean_s"),
            step_max_s=steps.get("max_s"),
            phases=";".join(f"{p.get('name')}={p.get('seconds')}" for p in rec.get("phases", [])),
            advice=" | ".join(a.get("text", "") for a in rec.get("advice", [])),
            error=(error.get("message") or "")[:500] if error else None,
        )
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def summarize(run: dict) -> dict:
    totals = run.get("totals") or {}
    nodes = run.get("nodes") or []
    top = max((n for n in nodes if not n.get("cached")), key=lambda n: n.get("seconds") or 0, default=None)
    return {
        "id": run.get("id"),
        "prompt_id": run.get("prompt_id"),
        "started_at": run.get("started_at"),
        "status": run.get("status"),
        "wall_s": run.get("wall_s"),
        "nodes": totals.get("nodes"),
        "cached": totals.get("cached"),
        "partial_loads": totals.get("partial_loads"),
        "oom_retries": totals.get("oom_retries"),
        "top_node": None if top is None else {"node_id": top.get("node_id"), "type": top.get("type"),
                                               "seconds": top.get("seconds")},
    }


class RunStore:
    """``<output>/wan_accel/telemetry/<run id>.json|.csv``; the output folder is asked for on each use."""

    def __init__(self, output_dir: Callable[[], str | os.PathLike] | str | os.PathLike, keep: int = 1000):
        self._output_dir = output_dir
        self.keep = keep

    @property
    def folder(self) -> Path:
        base = self._output_dir() if callable(self._output_dir) else self._output_dir
        return Path(base).resolve().joinpath(*SUBDIR)

    def _path(self, run_id: str, ext: str) -> Path:
        if not valid_run_id(run_id) or ext not in ("json", "csv"):
            raise ValueError(f"bad run id {run_id!r}")
        folder = self.folder
        path = (folder / f"{run_id}.{ext}").resolve()
        if path.parent != folder:  # cannot happen with a valid id; belt and braces
            raise ValueError("path escapes the telemetry folder")
        return path

    def _write(self, path: Path, text: str) -> None:
        # Created like ComfyUI's own outputs (open(): 0666 less the umask, 0644 usually), not mkstemp's 0600;
        # written under a temporary name and renamed, so a reader never sees half a file.
        tmp = path.with_name(f".tmp-{secrets.token_hex(8)}{path.suffix}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def save(self, run: dict) -> Path:
        json_path = self._path(run["id"], "json")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        self._write(json_path, json.dumps(run, indent=1, default=str))
        self._write(self._path(run["id"], "csv"), run_to_csv(run))
        self._prune()
        return json_path

    def _ids(self) -> list[str]:
        folder = self.folder
        if not folder.is_dir():
            return []
        ids = [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json") and valid_run_id(p.name[:-5])]
        return sorted(ids, reverse=True)

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        for run_id in self._ids()[self.keep:]:
            for ext in ("json", "csv"):
                self._path(run_id, ext).unlink(missing_ok=True)  # another server sharing the folder may prune too

    def list(self, limit: int = 50) -> tuple[list[dict], int]:
        """Summaries of the newest ``limit`` runs, and how many of those files could not be read."""
        out, unreadable = [], 0
        for run_id in self._ids()[: max(0, min(limit, MAX_LIST))]:
            try:
                out.append(summarize(json.loads(self._path(run_id, "json").read_text(encoding="utf-8"))))
            except (OSError, ValueError):  # half-copied or hand-edited file: the route says how many
                unreadable += 1
        return out, unreadable

    def read(self, run_id: str, ext: str = "json") -> str | None:
        path = self._path(run_id, ext)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None


# ---------------------------------------------------------------------------- route logic
def handle_list(store: RunStore, query: dict) -> tuple[int, dict]:
    raw = query.get("limit", "50")
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        return 400, {"error": "limit must be an integer"}
    if not 1 <= limit <= MAX_LIST:
        return 400, {"error": f"limit must be between 1 and {MAX_LIST}"}
    runs, unreadable = store.list(limit)
    payload: dict = {"runs": runs}
    if unreadable:
        payload["unreadable"] = unreadable
    return 200, payload


def handle_get(store: RunStore, run_id: str, fmt: str = "json") -> tuple[int, str, str]:
    """(status, content type, body) for ``GET /wan_accel/telemetry/runs/{id}?format=json|csv``."""
    if fmt not in ("json", "csv"):
        return 400, "application/json", json.dumps({"error": "format must be json or csv"})
    if not valid_run_id(run_id):
        return 400, "application/json", json.dumps({"error": "invalid run id"})
    body = store.read(run_id, fmt)
    if body is None:
        return 404, "application/json", json.dumps({"error": "no such run"})
    return 200, ("text/csv" if fmt == "csv" else "application/json"), body
