"""The front end's pure modules (web/telemetry/*.js: no DOM, no ComfyUI app) run under node.

What the graph says about a record — badge parts, hover card, panel HTML, chip placement — is
decided here; the browser tests (test_telemetry_integration.py) check the drawing on real front ends.
Skipped without ``node``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

WEB = Path(__file__).resolve().parent.parent / "web" / "telemetry"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="front-end unit tests need node")


def run_js(body: str, **data):
    """Run ``body`` as an ES module with ``parts``, ``panel`` (panel_html) and ``data`` in scope; it
    must ``out(value)`` once. Returns that value."""
    script = (f'import * as parts from "{(WEB / "parts.js").as_uri()}";\n'
              f'import * as panel from "{(WEB / "panel_html.js").as_uri()}";\n'
              f'const data = {json.dumps(data)};\n'
              'const out = (v) => process.stdout.write(JSON.stringify(v));\n' + body)
    res = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


SAMPLER = {"node_id": "3", "type": "KSampler", "status": "ok", "cached": False, "seconds": 35.2, "share": 0.6,
           "steps": {"count": 2, "unit": "sampler step", "mean_s": 17.4, "max_s": 17.5, "seconds": [17.3, 17.5]}}
VAE = {"node_id": "8", "type": "VAEDecode", "status": "ok", "cached": False, "seconds": 6.0, "share": 0.1,
       "steps": {"count": 24, "unit": "VAE step", "mean_s": 0.25, "max_s": 0.3, "seconds": [0.25] * 24}}


def test_hover_card_names_progress_ticks_for_what_they_are():
    cards = run_js("out(data.recs.map(r => parts.tooltipText(r)));", recs=[SAMPLER, VAE])
    assert "2 sampler steps × 17.4s" in cards[0]
    assert "24 VAE steps × 0.25s" in cards[1] and "24 sampler" not in cards[1]


def test_panel_step_cells_name_their_unit():
    html = run_js("""out(panel.summaryHtml({records: new Map(data.recs.map(r => [r.node_id, r])), run: null, done: true},
                                           () => ''));""", recs=[SAMPLER, VAE])
    assert "VAE step 24: 0.25s" in html and "sampler step 2: 17.5s" in html


SWAP = {"node_id": "58", "type": "KSamplerAdvanced", "status": "ok", "cached": False, "seconds": 40.0, "share": 0.5,
        "partial_load": True, "offloaded_mb": 2300.0, "model_moves_s": 4.3, "model_unload_s": 1.5, "model_swap": True,
        "models_loaded": [{"name": "WAN22@bbbbbb", "size_mb": 16384.0, "loaded_mb": 14084.0, "offloaded_mb": 2300.0}],
        "models_unloaded": [{"name": "WAN22@aaaaaa", "freed_mb": 14084.0}],
        "lora_patch_s": 2.4, "lora_patch_steps_s": 1.6, "lora_patches": 120,
        "advice": [{"kind": "partial_load", "mb": 2300.0, "text": "partial load: 2.2 GB of WAN22@bbbbbb stayed in RAM ..."},
                   {"kind": "model_swap", "seconds": 4.3, "text": "model swap: 4.3 s moving models (WAN22@aaaaaa out, WAN22@bbbbbb in) ..."},
                   {"kind": "lora_steps", "seconds": 1.6, "text": "LoRA on the fly: 1.6 s ..."}]}
DYNAMIC = {"node_id": "3", "type": "KSampler", "status": "ok", "cached": False, "seconds": 20.0, "share": 0.9,
           "partial_load": False, "dynamic_load": True, "model_moves_s": 0.2,
           "models_loaded": [{"name": "WAN22", "size_mb": 16384.0, "loaded_mb": 64.0, "dynamic": True}],
           "models_resident": [{"name": "WAN22", "size_mb": 16384.0, "start_mb": 0.0, "end_mb": 1024.0, "peak_mb": 8256.0,
                                "dynamic": True, "used": True}],
           "advice": [{"kind": "dynamic_streamed", "mb": 8128.0, "text": "Dynamic VRAM: at most 8.1 GB of WAN22's 16.0 GB ..."}]}


def test_time_lost_outside_our_engines_is_marked_on_the_graph():
    parts = run_js("out(data.recs.map(r => parts.overlayParts(r).map(p => p.kind + ':' + p.text)));", recs=[SWAP, DYNAMIC, SAMPLER])
    assert parts[0][-1] == "warn:! 2.25G offloaded swap 4.3s LoRA 2.4s"
    assert parts[1][-1] == "warn:! 7.94G streamed"
    assert not any(p.startswith("warn:") for p in parts[2])  # nothing found, nothing marked


def test_hover_card_explains_moves_lora_dynamic_vram_and_the_fixes():
    swap, dyn = run_js("out(data.recs.map(r => parts.tooltipText(r)));", recs=[SWAP, DYNAMIC])
    assert "models moved 4.30s (unloading 1.50s): swap, WAN22@aaaaaa out, WAN22@bbbbbb in" in swap
    assert "LoRA patching 2.40s, 1.60s of it on the fly during the steps (120 weights)" in swap
    [gpu] = run_js("out([parts.tooltipText(data.r)]);", r={**SWAP, "lora_patch_s": 52.6, "lora_patch_steps_s": 52.6,
                                                         "lora_patch_gpu_s": 3.1, "lora_patch_steps_gpu_s": 3.0})
    assert "LoRA patching 3.10s of GPU time, 3.00s of it on the fly during the steps (120 weights; host 52.6s)" in gpu
    assert "→ partial load: 2.2 GB of WAN22@bbbbbb stayed in RAM" in swap and "→ model swap: 4.3 s" in swap
    assert "WAN22: Dynamic VRAM, up to 8.06G of 16.0G resident (0M at the start, 1.00G at the end); not a partial load" in dyn
    assert "offloaded" not in dyn


def test_summary_lists_the_findings_and_the_run_totals():
    html = run_js("""const recs = new Map(data.recs.map(r => [r.node_id, r]));
        out(panel.summaryHtml({records: recs, run: data.run, done: true}, () => ''));""",
                  recs=[SWAP, DYNAMIC], run={"id": "20260101-000000-0123abcd", "wall_s": 80.0, "status": "success",
                                             "totals": {"model_moves_s": 4.5, "model_swaps": 1, "lora_patch_s": 2.4,
                                                        "lora_patch_steps_s": 1.6, "dynamic_loads": 1, "partial_loads": 1,
                                                        "offloaded_mb": 2300.0},
                                             "advice": [{"node_id": "58", "type": "KSamplerAdvanced", **SWAP["advice"][1]}]})
    assert "models moved 4.50s (1 swap)" in html and "LoRA 2.40s (1.60s during steps)" in html
    assert "1 Dynamic VRAM load" in html
    gpu_html = run_js("""out(panel.summaryHtml({records: new Map(), run: data.run, done: true}, () => ''));""",
                      run={"id": "20260101-000000-0123abcd", "wall_s": 80.0, "status": "success",
                           "totals": {"lora_patch_s": 52.6, "lora_patch_steps_s": 52.6, "lora_patch_gpu_s": 3.1,
                                      "lora_patch_steps_gpu_s": 3.1}})
    assert "LoRA 3.10s GPU (3.10s during steps)" in gpu_html and "52.6" not in gpu_html
    assert "Time lost outside the VAE and attention" in html and "#58 KSamplerAdvanced</span> model swap: 4.3 s" in html
    assert "+WAN22 dyn 8.06G/16.0G" in html and "+WAN22@bbbbbb 13.8G/16.0G" in html


KERNELS = [{"model": "WanModel@a1b2c3", "shape": "1x40x1560x128", "backend": "sage", "requested": "sage", "fallback": False,
            "reason": "as set", "node_id": "62"},
           {"model": "WanModel@a1b2c3", "shape": "1x40x512x72", "backend": "sdpa", "requested": "sage", "fallback": True,
            "reason": "fallback: sage: head dim 72 unsupported", "node_id": "62"}]


def test_attention_kernels_drawn_per_model_and_a_fallback_in_the_warning_colour():
    out = run_js("""out({
        ok: parts.attentionParts([data.k[0]]),
        mixed: parts.attentionParts(data.k),
        only_fallback: parts.attentionParts([data.k[1]]),
        two_models: parts.attentionParts([data.k[0], {...data.k[0], model: 'WanModel@d4e5f6', backend: 'sdpa_cudnn', reason: 'auto'}]),
        sampler: parts.nodeParts(data.rec).map(p => p.kind + ':' + p.text),
        attention_node: parts.nodeParts({node_id: '62', type: 'WanAccelAttention', status: 'ok', cached: true, seconds: 0}, data.k)
            .map(p => p.kind + ':' + p.text),
        card: parts.tooltipText(null, data.k),
        colours: parts.partColors({kind: 'warn'}), attn: parts.partColors({kind: 'attn'}),
    });""", k=KERNELS, rec={**SAMPLER, "attention": KERNELS})
    assert out["ok"] == [{"text": "attn sage", "kind": "attn"}]
    assert out["mixed"] == [{"text": "attn ! sage+sdpa", "kind": "warn"}]
    assert out["only_fallback"] == [{"text": "attn ! sdpa (not sage)", "kind": "warn"}]
    assert out["two_models"] == [{"text": "attn sage | sdpa_cudnn", "kind": "attn"}]
    assert out["sampler"][-1] == "warn:attn ! sage+sdpa"
    assert out["attention_node"] == ["time:cached", "warn:attn ! sage+sdpa"]
    assert "! attention WanModel@a1b2c3 1x40x512x72: ran sdpa (asked sage) — fallback: sage: head dim 72 unsupported" in out["card"]
    assert "attention WanModel@a1b2c3 1x40x1560x128: ran sage — as set" in out["card"]
    assert out["colours"] == {"fg": "#111", "bg": "#ffcc00"} and out["attn"] != out["colours"]


def test_chips_go_where_they_cover_no_widgets_and_no_group_title():
    place = f'import * as pl from "{(WEB / "placement.js").as_uri()}";\n'
    out = run_js(place + """
        const node = {left: 100, top: 200, right: 300, bottom: 400};
        const size = {w: 120, h: 16};
        const groupTitle = {left: 80, top: 170, right: 500, bottom: 195};   // right above the node
        const nodeAbove = {left: 90, top: 60, right: 170, bottom: 190};  // covers the left spot above only
        const nodeBelow = {left: 100, top: 405, right: 300, bottom: 600};
        out({
            free: pl.placeChips(node, size, []),
            under_title: pl.placeChips(node, size, [groupTitle]),
            boxed_in: pl.placeChips(node, size, [groupTitle, nodeBelow, {left: 0, top: 0, right: 1000, bottom: 199}]),
            left_taken: pl.placeChips(node, size, [nodeAbove]),
        });""")
    assert out["free"] == {"left": 100, "top": 181, "right": 220, "bottom": 197, "side": "above", "covers": 0}
    assert out["under_title"]["side"] == "below" and out["under_title"]["top"] == 403 and out["under_title"]["covers"] == 0
    assert out["boxed_in"]["covers"] > 0  # nowhere free: the least covered spot
    assert out["left_taken"] == {"left": 180, "top": 181, "right": 300, "bottom": 197, "side": "above", "covers": 0}


def test_hover_card_says_how_the_vae_ran_and_where_its_time_went():
    rec = dict(VAE, vae_plan=[{"stage": "decode", "devices": 1, "tiles": 6, "tile_px": "208x832", "slices": 14,
                               "slice_frames": 2, "steps": 84, "estimated_mb": 4200.0, "budget_mb": 6144.0}],
               phases=[{"name": "vae.load", "seconds": 0.02}, {"name": "vae.stem", "seconds": 0.18},
                       {"name": "vae.tiles", "seconds": 2.78}, {"name": "vae.output", "seconds": 0.07}])
    enc = dict(VAE, type="WanImageToVideo",
               vae_plan=[{"stage": "encode", "devices": 2, "tiles": 1, "tile_px": "1216x832", "slices": 21,
                          "slice_frames": 1, "steps": 21, "estimated_mb": 3000.0, "budget_mb": None, "staged_mb": 471.2}],
               phases=[{"name": "vae.encode_tiles", "seconds": 1.5}, {"name": "vae.encode_tiles", "seconds": 0.5}])
    dec_card, enc_card, plain = run_js("out(data.recs.map(r => parts.tooltipText(r)));", recs=[rec, enc, SAMPLER])
    assert "VAE decode: 6 tiles of 208x832 px × 14 slices = 84 steps; budget 6.00G (est. 4.10G)" in dec_card
    assert "VAE time: load 20.0ms, stem 0.18s, tiles 2.78s, output 70.0ms" in dec_card
    assert ("VAE encode: 1 tile of 1216x832 px × 21 slices = 21 steps on 2 devices; no budget (est. 2.93G), "
            "input staged on the GPU 471M") in enc_card
    assert "VAE time: encode tiles 2.00s" in enc_card
    assert "VAE time" not in plain and "Wan Accel VAE engine" not in plain  # no engine, nothing said of it
