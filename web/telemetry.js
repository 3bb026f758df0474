// wan_accel telemetry: per-node overlay (node badges: drawn by the classic canvas and by the Vue
// node renderer alike), a run summary panel, and an A/B view of two saved runs.
// Data: server events "wan_accel.telemetry.*" (live) and GET /wan_accel/telemetry/runs[/{id}].
// The pieces are ES modules under telemetry/ (ComfyUI serves every file of web/ as an extension
// script; those modules only export).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { allNodes, applyRecord, attachBadges, chipsOnScreen, clearOverlay, installTooltip, layer, redraw, SETTING_OVERLAY, setting } from "./telemetry/overlay.js";
import { Panel } from "./telemetry/panel.js";
import { nodeParts, overlayParts } from "./telemetry/parts.js";

const EXT = "WanAccel.Telemetry";
const SETTING_PANEL = "WanAccel.Telemetry.OpenPanelAfterRun";

const state = {
  current: null, // {run_id, records: Map(display id -> record), wall_s, done, run}
  runs: [],
  tab: "summary",
  ab: { a: null, b: null },
};

// ------------------------------------------------------------------ HTTP
async function getJSON(path) {
  const res = await api.fetchApi(path);
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}
async function loadRuns() {
  try {
    state.runs = (await getJSON("/wan_accel/telemetry/runs?limit=100")).runs ?? [];
  } catch {
    state.runs = [];
  }
  panel.render();
}
const runCache = new Map();
async function getRun(id) {
  if (!runCache.has(id)) runCache.set(id, await getJSON(`/wan_accel/telemetry/runs/${encodeURIComponent(id)}`));
  return runCache.get(id);
}
const runUrl = (id, format) => api.apiURL(`/wan_accel/telemetry/runs/${encodeURIComponent(id)}${format === "csv" ? "?format=csv" : ""}`);

const panel = new Panel({ state, getRun, cachedRun: (id) => runCache.get(id), loadRuns, showRun, runUrl });

function showRun(run, live = false) {
  clearOverlay();
  state.current = { run_id: run.id, records: new Map(), wall_s: run.wall_s, done: !live, run };
  for (const rec of run.nodes ?? []) {
    state.current.records.set(String(rec.display_node_id ?? rec.node_id), rec);
    applyRecord(rec);
  }
  redraw();
  panel.render();
}

// ------------------------------------------------------------------ server events
function onRunStart(e) {
  clearOverlay();
  state.current = { run_id: e.detail.run_id, records: new Map(), wall_s: null, done: false, run: null };
  panel.render();
}
function onNode(e) {
  const rec = e.detail.record;
  if (!state.current || state.current.run_id !== e.detail.run_id) {
    state.current = { run_id: e.detail.run_id, records: new Map(), wall_s: null, done: false, run: null };
  }
  state.current.records.set(String(rec.display_node_id ?? rec.node_id), rec);
  applyRecord(rec);
  redraw();
  panel.render();
}
function onRun(e) {
  showRun(e.detail);
  loadRuns();
  if (setting(SETTING_PANEL, false)) panel.open();
}

// ------------------------------------------------------------------ extension
app.registerExtension({
  name: EXT,
  settings: [
    { id: SETTING_OVERLAY, name: "Show per-node telemetry overlay (time, share of run, peak VRAM, partial-load / OOM warnings)", type: "boolean", defaultValue: true, category: ["Wan Accel", "Telemetry", "Overlay"], onChange: () => redraw() },
    { id: SETTING_PANEL, name: "Open the telemetry summary panel after each run", type: "boolean", defaultValue: false, category: ["Wan Accel", "Telemetry", "Panel"] },
  ],
  commands: [{ id: "WanAccel.Telemetry.TogglePanel", label: "Toggle Wan Accel telemetry panel", icon: "pi pi-stopwatch", function: () => panel.toggle() }],
  async setup() {
    api.addEventListener("wan_accel.telemetry.run_start", onRunStart);
    api.addEventListener("wan_accel.telemetry.node", onNode);
    api.addEventListener("wan_accel.telemetry.run", onRun);
    api.addEventListener("wan_accel.telemetry.saved", () => loadRuns());
    panel.ensure();
    const btn = document.createElement("button");
    btn.id = "wan-accel-telemetry-btn";
    btn.textContent = "telemetry";
    btn.title = "Wan Accel telemetry: run summary and A/B view";
    btn.addEventListener("click", () => panel.toggle());
    document.body.appendChild(btn);
    installTooltip();
    for (const n of allNodes()) attachBadges(n);
    window.wanAccelTelemetry = { layer, chips: chipsOnScreen, open: () => panel.open(), toggle: () => panel.toggle(), state, showRun, getRun, loadRuns, overlayParts, nodeParts, setTab: (t) => panel.setTab(t) };
  },
  nodeCreated(node) {
    attachBadges(node);
  },
  loadedGraphNode(node) {
    attachBadges(node);
  },
});
