"""End to end: the shipped i2v two-pass API workflow on a real ComfyUI server with random-weight models.

Skipped without ``COMFYUI_PATH``. Run it with the ComfyUI install's Python (aiohttp, websocket-client, av)::

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/test_workflows_e2e.py

``WAN_ACCEL_E2E_PORT`` fixes the port (default: a free one). Nothing is written into the checkout: the
server's ``--base-directory`` is a temporary folder holding the fixture models (``fixtures/build.py``) in
models/, this package (a link) and a test-only conditioning node in custom_nodes/, the input image and
all outputs; ``WAN_ACCEL_E2E_KEEP=1`` keeps it.

What the test changes in ``workflows/api/wan22_i2v_14B_4step_accel.api.json`` before submitting it, and why:

* the umt5-xxl text encoder (5.7B parameters, built from a fixed config) cannot be faked small:
  ``CLIPLoader`` is removed and both ``CLIPTextEncode`` nodes become ``WanAccelTestConditioning``
  (same node ids and links), a test-only node that returns random ``[1, 16, 4096]`` text embeddings;
* 64x64, 5 frames instead of 832x1216, 81 (a 2-core CPU);
* the attention nodes get settings whose effect is observable on a CPU: the high-noise expert asks for
  ``sage`` (not usable on a CPU) with fallback ``sub_quad``, the low-noise expert for ``auto``. Both decisions
  are recorded by telemetry as ``attention_backend`` notes on the sampler node that ran that expert.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from comfy_support import comfy_base_directory, comfy_server, headless_chromium, ws_messages

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "workflows" / "api" / "wan22_i2v_14B_4step_accel.api.json"

TEST_NODE = '''
import torch


class WanAccelTestConditioning:
    """Test only: random umt5-shaped text embeddings, standing in for CLIPLoader + CLIPTextEncode."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
                             "tokens": ("INT", {"default": 16, "min": 1, "max": 512})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed, tokens):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, 4096, generator=g) * 0.1, {}]],)


