"""Telemetry against a real ComfyUI server (0.3.64 / 0.8.0); skipped without ``COMFYUI_PATH``.

Run it with the ComfyUI install's Python (it has aiohttp, websocket-client and the front end)::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_telemetry_integration.py

``COMFYUI_PYTHON`` picks another interpreter for the server (default: this one). The package must be
in ``$COMFYUI_PATH/custom_nodes`` (a symlink to the repo is fine). The browser test needs Debian's
``chromium`` (or ``CHROMIUM``); ``WAN_ACCEL_SCREENSHOT=path.png`` keeps its screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from comfy_support import comfy_server, headless_chromium, ws_messages

REPO = Path(__file__).resolve().parent.parent
TIME_BADGE = re.compile(r"(^|\n)\d+(\.\d+)?(ms|s) · \d+(\.\d)?%")



def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as res:
        return res.status, res.read()


def _get_json(url: str):
    return json.loads(_get(url)[1])


def _post_json(url: str, payload: dict):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        return json.loads(res.read() or b"{}")


@pytest.fixture(scope="module")
def server(comfyui):
    pytest.importorskip("websocket", reason="integration test needs websocket-client (in ComfyUI's venv)")
    linked = [p for p in (comfyui / "custom_nodes").iterdir() if p.resolve() == REPO]
    if not linked:
        pytest.skip(f"link the package into {comfyui}/custom_nodes (e.g. custom_nodes/comfyui-wan-accel -> {REPO})")
    work = Path(tempfile.mkdtemp(prefix="wan_accel_it_"))
    with comfy_server(comfyui, work) as srv:
        yield srv


def _has_node(base: str, name: str) -> bool:
    try:
        return name in _get_json(f"{base}/object_info/{name}")
    except Exception:
        return False


def workflow(base: str, tag: str) -> dict:
    """Model-free core nodes; plus a lazy Switch where the ComfyUI version has one (0.8.0)."""
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 3381759},
              "_meta": {"title": "EmptyImage"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 512,
                                                     "height": 512, "crop": "disabled"}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"wan_accel_it_{tag}"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    if _has_node(base, "ComfySwitchNode"):
        prompt["6"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}  # only if the switch asks
        prompt["7"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                              "width": 32, "height": 32, "crop": "disabled"}}
        prompt["8"] = {"class_type": "ComfySwitchNode", "inputs": {"switch": True, "on_true": ["6", 0], "on_false": ["7", 0]}}
        prompt["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return prompt


def _run_prompt(srv, prompt: dict, client_id: str | None, ws=None, timeout: float = 120) -> tuple[str, list]:
    payload = {"prompt": prompt}
    if client_id:
        payload["client_id"] = client_id
    prompt_id = _post_json(srv["base"] + "/prompt", payload)["prompt_id"]
    events = []
    deadline = time.time() + timeout
    if ws is not None:
        for msg in ws_messages(ws, deadline):
            events.append(msg)
            if msg["type"] == "wan_accel.telemetry.run" and msg["data"].get("prompt_id") == prompt_id:
                break
        else:
            pytest.fail("no telemetry run event over the websocket")
    while time.time() < deadline:  # the run is saved on a background thread
        hist = _get_json(f"{srv['base']}/history/{prompt_id}")
        runs = _get_json(srv["base"] + "/wan_accel/telemetry/runs?limit=20")["runs"]
        if prompt_id in hist and any(r["prompt_id"] == prompt_id for r in runs):
            return prompt_id, events
        time.sleep(0.3)
    pytest.fail("prompt did not finish / run not saved")


def _saved_run(srv, prompt_id: str) -> dict:
    runs = _get_json(srv["base"] + "/wan_accel/telemetry/runs?limit=50")["runs"]
    run_id = next(r["id"] for r in runs if r["prompt_id"] == prompt_id)
    return _get_json(f"{srv['base']}/wan_accel/telemetry/runs/{run_id}")


def test_every_executed_node_recorded_and_events_reach_websocket(server):
    import websocket

    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server['port']}/ws?clientId={client_id}", timeout=60)
    try:
        prompt = workflow(server["base"], "a")
        prompt_id, events = _run_prompt(server, prompt, client_id, ws)
        # second submission of the same prompt: everything comes from the cache
        prompt_id2, events2 = _run_prompt(server, prompt, client_id, ws)
    finally:
        ws.close()

    run = _saved_run(server, prompt_id)
    assert run["status"] == "success"
    executed = set(_get_json(f"{server['base']}/history/{prompt_id}")[prompt_id]["outputs"]) | {"1", "2", "3"}
    recorded = {r["node_id"]: r for r in run["nodes"]}
    expected = {"1", "2", "3", "4", "5"} | ({"6", "8", "9"} if "8" in prompt else set())
    assert expected <= set(recorded), (expected, recorded.keys())
    assert executed <= set(recorded)
    if "8" in prompt:
        assert "7" not in recorded  # the lazy switch never asked for it
        assert recorded["8"]["starts"] == 2  # lazy: started, asked for input 6, started again
    for nid in expected:
        rec = recorded[nid]
        assert rec["type"] == prompt[nid]["class_type"]
        assert rec["status"] == "ok" and rec["cached"] is False
        assert rec["seconds"] >= 0 and rec["ram_rss_mb"] > 0
    assert run["totals"]["executed"] == len(expected)
    assert abs(sum(r["share"] for r in run["nodes"]) + run["totals"]["overhead_s"] / run["wall_s"] - 1) < 0.05

    kinds = [e["type"] for e in events if e["type"].startswith("wan_accel.telemetry.")]
    assert kinds[0] == "wan_accel.telemetry.run_start" and kinds[-1] == "wan_accel.telemetry.run"
    live = {e["data"]["record"]["node_id"] for e in events if e["type"] == "wan_accel.telemetry.node"}
    assert expected <= live

    run2 = _saved_run(server, prompt_id2)
    assert run2["nodes"] and all(r["cached"] for r in run2["nodes"]), run2["nodes"]
    assert {r["node_id"] for r in run2["nodes"]} == set(prompt) - {"7"}  # all cached, visited or not

    # CSV next to the JSON, one row per node
    status, body = _get(f"{server['base']}/wan_accel/telemetry/runs/{run['id']}?format=csv")
    assert status == 200 and len(body.decode().strip().splitlines()) == len(run["nodes"]) + 1
    folder = server["work"] / "output" / "wan_accel" / "telemetry"
    assert (folder / f"{run['id']}.json").is_file() and (folder / f"{run['id']}.csv").is_file()


def test_api_run_without_client_id_is_recorded(server):
    prompt = workflow(server["base"], "b")
    prompt["2"]["inputs"]["width"] = 200  # not cached
    prompt_id, _ = _run_prompt(server, prompt, None)
    run = _saved_run(server, prompt_id)
    assert {"2", "3", "4"} <= {r["node_id"] for r in run["nodes"] if not r["cached"]}


def test_routes_reject_bad_input(server):
    base = server["base"]
    for path in ("/runs/..%2F..%2Fetc%2Fpasswd", "/runs/20250101-000000-zzzzzzzz", "/runs/abc?format=json",
                 "/runs/20250101-000000-0123abcd?format=../../x", "/runs?limit=-1", "/runs?limit=abc"):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(base + "/wan_accel/telemetry" + path)
        assert err.value.code in (400, 404), path
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(base + "/wan_accel/telemetry/runs/20250101-000000-0123abcd")
    assert err.value.code == 404


# ---------------------------------------------------------------------------- hooks on the real modules
def test_hooks_time_real_model_loads_unloads_and_lora_patching(comfyui):
    """The optional hooks wrap this ComfyUI's own load_models_gpu, free_memory and comfy.lora.calculate_weight:
    a real ModelPatcher with a patch loads, is patched, and is unloaded inside two recorded nodes."""
    import torch

    import comfy.lora
    import comfy.model_management as mm
    import comfy.model_patcher

    from wan_accel.nodes import telemetry_hooks as th
    from wan_accel.telemetry.recorder import Recorder

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(64, 64)

        def get_dtype(self):
            return torch.float32

    originals = (mm.load_models_gpu, mm.free_memory, comfy.lora.calculate_weight)
    rec = Recorder(models=th.loaded_models_snapshot)
    hooks = th.ComfyHooks()
    ok, reason = hooks.install(rec)
    try:
        assert ok and {"load_models_gpu", "free_memory", "calculate_weight"} <= set(hooks.names), reason
        model = Tiny()
        before = model.proj.weight.detach().clone()
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
        patcher.add_patches({"proj.weight": (torch.ones(64, 64),)}, 0.5)
        rec.begin_run("real-hooks")
        rec.node_start("1", "KSampler")
        mm.load_models_gpu([patcher])
        patched = model.proj.weight.detach().clone()
        rec.node_finish("1")
        rec.node_start("2", "VAEDecode")
        mm.free_memory(1e30, torch.device("cpu"))
        rec.node_finish("2")
        run = rec.end_run()
        restored = model.proj.weight.detach().clone()
    finally:
        hooks.uninstall()
        mm.unload_all_models()
    assert (mm.load_models_gpu, mm.free_memory, comfy.lora.calculate_weight) == originals
    # the pass-throughs change nothing: patched at load, put back at unload
    assert torch.allclose(patched, before + 0.5) and torch.equal(restored, before)
    load, unload = run["nodes"]
    assert run["telemetry_failures"] == 0, run.get("telemetry_failure_sites")
    assert load["model_load_s"] > 0 and load["lora_patches"] == 1 and load["lora_patch_steps_s"] == 0
    assert load["models_loaded"][0]["name"] == "Tiny" and "dynamic" not in load["models_loaded"][0]  # CPU: never dynamic
    assert load["partial_load"] is False
    assert unload["model_unload_s"] > 0 and unload["models_unloaded"][0]["name"] == "Tiny"


# ---------------------------------------------------------------------------- browser
@pytest.fixture
def browser(server):
    with headless_chromium("browser test") as cdp:
        yield cdp


def _prepare_settings(base: str, vue: bool) -> None:
    for key, value in {"Comfy.TutorialCompleted": True, "Comfy.VueNodes.Enabled": vue, "Comfy.NodeBadge.NodeIdBadgeMode": "Show all",
                       "WanAccel.Telemetry.Overlay": True, "Comfy.Workflow.ShowMissingModelsWarning": False}.items():
        try:
            _post_json(f"{base}/settings/{key}", value)
        except Exception:
            pass


def _layout_js(vue: bool) -> str:
    # loadApiJson places nodes in one column; spread them left-to-right by dependency depth.
    return "const vue = " + ("true" if vue else "false") + ";" + """
