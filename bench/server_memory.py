"""Does a ComfyUI server stay flat? A real server (``main.py``) with this package as a custom node runs
the accelerated and the stock i2v workflow alternately ``--rounds-ab`` times, then a Wan 2.1 and a Wan 2.2
VAE encode+decode workflow alternately ``--rounds-vae`` times; after each round the server's RSS (psutil on
its pid) and, on a GPU, the device memory in use (nvidia-smi) are sampled, and its log is searched for
ComfyUI's "memory leak" warnings. Verdict: the largest drift from round 1, in %, per phase; flat within
``--tolerance`` (5 %) and no leak warning.

    python bench/server_memory.py --comfy /path/to/ComfyUI --out server.json                      # CPU, small
    python bench/server_memory.py --comfy /tmp/comfy-0.33.0 --out server.json --size 480x832 --frames 33

The server gets a temporary base directory (``--base-directory``): ``custom_nodes/comfyui-wan-accel`` links
to this repository, ``custom_nodes/wan_accel_bench_nodes.py`` to ``bench_nodes.py`` (the text encoder's
stand-in; the frames are checked and dropped, so the bench itself holds nothing), ``models/`` holds small
random-weight fixtures (``models.py``: experts ``--dim``/``--layers``, the real-size Wan 2.1 and 2.2 VAEs),
``--front-end-root`` an empty page (the bench needs no UI; the GPU machine has no front-end package).
Prompts go through ``/prompt``; completion is read from the websocket. Each round uses a new seed and start
image, so every node after the loaders runs again, as when a user re-queues. With ``--vram-gb`` the server
runs on an emulated card (``card.py``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import card as cards
import models
import two_pass
from _common import write_json

REPO = Path(__file__).resolve().parent.parent
LEAK = re.compile(r"memory leak", re.IGNORECASE)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy", required=True, help="ComfyUI checkout (0.3.64, 0.8.0 or 0.33)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds-ab", type=int, default=20, help="rounds of (accelerated, stock) i2v workflow")
    ap.add_argument("--rounds-vae", type=int, default=10, help="rounds of (Wan 2.1 VAE, Wan 2.2 VAE) workflow")
    ap.add_argument("--vae-stock", action="store_true",
                    help="VAE phase without WanAccelVAEPatch: core's own VAE, the control for that phase's RSS")
    ap.add_argument("--size", default="32x32", help="HxW of the video")
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--dim", type=int, default=256, help="expert width (real: 5120)")
    ap.add_argument("--layers", type=int, default=2, help="expert blocks (real: 40)")
    ap.add_argument("--tolerance", type=float, default=5.0, help="allowed drift from round 1, %%")
    ap.add_argument("--port", type=int, default=0, help="0: a free one")
    ap.add_argument("--work", help="base directory to use and keep (default: a temporary one, removed)")
    ap.add_argument("--timeout-s", type=float, default=600, help="per prompt")
    cards.add_arguments(ap)
    return ap.parse_args(argv)


def prepare_base(base: Path, opts) -> dict:
    """The server's base directory: our package and the bench nodes as custom nodes, fixtures, inputs."""
    import numpy as np
    from PIL import Image

    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    for name, target in (("comfyui-wan-accel", REPO), ("wan_accel_bench_nodes.py", Path(__file__).with_name("bench_nodes.py"))):
        link = base / "custom_nodes" / name
        if not link.exists():
            link.symlink_to(target)
    cmd = [sys.executable, str(Path(__file__).with_name("models.py")), "--comfy", opts.comfy, "--out",
           str(base / "models"), "--dim", str(opts.dim), "--layers", str(opts.layers), "--rank", "4",
           "--bf16-experts", "--vae22", "--device", "cpu"]
    manifest = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    (base / "input").mkdir(exist_ok=True)
    h, w = (int(v) for v in opts.size.split("x"))
    rng = np.random.default_rng(0)
    for i in range(max(opts.rounds_ab, opts.rounds_vae) + 1):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(base / "input" / two_pass.start_image_name(i))
    (base / "front_end").mkdir(exist_ok=True)
    (base / "front_end" / "index.html").write_text("<!doctype html><title>bench</title>")
    return manifest


def ab_prompt(variant: str, opts, i: int) -> dict:
    h, w = (int(v) for v in opts.size.split("x"))
    o = SimpleNamespace(tokens=16, width=w, height=h, frames=opts.frames, unet_dtype="default", backend="auto",
                        seed=1000 + i, split=1, save_video=False)
    prompt, _ = two_pass.bench_prompt(two_pass.WF / f"wan22_i2v_14B_4step_ab_{variant}.api.json", o, variant, i)
    prompt["9001"]["inputs"]["keep"] = False
    return prompt


def vae_prompt(vae_file: str, opts, i: int) -> dict:
    """Start image -> a video of --frames copies -> encode -> decode, through WanAccelVAEPatch (or, with
    --vae-stock, core's VAE alone)."""
    vae = ["3", 0] if getattr(opts, "vae_stock", False) else ["4", 0]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": two_pass.start_image_name(i)}},
              "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": opts.frames}},
              "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae_file}},
              "4": {"class_type": "WanAccelVAEPatch", "inputs": {"vae": ["3", 0]}},
              "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": vae}},
              "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": vae}},
              "7": {"class_type": "WanAccelBenchCapture", "inputs": {"images": ["6", 0], "key": "vae", "keep": False}}}
    if vae == ["3", 0]:
        del prompt["4"]
    return prompt


