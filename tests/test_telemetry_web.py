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
    cards = run_js("out(data.recs.map(parts.tooltipText));", recs=[SAMPLER, VAE])
    assert "2 sampler steps × 17.4s" in cards[0]
    assert "24 VAE steps × 0.25s" in cards[1] and "24 sampler" not in cards[1]


def test_panel_step_cells_name_their_unit():
    html = run_js("""out(panel.summaryHtml({records: new Map(data.recs.map(r => [r.node_id, r])), run: null, done: true},
                                           () => ''));""", recs=[SAMPLER, VAE])
    assert "VAE step 24: 0.25s" in html and "sampler step 2: 17.5s" in html