(() => {
  const g = app.graph; const nodes = g._nodes ?? g.nodes; const depth = {};
  const d = (n) => { if (depth[n.id] != null) return depth[n.id]; let m = 0;
    for (const inp of n.inputs ?? []) { if (inp.link == null) continue; const l = g.links[inp.link] ?? g.links.get?.(inp.link);
      const src = l && g.getNodeById(l.origin_id); if (src) m = Math.max(m, d(src) + 1); }
    return (depth[n.id] = m); };
  const rows = {};
  const dx = vue ? 360 : 300, dy = vue ? 330 : 310;
  for (const n of nodes) { const c = d(n); rows[c] = (rows[c] ?? 0); n.pos = [40 + c * dx, 140 + rows[c] * dy]; rows[c] += 1; }
  app.canvas.ds.scale = vue ? 0.72 : 0.8; app.canvas.ds.offset = [20, 20]; g.setDirtyCanvas(true, true);
  return nodes.length;
})()"""


def _screenshot_run(server, cdp, vue: bool, shot: Path) -> dict:
    base = server["base"]
    _prepare_settings(base, vue)
    cdp.call("Page.enable")
    cdp.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    cdp.call("Page.navigate", url=base + "/")
    cdp.wait("!!(window.app && window.app.graph && window.wanAccelTelemetry)", what="ComfyUI app and our extension")
    time.sleep(2)
    cdp.eval("document.querySelectorAll('.p-dialog-mask .p-dialog-close-button, .p-dialog .p-dialog-header-close').forEach(b => b.click())")
    prompt = workflow(base, "ui")
    prompt["1"]["inputs"]["color"] = 0x1F6FEB if vue else 0xE8590C  # nothing cached: every node runs
    prompt["2"]["inputs"]["width"] = 384 if vue else 448
    cdp.eval(f"app.loadApiJson({json.dumps(prompt)}, 'telemetry.json')")
    cdp.wait("(app.graph._nodes ?? app.graph.nodes).length > 0", what="workflow loaded")
    cdp.eval(_layout_js(vue))
    if vue:  # the Vue renderer keeps its own layout: reload the graph with the positions just set
        cdp.eval("app.loadGraphData(app.graph.serialize())")
        time.sleep(1.5)
    cdp.eval("app.queuePrompt(0, 1)")
    run = cdp.wait("(() => { const c = window.wanAccelTelemetry.state.current; return c && c.run ? c.run : null })()",
                   timeout=120, what="telemetry run event in the page")
    cdp.eval("window.wanAccelTelemetry.open()")
    time.sleep(2)
    cdp.eval("document.querySelectorAll('.p-toast-message-close, .p-dialog .p-dialog-header-close').forEach(b => b.click())")
    time.sleep(1)
    badges = cdp.eval("""(() => (app.graph._nodes ?? app.graph.nodes).map(n => [String(n.id),
        (n.badges ?? []).map(b => typeof b === 'function' ? b() : b).map(b => b && b.text).filter(Boolean)]))()""")
    panel = cdp.eval("document.getElementById('wan-accel-telemetry')?.innerText ?? ''")
    vue_badges = cdp.eval("[...document.querySelectorAll('[data-node-id], #wan-accel-telemetry-layer')].map(e => e.innerText).join('\\n')") if vue else ""
    tooltip = ""
    if not vue:  # hover node 2's title: the card that explains each figure
        x, y = cdp.eval("""(() => { const n = app.graph.getNodeById(2); const ds = app.canvas.ds;
            const r = app.canvas.canvas.getBoundingClientRect(); const th = LiteGraph.NODE_TITLE_HEIGHT;
            return [r.left + (n.pos[0] + 40 + ds.offset[0]) * ds.scale, r.top + (n.pos[1] - th / 2 + ds.offset[1]) * ds.scale]; })()""")
        for dx in (0, 2):
            cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx, y=y)
            time.sleep(0.2)
        time.sleep(0.8)
        tooltip = cdp.eval("(() => { const t = document.getElementById('wan-accel-telemetry-tip'); "
                           "return t && t.style.display === 'block' ? t.innerText : ''; })()")
    png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    shot.write_bytes(png)
    if not vue:
        # How the partial-load case reads (a CPU run cannot offload a model): the run just recorded,
        # with node 2's figures replaced by those of the 2.3 GB case, drawn by the same code.
        warn = cdp.eval("""(() => { const t = window.wanAccelTelemetry; const run = JSON.parse(JSON.stringify(t.state.current.run));
            run.id = 'illustration'; const n = run.nodes.find(r => r.node_id === '2');
            Object.assign(n, {type: 'KSampler (illustration)', seconds: 38.1, share: 0.62, gpu_s: 37.9, vram_peak_allocated_mb: 14820,
              vram_peak_reserved_mb: 15300, partial_load: true, offloaded_mb: 2299.8, oom_retries: 0, model_load_s: 3.3,
              models_loaded: [{name: 'WAN21', size_mb: 16434.0, loaded_mb: 14134.2, offloaded_mb: 2299.8}],
              partial_models: [{name: 'WAN21', size_mb: 16434.0, loaded_mb: 14134.2, offloaded_mb: 2299.8}],
              steps: {count: 2, total: 2, seconds: [17.4, 17.4], mean_s: 17.4, max_s: 17.4}});
            run.totals = Object.assign({}, run.totals, {partial_loads: 1, offloaded_mb: 2299.8, gpu_s: 37.9, vram_peak_allocated_mb: 14820, model_load_s: 3.3});
            run.wall_s = 61.5; t.showRun(run); return t.overlayParts(n).map(p => p.text); })()""")
        for dx in (3, 1):  # hover again: the card now explains the illustrated figures
            cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx, y=y)
            time.sleep(0.2)
        time.sleep(1)
        shot.with_name(shot.stem + "_partial.png").write_bytes(
            base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))
        assert warn == ["38.1s · 62%", "2×17.4s ▲14.5G", "! 2.25G offloaded"], warn
        # A/B: the two newest saved runs that executed something, side by side
        cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=700, y=990)  # hover card away
        cdp.eval("window.wanAccelTelemetry.loadRuns().then(() => window.wanAccelTelemetry.setTab('ab'))")
        ab = cdp.wait("(() => { const t = document.getElementById('wan-accel-telemetry').innerText; "
                      "return t.includes('run wall') ? t : ''; })()", timeout=30, what="A/B table")
        assert "Δ%" in ab and "ImageScale" in ab, ab
        time.sleep(0.5)
        shot.with_name(shot.stem + "_ab.png").write_bytes(
            base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))
    return {"run": run, "badges": dict(badges), "panel": panel, "vue_text": vue_badges, "tooltip": tooltip}


@pytest.mark.parametrize("vue", [False, True], ids=["classic-canvas", "vue-nodes"])
def test_browser_overlay_and_panel(server, browser, vue, tmp_path):
    shot = tmp_path / f"telemetry_{'vue' if vue else 'classic'}.png"
    out = _screenshot_run(server, browser, vue, shot)
    keep = os.environ.get("WAN_ACCEL_SCREENSHOT")
    if keep:
        target = Path(keep)
        if vue:
            target = target.with_name(target.stem + "_vue" + target.suffix)
        shutil.copyfile(shot, target)
        for extra in ("_partial", "_ab"):
            if shot.with_name(shot.stem + extra + ".png").exists():
                shutil.copyfile(shot.with_name(shot.stem + extra + ".png"), target.with_name(target.stem + extra + target.suffix))
    run = out["run"]
    assert run["status"] == "success"
    executed = {r["node_id"] for r in run["nodes"] if not r["cached"]}
    for nid in executed:
        texts = out["badges"].get(nid, [])
        assert any(TIME_BADGE.match(t) for t in texts), (nid, out["badges"])
    assert "Wan Accel telemetry" in out["panel"] and "ImageScale" in out["panel"]
    assert shot.stat().st_size > 10_000
    if not vue:
        assert "ImageScale #2" in out["tooltip"] and "Share of the whole run" in out["tooltip"], out["tooltip"]
    if vue:  # native badges in the Vue node header, or our DOM chips where the renderer shows none
        assert TIME_BADGE.search(out["vue_text"]), out["vue_text"][:2000]