async def run_prompt(session, base_url: str, prompt: dict, timeout: float) -> tuple[float, str | None]:
    """Submit over HTTP, wait for the end on the websocket; (seconds, error or None)."""
    client_id = uuid.uuid4().hex
    async with session.ws_connect(f"{base_url.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
        t0 = time.perf_counter()
        async with session.post(f"{base_url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
            body = await r.json()
            if r.status != 200:
                return 0.0, f"HTTP {r.status}: {json.dumps(body)[:500]}"
        prompt_id = body["prompt_id"]
        while True:
            msg = await ws.receive(timeout=timeout)
            if msg.type.name != "TEXT":
                if msg.type.name in ("CLOSED", "ERROR"):
                    return time.perf_counter() - t0, "websocket closed"
                continue
            event = json.loads(msg.data)
            data = event.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            if event["type"] in ("execution_error", "execution_interrupted"):
                return time.perf_counter() - t0, f"{event['type']}: {str(data.get('exception_message'))[:300]}"
            if event["type"] == "execution_success" or (event["type"] == "executing" and data.get("node") is None):
                return time.perf_counter() - t0, None


def gpu_used_mib() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        return float(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def drift(values: list) -> float | None:
    """Largest distance from the first value, in % of it."""
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or not vals[0]:
        return None
    return round(max(abs(v - vals[0]) for v in vals[1:]) / vals[0] * 100, 2)


def verdict(rounds: list[dict], leaks: int, tolerance: float) -> dict:
    out = {"leak_warnings": leaks}
    for phase in sorted({r["phase"] for r in rounds}):
        rs = [r for r in rounds if r["phase"] == phase]
        out[phase] = {"rss_drift_pct": drift([r["rss_mb"] for r in rs]),
                      "vram_drift_pct": drift([r.get("gpu_used_mib") for r in rs]),
                      "rss_mb_first_last": [rs[0]["rss_mb"], rs[-1]["rss_mb"]], "rounds": len(rs),
                      "errors": sum(len(r["errors"]) for r in rs)}
    drifts = [d for p in out.values() if isinstance(p, dict) for d in (p["rss_drift_pct"], p["vram_drift_pct"])
              if d is not None]
    errors = sum(p["errors"] for p in out.values() if isinstance(p, dict))
    out["max_drift_pct"] = max(drifts, default=None)
    out["flat"] = bool(drifts) and max(drifts) <= tolerance and leaks == 0 and errors == 0
    return out


async def session_rounds(opts, base_url: str, server, log_path: Path, result: dict) -> None:
    import aiohttp
    import psutil

    proc = psutil.Process(server.pid)
    phases = [("ab", opts.rounds_ab, lambda i: [ab_prompt("accel", opts, i), ab_prompt("stock", opts, i)]),
              ("vae", opts.rounds_vae, lambda i: [vae_prompt("wan_2.1_vae.safetensors", opts, i),
                                                  vae_prompt(models.VAE22, opts, i)])]
    async with aiohttp.ClientSession() as session:
        for phase, n, prompts in phases:
            for i in range(n):
                seconds, errors = [], []
                for prompt in prompts(i):
                    s, err = await run_prompt(session, base_url, prompt, opts.timeout_s)
                    seconds.append(round(s, 2))
                    if err:
                        errors.append(err)
                log = log_path.read_text(errors="replace")
                result["rounds"].append({"phase": phase, "round": i + 1, "seconds": seconds, "errors": errors,
                                         "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                                         "gpu_used_mib": gpu_used_mib() if result["cuda"] else None,
                                         "leak_warnings_so_far": len(LEAK.findall(log))})
                print(json.dumps(result["rounds"][-1]), file=sys.stderr, flush=True)
                result["verdict"] = verdict(result["rounds"], result["rounds"][-1]["leak_warnings_so_far"], opts.tolerance)
                Path(opts.out).write_text(json.dumps(result, indent=1))


def stop(server) -> None:
    """Ctrl+C as a user stops ComfyUI; killed if it has not gone in 30 s."""
    import psutil

    server.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs([psutil.Process(server.pid)], timeout=30)
    for proc in alive:
        proc.kill()
    server.wait()


def wait_ready(base_url: str, server, timeout: float = 300) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}); see its log")
        try:
            urllib.request.urlopen(f"{base_url}/object_info/WanAccelVAEPatch", timeout=5).read()
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError("the server did not come up in time")


def main(argv=None) -> int:
    opts = parse_args(argv)
    import shutil
    import socket

    import torch

    cuda = torch.cuda.is_available()
    base = Path(opts.work or tempfile.mkdtemp(prefix="wan_accel_server_"))
    manifest = prepare_base(base, opts)
    port = opts.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    card = cards.Card(opts.vram_gb).start(cuda)
    args = ["--base-directory", str(base), "--listen", "127.0.0.1", "--port", str(port), "--front-end-root",
            str(base / "front_end")] + ([] if cuda else ["--cpu"])
    log_path = base / "server.log"
    result = {"config": {k: v for k, v in vars(opts).items() if k not in ("out",)}, "cuda": cuda,
              "device": torch.cuda.get_device_name() if cuda else "cpu", "card": card.describe(), "models": manifest,
              "rounds": []}
    with open(log_path, "w") as log:
        server = subprocess.Popen(cards.launch_command(card.total_bytes, str(Path(opts.comfy) / "main.py"), args),
                                  stdout=log, stderr=subprocess.STDOUT, cwd=opts.comfy)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, server)
        asyncio.run(session_rounds(opts, base_url, server, log_path, result))
    finally:
        stop(server)
        card.release()
        result["log_tail"] = log_path.read_text(errors="replace")[-3000:]
        write_json(opts.out, result)
        if not opts.work:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if result.get("verdict", {}).get("flat") is not None else 1


if __name__ == "__main__":
    raise SystemExit(main())