NODE_CLASS_MAPPINGS = {"WanAccelTestConditioning": WanAccelTestConditioning}
'''



def _get_json(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as res:
        return json.loads(res.read())


def _post_json(url: str, payload: dict):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return json.loads(res.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"POST {url} -> {exc.code}: {exc.read().decode()[:3000]}") from None


def e2e_prompt(api: dict, size: int = 64, length: int = 5) -> dict:
    """The shipped API prompt, changed as the module docstring says."""
    prompt = json.loads(json.dumps(api))
    types = {nid: n["class_type"] for nid, n in prompt.items()}
    for nid, t in types.items():
        node = prompt[nid]
        if t == "CLIPLoader":
            del prompt[nid]
        elif t == "CLIPTextEncode":
            prompt[nid] = {"class_type": "WanAccelTestConditioning", "inputs": {"seed": int(nid), "tokens": 16},
                           "_meta": node.get("_meta", {})}
        elif t == "WanImageToVideo":
            node["inputs"].update(width=size, height=size, length=length)
    samplers = sorted((nid for nid, t in types.items() if t == "KSamplerAdvanced"),
                      key=lambda nid: prompt[nid]["inputs"]["start_at_step"])
    high, low = (prompt[s]["inputs"]["model"][0] for s in samplers)
    assert prompt[high]["class_type"] == prompt[low]["class_type"] == "WanAccelAttention"
    prompt[high]["inputs"].update(backend="sage", fallback="sub_quad")
    prompt[low]["inputs"].update(backend="auto", fallback="sdpa")
    return prompt


@pytest.fixture(scope="module")
def e2e_server(comfyui):
    work = comfy_base_directory(Path(tempfile.mkdtemp(prefix="wan_accel_e2e_")))
    (work / "custom_nodes" / "wan_accel_test_cond").mkdir()
    (work / "custom_nodes" / "wan_accel_test_cond" / "__init__.py").write_text(TEST_NODE)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    build = subprocess.run([python, str(REPO / "fixtures" / "build.py"), "--comfy", str(comfyui), "--out", str(work / "models")],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(work / "input" / "wan_accel_start.png")

    port = int(os.environ.get("WAN_ACCEL_E2E_PORT") or 0) or None
    try:
        with comfy_server(comfyui, work, port=port, timeout=240) as srv:
            yield srv
    finally:
        if os.environ.get("WAN_ACCEL_E2E_KEEP"):
            print(f"e2e work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _run(srv, prompt: dict, timeout: float = 900) -> tuple[str, list]:
    import websocket

    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{srv['port']}/ws?clientId={client_id}", timeout=timeout)
    try:
        prompt_id = _post_json(srv["base"] + "/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        events = []
        deadline = time.time() + timeout
        for msg in ws_messages(ws, deadline):
            events.append(msg)
            data = msg.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if msg["type"] in ("execution_error", "execution_interrupted"):
                raise AssertionError(f"{msg['type']}: {json.dumps(data)[:3000]}")
            if msg["type"] == "execution_success" or (msg["type"] == "executing" and data.get("node") is None
                                                      and data.get("prompt_id") == prompt_id):
                return prompt_id, events
        raise AssertionError("the prompt did not finish in time")
    finally:
        ws.close()


def _telemetry_run(srv, prompt_id: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:  # saved on a background thread after the prompt
        for summary in _get_json(srv["base"] + "/wan_accel/telemetry/runs?limit=20").get("runs", []):
            if summary.get("prompt_id") == prompt_id:
                return _get_json(srv["base"] + f"/wan_accel/telemetry/runs/{summary['id']}")
        time.sleep(0.5)
    raise AssertionError(f"no telemetry run saved for prompt {prompt_id}")


def test_i2v_two_pass_end_to_end(e2e_server):
    srv = e2e_server
    api = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    prompt = e2e_prompt(api)
    t0 = time.time()
    prompt_id, events = _run(srv, prompt)
    seconds = time.time() - t0

    # the video file
    videos = list((srv["work"] / "output" / "video").glob("wan_accel_i2v_*.mp4"))
    assert videos and videos[0].stat().st_size > 0, f"no video written; output: {list((srv['work'] / 'output').rglob('*'))}"
    import av

    with av.open(str(videos[0])) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert frames == 5

    # telemetry: a record for every node of the prompt, all executed
    run = _telemetry_run(srv, prompt_id)
    assert run["status"] == "success", run.get("error")
    records = {r["node_id"]: r for r in run["nodes"]}
    assert set(records) == set(prompt), (sorted(records), sorted(prompt))
    for nid, rec in records.items():
        assert rec["type"] == prompt[nid]["class_type"], rec
        assert rec["status"] == "ok" and not rec["cached"], rec
    over_ws = {e["data"]["record"]["node_id"] for e in events if e["type"] == "wan_accel.telemetry.node"}
    assert over_ws == set(prompt), "live per-node telemetry events over the websocket"

    # each expert used the backend its attention node asked for, recorded on its sampler's node
    samplers = sorted((nid for nid, n in prompt.items() if n["class_type"] == "KSamplerAdvanced"),
                      key=lambda nid: prompt[nid]["inputs"]["start_at_step"])
    notes = {s: [n for n in records[s].get("notes", []) if n.get("name") == "attention_backend"] for s in samplers}
    high, low = notes[samplers[0]], notes[samplers[1]]
    assert high and all(n["backend"] == "sub_quad" and "sage" in n["reason"] for n in high), high
    assert low and all(n["reason"] == "auto" for n in low), low
    assert {n["model"] for n in high}.isdisjoint({n["model"] for n in low}), "two models, two overrides"
    assert records[samplers[0]]["steps"]["count"] == 2 and records[samplers[1]]["steps"]["count"] == 2

    # the VAE patch: the core VAE Decode ran our engine (its phases are on that node)
    decode = next(nid for nid, n in prompt.items() if n["class_type"] == "VAEDecode")
    phases = {p["name"] for p in records[decode].get("phases", [])}
    assert {"vae.load", "vae.stem", "vae.tiles", "vae.output"} <= phases, records[decode]  # bridge and engine

    # ... and WanImageToVideo's encode of the start image too (WanAccelVAEPatch routes encode)
    encode = next(nid for nid, n in prompt.items() if n["class_type"] == "WanImageToVideo")
    encode_phases = {p["name"] for p in records[encode].get("phases", [])}
    assert {"vae.input", "vae.load", "vae.encode_tiles", "vae.encode_middle", "vae.output"} <= encode_phases, records[encode]

    log = (srv["work"] / "server.log").read_text()
    assert "lora key not loaded" not in log, "every fixture LoRA key maps onto the expert"
    assert "wan_accel telemetry on" in log
    print(json.dumps({"seconds": round(seconds, 1), "video": videos[0].name, "frames": frames,
                      "high_notes": high[:2], "low_notes": low[:2],
                      "decode_phases": sorted(phases),
                      "encode_phases": sorted(encode_phases),
                      "node_seconds": {f"{nid}:{r['type']}": r["seconds"] for nid, r in records.items()}}, indent=1))


def test_fixture_models_load_as_the_real_ones(comfyui):
    """The fixture files are detected and mapped by ComfyUI exactly as the real Wan 2.2 i2v files are."""
    import comfy.lora
    import comfy.model_detection
    import comfy.sd
    import comfy.utils
    import torch

    from wan_accel.fixtures import build
    sds = build.state_dicts(dim=256, layers=2, rank=4, dtype=torch.bfloat16)
    expert = sds[f"diffusion_models/{build.HIGH}"]
    config = comfy.model_detection.detect_unet_config(expert, "")
    assert config["image_model"] == "wan2.1" and config["model_type"] == "t2v"  # as the real 2.2 i2v experts
    assert (config["in_dim"], config["out_dim"], config["dim"], config["num_heads"], config["num_layers"]) == \
        (36, 16, 256, 2, 2)
    model = comfy.sd.load_diffusion_model_state_dict(expert)
    assert type(model.model.diffusion_model).__name__ == "WanModel"
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora = sds[f"loras/{build.LORA_HIGH}"]
    patches = comfy.lora.load_lora(lora, key_map)
    assert len(patches) == 2 * 10 and len(lora) == 3 * len(patches), "every LoRA key maps onto a weight"
    vae = comfy.sd.VAE(sd=sds[f"vae/{build.VAE}"])
    assert type(vae.first_stage_model).__name__ == "WanVAE" and vae.latent_channels == 16


# ------------------------------------------------------------------ the real front end loads the UI graphs
@pytest.fixture(scope="module")
def page(e2e_server):
    base = e2e_server["base"]
    for key, value in {"Comfy.TutorialCompleted": True, "Comfy.Workflow.ShowMissingModelsWarning": False,
                       "Comfy.Workflow.ShowMissingNodesWarning": False}.items():
        try:
            _post_json(f"{base}/settings/{key}", value)
        except AssertionError:
            pass
    with headless_chromium("front-end test") as cdp:
        cdp.call("Page.enable")
        cdp.call("Page.navigate", url=base + "/")
        cdp.wait("!!(window.app && window.app.graph && window.app.canvas)", timeout=120, what="the ComfyUI page")
        time.sleep(2)
        yield cdp


_LOAD_JS = """
(async () => {
  const graph = %s, bypass = %s;
  await app.loadGraphData(graph);
  const g = app.graph, nodes = g._nodes ?? g.nodes;
  // node types, not has_errors: newer front ends flag a loader whose model file is absent there too
  const registered = window.LiteGraph?.registered_node_types;
  if (!registered || !Object.keys(registered).length) throw new Error("LiteGraph.registered_node_types not reachable");
  const missing = nodes.filter(n => !registered[n.type]).map(n => n.type);
  const widgets = {};
  for (const n of nodes) widgets[n.id] = (n.widgets ?? []).map(w => w.name);
  for (const id of bypass) g.getNodeById(id).mode = 4;
  const p = await app.graphToPrompt();
  return JSON.stringify({count: nodes.length, missing, widgets, output: p.output, version: window.__COMFYUI_FRONTEND_VERSION__ ?? null});
})()
"""


def load_in_front_end(page, ui: dict, bypass=()) -> dict:
    """Load a UI graph with the page's ``app.loadGraphData``: node count, node types the front end does
    not know, widget names, the front end's own API prompt, its version."""
    return json.loads(page.eval(_LOAD_JS % (json.dumps(ui), json.dumps(list(bypass)))))


def test_front_end_reports_an_unknown_node_type(page):
    """The check below can fail: a node type ComfyUI does not have is reported, a known loader is not
    (its model file is absent here, which newer front ends also mark as an error)."""
    from test_workflows import UI_FILES, load

    ui = load(UI_FILES[0])
    target = next(n for n in ui["nodes"] if n["type"] == "WanAccelVAEPatch")
    target["type"] = "WanAccelNoSuchNode"
    res = load_in_front_end(page, ui)
    assert res["missing"] == ["WanAccelNoSuchNode"], res["missing"]


def prompt_differences(got: dict, want: dict, object_info) -> list[str]:
    """How the front end's prompt ``got`` differs from the shipped ``want`` in ways that change what runs.

    Every shipped input must come through unchanged. The front end may add inputs the shipped prompt
    leaves out when they change nothing: an optional input at its declared default (0.33.0's
    CreateVideo.bit_depth), or a dynamic combo's sub-input ``parent.child`` next to the flat ``child``
    the shipped prompt gives, with the same value (0.33.0's SaveVideo sends format.codec and codec).
    ``object_info(class_type)`` is ComfyUI's /object_info entry of that node type.
    """
    out = []
    for nid in sorted(set(got) | set(want)):
        if nid not in got or nid not in want:
            out.append(f"node {nid}: only in the {'front end' if nid in got else 'shipped'} prompt")
            continue
        g, w = got[nid], want[nid]
        if g["class_type"] != w["class_type"]:
            out.append(f"node {nid}: {g['class_type']} != {w['class_type']}")
            continue
        for name, value in w["inputs"].items():
            if name not in g["inputs"] or g["inputs"][name] != value:
                out.append(f"node {nid} {w['class_type']}.{name}: {g['inputs'].get(name, '<absent>')!r} != {value!r}")
        optional = (object_info(g["class_type"]).get("input") or {}).get("optional") or {}
        for name, value in g["inputs"].items():
            if name in w["inputs"]:
                continue
            spec = optional.get(name)
            default = spec[1].get("default") if spec and len(spec) > 1 and isinstance(spec[1], dict) else None
            flat = name.rpartition(".")[2]
            if (spec is not None and default is not None and value == default) or \
                    ("." in name and flat in w["inputs"] and w["inputs"][flat] == value):
                continue
            out.append(f"node {nid} {g['class_type']}.{name} = {value!r}: not in the shipped prompt")
    return out


def test_prompt_differences_tell_what_changes_a_run():
    info = {"CreateVideo": {"input": {"required": {"fps": ["FLOAT", {"default": 30.0}]},
                                      "optional": {"bit_depth": ["INT", {"default": 8}]}}},
            "SaveVideo": {"input": {"required": {"format": ["COMFY_DYNAMICCOMBO_V3", {}]}}}}
    want = {"1": {"class_type": "CreateVideo", "inputs": {"fps": 16.0}},
            "2": {"class_type": "SaveVideo", "inputs": {"format": "auto", "codec": "auto"}}}
    same = {"1": {"class_type": "CreateVideo", "inputs": {"fps": 16, "bit_depth": 8}},
            "2": {"class_type": "SaveVideo", "inputs": {"format": "auto", "format.codec": "auto", "codec": "auto"}}}
    assert prompt_differences(same, want, info.get) == []
    for change in ({"1": {"fps": 24.0}}, {"1": {"bit_depth": 10}}, {"2": {"format.codec": "h264"}},
                   {"2": {"crf": 20}}):
        got = json.loads(json.dumps(same))
        for nid, inputs in change.items():
            got[nid]["inputs"].update(inputs)
        assert prompt_differences(got, want, info.get), change
    assert prompt_differences({"1": same["1"]}, want, info.get)


def test_front_end_loads_graphs_and_converts_them_to_the_shipped_api(page, e2e_server):
    """The front end ComfyUI serves loads each UI graph with every node type known, and its own
    graphToPrompt gives the shipped API prompt (the A/B graph: with the ACCELERATION group bypassed too),
    up to inputs that change nothing (``prompt_differences``)."""
    from test_workflows import UI_FILES, WF, api_for, group_members, load

    def object_info(class_type, cache={}):
        if class_type not in cache:
            cache[class_type] = _get_json(f"{e2e_server['base']}/object_info/{class_type}")[class_type]
        return cache[class_type]

    seen = []
    for path in UI_FILES:
        ui = load(path)
        expected = api_for(path)
        for name in expected:
            bypass = []
            if name.endswith("_stock.api.json"):
                group = next(g for g in ui["groups"] if g["title"].startswith("ACCELERATION"))
                bypass = sorted(group_members(ui, group))
            res = load_in_front_end(page, ui, bypass)
            assert res["count"] == len(ui["nodes"]), (path.name, res["count"])
            assert not res["missing"], (path.name, res["missing"])
            differences = prompt_differences(res["output"], load(WF / "api" / name), object_info)
            assert not differences, (name, differences)
            seen.append(name)
    print(json.dumps({"front_end": res["version"], "checked": seen}))


def test_front_end_prompt_of_the_i2v_graph_runs(page, e2e_server):
    """What the front end sends for the shipped i2v UI graph runs on this ComfyUI (same changes as the
    end-to-end test: text encoder replaced, 64x64, 5 frames)."""
    from test_workflows import UI_FILES, load

    ui = load(next(p for p in UI_FILES if p.name == WORKFLOW.name.replace(".api.json", ".json")))
    prompt = e2e_prompt(load_in_front_end(page, ui)["output"])
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveVideo")
    prompt[save]["inputs"]["filename_prefix"] = "video/wan_accel_front_end"
    _run(e2e_server, prompt)
    videos = list((e2e_server["work"] / "output" / "video").glob("wan_accel_front_end*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0, videos
