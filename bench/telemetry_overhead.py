"""Telemetry overhead: the same workflows through ComfyUI's PromptExecutor, hooks off and on.

    python bench/telemetry_overhead.py --comfy /path/to/ComfyUI [--repeats 15] [--json out.json]

Run it with the Python of the ComfyUI install. Two model-free workflows of core nodes:

* ``cheap``: EmptyImage 8x8 -> N x ImageInvert -> PreviewImage (per-node overhead dominates);
* ``heavy``: a few large ImageScale / ImageInvert / ImageScaleBy nodes (typical node cost dominates).

``direct_cost_us_per_node`` is telemetry's own cost per node on the prompt's thread (start +
finish hooks on a real ProgressRegistry, closing the run), ``direct_total_us_per_node`` adds building
the run record (done on a background thread in ComfyUI, saving to disk not included), measured in
thread CPU time without the workflow around it, and
``direct_overhead`` that cost times the workflow's nodes over its fastest wall time: on a busy machine the
end-to-end ratio is noise-bound, the direct figure is not.

Each repeat runs both variants back to back (order alternating) on a fresh executor cache, so every
node really executes. Prints one JSON object: per workflow the median and min wall seconds off/on,
the overhead ratio (median_on / median_off - 1), the same ratio of process CPU seconds
(``overhead_cpu_median``: less sensitive to other processes on a shared machine) and the per-node
cost in microseconds.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _common import load_wan_accel, make_executor

REPO = Path(__file__).resolve().parent.parent


def load_package():
    load_wan_accel()
    return importlib.import_module("wan_accel.nodes.telemetry_nodes")


def cheap_workflow(n: int) -> tuple[dict, list[str]]:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    prev = "1"
    for i in range(n):
        nid = str(i + 2)
        prompt[nid] = {"class_type": "ImageInvert", "inputs": {"image": [prev, 0]}}
        prev = nid
    out = str(n + 2)
    prompt[out] = {"class_type": "PreviewImage", "inputs": {"images": [prev, 0]}}
    return prompt, [out]


def heavy_workflow(size: int) -> tuple[dict, list[str]]:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 2, "color": 1234567}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bicubic",
                                                     "width": size * 2, "height": size * 2, "crop": "disabled"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "ImageScaleBy", "inputs": {"image": ["3", 0], "upscale_method": "lanczos", "scale_by": 0.75}},
        "5": {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "upscale_method": "bilinear",
                                                     "width": 256, "height": 256, "crop": "disabled"}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    return prompt, ["6"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cheap-nodes", type=int, default=200)
    ap.add_argument("--heavy-size", type=int, default=1024)
    ap.add_argument("--json", help="also write the result here")
    opts = ap.parse_args(argv)

    comfy = str(Path(opts.comfy).resolve())
    sys.path.insert(0, comfy)
    from comfy.cli_args import args

    args.cpu = True
    logging.basicConfig(level=logging.WARNING)
    import execution
    import nodes as comfy_nodes  # noqa: F401  (ComfyUI's core nodes: all this benchmark uses)

    telemetry_nodes = load_package()
    from wan_accel.telemetry.recorder import Recorder
    from wan_accel.telemetry.store import RunStore

    tmp = tempfile.mkdtemp(prefix="wan_accel_bench_")
    recorder = Recorder(models=telemetry_nodes.loaded_models_snapshot, store=RunStore(tmp), save_in_background=True,
                        on_event=lambda name, payload: None)  # as in ComfyUI: live records built
    executor = make_executor(execution)

    def run_once(prompt, outputs) -> tuple[float, float]:
        executor.reset()
        start, cpu = time.perf_counter(), time.process_time()
        executor.execute(prompt, uuid.uuid4().hex, {}, outputs)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        if not executor.success:
            raise SystemExit(f"workflow failed: {executor.status_messages[-1]}")
        return wall, cpu

    result = {"comfyui": comfy, "repeats": opts.repeats, "workflows": {}}
    try:
        import comfyui_version

        result["comfyui_version"] = comfyui_version.__version__
    except Exception:
        pass
    for name, (prompt, outputs) in {
        "cheap": cheap_workflow(opts.cheap_nodes),
        "heavy": heavy_workflow(opts.heavy_size),
    }.items():
        times = {"off": [], "on": []}
        cpu = {"off": [], "on": []}
        for variant in ("off", "on"):  # warm-up both
            if variant == "on":
                telemetry_nodes.install_hooks(recorder)
            run_once(prompt, outputs)
            telemetry_nodes.uninstall_hooks()
        for i in range(opts.repeats):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            for variant in order:
                if variant == "on":
                    ok, reason = telemetry_nodes.install_hooks(recorder)
                    assert ok, reason
                wall, used = run_once(prompt, outputs)
                times[variant].append(wall)
                cpu[variant].append(used)
                telemetry_nodes.uninstall_hooks()
        med_off, med_on = statistics.median(times["off"]), statistics.median(times["on"])
        min_off, min_on = min(times["off"]), min(times["on"])
        n_nodes = len(prompt)
        result["workflows"][name] = {
            "nodes": n_nodes,
            "median_off_s": round(med_off, 6),
            "median_on_s": round(med_on, 6),
            "min_off_s": round(min_off, 6),
            "min_on_s": round(min_on, 6),
            "overhead_median": round(med_on / med_off - 1, 5),
            "cpu_median_off_s": round(statistics.median(cpu["off"]), 6),
            "cpu_median_on_s": round(statistics.median(cpu["on"]), 6),
            "overhead_cpu_median": round(statistics.median(cpu["on"]) / statistics.median(cpu["off"]) - 1, 5),
            "overhead_min": round(min_on / min_off - 1, 5),
            "per_node_us": round((min_on - min_off) / n_nodes * 1e6, 1),
            "last_run_nodes_recorded": len((recorder.last_run or {}).get("nodes", [])),
            "telemetry_failures": recorder.failures,
        }
    # Direct cost, immune to the machine's noise: drive a real ProgressRegistry with our handler.
    import comfy_execution.progress as progress
    from comfy_execution.graph import DynamicPrompt

    prompt, _ = cheap_workflow(1000)
    clock = time.thread_time  # CPU time of this thread: other processes on the machine do not count

    def bare_loop() -> float:
        registry = progress.ProgressRegistry("bare", DynamicPrompt(prompt))
        start = clock()
        for nid in prompt:
            registry.start_progress(nid)
            registry.finish_progress(nid)
        return (clock() - start) / len(prompt)

    baseline = min(bare_loop() for _ in range(20))  # the registry's own loop, no telemetry
    telemetry_nodes.install_hooks(recorder)
    per_node, end_run, finalize = [], [], []
    for i in range(20):
        recorder.begin_run("direct")
        registry = progress.ProgressRegistry("direct", DynamicPrompt(prompt))
        start = clock()
        for nid in prompt:
            registry.start_progress(nid)
            registry.finish_progress(nid)
        per_node.append((clock() - start) / len(prompt))
        # as in ComfyUI: the prompt's thread only closes the run, records are built on another thread;
        # measured here on this thread, in turn, to get both parts
        recorder.save_in_background = False
        finalize_fn, job = recorder.finalize, []
        recorder.finalize = lambda *args: job.append(args)
        start = clock()
        recorder.end_run()
        end_run.append((clock() - start) / len(prompt))
        recorder.finalize = finalize_fn
        store, recorder.store = recorder.store, None  # writing the files is the saving thread's work
        start = clock()
        recorder.finalize(*job[0])
        finalize.append((clock() - start) / len(prompt))
        recorder.store = store
        recorder.save_in_background = True
    telemetry_nodes.uninstall_hooks()
    direct = max(min(per_node) - baseline, 0.0) + min(end_run)
    result["direct_cost_us_per_node"] = round(direct * 1e6, 1)
    result["direct_total_us_per_node"] = round((direct + min(finalize)) * 1e6, 1)
    for wf in result["workflows"].values():
        wf["direct_overhead"] = round(direct * wf["nodes"] / wf["min_off_s"], 5)
    text = json.dumps(result, indent=2)
    print(text)
    if opts.json:
        Path(opts.json).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
