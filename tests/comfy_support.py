"""Helpers for tests that run against a real ComfyUI (COMFYUI_PATH)."""
from __future__ import annotations

import asyncio
import contextlib
import math
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def load_our_nodes() -> dict:
    """Load this repo the way ComfyUI loads custom_nodes/<folder>, return ComfyUI's node mappings."""
    import nodes as comfy_nodes

    if "WanAccelVAEDecode" not in comfy_nodes.NODE_CLASS_MAPPINGS:
        ok = asyncio.run(comfy_nodes.load_custom_node(str(REPO)))
        assert ok, "ComfyUI refused to load the package (see its log above)"
    return comfy_nodes.NODE_CLASS_MAPPINGS


def random_wan_vae_sd(version: str = "2.1", dim: int = 96, seed: int = 0) -> dict:
    """A state dict with the real key names and shapes of wan_2.1_vae / wan2.2_vae.safetensors
    (ComfyUI 0.3.64 builds the 2.1 VAE at dim 96 whatever the file holds), random values."""
    if version == "2.1":
        import comfy.ldm.wan.vae as wv

        model = wv.WanVAE(dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    else:
        import comfy.ldm.wan.vae2_2 as wv

        # comfy.sd.VAE builds the Wan 2.2 VAE at its real widths (160 / 256) whatever the file says
        model = wv.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                          temperal_downsample=[False, True, True])
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, p in model.state_dict().items():
        if p.dim() >= 2:
            sd[name] = torch.randn(p.shape, generator=g) * (1.5 / p[0].numel()) ** 0.5
        else:
            sd[name] = torch.rand(p.shape, generator=g) + 0.5
    return sd


def comfy_vae(sd: dict):
    import comfy.sd

    return comfy.sd.VAE(sd=sd, dtype=torch.float32)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def comfy_server(comfyui: Path, work: Path, extra_args=(), port: int | None = None, timeout: float = 180):
    """A real ``main.py --cpu`` server with its folders under ``work``, up until the block ends.

    Yields {"base", "port", "work", "proc"}; fails the test with the server log's tail if it
    exits or does not answer ``/wan_accel/telemetry`` within ``timeout`` seconds.
    """
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import pytest

    port = port or free_port()
    for sub in ("output", "temp", "user"):
        (work / sub).mkdir(exist_ok=True)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--output-directory", str(work / "output"), "--temp-directory", str(work / "temp"),
           "--user-directory", str(work / "user"), *extra_args]
    log = open(work / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail("ComfyUI exited:\n" + (work / "server.log").read_text()[-3000:])
            try:
                urllib.request.urlopen(base + "/wan_accel/telemetry", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    pytest.fail("ComfyUI did not come up:\n" + (work / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield {"base": base, "port": port, "work": work, "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
