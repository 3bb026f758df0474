"""Helpers for tests that run against a real ComfyUI (COMFYUI_PATH)."""
from __future__ import annotations

import asyncio
import contextlib
import math
import subprocess
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


PACKAGE_FOLDER = "comfyui-wan-accel"  # the folder name users clone into custom_nodes/


def comfy_base_directory(work: Path) -> Path:
    """Make ``work`` a ComfyUI base directory (``--base-directory``: models, custom_nodes, input, output,
    temp, user) whose custom_nodes/ holds a link to this repo, as a user's install has it; returns ``work``."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    link = work / "custom_nodes" / PACKAGE_FOLDER
    if not link.is_symlink():
        link.symlink_to(REPO, target_is_directory=True)
    return work


@contextlib.contextmanager
def comfy_server(comfyui: Path, work: Path | None = None, extra_args=(), port: int | None = None,
                 timeout: float = 180):
    """A real ``main.py --cpu`` server whose base directory is ``work``, up until the block ends.

    ``work`` becomes a base directory (``comfy_base_directory``: this package linked into its custom_nodes/;
    models/ and custom_nodes/ may be filled before); ComfyUI's own models/, custom_nodes/ and output/ are
    not used, so nothing is written into the checkout. Without ``work`` a temporary folder is made and
    removed afterwards. Yields {"base", "port", "work", "proc"}; fails the test with the server log's tail
    if the server exits, does not answer within ``timeout`` seconds, or runs without this package.
    """
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import time
    import urllib.error
    import urllib.request

    import pytest

    own = work is None
    work = comfy_base_directory(Path(tempfile.mkdtemp(prefix="wan_accel_server_")) if own else work)
    port = port or free_port()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(work), *extra_args]
    if "--database-url" in (comfyui / "comfy" / "cli_args.py").read_text(encoding="utf-8"):
        # its default is a file inside the checkout, whatever --base-directory says
        cmd += ["--database-url", f"sqlite:///{work / 'user' / 'comfyui.db'}"]
    log_path = work / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def fail(why: str):
        pytest.fail(f"{why}:\n" + log_path.read_text()[-3000:])

    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                fail("ComfyUI exited")
            try:
                with urllib.request.urlopen(base + "/object_info/WanAccelVAEDecode", timeout=5) as res:
                    ours = res.read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    fail("ComfyUI did not come up")
                time.sleep(0.5)
        if b"WanAccelVAEDecode" not in ours:
            fail(f"ComfyUI started without this package (custom_nodes/{PACKAGE_FOLDER})")
        yield {"base": base, "port": port, "work": work, "proc": proc}
    finally:
        stop_process(proc, timeout=20)
        log.close()
        if own:
            shutil.rmtree(work, ignore_errors=True)


class CDP:
    """The few Chrome DevTools Protocol calls the browser tests need, over websocket-client."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        import json

        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expr: str, await_promise: bool = True):
        res = self.call("Runtime.evaluate", expression=expr, awaitPromise=await_promise, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def wait(self, expr: str, timeout: float = 90, what: str = ""):
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.eval(expr)
                if value:
                    return value
            except RuntimeError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what or expr}")


@contextlib.contextmanager
def headless_chromium(skip_reason: str):
    """Debian's chromium, headless with a fresh profile, driven over CDP; skips if it is not installed."""
    import json
    import os
    import shutil
    import subprocess
    import tempfile
    import time
    import urllib.request

    import pytest

    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip(skip_reason + ": install Debian's chromium (or set CHROMIUM)")
    port = free_port()
    # chromium leaves org.chromium.Chromium.* folders in its temporary folder: give it one that goes with the profile
    profile = Path(tempfile.mkdtemp(prefix="wan_accel_chromium_"))
    (profile / "tmp").mkdir()
    proc = subprocess.Popen([
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile / 'user'}",
        "--disable-crash-reporter", "--disable-breakpad",
        f"--remote-debugging-port={port}", "--window-size=1600,1000", "about:blank",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TMPDIR": str(profile / "tmp")},
        # its own process group, so that stopping it also stops the renderers and helpers that write into the profile
        start_new_session=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as res:
                    page = next(t for t in json.loads(res.read()) if t.get("type") == "page")
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("chromium did not start")
                time.sleep(0.3)
        cdp = CDP(page["webSocketDebuggerUrl"])
        try:
            yield cdp
        finally:
            cdp.ws.close()
    finally:
        stop_process_group(proc, timeout=10)
        remove_tree(profile)


def ws_messages(ws, deadline: float):
    """ComfyUI's JSON websocket messages until ``deadline`` (time.time()); binary previews skipped."""
    import json
    import time

    while time.time() < deadline:
        raw = ws.recv()
        if not isinstance(raw, bytes):
            yield json.loads(raw)


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """Stop a process started with ``start_new_session=True`` and every process of its group (chromium's
    renderers, zygote and helpers outlive the browser process by a moment and keep writing into its profile)."""
    import os
    import signal
    import time

    def signal_group(sig) -> bool:
        try:
            os.killpg(proc.pid, sig)
            return True
        except ProcessLookupError:  # nothing of the group is left
            return False

    signal_group(signal.SIGTERM)
    deadline = time.time() + timeout
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.1)
        if proc.poll() is not None and not signal_group(0):
            return
        if time.time() > deadline:
            signal_group(signal.SIGKILL)
            proc.wait()
            # the group's other members are reaped by init; wait until they are gone
            end = time.time() + 5
            while signal_group(0) and time.time() < end:
                time.sleep(0.05)
            return


def remove_tree(folder: Path, attempts: int = 20) -> None:
    """rmtree that retries while a process that has just stopped still has files appearing in ``folder``."""
    import shutil
    import time

    for _ in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Ask a server or browser to stop; kill it if it has not within ``timeout`` seconds, and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
