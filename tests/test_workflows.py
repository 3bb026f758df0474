"""The shipped workflows: valid JSON, known node types, widget values that fit the inputs, UI and API agree.

Runs in CI (no ComfyUI): our nodes' inputs come from our own declarations (``define_schema`` executed
against a stand-in of ``comfy_api.latest.io`` in a subprocess), the core nodes' from ``CORE`` below: what
our graphs rely on of each core node, which every supported ComfyUI (0.3.64, 0.8.0, 0.33.0) must hold.
With ``COMFYUI_PATH`` set, ``CORE``, the stand-in and every widget value (combo options, ranges) are
checked against the real ComfyUI as well.

The UI -> API conversion here is written independently of ``workflows/generate.py``: widget order comes
from the nodes' inputs, not from the generator's catalog.

Over 400 lines: the core-node contract (CORE) and the checks that read it stay together.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WF = REPO / "workflows"
EX = REPO / "example_workflows"
UI_FILES = sorted((WF / "ui").glob("*.json"))
API_FILES = sorted((WF / "api").glob("*.api.json"))
VIRTUAL = {"MarkdownNote", "Note"}  # front-end only nodes
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL = ("fixed", "increment", "decrement", "randomize")

# Core nodes the workflows use: inputs in order as (name, kind, flags), outputs as (name, type).
# flags: o = optional, c = control_after_generate widget follows, u = image upload widget follows.
# What the graphs rely on, not a copy of one version: ComfyUI may add optional inputs after these and
# outputs after these (0.33.0: CreateVideo.bit_depth, SaveVideo's VIDEO output); see core_contract_breaks.
CORE = {
    "UNETLoader": ([("unet_name", "COMBO", ""), ("weight_dtype", "COMBO", "")], [("MODEL", "MODEL")]),
    "CLIPLoader": ([("clip_name", "COMBO", ""), ("type", "COMBO", ""), ("device", "COMBO", "o")], [("CLIP", "CLIP")]),
    "VAELoader": ([("vae_name", "COMBO", "")], [("VAE", "VAE")]),
    "LoraLoaderModelOnly": ([("model", "MODEL", ""), ("lora_name", "COMBO", ""), ("strength_model", "FLOAT", "")],
                            [("MODEL", "MODEL")]),
    "ModelSamplingSD3": ([("model", "MODEL", ""), ("shift", "FLOAT", "")], [("MODEL", "MODEL")]),
    "CLIPTextEncode": ([("text", "STRING", ""), ("clip", "CLIP", "")], [("CONDITIONING", "CONDITIONING")]),
    "LoadImage": ([("image", "COMBO", "u")], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "WanImageToVideo": ([("positive", "CONDITIONING", ""), ("negative", "CONDITIONING", ""), ("vae", "VAE", ""),
                         ("width", "INT", ""), ("height", "INT", ""), ("length", "INT", ""), ("batch_size", "INT", ""),
                         ("clip_vision_output", "CLIP_VISION_OUTPUT", "o"), ("start_image", "IMAGE", "o")],
                        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")]),
    "Wan22ImageToVideoLatent": ([("vae", "VAE", ""), ("width", "INT", ""), ("height", "INT", ""), ("length", "INT", ""),
                                 ("batch_size", "INT", ""), ("start_image", "IMAGE", "o")], [("LATENT", "LATENT")]),
    "EmptyHunyuanLatentVideo": ([("width", "INT", ""), ("height", "INT", ""), ("length", "INT", ""),
                                 ("batch_size", "INT", "")], [("LATENT", "LATENT")]),
    "KSamplerAdvanced": ([("model", "MODEL", ""), ("add_noise", "COMBO", ""), ("noise_seed", "INT", "c"),
                          ("steps", "INT", ""), ("cfg", "FLOAT", ""), ("sampler_name", "COMBO", ""),
                          ("scheduler", "COMBO", ""), ("positive", "CONDITIONING", ""), ("negative", "CONDITIONING", ""),
                          ("latent_image", "LATENT", ""), ("start_at_step", "INT", ""), ("end_at_step", "INT", ""),
                          ("return_with_leftover_noise", "COMBO", "")], [("LATENT", "LATENT")]),
    "KSampler": ([("model", "MODEL", ""), ("seed", "INT", "c"), ("steps", "INT", ""), ("cfg", "FLOAT", ""),
                  ("sampler_name", "COMBO", ""), ("scheduler", "COMBO", ""), ("positive", "CONDITIONING", ""),
                  ("negative", "CONDITIONING", ""), ("latent_image", "LATENT", ""), ("denoise", "FLOAT", "")],
                 [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT", ""), ("vae", "VAE", "")], [("IMAGE", "IMAGE")]),
    "CreateVideo": ([("images", "IMAGE", ""), ("fps", "FLOAT", ""), ("audio", "AUDIO", "o")], [("VIDEO", "VIDEO")]),
    "SaveVideo": ([("video", "VIDEO", ""), ("filename_prefix", "STRING", ""), ("format", "COMBO", ""),
                   ("codec", "COMBO", "")], []),
}
# the official Comfy-Org repackaged names (the test fixtures use the same names)
MODEL_FILES = {
    "unet_name": {"wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
                  "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors",
                  "wan2.2_ti2v_5B_fp16.safetensors"},
    "lora_name": {"wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors",
                  "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors",
                  "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors",
                  "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"},
    "vae_name": {"wan_2.1_vae.safetensors", "wan2.2_vae.safetensors"},
    "clip_name": {"umt5_xxl_fp8_e4m3fn_scaled.safetensors"},
}

_SCHEMA_SCRIPT = textwrap.dedent('''
    import importlib, json, sys, types
    repo = sys.argv[1]

    class Kind:
        def __init__(self, type_):
            self.type = type_
        def Input(self, id, **kw):
            return {"name": id, "type": self.type, **{k: v for k, v in kw.items() if k != "tooltip"}}
        def Output(self, *args, **kw):
            return {"type": self.type, "display_name": kw.get("display_name") or (args[0] if args else None)}

    io = types.ModuleType("comfy_api.latest.io")
    for name, type_ in {"Model": "MODEL", "Vae": "VAE", "Latent": "LATENT", "Image": "IMAGE", "Int": "INT",
                        "Float": "FLOAT", "String": "STRING", "Boolean": "BOOLEAN", "Combo": "COMBO",
                        "Conditioning": "CONDITIONING", "Clip": "CLIP", "Mask": "MASK"}.items():
        setattr(io, name, Kind(type_))
    class Schema:
        def __init__(self, **kw):
            self.kw = kw
    class ComfyNode:
        pass
    class NodeOutput:
        def __init__(self, *a, **k):
            pass
    class ComfyExtension:
        pass
    io.Schema, io.ComfyNode, io.NodeOutput = Schema, ComfyNode, NodeOutput
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension = io, ComfyExtension
    for name, mod in {"comfy_api": types.ModuleType("comfy_api"), "comfy_api.latest": latest,
                      "comfy_api.latest.io": io, "comfy": types.ModuleType("comfy"),
                      "comfy.model_management": types.ModuleType("comfy.model_management"),
                      "comfy.utils": types.ModuleType("comfy.utils"), "comfy.ops": types.ModuleType("comfy.ops")}.items():
        sys.modules[name] = mod
    sys.modules["comfy"].model_management = sys.modules["comfy.model_management"]
    sys.modules["comfy"].utils = sys.modules["comfy.utils"]
    sys.path.insert(0, repo + "/tools")
    from package_loader import load_wan_accel
    load_wan_accel()
    out = {}
    for mod in ("vae_nodes", "attention_nodes", "telemetry_nodes"):
        m = importlib.import_module("wan_accel.nodes." + mod)
        for cls in m.NODES:
            kw = cls.define_schema().kw
            out[kw["node_id"]] = {"inputs": kw["inputs"], "outputs": kw.get("outputs", [])}
    print(json.dumps(out))
''')


@lru_cache(maxsize=None)
def our_schemas() -> dict:
    """{node_id: {inputs: [{name, type, optional?, default?, options?, min?, max?}], outputs}} from nodes/*.py."""
    res = subprocess.run([sys.executable, "-c", _SCHEMA_SCRIPT, str(REPO)], capture_output=True, text=True,
                         timeout=300, cwd="/")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def spec(node_type: str) -> tuple[list, list]:
    """(inputs [(name, kind, flags, info)], outputs [(name, type)]) of a node type; info: our declared limits."""
    if node_type in CORE:
        ins, outs = CORE[node_type]
        return [(n, k, f, {}) for n, k, f in ins], outs
    ours = our_schemas().get(node_type)
    if ours is None:
        raise KeyError(f"unknown node type {node_type!r}")
    ins = [(i["name"], i["type"], "o" if i.get("optional") else "", i) for i in ours["inputs"]]
    outs = [(o.get("display_name") or o["type"], o["type"]) for o in ours["outputs"]]
    return ins, outs


def widget_layout(node_type: str) -> list[tuple[str, str, dict]]:
    """Widgets in the order the front end makes them: (name, kind, info); front-end-only ones included."""
    out = []
    for name, kind, flags, info in spec(node_type)[0]:
        if kind not in WIDGET_KINDS:
            continue
        out.append((name, kind, info))
        if "c" in flags:
            out.append(("control_after_generate", "CONTROL", {}))
        if "u" in flags:
            out.append(("upload", "UPLOAD", {}))
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def ui_to_api(ui: dict, bypass: set[int] = frozenset()) -> dict:
    """The front end's graphToPrompt, written again on purpose: checked against the generator's own
    conversion, a shared copy could not catch a bug in it."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {lk[0]: lk for lk in ui["links"]}

    def skip(n):
        return n["mode"] == 4 or n["id"] in bypass

    def source(lid):
        _, src, slot, _, _, _ = links[lid]
        while skip(nodes[src]):
            n = nodes[src]
            typ = n["outputs"][slot]["type"]
            up = next(i["link"] for i in n["inputs"] if i["type"] == typ and i["link"] is not None)
            _, src, slot, _, _, _ = links[up]
        return [str(src), slot]

    prompt = {}
    for nid, n in nodes.items():
        if n["type"] in VIRTUAL or n["mode"] == 2 or skip(n):
            continue
        inputs = {name: value for (name, kind, _), value in zip(widget_layout(n["type"]), n["widgets_values"])
                  if kind not in ("CONTROL", "UPLOAD")}
        for i in n["inputs"]:
            if i["link"] is not None:
                inputs[i["name"]] = source(i["link"])
        prompt[str(nid)] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n.get("title", n["type"])}}
    return prompt


def group_members(ui: dict, group: dict) -> set[int]:
    """Nodes inside the group; no other node may even overlap it (front ends differ in how they decide
    membership: overlap, centre, or containment; with no partial overlaps they all agree)."""
    x, y, w, h = group["bounding"]
    inside, overlap = set(), set()
    for n in ui["nodes"]:
        (nx, ny), (nw, nh) = n["pos"], n["size"]
        ny0 = ny - 30  # the title bar is drawn above pos
        if x <= nx and nx + nw <= x + w and y <= ny0 and ny + nh <= y + h:
            inside.add(n["id"])
        elif nx < x + w and x < nx + nw and ny0 < y + h and y < ny + nh:
            overlap.add(n["id"])
    assert not overlap, f"nodes {sorted(overlap)} overlap group {group['title']!r} without being inside it"
    return inside


def check_value(node_type: str, name: str, kind: str, info: dict, value) -> None:
    where = f"{node_type}.{name} = {value!r}"
    if kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
    elif kind in ("STRING", "COMBO"):
        assert isinstance(value, str), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "CONTROL":
        assert value in SEED_CONTROL, where
    elif kind == "UPLOAD":
        assert value == "image", where
    if "options" in info:
        assert value in info["options"], f"{where} not in {info['options']}"
    if "min" in info and kind in ("INT", "FLOAT"):
        assert value >= info["min"], where
    if "max" in info and kind in ("INT", "FLOAT"):
        assert value <= info["max"], where
    if name in MODEL_FILES:
        assert value in MODEL_FILES[name], f"{where}: not an official Comfy-Org file name"


# ------------------------------------------------------------------------------------ CI tests
def test_generator_output_is_what_ships():
    res = subprocess.run([sys.executable, str(WF / "generate.py"), "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_template_browser_lists_each_graph_once():
    """ComfyUI (0.3.64, 0.8.0: app/custom_node_manager.py) lists ``custom_nodes/*/<folder>/*.json`` for these
    folder names as templates: only the UI graphs may match, each once."""
    listed = []
    for folder in ("example_workflows", "example", "examples", "workflow", "workflows"):
        listed += [p.name for p in (REPO / folder).glob("*.json")]
    assert sorted(listed) == sorted(p.name for p in UI_FILES)


def test_expected_files_ship():
    names = {p.name for p in UI_FILES + API_FILES}
    for stem in ("wan22_i2v_14B_4step_accel", "wan22_t2v_14B_4step_accel", "wan22_ti2v_5B_accel"):
        assert {stem + ".json", stem + ".api.json"} <= names
    assert {"wan22_i2v_14B_4step_ab.json", "wan22_i2v_14B_4step_ab_accel.api.json",
            "wan22_i2v_14B_4step_ab_stock.api.json"} <= names
    # the template browser lists example_workflows/: the same UI graphs, no API prompts (they are not graphs)
    assert sorted(p.name for p in EX.glob("*.json")) == [p.name for p in UI_FILES]
    for p in UI_FILES:
        assert (EX / p.name).read_bytes() == p.read_bytes()


def test_our_schemas_are_read():
    s = our_schemas()
    assert {"WanAccelVAEDecode", "WanAccelVAEPatch", "WanAccelAttention"} <= set(s)
    names = [i["name"] for i in s["WanAccelAttention"]["inputs"]]
    assert names[:3] == ["model", "backend", "fallback"]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_graph_is_consistent(path):
    ui = load(path)
    assert ui["version"] == 0.4 and "definitions" not in ui, "flat graph: no subgraphs"
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] >= max(nodes)
    assert ui["last_link_id"] >= max(lk[0] for lk in ui["links"])
    for lid, src, slot, dst, dslot, typ in ui["links"]:
        s, d = nodes[src], nodes[dst]
        assert lid in s["outputs"][slot]["links"] and s["outputs"][slot]["type"] == typ
        assert d["inputs"][dslot]["link"] == lid and d["inputs"][dslot]["type"] == typ
    linked = {lk[0] for lk in ui["links"]}
    for n in ui["nodes"]:
        for i in n.get("inputs", []):
            assert i["link"] is None or i["link"] in linked
        for o in n.get("outputs", []):
            assert set(o["links"] or []) <= linked
    for group in ui["groups"]:
        assert group_members(ui, group), f"empty group {group['title']!r}"
    notes = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    assert notes and any("models/" in n["widgets_values"][0] for n in notes), "a note says what to download, where"
    order = sorted(ui["nodes"], key=lambda n: n["order"])
    seen = set()
    for n in order:
        for i in n.get("inputs", []):
            if i["link"] is not None:
                assert next(lk[1] for lk in ui["links"] if lk[0] == i["link"]) in seen, "order is topological"
        seen.add(n["id"])


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_nodes_and_widgets_match_inputs(path):
    ui = load(path)
    for n in ui["nodes"]:
        if n["type"] in VIRTUAL:
            assert len(n["widgets_values"]) == 1 and isinstance(n["widgets_values"][0], str)
            continue
        ins, outs = spec(n["type"])  # KeyError: unknown node type
        layout = widget_layout(n["type"])
        assert len(n["widgets_values"]) == len(layout), (n["type"], [w[0] for w in layout], n["widgets_values"])
        for (name, kind, info), value in zip(layout, n["widgets_values"]):
            check_value(n["type"], name, kind, info, value)
        sockets = [(name, kind) for name, kind, _, _ in ins if kind not in WIDGET_KINDS]
        assert [(i["name"], i["type"]) for i in n["inputs"]] == sockets, n["type"]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == outs, n["type"]
        required = [name for name, kind, flags, _ in ins if kind not in WIDGET_KINDS and "o" not in flags]
        unlinked = [i["name"] for i in n["inputs"] if i["link"] is None and i["name"] in required]
        assert not unlinked, f"{n['type']} #{n['id']}: required inputs not linked: {unlinked}"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_inputs_match(path):
    prompt = load(path)
    for nid, node in prompt.items():
        ins, outs = spec(node["class_type"])
        declared = {name: (kind, flags, info) for name, kind, flags, info in ins}
        for name, value in node["inputs"].items():
            assert name in declared, f"{node['class_type']} has no input {name!r}"
            kind, _, info = declared[name]
            if kind in WIDGET_KINDS:
                check_value(node["class_type"], name, kind, info, value)
            else:
                src, slot = value
                assert src in prompt, f"#{nid}.{name} links to missing node {src}"
                assert spec(prompt[src]["class_type"])[1][slot][1] == kind, f"#{nid}.{name}: type mismatch"
        missing = [n for n, (k, f, _) in declared.items() if "o" not in f and n not in node["inputs"]]
        assert not missing, f"#{nid} {node['class_type']}: missing required inputs {missing}"


def api_for(ui_path: Path) -> dict[str, dict]:
    ui = load(ui_path)
    stem = ui_path.name[:-5]
    if stem.endswith("_ab"):
        groups = [g for g in ui["groups"] if g["title"].startswith("ACCELERATION")]
        assert len(groups) == 1, "the A/B graph has one switch: the ACCELERATION group"
        members = group_members(ui, groups[0])
        types = {n["id"]: n["type"] for n in ui["nodes"]}
        assert {types[m] for m in members} == {"WanAccelVAEPatch", "WanAccelAttention"} and len(members) == 3
        return {stem + "_accel.api.json": ui_to_api(ui), stem + "_stock.api.json": ui_to_api(ui, bypass=members)}
    return {stem + ".api.json": ui_to_api(ui)}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_and_api_agree(path):
    for name, expected in api_for(path).items():
        assert load(WF / "api" / name) == expected, name


def test_accelerated_graphs_use_our_nodes():
    for path in API_FILES:
        prompt = load(path)
        types = [n["class_type"] for n in prompt.values()]
        stock = path.name.endswith("_stock.api.json")
        decoders = [n for n in prompt.values() if n["class_type"] == "VAEDecode"]
        samplers = [n for n in prompt.values() if n["class_type"].startswith("KSampler")]
        if stock:
            assert not [t for t in types if t.startswith("WanAccel")]
            continue
        assert types.count("WanAccelVAEPatch") == 1
        assert types.count("WanAccelAttention") == len(samplers)
        for node in decoders + [n for n in prompt.values() if n["class_type"] in ("WanImageToVideo",
                                                                                    "Wan22ImageToVideoLatent")]:
            assert prompt[node["inputs"]["vae"][0]]["class_type"] == "WanAccelVAEPatch"
        for s in samplers:
            assert prompt[s["inputs"]["model"][0]]["class_type"] == "WanAccelAttention"


def test_two_pass_schedule():
    for name in ("wan22_i2v_14B_4step_accel.api.json", "wan22_t2v_14B_4step_accel.api.json",
                 "wan22_i2v_14B_4step_ab_accel.api.json"):
        prompt = load(WF / "api" / name)
        ks = sorted((n for n in prompt.values() if n["class_type"] == "KSamplerAdvanced"),
                    key=lambda n: n["inputs"]["start_at_step"])
        hi, lo = (k["inputs"] for k in ks)
        assert hi["steps"] == lo["steps"] == 4 and hi["cfg"] == lo["cfg"] == 1.0
        assert (hi["start_at_step"], hi["end_at_step"], lo["start_at_step"], lo["end_at_step"]) == (0, 2, 2, 4)
        assert hi["add_noise"] == "enable" and hi["return_with_leftover_noise"] == "enable"
        assert lo["add_noise"] == "disable" and lo["return_with_leftover_noise"] == "disable"
        assert lo["latent_image"][0] in prompt and prompt[lo["latent_image"][0]]["class_type"] == "KSamplerAdvanced"

        def unet(k):
            node = prompt[k["model"][0]]
            while node["class_type"] != "UNETLoader":
                node = prompt[node["inputs"]["model"][0]]
            return node["inputs"]["unet_name"]

        assert "high_noise" in unet(hi) and "low_noise" in unet(lo)
        fps = [n["inputs"]["fps"] for n in prompt.values() if n["class_type"] == "CreateVideo"]
        assert fps == [16.0]


def test_core_contract_check_accepts_what_our_graphs_survive_and_names_what_breaks_them():
    ins, outs = CORE["CreateVideo"]
    assert core_contract_breaks("CreateVideo", ins, outs) == []
    assert core_contract_breaks("CreateVideo", ins + [("bit_depth", "INT", "o")], outs + [("X", "X")]) == []
    save_ins, _ = CORE["SaveVideo"]  # 0.33.0: codec became optional (hidden), SaveVideo got an output
    assert core_contract_breaks("SaveVideo", save_ins[:3] + [("codec", "COMBO", "o")], [("video", "VIDEO")]) == []

    def breaks(node_type, ins=None, outs=None):
        return core_contract_breaks(node_type, CORE[node_type][0] if ins is None else ins,
                                    CORE[node_type][1] if outs is None else outs)

    assert breaks("CreateVideo", [ins[0], ("bit_depth", "INT", "o"), *ins[1:]])  # shifts our widget values
    assert breaks("CreateVideo", ins + [("bit_depth", "INT", "")])  # a new required input
    assert breaks("CreateVideo", [(n, "STRING" if n == "fps" else k, f) for n, k, f in ins])
    assert breaks("CreateVideo", ins[:2])
    assert breaks("CLIPLoader", [(n, k, "") for n, k, _ in CORE["CLIPLoader"][0]])  # our graphs leave device out
    assert breaks("KSamplerAdvanced", [(n, k, f.replace("c", "")) for n, k, f in CORE["KSamplerAdvanced"][0]])
    assert breaks("LoadImage", outs=[("MASK", "MASK"), ("IMAGE", "IMAGE")])


# --------------------------------------------------------------------- against a real ComfyUI
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # 0.33.0: a combo whose options carry sub-inputs (SaveVideo.format)


def _live_inputs(cls) -> list[tuple[str, str, str, dict]]:
    it = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, value in (it.get(section) or {}).items():
            typ, opts = value[0], (value[1] if len(value) > 1 else {}) or {}
            if isinstance(typ, (list, tuple)):
                opts = {**opts, "options": list(typ)}
                typ = "COMBO"
            typ = getattr(typ, "value", typ)
            if typ == DYNAMIC_COMBO:  # a combo to the graph: one value out of the options' keys
                opts = {**opts, "options": [o["key"] for o in opts.get("options", [])]}
                typ = "COMBO"
            flags = ("o" if section == "optional" else "") + ("c" if opts.get("control_after_generate") else "") + \
                    ("u" if opts.get("image_upload") else "")
            out.append((name, str(typ), flags, opts))
    return out


def _live_outputs(cls) -> list[tuple[str, str]]:
    types = [getattr(t, "value", t) for t in cls.RETURN_TYPES]
    names = list(getattr(cls, "RETURN_NAMES", None) or types)
    return list(zip(names, types))


def core_contract_breaks(node_type: str, live_ins: list[tuple[str, str, str]], live_outs: list[tuple[str, str]]) -> list[str]:
    """Where a ComfyUI's node no longer gives what ``CORE`` says our graphs rely on; [] when it does.

    Holds: our inputs first, in our order, with our kinds (widgets_values are positional) and the
    control/upload widgets that shift them; an input optional to us is optional there (our graphs may
    leave it out; one required to us may be optional there, we always give it); anything after ours is
    optional (a default fills it); our outputs first, in order (links name output slots by index).
    """
    ins, outs = CORE[node_type]
    breaks = []
    head = live_ins[:len(ins)]
    for want, got in zip(ins, head):
        (name, kind, flags), (lname, lkind, lflags) = want, got
        if (name, kind) != (lname, lkind):
            breaks.append(f"input {name} {kind} is {lname} {lkind} there")
        for flag in "cu":
            if (flag in flags) != (flag in lflags):
                breaks.append(f"input {name}: flags {flags!r} are {lflags!r} there")
        if "o" in flags and "o" not in lflags:
            breaks.append(f"input {name} is optional to our graphs but required there")
    if len(head) < len(ins):
        breaks.append(f"inputs {[i[0] for i in ins[len(head):]]} are gone")
    for name, _, lflags in live_ins[len(ins):]:
        if "o" not in lflags:
            breaks.append(f"new required input {name} (our graphs do not give it)")
    if live_outs[:len(outs)] != outs:
        breaks.append(f"outputs {live_outs} do not start with {outs}")
    return [f"{node_type}: {b}" for b in breaks]


@pytest.fixture(scope="module")
def live_nodes(comfyui):
    import asyncio

    import nodes as comfy_nodes
    from comfy_support import load_our_nodes

    if "WanImageToVideo" not in comfy_nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(comfy_nodes.init_builtin_extra_nodes())
    return load_our_nodes()


def test_core_contract_holds_in_live_comfyui(live_nodes):
    breaks = []
    for node_type in CORE:
        cls = live_nodes[node_type]
        breaks += core_contract_breaks(node_type, [(n, k, f) for n, k, f, _ in _live_inputs(cls)], _live_outputs(cls))
    assert not breaks, "\n".join(breaks)


def test_our_declarations_match_live(live_nodes):
    for node_type, ours in our_schemas().items():
        live = _live_inputs(live_nodes[node_type])
        assert [(n, k, "o" in f) for n, k, f, _ in live] == \
               [(i["name"], i["type"], bool(i.get("optional"))) for i in ours["inputs"]], node_type
        for (name, kind, _, opts), declared in zip(live, ours["inputs"]):
            if "default" in declared:
                assert opts.get("default") == declared["default"], (node_type, name)
            if "options" in declared:
                assert opts["options"] == declared["options"], (node_type, name)


def test_every_node_type_exists_in_comfyui(live_nodes):
    for path in UI_FILES:
        for n in load(path)["nodes"]:
            assert n["type"] in VIRTUAL or n["type"] in live_nodes, f"{path.name}: {n['type']} unknown to ComfyUI"


def test_widget_values_against_live_inputs(live_nodes):
    """Combo options and numeric ranges as this ComfyUI declares them (model-file combos: official names)."""
    for path in API_FILES:
        for nid, node in load(path).items():
            live = {n: (k, opts) for n, k, _, opts in _live_inputs(live_nodes[node["class_type"]])}
            for name, value in node["inputs"].items():
                kind, opts = live[name]
                if kind not in WIDGET_KINDS:
                    continue
                if name in MODEL_FILES or name == "image":
                    opts = {k: v for k, v in opts.items() if k != "options"}  # folder listings: empty here
                check_value(node["class_type"], name, kind, opts, value)
            for name, kind, flags, opts in _live_inputs(live_nodes[node["class_type"]]):
                assert "o" in flags or name in node["inputs"], f"{path.name} #{nid}: {name} missing"
