"""Generate the shipped workflows: UI-format graphs and API-format prompts from one description.

    python workflows/generate.py          # rewrite workflows/{ui,api}/*.json and example_workflows/*.json
    python workflows/generate.py --check  # exit 1 if a shipped file differs from what this writes

Layout: ``example_workflows/`` holds the UI graphs (ComfyUI's template browser lists every ``*.json``
directly inside a custom node's ``example_workflows/``, ``examples/``, ``workflow/``, ``workflows/``...
folders, so nothing else may sit directly in ``workflows/``: API prompts would be listed as templates and
graphs twice); ``workflows/ui/`` the same graphs, ``workflows/api/`` the API prompts.

The UI graphs are flat (no subgraphs, no converted widgets, no frontend-only node types other than
MarkdownNote/Note), the layout ComfyUI front ends from 1.2x to 1.3x load. ``tests/test_workflows.py``
checks them independently: node types and widget values against the nodes' real inputs, and that
each API prompt is what the UI graph converts to.

Over 400 lines on purpose: the one description of every shipped graph lives here, so the UI files,
the API prompts and the examples cannot drift apart.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLES = REPO / "example_workflows"

# --------------------------------------------------------------------------------------- model files
HF22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
HF21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
FILES = {  # sizes as the official Comfy-Org templates state them ("" where they do not)
    "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": (HF22, "diffusion_models", "13.31 GB"),
    "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": (HF22, "diffusion_models", "13.31 GB"),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": (HF22, "diffusion_models", ""),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": (HF22, "diffusion_models", ""),
    "wan2.2_ti2v_5B_fp16.safetensors": (HF22, "diffusion_models", ""),
    "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors": (HF22, "loras", "1.14 GB"),
    "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors": (HF22, "loras", "1.14 GB"),
    "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors": (HF22, "loras", ""),
    "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors": (HF22, "loras", ""),
    "wan_2.1_vae.safetensors": (HF22, "vae", "242.1 MB"),
    "wan2.2_vae.safetensors": (HF22, "vae", ""),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (HF21, "text_encoders", "6.27 GB"),
}

# ------------------------------------------------------------------------------------- node catalog
# type: (socket inputs [(name, type)], outputs [(name, type)], widgets in UI order). "control_after_generate"
# and "upload" are front-end widgets: in widgets_values of the UI graph, not in the API prompt.
UI_ONLY_WIDGETS = ("control_after_generate", "upload")
CATALOG = {
    "UNETLoader": ([], [("MODEL", "MODEL")], ["unet_name", "weight_dtype"]),
    "CLIPLoader": ([], [("CLIP", "CLIP")], ["clip_name", "type", "device"]),
    "VAELoader": ([], [("VAE", "VAE")], ["vae_name"]),
    "LoraLoaderModelOnly": ([("model", "MODEL")], [("MODEL", "MODEL")], ["lora_name", "strength_model"]),
    "ModelSamplingSD3": ([("model", "MODEL")], [("MODEL", "MODEL")], ["shift"]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], ["text"]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], ["image", "upload"]),
    "WanImageToVideo": ([("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                         ("clip_vision_output", "CLIP_VISION_OUTPUT"), ("start_image", "IMAGE")],
                        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
                        ["width", "height", "length", "batch_size"]),
    "Wan22ImageToVideoLatent": ([("vae", "VAE"), ("start_image", "IMAGE")], [("LATENT", "LATENT")],
                                ["width", "height", "length", "batch_size"]),
    "EmptyHunyuanLatentVideo": ([], [("LATENT", "LATENT")], ["width", "height", "length", "batch_size"]),
    "KSamplerAdvanced": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                          ("latent_image", "LATENT")], [("LATENT", "LATENT")],
                         ["add_noise", "noise_seed", "control_after_generate", "steps", "cfg", "sampler_name",
                          "scheduler", "start_at_step", "end_at_step", "return_with_leftover_noise"]),
    "KSampler": ([("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                  ("latent_image", "LATENT")], [("LATENT", "LATENT")],
                 ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], []),
    "CreateVideo": ([("images", "IMAGE"), ("audio", "AUDIO")], [("VIDEO", "VIDEO")], ["fps"]),
    "SaveVideo": ([("video", "VIDEO")], [], ["filename_prefix", "format", "codec"]),
    "MarkdownNote": ([], [], ["text"]),
    "Note": ([], [], ["text"]),
    # ours (nodes/vae_nodes.py, nodes/attention_nodes.py)
    "WanAccelVAEPatch": ([("vae", "VAE")], [("VAE", "VAE")], ["max_vram_gb", "tile_size", "slice_frames", "devices"]),
    "WanAccelAttention": ([("model", "MODEL")], [("MODEL", "MODEL")],
                          ["backend", "fallback", "verify", "min_cosine", "max_rel_error", "attention", "steps",
                           "blocks"]),
}
VIRTUAL = ("MarkdownNote", "Note")  # front-end only: never in an API prompt
OURS = ("WanAccelVAEPatch", "WanAccelAttention", "WanAccelVAEDecode")

NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
            "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
            "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
POS_I2V = ("A lighthouse keeper in a yellow raincoat walks along a wet stone pier at dusk, waves breaking against "
           "the rocks, the camera slowly tracks beside her, spray and wind in her hair, cinematic lighting.")
POS_T2V = ("A red fox trots through fresh snow in a birch forest at sunrise, breath visible in the cold air, "
           "the camera follows at ground level, soft golden light between the trees.")
ATTN_DEFAULT = {"backend": "auto", "fallback": "sdpa", "verify": True, "min_cosine": 0.999, "max_rel_error": 0.05,
                "attention": "all", "steps": "", "blocks": ""}
VAE_PATCH_DEFAULT = {"max_vram_gb": 0.0, "tile_size": 0, "slice_frames": 0, "devices": "auto"}


def _download_note(files: list[str], extra: str = "") -> str:
    by_dir: dict[str, list[str]] = {}
    lines = ["## Models: what to download and where", "",
             "Comfy-Org's repackaged files. Put each in the folder named under `ComfyUI/models/`:", ""]
    for name in files:
        base, folder, size = FILES[name]
        by_dir.setdefault(folder, []).append(name)
        lines.append(f"- [{name}]({base}/{folder}/{name}){f' ({size})' if size else ''} → `models/{folder}/`")
    lines += ["", "```", "ComfyUI/models/"]
    for folder, names in by_dir.items():
        lines.append(f"├── {folder}/")
        lines += [f"│   └── {n}" for n in names]
    lines += ["```", ""]
    if extra:
        lines += [extra, ""]
    lines += ["**comfyui-wan-accel** (this package) must be installed for the `Wan Accel` nodes. Telemetry needs no "
              "node: every run is recorded per node, drawn as badges on the graph and saved under "
              "`output/wan_accel/telemetry/` (the `telemetry` button opens the summary)."]
    return "\n".join(lines)


class Graph:
    def __init__(self, name: str):
        self.name = name
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.groups: list[dict] = []
        self._next = 1

    def add(self, type_: str, widgets: dict | None = None, inputs: dict | None = None, pos=(0, 0), size=None,
            title: str | None = None, mode: int = 0, node_id: int | None = None) -> int:
        sockets, outputs, widget_names = CATALOG[type_]
        nid = node_id or self._next
        self._next = max(self._next, nid + 1)
        widgets = dict(widgets or {})
        if "control_after_generate" in widget_names:
            widgets.setdefault("control_after_generate", "fixed")
        if "upload" in widget_names:
            widgets.setdefault("upload", "image")
        missing = [w for w in widget_names if w not in widgets]
        extra = [w for w in widgets if w not in widget_names]
        if missing or extra:
            raise ValueError(f"{type_}: widgets missing {missing}, unknown {extra}")
        node = {"id": nid, "type": type_, "pos": list(pos), "size": list(size or (320, 60 + 26 * len(widget_names))),
                "flags": {}, "order": 0, "mode": mode,
                "inputs": [{"name": n, "type": t, "link": None} for n, t in sockets],
                "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": type_}, "widgets_values": [widgets[w] for w in widget_names]}
        if type_ in VIRTUAL:
            del node["inputs"], node["outputs"]
            node["properties"] = {}
        elif type_ in OURS:
            node["properties"]["cnr_id"] = "comfyui-wan-accel"
        else:
            node["properties"]["cnr_id"] = "comfy-core"
        models = [{"name": v, "url": f"{FILES[v][0]}/{FILES[v][1]}/{v}", "directory": FILES[v][1]}
                  for v in widgets.values() if isinstance(v, str) and v in FILES]
        if models:
            node["properties"]["models"] = models
        if title:
            node["title"] = title
        self.nodes.append(node)
        for name, (src, slot) in (inputs or {}).items():
            self.link(src, slot, nid, name)
        return nid

    def node(self, nid: int) -> dict:
        return next(n for n in self.nodes if n["id"] == nid)

    def link(self, src: int, slot: int, dst: int, name: str) -> None:
        lid = len(self.links) + 1
        s, d = self.node(src), self.node(dst)
        out = s["outputs"][slot]
        inp = next(i for i in d["inputs"] if i["name"] == name)
        if out["type"] != inp["type"]:
            raise ValueError(f"link {s['type']}.{out['name']} ({out['type']}) -> {d['type']}.{name} ({inp['type']})")
        if inp["link"] is not None:
            raise ValueError(f"{d['type']}.{name} linked twice")
        inp["link"] = lid
        out["links"].append(lid)
        self.links.append([lid, src, slot, dst, d["inputs"].index(inp), out["type"]])

    def group(self, title: str, members: list[int], color: str = "#3f789e") -> None:
        xs = [self.node(m)["pos"][0] for m in members]
        ys = [self.node(m)["pos"][1] for m in members]
        x2 = [self.node(m)["pos"][0] + self.node(m)["size"][0] for m in members]
        y2 = [self.node(m)["pos"][1] + self.node(m)["size"][1] for m in members]
        x0, y0 = min(xs) - 20, min(ys) - 60
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, max(x2) + 20 - x0,
                            max(y2) + 20 - y0], "color": color, "font_size": 22, "flags": {}})

    # ---------------------------------------------------------------------------- formats
    def ui(self) -> dict:
        order = _topo(self)
        nodes = copy.deepcopy(self.nodes)
        for n in nodes:
            n["order"] = order[n["id"]]
        return {"id": _uuid(self.name), "revision": 0, "last_node_id": max(n["id"] for n in nodes),
                "last_link_id": len(self.links), "nodes": nodes, "links": copy.deepcopy(self.links),
                "groups": copy.deepcopy(self.groups), "config": {},
                "extra": {"ds": {"scale": 0.55, "offset": [40, 40]}, "wan_accel_workflow": self.name},
                "version": 0.4}

    def api(self, bypass: tuple[int, ...] = ()) -> dict:
        return ui_to_api(self.ui(), bypass=bypass)


def ui_to_api(ui: dict, bypass: tuple[int, ...] = ()) -> dict:
    """Convert a flat UI graph to an API prompt the way the front end does (graphToPrompt): virtual nodes
    and muted nodes (mode 2) dropped; bypassed nodes (mode 4, or listed in ``bypass``) pass their input of
    the output's type through; front-end-only widgets dropped."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {lk[0]: lk for lk in ui["links"]}

    def bypassed(n):
        return n["mode"] == 4 or n["id"] in bypass

    def source(link_id):
        _, src, slot, _, _, typ = links[link_id]
        n = nodes[src]
        while bypassed(n):
            out_type = n["outputs"][slot]["type"]
            match = [i for i in n["inputs"] if i["type"] == out_type and i["link"] is not None]
            if not match:
                return None
            _, src, slot, _, _, _ = links[match[0]["link"]]
            n = nodes[src]
        if n["mode"] == 2:
            return None
        return [str(src), slot]

    prompt = {}
    for nid in sorted(nodes):
        n = nodes[nid]
        if n["type"] in VIRTUAL or n["mode"] == 2 or bypassed(n):
            continue
        _, _, widget_names = CATALOG[n["type"]]
        inputs = {}
        for name, value in zip(widget_names, n["widgets_values"]):
            if name not in UI_ONLY_WIDGETS:
                inputs[name] = value
        for inp in n["inputs"]:
            if inp["link"] is not None:
                src = source(inp["link"])
                if src is not None:
                    inputs[inp["name"]] = src
        prompt[str(nid)] = {"class_type": n["type"], "inputs": inputs, "_meta": {"title": n.get("title", n["type"])}}
    return prompt


