"""Telemetry against a real ComfyUI server (0.3.64 / 0.8.0); skipped without ``COMFYUI_PATH``.

Run it with the ComfyUI install's Python (it has aiohttp, websocket-client and the front end)::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_telemetry_integration.py

``COMFYUI_PYTHON`` picks another interpreter for the server (default: this one). The server runs with a
temporary ``--base-directory`` whose custom_nodes/ links this repo. The browser test needs Debian's
``chromium`` (or ``CHROMIUM``); ``WAN_ACCEL_SCREENSHOT=path.png`` keeps its screenshot.

Over 400 lines: every check against one real server shares its start-up (a module fixture).
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

from comfy_support import PACKAGE_FOLDER, comfy_server, headless_chromium, ws_messages

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
    with comfy_server(comfyui) as srv:
        yield {**srv, "folder": PACKAGE_FOLDER}  # the package's folder name: its web files' URL prefix


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


NOTE_TEXT = "A/B note: ignore rows marked cached: ComfyUI reused an output."  # text our badges also show


def _layout_js(vue: bool) -> str:
    # loadApiJson places nodes in one column: spread them left-to-right by dependency depth, add a
    # Note whose text has a badge's text in it, and a group whose title bar sits right above node 2.
    return "const vue = " + ("true" if vue else "false") + "; const noteText = " + json.dumps(NOTE_TEXT) + ";" + """
(() => {
  const g = app.graph; const nodes = [...(g._nodes ?? g.nodes)]; const depth = {};
  const d = (n) => { if (depth[n.id] != null) return depth[n.id]; let m = 0;
    for (const inp of n.inputs ?? []) { if (inp.link == null) continue; const l = g.links[inp.link] ?? g.links.get?.(inp.link);
      const src = l && g.getNodeById(l.origin_id); if (src) m = Math.max(m, d(src) + 1); }
    return (depth[n.id] = m); };
  const rows = {};
  const dx = vue ? 420 : 300, dy = vue ? 360 : 310;
  for (const n of nodes) { const c = d(n); rows[c] = (rows[c] ?? 0); n.pos = [40 + c * dx, 150 + rows[c] * dy]; rows[c] += 1; }
  const note = LiteGraph.createNode("MarkdownNote") ?? LiteGraph.createNode("Note");  // the shipped A/B note is Markdown
  note.pos = [40, 150 + 2 * dy]; note.size = [260, 90];
  if (note.widgets?.[0]) note.widgets[0].value = noteText;
  g.add(note);
  const Group = LiteGraph.LGraphGroup ?? window.LGraphGroup;
  const two = g.getNodeById(2); const titleH = LiteGraph.NODE_TITLE_HEIGHT;
  const group = new Group("Upscale group");
  group.pos = [two.pos[0] - 12, two.pos[1] - titleH - 40]; group.size = [two.size[0] + 24, (vue ? 280 : two.size[1]) + titleH + 60];
  g.add(group);
  app.canvas.ds.scale = vue ? 0.62 : 0.8; app.canvas.ds.offset = [20, 20]; g.setDirtyCanvas(true, true);
  return nodes.length;
})()"""


# Each Vue node's screen box by node id: its largest element carrying the id (its slots carry it too).
NODE_BOXES_JS = """
  const boxes = new Map();
  for (const el of document.querySelectorAll('[data-node-id]')) {
    if (el.closest('#wan-accel-telemetry-layer')) continue;
    const r = el.getBoundingClientRect(); const id = el.getAttribute('data-node-id');
    const old = boxes.get(id);
    if (r.width > 0 && (!old || r.width * r.height > old.width * old.height)) boxes.set(id, r);
  }
"""

# Every chip our Vue layer shows, found by our own attributes, and what it covers: any Vue node's box
# (its widgets) or a group's title bar. Computed here from the page, independently of the layer's code.
CHIP_CHECK_JS = """(() => {
  const hit = (a, b) => Math.min(a.right, b.right) - Math.max(a.left, b.left) > 0.5 && Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > 0.5;
""" + NODE_BOXES_JS + """
  const ds = app.canvas.ds, box = app.canvas.canvas.getBoundingClientRect();
  const titles = (app.graph._groups ?? app.graph.groups ?? []).map(g => { const p = g._pos ?? g.pos, s = g._size ?? g.size;
    const h = (g.titleHeight ?? LiteGraph.NODE_TITLE_HEIGHT) * ds.scale; const left = box.left + (p[0] + ds.offset[0]) * ds.scale;
    const top = box.top + (p[1] + ds.offset[1]) * ds.scale; return {title: g.title, left, top, right: left + s[0] * ds.scale, bottom: top + h}; });
  const onTop = (el, r) => { const x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2; const t = document.elementFromPoint(x, y);
    return !!t && el.contains(t); };  // not hidden by a toolbar or panel
  const chips = [...document.querySelectorAll('#wan-accel-telemetry-layer [data-wan-accel-node]')].map(el => {
    const r = el.getBoundingClientRect(); return {node: el.getAttribute('data-wan-accel-node'), text: el.innerText,
      kinds: [...el.children].map(c => c.dataset.kind), visible: r.width > 0 && getComputedStyle(el.parentElement).display !== 'none' && onTop(el, r), r}; });
  const covers = [];
  for (const c of chips) {
    const own = boxes.get(c.node);
    // a node lying on top of another leaves its chips no free spot: only covering others counts
    for (const [id, r] of boxes) if (id !== c.node && !(own && hit(own, r)) && hit(c.r, r)) covers.push(`${c.node} covers node ${id} (${app.graph.getNodeById(id)?.type}) at ${JSON.stringify(r)}, chip at ${JSON.stringify(c.r)}`);
    for (const t of titles) if (hit(c.r, t)) covers.push(`${c.node} covers group title ${t.title}`);
  }
  return {chips: chips.map(({r, ...c}) => c), covers, nodes: [...boxes.keys()], groups: titles.length};
})()"""


# True once the Vue node boxes (at least the given count) lie at distinct spots on the screen.
VUE_NODES_SPREAD_JS = "(() => {" + NODE_BOXES_JS + """
  const spots = new Set([...boxes.values()].map(r => Math.round(r.left / 40) + ',' + Math.round(r.top / 40)));
  return boxes.size >= %d && spots.size === boxes.size;
})()"""


def _open_page(server, cdp, vue: bool) -> None:
    base = server["base"]
    _prepare_settings(base, vue)
    cdp.call("Page.enable")
    # room to record every resource the front end loads (the default 250 entries fill up on older front ends)
    cdp.call("Page.addScriptToEvaluateOnNewDocument", source="performance.setResourceTimingBufferSize(100000)")
    cdp.call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    cdp.call("Page.navigate", url=base + "/")
    cdp.wait("!!(window.app && window.app.graph && window.wanAccelTelemetry)", what="ComfyUI app and our extension")
    time.sleep(2)
    cdp.eval("document.querySelectorAll('.p-dialog-mask .p-dialog-close-button, .p-dialog .p-dialog-header-close').forEach(b => b.click())")


def _load_workflow(cdp, prompt: dict, vue: bool) -> None:
    cdp.eval(f"app.loadApiJson({json.dumps(prompt)}, 'telemetry.json')")
    cdp.wait("(app.graph._nodes ?? app.graph.nodes).length > 0", what="workflow loaded")
    if vue:  # the Vue renderer takes node positions into its own layout store once it has mounted them
        cdp.wait(f"new Set([...document.querySelectorAll('[data-node-id]')].map(e => e.getAttribute('data-node-id'))).size"
                 f" >= {len(prompt)}", what="Vue nodes mounted")
    cdp.eval(_layout_js(vue))
    if vue:  # the Vue renderer keeps its own layout: reload the graph with the positions just set
        cdp.eval("app.loadGraphData(app.graph.serialize())")
        # each node where the layout put it, not stacked at one spot (a race seen on the 0.3.64 front end)
        cdp.wait(VUE_NODES_SPREAD_JS % len(prompt), timeout=20, what="Vue nodes at their laid-out positions")
        time.sleep(1.5)


def _queue_and_wait(cdp, after_run_id: str | None = None) -> dict:
    cdp.eval("app.queuePrompt(0, 1)")
    return cdp.wait("(() => { const c = window.wanAccelTelemetry.state.current; "
                    f"return c && c.run && c.run.id !== {json.dumps(after_run_id)} ? c.run : null }})()",
                    timeout=120, what="telemetry run event in the page")


def _shot(cdp, path: Path) -> None:
    path.write_bytes(base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))


def _hover_title(cdp, node_expr: str, dxs=(0, 2)) -> str:
    """Hover a node's title (classic canvas) and return the hover card's text."""
    x, y = cdp.eval(f"""(() => {{ const n = {node_expr}; const ds = app.canvas.ds;
        const r = app.canvas.canvas.getBoundingClientRect(); const th = LiteGraph.NODE_TITLE_HEIGHT;
        return [r.left + (n.pos[0] + 40 + ds.offset[0]) * ds.scale, r.top + (n.pos[1] - th / 2 + ds.offset[1]) * ds.scale]; }})()""")
    for dx in dxs:
        cdp.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx, y=y)
        time.sleep(0.2)
    time.sleep(0.8)
    return cdp.eval("(() => { const t = document.getElementById('wan-accel-telemetry-tip'); "
                    "return t && t.style.display === 'block' ? t.innerText : ''; })()")


def _illustration(run: dict, attention_node_id: str, vae_node_id: str | None = None) -> dict:
    """The run just recorded with node 2's figures replaced by a Wan 2.2 sampler's: a 2.3 GB partial load,
    an expert swap, LoRA patched on the fly, and an attention kernel that fell back for one shape. A
    CPU run cannot produce them; the findings come from the same advice code the recorder runs."""
    from wan_accel.telemetry.advice import node_advice

    run = json.loads(json.dumps(run))
    run["id"] = "illustration"
    node = next(r for r in run["nodes"] if r["node_id"] == "2")
    expert = {"name": "WAN22@b4c2d1", "size_mb": 16434.0, "loaded_mb": 14134.2, "offloaded_mb": 2299.8}
    node.update(type="KSamplerAdvanced (illustration)", seconds=38.1, share=0.62, gpu_s=37.9, vram_peak_allocated_mb=14820,
                vram_peak_reserved_mb=15300, partial_load=True, offloaded_mb=2299.8, oom_retries=0, model_load_s=4.3,
                model_unload_s=1.5, model_moves_s=4.3, model_swap=True, models_loaded=[expert], partial_models=[expert],
                models_unloaded=[{"name": "WAN22@9a0e17", "freed_mb": 14134.2}],
                lora_patch_s=2.4, lora_patch_steps_s=1.6, lora_patches=1200, lora_patch_gpu_s=1.9, lora_patch_steps_gpu_s=1.3,
                steps={"count": 2, "unit": "sampler step", "total": 2, "seconds": [17.4, 17.4], "mean_s": 17.4, "max_s": 17.4},
                attention=[{"model": "WanModel@b4c2d1", "shape": "1x40x7560x128", "backend": "sage", "requested": "sage",
                            "fallback": False, "reason": "as set", "node_id": attention_node_id},
                           {"model": "WanModel@b4c2d1", "shape": "1x40x512x72", "backend": "sdpa", "requested": "sage",
                            "fallback": True, "reason": "fallback: sage: head dim 72 unsupported", "node_id": attention_node_id}])
    run["wall_s"] = 61.5
    if vae_node_id is not None:  # a VAE Decode run by our engine: its plan and where its seconds went
        run["nodes"].append({
            "node_id": vae_node_id, "display_node_id": vae_node_id, "type": "VAEDecode (illustration)", "status": "ok",
            "cached": False, "seconds": 3.56, "share": 0.04, "gpu_s": 3.5, "vram_peak_allocated_mb": 4433.0,
            "steps": {"count": 84, "unit": "VAE step", "total": 84, "seconds": [0.04] * 84, "mean_s": 0.04, "max_s": 0.2},
            "vae_plan": [{"stage": "decode", "devices": 1, "tiles": 6, "tile_px": "208x832", "slices": 14, "slice_frames": 2,
                          "steps": 84, "estimated_mb": 4200.0, "budget_mb": 6144.0}],
            "phases": [{"name": "vae.load", "seconds": 0.017}, {"name": "vae.stem", "seconds": 0.178},
                       {"name": "vae.tiles", "seconds": 2.785}, {"name": "vae.output", "seconds": 0.072}]})
    node["advice"] = node_advice(node, run["wall_s"])
    run["advice"] = [{"node_id": "2", "type": node["type"], **a} for a in node["advice"]]
    run["totals"] = dict(run["totals"], partial_loads=1, offloaded_mb=2299.8, gpu_s=37.9, vram_peak_allocated_mb=14820,
                         model_load_s=4.3, model_moves_s=4.3, model_swaps=1, lora_patch_s=2.4, lora_patch_steps_s=1.6,
                         lora_patch_gpu_s=1.9, lora_patch_steps_gpu_s=1.3)
    return run


ILLUSTRATED_PARTS = ["38.1s · 62%", "2×17.4s ▲14.5G", "! 2.25G offloaded swap 4.3s LoRA 1.9s", "attn ! sage+sdpa"]


def _show_illustration(cdp, run: dict, vue: bool) -> dict:
    # the attention node goes in the free column right of the graph
    attention_id = cdp.eval("""(() => { const n = LiteGraph.createNode('WanAccelAttention');
        n.pos = [40 + %d, 150]; app.graph.add(n); return String(n.id); })()""" % (5 * 420 if vue else 4 * 300))
    vae_id = cdp.eval("""(() => { const n = LiteGraph.createNode('VAEDecode');
        n.pos = [40 + %d, 420]; app.graph.add(n); return String(n.id); })()""" % (5 * 420 if vue else 4 * 300))
    time.sleep(1.0)
    illustrated = _illustration(run, attention_id, vae_id)
    return cdp.eval(f"""(() => {{ const t = window.wanAccelTelemetry; t.showRun({json.dumps(illustrated)});
        const parts = (id) => {{ const n = app.graph.getNodeById(id); return t.nodeParts(n.__wanAccelTelemetry, n.__wanAccelAttention).map(p => p.text); }};
        return {{sampler: parts(2), attention: parts({attention_id}), attention_id: {json.dumps(attention_id)},
                vae: parts({vae_id}), vae_id: {json.dumps(vae_id)}}}; }})()""")


def _keep(shot: Path, name: str) -> None:
    keep = os.environ.get("WAN_ACCEL_SCREENSHOT")
    if keep:
        target = Path(keep)
        shutil.copyfile(shot, target.with_name(target.stem + name + target.suffix))


def test_browser_classic_canvas_overlay_hover_card_and_panel(server, browser, tmp_path):
    _open_page(server, browser, vue=False)
    prompt = workflow(server["base"], "ui")
    prompt["1"]["inputs"]["color"] = 0xE8590C  # nothing cached: every node runs
    prompt["2"]["inputs"]["width"] = 448
    _load_workflow(browser, prompt, vue=False)
    run = _queue_and_wait(browser)
    browser.eval("window.wanAccelTelemetry.open()")
    browser.wait("document.getElementById('wan-accel-telemetry').innerText.includes(' saved under ')", what="the summary panel")
    browser.eval("document.querySelectorAll('.p-toast-message-close, .p-dialog .p-dialog-header-close').forEach(b => b.click())")
    time.sleep(1)
    badges = dict(browser.eval("""(() => (app.graph._nodes ?? app.graph.nodes).map(n => [String(n.id),
        (n.badges ?? []).map(b => typeof b === 'function' ? b() : b).map(b => b && b.text).filter(Boolean)]))()"""))
    panel = browser.eval("document.getElementById('wan-accel-telemetry')?.innerText ?? ''")
    tooltip = _hover_title(browser, "app.graph.getNodeById(2)")
    shot = tmp_path / "telemetry.png"
    _shot(browser, shot)
    _keep(shot, "")
    assert run["status"] == "success"
    for nid in {r["node_id"] for r in run["nodes"] if not r["cached"]}:
        assert any(TIME_BADGE.match(t) for t in badges.get(nid, [])), (nid, badges)
    assert "Wan Accel telemetry" in panel and "ImageScale" in panel
    assert "ImageScale #2" in tooltip and "Share of the whole run" in tooltip, tooltip

    # How a Wan 2.2 sampler's troubles read (a CPU run has none of them): drawn by the same front-end code
    drawn = _show_illustration(browser, run, vue=False)
    assert drawn["sampler"] == ILLUSTRATED_PARTS, drawn
    assert drawn["attention"] == ["attn ! sage+sdpa"], drawn
    card = _hover_title(browser, "app.graph.getNodeById(2)", dxs=(3, 1))
    _shot(browser, tmp_path / "partial.png")
    _keep(tmp_path / "partial.png", "_partial")
    assert "2 sampler steps × 17.4s" in card and "→ partial load: 2.2 GB of WAN22@b4c2d1 stayed in RAM" in card, card
    assert "models moved 4.30s (unloading 1.50s): swap, WAN22@9a0e17 out, WAN22@b4c2d1 in" in card, card
    # LoRA judged by the patches' GPU time (the host's 2.4 s is shown beside it)
    assert "LoRA patching 1.90s of GPU time, 1.30s of it on the fly during the steps (1200 weights; host 2.40s)" in card, card
    assert "→ LoRA on the fly: 1.3 s of GPU time patching" in card, card
    assert "! attention WanModel@b4c2d1 1x40x512x72: ran sdpa (asked sage) — fallback: sage: head dim 72 unsupported" in card
    attention_card = _hover_title(browser, f"app.graph.getNodeById({drawn['attention_id']})")
    assert attention_card.startswith("attention WanModel@b4c2d1 1x40x7560x128: ran sage"), attention_card
    vae_card = _hover_title(browser, f"app.graph.getNodeById({drawn['vae_id']})")
    _shot(browser, tmp_path / "vae.png")
    _keep(tmp_path / "vae.png", "_vae")
    assert "VAE decode: 6 tiles of 208x832 px × 14 slices = 84 steps; budget 6.00G (est. 4.10G)" in vae_card, vae_card
    assert "VAE time: load 17.0ms, stem 0.18s, tiles 2.79s, output 72.0ms" in vae_card, vae_card

    # A/B: the two newest saved runs that executed something, side by side
    browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=700, y=990)  # hover card away
    browser.eval("window.wanAccelTelemetry.loadRuns().then(() => window.wanAccelTelemetry.setTab('ab'))")
    ab = browser.wait("(() => { const t = document.getElementById('wan-accel-telemetry').innerText; "
                      "return t.includes('run wall') ? t : ''; })()", timeout=30, what="A/B table")
    assert "Δ%" in ab and "ImageScale" in ab, ab
    time.sleep(0.5)
    _shot(browser, tmp_path / "ab.png")
    _keep(tmp_path / "ab.png", "_ab")


def test_browser_vue_nodes_chips_found_by_our_ids_clear_of_widgets_and_group_titles(server, browser, tmp_path):
    """Vue node renderer: our chips, whatever the front end does with node badges. The graph has a Note
    whose text contains 'cached' (as the shipped A/B note does) and a group title right above node 2."""
    _open_page(server, browser, vue=True)
    prompt = workflow(server["base"], "ui")
    prompt["1"]["inputs"]["color"] = 0x1F6FEB  # nothing cached: every node runs
    prompt["2"]["inputs"].update(width=96, height=128)  # small previews: Vue nodes grow with their images
    _load_workflow(browser, prompt, vue=True)
    run = _queue_and_wait(browser)
    time.sleep(1.5)
    first = browser.eval(CHIP_CHECK_JS)
    shot = tmp_path / "vue.png"
    _shot(browser, shot)
    _keep(shot, "_vue")
    executed = {r["node_id"] for r in run["nodes"] if not r["cached"]}
    by_node = {c["node"]: c for c in first["chips"]}
    assert first["groups"] == 1 and executed <= set(first["nodes"]), first
    for nid in executed:
        assert nid in by_node and by_node[nid]["visible"] and TIME_BADGE.search(by_node[nid]["text"]), (nid, first["chips"])
    assert first["covers"] == [], first["covers"]
    native = browser.eval("""(app.graph._nodes ?? app.graph.nodes).flatMap(n => (n.badges ?? [])
        .map(b => typeof b === 'function' ? b() : b).map(b => b && b.text).filter(Boolean))""")
    assert not any(TIME_BADGE.search(t) for t in native), native  # no second copy in Vue headers

    # A fresh page, the same prompt: every node cached, and 'cached' is also the Note's text. (The first
    # record a page draws is what the old overlay looked for in the page's text to decide whether the
    # front end drew badges: it found the Note and drew nothing.)
    _open_page(server, browser, vue=True)
    _load_workflow(browser, prompt, vue=True)
    again = _queue_and_wait(browser, after_run_id=run["id"])
    time.sleep(1.5)
    second = browser.eval(CHIP_CHECK_JS)
    assert again["nodes"] and all(r["cached"] for r in again["nodes"]), again["nodes"]
    texts = {c["node"]: c["text"] for c in second["chips"] if c["visible"]}
    for r in again["nodes"]:
        if r["node_id"] in second["nodes"]:
            assert texts.get(r["node_id"]) == "cached", (r["node_id"], second["chips"])
    assert second["covers"] == [], second["covers"]

    # the illustrated sampler and its attention node, drawn as chips
    drawn = _show_illustration(browser, run, vue=True)
    time.sleep(1.5)
    third = browser.eval(CHIP_CHECK_JS)
    chips = {c["node"]: c for c in third["chips"]}
    assert chips["2"]["text"].split("\n") == ILLUSTRATED_PARTS or chips["2"]["text"].replace("\n", "") == "".join(ILLUSTRATED_PARTS), chips["2"]
    assert chips["2"]["kinds"] == ["time", "info", "warn", "warn"]
    attention = chips[drawn["attention_id"]]  # a node at the top of the view: its chips must not hide under the toolbar
    assert attention["text"] == "attn ! sage+sdpa" and attention["kinds"] == ["warn"] and attention["visible"], attention
    assert third["covers"] == [], third["covers"]
    _shot(browser, tmp_path / "vue_partial.png")
    _keep(tmp_path / "vue_partial.png", "_vue_partial")


def test_front_end_loads_every_file_in_web(server, browser):
    """ComfyUI lists every .js under web/ as an extension script; each must import cleanly in the page."""
    _open_page(server, browser, vue=False)
    ours = sorted(p.relative_to(REPO / "web").as_posix() for p in (REPO / "web").rglob("*.js"))
    prefix = f"/extensions/{urllib.parse.quote(server['folder'])}/"
    listed = [u for u in browser.eval("fetch('/extensions').then(r => r.json())") if u.startswith(prefix)]
    assert sorted(u[len(prefix):] for u in listed) == ours, (listed, ours)
    errors = browser.eval("Promise.all(%s.map(u => import(u).then(() => null, e => u + ': ' + e))).then(r => r.filter(Boolean))"
                          % json.dumps(listed))
    assert errors == [], errors
    loaded = browser.eval("performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)")
    assert set(listed) <= set(loaded), sorted(set(listed) - set(loaded))  # the front end itself loaded each one