def _topo(g: Graph) -> dict:
    deps = {n["id"]: {lk[1] for lk in g.links if lk[3] == n["id"]} for n in g.nodes}
    order, done = {}, set()
    while len(done) < len(deps):
        ready = sorted(i for i, d in deps.items() if i not in done and d <= done)
        for i in ready:
            order[i] = len(order)
            done.add(i)
    return order


def _uuid(name: str) -> str:
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-wan-accel/" + name))


# ------------------------------------------------------------------------------------------- graphs
def two_pass(name: str, kind: str = "i2v", ab: bool = False) -> Graph:
    """Wan 2.2 14B two-pass (high-noise expert steps 0-2, low-noise expert 2-4), lightx2v 4-step LoRAs."""
    g = Graph(name)
    if kind == "i2v":
        high, low = "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
        lhigh = "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors"
        llow = "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors"
        size = {"width": 832, "height": 1216, "length": 81, "batch_size": 1}
    else:
        high, low = "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
        lhigh = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors"
        llow = "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors"
        size = {"width": 1280, "height": 720, "length": 81, "batch_size": 1}
    files = [high, low, lhigh, llow, "wan_2.1_vae.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"]
    sizes = ("Sizes: 832×1216 (portrait, the default of the i2v graphs), 640×640, 1280×720; length 81 frames = "
             "5 s at 16 fps (length must be 4k+1). Steps: 4 in total, the high-noise expert runs steps 0–2 "
             "(`end_at_step` 2, leftover noise returned), the low-noise expert steps 2–4, cfg 1 (the LoRAs "
             "are distilled for cfg 1), shift 5.")
    g.add("MarkdownNote", {"text": _download_note(files, sizes)}, pos=(-420, -40), size=(400, 720), title="Models")

    clip = g.add("CLIPLoader", {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan",
                                "device": "default"}, pos=(0, 500))
    pos = g.add("CLIPTextEncode", {"text": POS_I2V if kind == "i2v" else POS_T2V}, {"clip": (clip, 0)},
                pos=(380, 420), size=(420, 160), title="Positive prompt")
    neg = g.add("CLIPTextEncode", {"text": NEGATIVE}, {"clip": (clip, 0)}, pos=(380, 620), size=(420, 160),
                title="Negative prompt")
    vae = g.add("VAELoader", {"vae_name": "wan_2.1_vae.safetensors"}, pos=(0, 860))
    vaep = g.add("WanAccelVAEPatch", VAE_PATCH_DEFAULT, {"vae": (vae, 0)}, pos=(1020, 580), size=(320, 130),
                 title="Wan VAE Accelerate (patch)")
    if kind == "i2v":
        img = g.add("LoadImage", {"image": "wan_accel_start.png"}, pos=(380, 1040), size=(320, 320),
                    title="Start image")
        cond = g.add("WanImageToVideo", size, {"positive": (pos, 0), "negative": (neg, 0), "vae": (vaep, 0),
                                               "start_image": (img, 0)}, pos=(860, 780), size=(300, 210))
        p_src, n_src, lat_src = (cond, 0), (cond, 1), (cond, 2)
    else:
        lat = g.add("EmptyHunyuanLatentVideo", size, pos=(860, 780), size=(300, 150))
        p_src, n_src, lat_src = (pos, 0), (neg, 0), (lat, 0)

    models = []
    for i, (unet, lora, label) in enumerate(((high, lhigh, "high"), (low, llow, "low"))):
        y = i * 290
        u = g.add("UNETLoader", {"unet_name": unet, "weight_dtype": "default"}, pos=(0, y), size=(360, 90),
                  title=f"Load {label}-noise expert")
        lo = g.add("LoraLoaderModelOnly", {"lora_name": lora, "strength_model": 1.0}, {"model": (u, 0)},
                   pos=(380, y), size=(360, 90), title=f"4-step LoRA ({label} noise)")
        ms = g.add("ModelSamplingSD3", {"shift": 5.0}, {"model": (lo, 0)}, pos=(760, y), size=(220, 60))
        at = g.add("WanAccelAttention", ATTN_DEFAULT, {"model": (ms, 0)}, pos=(1020, y), size=(320, 270),
                   title=f"Wan Accel Attention ({label} noise)")
        models.append(at)
    seed = 42 if ab else 123456789
    k1 = g.add("KSamplerAdvanced", {"add_noise": "enable", "noise_seed": seed, "control_after_generate": "fixed",
                                    "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                    "start_at_step": 0, "end_at_step": 2, "return_with_leftover_noise": "enable"},
               {"model": (models[0], 0), "positive": p_src, "negative": n_src, "latent_image": lat_src},
               pos=(1420, 0), size=(320, 330), title="High-noise pass (steps 0-2)")
    k2 = g.add("KSamplerAdvanced", {"add_noise": "disable", "noise_seed": 0, "control_after_generate": "fixed",
                                    "steps": 4, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                                    "start_at_step": 2, "end_at_step": 4, "return_with_leftover_noise": "disable"},
               {"model": (models[1], 0), "positive": p_src, "negative": n_src, "latent_image": (k1, 0)},
               pos=(1780, 0), size=(320, 330), title="Low-noise pass (steps 2-4)")
    dec = g.add("VAEDecode", {}, {"samples": (k2, 0), "vae": (vaep, 0)}, pos=(1780, 400), size=(220, 50))
    vid = g.add("CreateVideo", {"fps": 16.0}, {"images": (dec, 0)}, pos=(1780, 500), size=(220, 80))
    g.add("SaveVideo", {"filename_prefix": f"video/wan_accel_{kind}{'_ab' if ab else ''}", "format": "auto",
                        "codec": "auto"}, {"video": (vid, 0)}, pos=(2140, 0), size=(480, 600))
    accel = [vaep] + models
    if ab:
        g.group("ACCELERATION: bypass this group for the stock path (select the group, Ctrl+B)", accel, "#8a4a1f")
        g.add("MarkdownNote", {"text": AB_NOTE}, pos=(1420, 660), size=(700, 560), title="How to A/B")
    else:
        g.group("Wan Accel: exact low-VRAM VAE (encode + decode) and per-expert attention", accel, "#3f789e")
    g.accel = accel  # type: ignore[attr-defined]
    return g


AB_NOTE = """## A/B: stock vs accelerated, same seed

**The switch** is the orange group: its three nodes (the VAE patch and one attention node per expert) are the
only difference between the paths. Select the group and press **Ctrl+B** (or right-click the group → *Bypass
Group Nodes*) for the **stock** path; press it again for the **accelerated** one. Bypassed, each node passes
its input straight through (VAE → VAE, MODEL → MODEL), so the graph, the node ids and the seed (fixed, 42)
stay the same and the two runs are comparable node by node.

**Run it twice**: queue once with the group bypassed (A = stock), once with it active (B = accelerated). Queue
each twice if you want warm numbers: the first run of a session also loads the models from disk.

**Read the overlays** (telemetry is automatic):
- Badges over each node: `17.4s · 62%` = the node's seconds and share of the run (green < 10 %, amber, red
  > 30 %); `2×17.4s ▲14.2G` = steps × seconds per step and peak VRAM allocated; a yellow
  `! 2.25G offloaded` = the model did not fit and is streamed every step: compare this first.
- Open the **telemetry** panel (bottom centre) → **A/B**, pick run A and run B: seconds per node, Δ and Δ %
  (green = B faster), peak VRAM, partial-load and cached flags, wall times. The two KSamplerAdvanced rows
  are the attention gain (one per expert), VAE Decode and WanImageToVideo the VAE gain.
- Ignore rows marked `cached`: ComfyUI reused an output and the node did not run.
- Frames of both runs should look the same: `sdpa` / exact backends give near-identical frames; `auto`
  only keeps a backend that passed verification against float32 attention.

For scripted A/B runs: `workflows/api/wan22_i2v_14B_4step_ab_stock.api.json` and `..._ab_accel.api.json`
in the package (and `bench/two_pass.py`, which runs both in ComfyUI and compares the frames)."""


def ti2v_5b(name: str) -> Graph:
    g = Graph(name)
    files = ["wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_vae.safetensors", "umt5_xxl_fp8_e4m3fn_scaled.safetensors"]
    g.add("MarkdownNote", {"text": _download_note(files, "Wan 2.2 TI2V 5B: one model for text- and image-to-video "
                                                  "at 1280×704, 121 frames, 24 fps, with the Wan 2.2 VAE (16× "
                                                  "spatial compression). Leave the start image unconnected "
                                                  "(or bypass Load Image) for text-to-video.")},
          pos=(-420, -40), size=(400, 640), title="Models")
    u = g.add("UNETLoader", {"unet_name": "wan2.2_ti2v_5B_fp16.safetensors", "weight_dtype": "default"},
              pos=(0, 0), size=(360, 90))
    ms = g.add("ModelSamplingSD3", {"shift": 8.0}, {"model": (u, 0)}, pos=(380, 0), size=(220, 60))
    at = g.add("WanAccelAttention", ATTN_DEFAULT, {"model": (ms, 0)}, pos=(640, 0), size=(320, 270),
               title="Wan Accel Attention")
    clip = g.add("CLIPLoader", {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan",
                                "device": "default"}, pos=(0, 320))
    pos = g.add("CLIPTextEncode", {"text": POS_T2V}, {"clip": (clip, 0)}, pos=(160, 480), size=(420, 160),
                title="Positive prompt")
    neg = g.add("CLIPTextEncode", {"text": NEGATIVE}, {"clip": (clip, 0)}, pos=(160, 680), size=(420, 160),
                title="Negative prompt")
    vae = g.add("VAELoader", {"vae_name": "wan2.2_vae.safetensors"}, pos=(0, 180))
    vaep = g.add("WanAccelVAEPatch", VAE_PATCH_DEFAULT, {"vae": (vae, 0)}, pos=(640, 290), size=(320, 130),
                 title="Wan VAE Accelerate (patch)")
    img = g.add("LoadImage", {"image": "wan_accel_start.png"}, pos=(640, 900), size=(320, 320), title="Start image")
    lat = g.add("Wan22ImageToVideoLatent", {"width": 1280, "height": 704, "length": 121, "batch_size": 1},
                {"vae": (vaep, 0), "start_image": (img, 0)}, pos=(1000, 600), size=(300, 170))
    k = g.add("KSampler", {"seed": 123456789, "control_after_generate": "fixed", "steps": 20, "cfg": 5.0,
                           "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0},
              {"model": (at, 0), "positive": (pos, 0), "negative": (neg, 0), "latent_image": (lat, 0)},
              pos=(1000, 0), size=(320, 300))
    dec = g.add("VAEDecode", {}, {"samples": (k, 0), "vae": (vaep, 0)}, pos=(1360, 0), size=(220, 50))
    vid = g.add("CreateVideo", {"fps": 24.0}, {"images": (dec, 0)}, pos=(1360, 100), size=(220, 80))
    g.add("SaveVideo", {"filename_prefix": "video/wan_accel_ti2v_5B", "format": "auto", "codec": "auto"},
          {"video": (vid, 0)}, pos=(1620, 0), size=(480, 600))
    g.group("Wan Accel", [vaep, at])
    return g


def outputs() -> dict[str, dict]:
    """{file name: JSON} of everything shipped under workflows/ (UI graphs also go to example_workflows/)."""
    i2v = two_pass("wan22_i2v_14B_4step_accel", "i2v")
    ab = two_pass("wan22_i2v_14B_4step_ab", "i2v", ab=True)
    t2v = two_pass("wan22_t2v_14B_4step_accel", "t2v")
    ti2v = ti2v_5b("wan22_ti2v_5B_accel")
    return {
        "wan22_i2v_14B_4step_accel.json": i2v.ui(),
        "wan22_i2v_14B_4step_accel.api.json": i2v.api(),
        "wan22_i2v_14B_4step_ab.json": ab.ui(),
        "wan22_i2v_14B_4step_ab_accel.api.json": ab.api(),
        "wan22_i2v_14B_4step_ab_stock.api.json": ab.api(bypass=tuple(ab.accel)),
        "wan22_t2v_14B_4step_accel.json": t2v.ui(),
        "wan22_t2v_14B_4step_accel.api.json": t2v.api(),
        "wan22_ti2v_5B_accel.json": ti2v.ui(),
        "wan22_ti2v_5B_accel.api.json": ti2v.api(),
    }


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = ap.parse_args(argv)
    wanted = {}
    for name, obj in outputs().items():
        if name.endswith(".api.json"):
            wanted[HERE / "api" / name] = dumps(obj)
        else:
            wanted[HERE / "ui" / name] = dumps(obj)
            wanted[EXAMPLES / name] = dumps(obj)
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if opts.check:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)}")
        return 1 if stale else 0
    for p, text in wanted.items():
        p.parent.mkdir(exist_ok=True)
        p.write_text(text, encoding="utf-8")
    print(f"wrote {len(wanted)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
