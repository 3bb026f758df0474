// wan_accel telemetry: per-node overlay (node badges: drawn by the classic canvas and by the Vue
// node renderer alike), a run summary panel, and an A/B view of two saved runs.
// Data: server events "wan_accel.telemetry.*" (live) and GET /wan_accel/telemetry/runs[/{id}].
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EXT = "WanAccel.Telemetry";
const SETTING_OVERLAY = "WanAccel.Telemetry.Overlay";
const SETTING_PANEL = "WanAccel.Telemetry.OpenPanelAfterRun";
const KEY = "__wanAccelTelemetry";

const TIPS = {
  time: "Wall seconds the node itself ran (its own segments; a lazy node's waits for its inputs are not counted).",
  share: "Share of the whole run's wall time spent in this node.",
  gpu: "GPU seconds: CUDA events recorded on the node's stream around it, read after the node (no synchronize inside it).",
  vram: "Peak VRAM allocated by PyTorch while the node ran (reserved by the caching allocator in the tooltip).",
  vram_after: "VRAM allocated / reserved when the node finished.",
  ram: "Process resident memory (RSS) when the node finished, and its change during the node.",
  steps: "Progress steps (sampler steps): count x mean seconds per step; hover for every step.",
  models: "Models loaded (+) or unloaded (-) during the node, with load seconds.",
  partial: "A model was loaded only partially: this much of it stayed offloaded in RAM and is streamed every step (slow).",
  oom: "Out-of-memory retries inside the node (e.g. VAE decode retried tiled).",
  cached: "Output came from ComfyUI's cache: the node did not run.",
};

const state = {
  current: null, // {run_id, records: Map(display id -> record), wall_s, done, run}
  runs: [],
  panel: null,
  tab: "summary",
  ab: { a: null, b: null },
};

// ------------------------------------------------------------------ helpers
function setting(id, fallback) {
  try {
    const v = app.extensionManager?.setting?.get?.(id) ?? app.ui?.settings?.getSettingValue?.(id);
    return v === undefined || v === null ? fallback : v;
  } catch {
    return fallback;
  }
}
const fmtS = (s) => (s == null ? "–" : s >= 100 ? `${s.toFixed(0)}s` : s >= 10 ? `${s.toFixed(1)}s` : s >= 0.1 ? `${s.toFixed(2)}s` : `${(s * 1000).toFixed(1)}ms`);
const fmtMB = (mb) => (mb == null ? "–" : mb >= 10240 ? `${(mb / 1024).toFixed(1)}G` : mb >= 1024 ? `${(mb / 1024).toFixed(2)}G` : `${mb.toFixed(0)}M`);
const fmtPct = (x) => (x == null ? "–" : `${(x * 100).toFixed(x < 0.1 ? 1 : 0)}%`);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function allNodes(graph = app.graph, out = []) {
  for (const n of graph?._nodes ?? graph?.nodes ?? []) {
    out.push(n);
    if (n.subgraph && n.subgraph !== graph) allNodes(n.subgraph, out);
  }
  return out;
}

// "65:70:63" -> [node 65 (root graph), node 70 (in 65's subgraph), node 63]
function resolvePath(id) {
  const path = [];
  let graph = app.graph;
  for (const seg of String(id).split(":")) {
    const node = graph?.getNodeById?.(seg) ?? graph?.getNodeById?.(Number(seg));
    if (!node) break;
    path.push(node);
    graph = node.subgraph;
  }
  return path;
}

// ------------------------------------------------------------------ node overlay (badges)
function badgeColors(rec) {
  const share = rec.share ?? 0;
  if (rec.status === "error" || rec.status === "interrupted") return { fg: "#fff", bg: "#a11" };
  if (rec.cached) return { fg: "#bbb", bg: "#333" };
  if (share >= 0.3) return { fg: "#fff", bg: "#b4321e" };
  if (share >= 0.1) return { fg: "#111", bg: "#e0a21b" };
  return { fg: "#dfe", bg: "#1e4a2e" };
}

export function overlayParts(rec) {
  // The figures drawn on a node, compact. Exported for tests and the Vue renderer alike.
  if (!rec) return [];
  if (rec.cached) return [{ text: "cached", kind: "time" }];
  const parts = [];
  let t = fmtS(rec.seconds);
  if (rec.share != null) t += ` · ${fmtPct(rec.share)}`;
  if (rec.status === "error") t = `ERROR ${t}`;
  if (rec.status === "interrupted") t = `stopped ${t}`;
  parts.push({ text: t, kind: "time" });
  const extra = [];
  if (rec.steps?.count) extra.push(`${rec.steps.count}×${fmtS(rec.steps.mean_s)}`);
  if (rec.vram_peak_allocated_mb != null) extra.push(`▲${fmtMB(rec.vram_peak_allocated_mb)}`);
  if (extra.length) parts.push({ text: extra.join(" "), kind: "info" });
  const warn = [];
  if (rec.partial_load) warn.push(`${fmtMB(rec.offloaded_mb ?? 0)} offloaded`);
  if (rec.oom_retries) warn.push(`OOM×${rec.oom_retries}`);
  if (warn.length) parts.push({ text: `! ${warn.join(" ")}`, kind: "warn" });
  return parts;
}

function makeBadge(node, index) {
  return () => {
    const Badge = window.LGraphBadge;
    const rec = setting(SETTING_OVERLAY, true) ? node[KEY] : null;
    const part = overlayParts(rec)[index];
    if (!Badge) return { text: "" };
    if (!part) return new Badge({ text: "" });
    const c = part.kind === "warn" ? { fg: "#111", bg: "#ffcc00" } : part.kind === "info" ? { fg: "#cde", bg: "#263241" } : badgeColors(rec);
    return new Badge({ text: part.text, fgColor: c.fg, bgColor: c.bg });
  };
}

function attachBadges(node) {
  if (!node || node.__wanAccelBadges || !Array.isArray(node.badges)) return;
  node.__wanAccelBadges = true;
  for (let i = 0; i < 3; i++) node.badges.push(makeBadge(node, i));
}

function refreshNode(node) {
  // Classic canvas redraws badges every frame; the Vue renderer re-reads them on a property event.
  try {
    if (setting("Comfy.VueNodes.Enabled", false) && node.graph?.trigger) {
      node.graph.trigger("node:property:changed", { nodeId: node.id, property: "title", oldValue: node.title, newValue: node.title });
    }
  } catch {}
}

// Vue renderers that do not show node badges (early Vue nodes, e.g. front end 1.27): draw the same
// parts as DOM chips over the canvas, placed with the canvas transform every frame.
const dom = { native: null, layer: null, chips: new Map(), raf: 0 };

function vueOn() {
  return !!setting("Comfy.VueNodes.Enabled", false);
}

function nativeVueBadges() {
  const sample = allNodes().find((n) => n[KEY] && overlayParts(n[KEY])[0]);
  if (!sample) return null;
  const text = overlayParts(sample[KEY])[0].text;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let t = walker.nextNode(); t; t = walker.nextNode()) {
    if (t.nodeValue.includes(text) && !t.parentElement?.closest("#wan-accel-telemetry, #wan-accel-telemetry-layer")) return true;
  }
  return false;
}

function domFrame() {
  dom.raf = 0;
  const on = vueOn() && dom.native === false && setting(SETTING_OVERLAY, true);
  if (!dom.layer) {
    dom.layer = document.createElement("div");
    dom.layer.id = "wan-accel-telemetry-layer";
    dom.layer.style.cssText = "position:fixed;left:0;top:0;width:0;height:0;z-index:900;pointer-events:none";
    document.body.appendChild(dom.layer);
  }
  dom.layer.style.display = on ? "block" : "none";
  if (!on) return;
  const canvas = app.canvas;
  const rect = canvas?.canvas?.getBoundingClientRect?.();
  const ds = canvas?.ds;
  if (!rect || !ds) return;
  const titleH = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const seen = new Set();
  for (const node of (canvas.graph ?? app.graph)?._nodes ?? []) {
    const parts = overlayParts(node[KEY]);
    if (!parts.length) continue;
    seen.add(node);
    let chip = dom.chips.get(node);
    if (!chip) {
      chip = document.createElement("div");
      chip.style.cssText = "position:absolute;display:flex;gap:3px;white-space:nowrap;font:11px sans-serif;transform-origin:0 100%";
      dom.layer.appendChild(chip);
      dom.chips.set(node, chip);
    }
    const html = parts.map((p) => {
      const c = p.kind === "warn" ? { fg: "#111", bg: "#ffcc00" } : p.kind === "info" ? { fg: "#cde", bg: "#263241" } : badgeColors(node[KEY]);
      return `<span style="color:${c.fg};background:${c.bg};border-radius:4px;padding:1px 5px">${esc(p.text)}</span>`;
    }).join("");
    if (chip.__html !== html) { chip.innerHTML = html; chip.__html = html; }
    const x = rect.left + (node.pos[0] + ds.offset[0]) * ds.scale;
    const y = rect.top + (node.pos[1] - titleH - 4 + ds.offset[1]) * ds.scale;
    chip.style.left = `${x}px`;
    chip.style.top = `${y}px`;
    chip.style.transform = `translateY(-100%) scale(${Math.max(0.85, Math.min(1.2, ds.scale))})`;
  }
  for (const [node, chip] of dom.chips) if (!seen.has(node)) { chip.remove(); dom.chips.delete(node); }
  dom.raf = requestAnimationFrame(domFrame);
}

function domOverlay() {
  if (!vueOn()) return;
  if (dom.native === null) {
    setTimeout(() => {
      const native = nativeVueBadges();
      if (native === null) return;
      dom.native = native;
      if (!native && !dom.raf) dom.raf = requestAnimationFrame(domFrame);
    }, 600);
  } else if (dom.native === false && !dom.raf) dom.raf = requestAnimationFrame(domFrame);
}

function redraw() {
  domOverlay();
  try {
    app.graph?.setDirtyCanvas?.(true, true);
    app.canvas?.setDirty?.(true, true);
  } catch {}
}

function applyRecord(rec) {
  const path = resolvePath(rec.display_node_id ?? rec.node_id);
  const full = String(rec.display_node_id ?? rec.node_id).split(":").length;
  if (path.length === full) {
    const node = path[path.length - 1];
    attachBadges(node);
    node[KEY] = rec;
    refreshNode(node);
  }
  // containers (subgraph nodes) show the sum of what ran inside them
  for (const container of path.slice(0, Math.min(path.length, full - 1))) {
    attachBadges(container);
    const agg = (container[KEY] && container[KEY].aggregate) ? container[KEY] : { aggregate: true, seconds: 0, share: 0, status: "ok", type: "subgraph", display_node_id: String(container.id) };
    if (!rec.cached) {
      agg.seconds += rec.seconds ?? 0;
      if (rec.share != null) agg.share = (agg.share ?? 0) + rec.share;
      if (rec.vram_peak_allocated_mb != null) agg.vram_peak_allocated_mb = Math.max(agg.vram_peak_allocated_mb ?? 0, rec.vram_peak_allocated_mb);
      if (rec.partial_load) { agg.partial_load = true; agg.offloaded_mb = (agg.offloaded_mb ?? 0) + (rec.offloaded_mb ?? 0); }
      if (rec.oom_retries) agg.oom_retries = (agg.oom_retries ?? 0) + rec.oom_retries;
    }
    container[KEY] = agg;
    refreshNode(container);
  }
}

function clearOverlay() {
  for (const n of allNodes()) {
    if (n[KEY]) {
      delete n[KEY];
      refreshNode(n);
    }
  }
  redraw();
}

function showRun(run, live = false) {
  clearOverlay();
  state.current = { run_id: run.id, records: new Map(), wall_s: run.wall_s, done: !live, run };
  for (const rec of run.nodes ?? []) {
    state.current.records.set(String(rec.display_node_id ?? rec.node_id), rec);
    applyRecord(rec);
  }
  redraw();
  renderPanel();
}

// ------------------------------------------------------------------ server events
function onRunStart(e) {
  clearOverlay();
  state.current = { run_id: e.detail.run_id, records: new Map(), wall_s: null, done: false, run: null };
  renderPanel();
}
function onNode(e) {
  const rec = e.detail.record;
  if (!state.current || state.current.run_id !== e.detail.run_id) {
    state.current = { run_id: e.detail.run_id, records: new Map(), wall_s: null, done: false, run: null };
  }
  state.current.records.set(String(rec.display_node_id ?? rec.node_id), rec);
  applyRecord(rec);
  redraw();
  if (state.panel?.style.display !== "none") renderPanel();
}
function onRun(e) {
  showRun(e.detail);
  loadRuns();
  if (setting(SETTING_PANEL, false)) openPanel();
}

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
  renderPanel();
}
const runCache = new Map();
async function getRun(id) {
  if (!runCache.has(id)) runCache.set(id, await getJSON(`/wan_accel/telemetry/runs/${encodeURIComponent(id)}`));
  return runCache.get(id);
}

// ------------------------------------------------------------------ panel
const CSS = `
#wan-accel-telemetry{position:fixed;right:12px;bottom:64px;width:min(900px,calc(100vw - 24px));max-height:62vh;overflow:auto;z-index:1100;
 background:#181a1e;color:#dde;border:1px solid #445;border-radius:8px;font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;box-shadow:0 6px 24px rgba(0,0,0,.5)}
#wan-accel-telemetry header{display:flex;gap:8px;align-items:center;padding:6px 10px;border-bottom:1px solid #334;position:sticky;top:0;background:#1b1e24}
#wan-accel-telemetry header b{font-size:13px;margin-right:auto}
#wan-accel-telemetry button,#wan-accel-telemetry select{background:#2a2f38;color:#dde;border:1px solid #445;border-radius:4px;font:inherit;padding:1px 6px;cursor:pointer}
#wan-accel-telemetry button.on{background:#3b5b8a}
#wan-accel-telemetry .totals{padding:6px 10px;display:flex;flex-wrap:wrap;gap:4px 14px;border-bottom:1px solid #334}
#wan-accel-telemetry .totals span[title]{cursor:help}
#wan-accel-telemetry table{border-collapse:collapse;width:100%}
#wan-accel-telemetry th,#wan-accel-telemetry td{padding:2px 6px;text-align:right;white-space:nowrap;border-bottom:1px solid #2a2d35}
#wan-accel-telemetry th{color:#9ab;font-weight:normal;cursor:help;position:sticky;top:31px;background:#1b1e24}
#wan-accel-telemetry td.l,#wan-accel-telemetry th.l{text-align:left}
#wan-accel-telemetry td.wrap{white-space:normal;min-width:90px}
#wan-accel-telemetry .bar{display:inline-block;height:8px;background:#d9692c;vertical-align:middle;margin-right:4px}
#wan-accel-telemetry .warn{color:#ffcc00}
#wan-accel-telemetry .err{color:#f66}
#wan-accel-telemetry .muted{color:#778}
#wan-accel-telemetry .faster{color:#6d6}
#wan-accel-telemetry .slower{color:#f77}
#wan-accel-telemetry .sec{padding:6px 10px}
#wan-accel-telemetry-btn{position:fixed;left:50%;transform:translateX(-50%);bottom:10px;z-index:1101;background:#1b1e24;color:#dde;border:1px solid #445;border-radius:14px;padding:3px 10px;font:12px ui-monospace,monospace;cursor:pointer;opacity:.9}
#wan-accel-telemetry-tip{position:fixed;z-index:1200;pointer-events:none;background:#111;color:#eee;border:1px solid #555;border-radius:6px;padding:6px 8px;font:11px/1.4 ui-monospace,monospace;max-width:380px;display:none;white-space:pre-wrap}
`;

function ensurePanel() {
  if (state.panel) return state.panel;
  const style = document.createElement("style");
  style.textContent = CSS;
  document.head.appendChild(style);
  const panel = document.createElement("div");
  panel.id = "wan-accel-telemetry";
  panel.style.display = "none";
  panel.addEventListener("click", onPanelClick);
  panel.addEventListener("change", onPanelChange);
  document.body.appendChild(panel);
  state.panel = panel;
  return panel;
}

function openPanel() {
  ensurePanel().style.display = "block";
  loadRuns();
}
function togglePanel() {
  const p = ensurePanel();
  if (p.style.display === "none") openPanel();
  else p.style.display = "none";
}

function totalsHtml(run, recs) {
  const t = run?.totals ?? {};
  const executed = recs.filter((r) => !r.cached);
  const nodeS = executed.reduce((a, r) => a + (r.seconds ?? 0), 0);
  const bits = [
    [`wall <b>${fmtS(run?.wall_s ?? nodeS)}</b>`, "Wall time of the whole prompt, queue pick-up to last node."],
    [`nodes ${executed.length} run, ${recs.length - executed.length} cached`, TIPS.cached],
    [`GPU ${fmtS(t.gpu_s)}`, TIPS.gpu],
    [`peak VRAM ${fmtMB(t.vram_peak_allocated_mb)}`, TIPS.vram],
    [`model loads ${fmtS(t.model_load_s ?? 0)}`, TIPS.models],
  ];
  if (t.overhead_s != null) bits.push([`outside nodes ${fmtS(t.overhead_s)}`, "Wall time not spent inside any node: ComfyUI's own scheduling, caching, saving."]);
  let html = bits.map(([h, tip]) => `<span title="${esc(tip)}">${h}</span>`).join("");
  if (t.partial_loads) html += `<span class="warn" title="${esc(TIPS.partial)}">! ${t.partial_loads} partial load(s), ${fmtMB(t.offloaded_mb)} offloaded</span>`;
  if (t.oom_retries) html += `<span class="warn" title="${esc(TIPS.oom)}">! ${t.oom_retries} OOM retr${t.oom_retries > 1 ? "ies" : "y"}</span>`;
  if (run?.status && run.status !== "success") html += `<span class="err">run ${esc(run.status)}</span>`;
  return `<div class="totals">${html}</div>`;
}

function modelsCell(r) {
  const out = [];
  for (const m of r.models_loaded ?? []) out.push(`+${m.name} ${fmtMB(m.loaded_mb)}${m.offloaded_mb ? `/${fmtMB(m.size_mb)}` : ""}`);
  for (const m of r.models_unloaded ?? []) out.push(`−${m.name} ${fmtMB(m.freed_mb)}`);
  const text = out.join(" ");
  const tip = `${TIPS.models}${r.model_load_s ? `\nload time ${fmtS(r.model_load_s)}` : ""}`;
  return `<td class="l wrap" title="${esc(tip)}">${esc(text.length > 60 ? text.slice(0, 59) + "…" : text)}</td>`;
}

function summaryHtml() {
  const cur = state.current;
  if (!cur) return `<div class="sec muted">No run yet: queue a prompt, or pick a saved run above.</div>`;
  const recs = [...cur.records.values()];
  const wall = cur.run?.wall_s;
  const sorted = recs.slice().sort((a, b) => (b.seconds ?? 0) - (a.seconds ?? 0));
  const maxS = Math.max(1e-9, ...sorted.map((r) => r.seconds ?? 0));
  const head = [
    ["node", "Node id (subgraph nodes as parent:child)", "l"], ["type", "Node class", "l"], ["time", TIPS.time], ["share", TIPS.share],
    ["GPU", TIPS.gpu], ["peak VRAM", TIPS.vram], ["VRAM after", TIPS.vram_after], ["RAM", TIPS.ram], ["steps", TIPS.steps], ["models", TIPS.models, "l"], ["", `${TIPS.partial}\n${TIPS.oom}`, "l"],
  ];
  let html = totalsHtml(cur.run, recs);
  html += `<table><tr>${head.map(([h, tip, c]) => `<th class="${c ?? ""}" title="${esc(tip)}">${h}</th>`).join("")}</tr>`;
  for (const r of sorted) {
    const share = r.share ?? (wall ? (r.seconds ?? 0) / wall : null);
    const flags = [];
    if (r.partial_load) flags.push(`<span class="warn" title="${esc(TIPS.partial + "\n" + (r.partial_models ?? []).map((m) => `${m.name}: ${fmtMB(m.loaded_mb)} of ${fmtMB(m.size_mb)} on GPU`).join("\n"))}">! ${fmtMB(r.offloaded_mb ?? 0)} offloaded</span>`);
    if (r.oom_retries) flags.push(`<span class="warn" title="${esc(TIPS.oom)}">OOM×${r.oom_retries}</span>`);
    if (r.status === "error" || r.status === "interrupted") flags.push(`<span class="err" title="${esc(r.error?.message ?? r.status)}">${esc(r.status)}</span>`);
    if (r.cached) flags.push(`<span class="muted" title="${esc(TIPS.cached)}">cached</span>`);
    const steps = r.steps?.count ? `<span title="${esc(TIPS.steps + "\n" + (r.steps.seconds ?? []).map((s, i) => `step ${i + 1}: ${fmtS(s)}`).join("\n"))}">${r.steps.count}×${fmtS(r.steps.mean_s)}</span>` : "";
    const phases = (r.phases ?? []).map((p) => `${p.name}: ${fmtS(p.seconds)}`).join("\n");
    html += `<tr><td class="l" title="${esc(phases ? "phases:\n" + phases : "")}">${esc(r.display_node_id ?? r.node_id)}</td><td class="l">${esc(r.type ?? "")}</td>`
      + `<td title="${esc(TIPS.time)}${r.span_s != null && r.span_s > (r.seconds ?? 0) * 1.05 ? esc(`\nfirst start to finish: ${fmtS(r.span_s)}`) : ""}">${r.cached ? "–" : fmtS(r.seconds)}</td>`
      + `<td class="l" title="${esc(TIPS.share)}"><span class="bar" style="width:${Math.round(((r.seconds ?? 0) / maxS) * 60)}px"></span>${r.cached ? "–" : fmtPct(share)}</td>`
      + `<td>${fmtS(r.gpu_s)}</td><td title="${esc(`reserved peak ${fmtMB(r.vram_peak_reserved_mb)}`)}">${fmtMB(r.vram_peak_allocated_mb)}</td>`
      + `<td>${r.vram_allocated_mb == null ? "–" : `${fmtMB(r.vram_allocated_mb)}/${fmtMB(r.vram_reserved_mb)}`}</td>`
      + `<td title="${esc(r.ram_delta_mb != null ? `change ${r.ram_delta_mb} MB` : "")}">${fmtMB(r.ram_rss_mb)}</td><td>${steps}</td>${modelsCell(r)}<td class="l wrap">${flags.join(" ")}</td></tr>`;
  }
  html += `</table>`;
  if (cur.run?.id) {
    const id = encodeURIComponent(cur.run.id);
    html += `<div class="sec muted">run ${esc(cur.run.id)} · <a style="color:#8af" href="${api.apiURL(`/wan_accel/telemetry/runs/${id}`)}" target="_blank">JSON</a> · <a style="color:#8af" href="${api.apiURL(`/wan_accel/telemetry/runs/${id}?format=csv`)}" target="_blank">CSV</a> · saved under output/wan_accel/telemetry/</div>`;
  } else if (!cur.done) html += `<div class="sec muted">running…</div>`;
  return html;
}

function runOptions(selected) {
  return state.runs.map((r) => `<option value="${esc(r.id)}" ${r.id === selected ? "selected" : ""}>${esc(r.id)} · ${fmtS(r.wall_s)} · ${esc(r.status)}</option>`).join("");
}

function abHtml() {
  if (state.runs.length < 1) return `<div class="sec muted">No saved runs yet.</div>`;
  // defaults: the newest run that executed something as B, the one before it as A (all-cached runs skipped)
  const useful = state.runs.filter((r) => (r.nodes ?? 0) > (r.cached ?? 0));
  const b = state.ab.b ?? (useful[0] ?? state.runs[0]).id;
  const a = state.ab.a ?? (useful.find((r) => r.id !== b) ?? state.runs.find((r) => r.id !== b) ?? state.runs[0]).id;
  let html = `<div class="sec">A <select data-ab="a">${runOptions(a)}</select> B <select data-ab="b">${runOptions(b)}</select></div>`;
  const ra = runCache.get(a), rb = runCache.get(b);
  if (!ra || !rb) {
    Promise.all([getRun(a), getRun(b)]).then(renderPanel).catch(() => {});
    return html + `<div class="sec muted">loading…</div>`;
  }
  const key = (r) => `${r.display_node_id ?? r.node_id}|${r.type}`;
  const ma = new Map((ra.nodes ?? []).map((r) => [key(r), r]));
  const mb = new Map((rb.nodes ?? []).map((r) => [key(r), r]));
  const keys = [...new Set([...ma.keys(), ...mb.keys()])];
  const rows = keys.map((k) => ({ k, a: ma.get(k), b: mb.get(k) }));
  rows.sort((x, y) => Math.max(y.a?.seconds ?? 0, y.b?.seconds ?? 0) - Math.max(x.a?.seconds ?? 0, x.b?.seconds ?? 0));
  const tipD = "B minus A; green: B faster, red: B slower.";
  html += `<table><tr><th class="l">node</th><th class="l">type</th><th title="${esc(TIPS.time)}">A</th><th title="${esc(TIPS.time)}">B</th><th title="${esc(tipD)}">Δ</th><th title="${esc(tipD)}">Δ%</th><th title="${esc(TIPS.vram)}">VRAM A</th><th title="${esc(TIPS.vram)}">VRAM B</th><th class="l" title="${esc(TIPS.partial)}">flags A / B</th></tr>`;
  const flag = (r) => (!r ? "absent" : r.cached ? "cached" : r.partial_load ? `!${fmtMB(r.offloaded_mb)}` : r.status !== "ok" ? r.status : "");
  for (const { a: x, b: y } of rows) {
    const r = x ?? y;
    const sa = x && !x.cached ? x.seconds : null, sb = y && !y.cached ? y.seconds : null;
    const d = sa != null && sb != null ? sb - sa : null;
    const cls = d == null ? "" : d < 0 ? "faster" : d > 0 ? "slower" : "";
    html += `<tr><td class="l">${esc(r.display_node_id ?? r.node_id)}</td><td class="l">${esc(r.type)}</td><td>${fmtS(sa)}</td><td>${fmtS(sb)}</td>`
      + `<td class="${cls}">${d == null ? "–" : (d > 0 ? "+" : "") + fmtS(Math.abs(d)).replace(/^/, d < 0 ? "−" : "")}</td>`
      + `<td class="${cls}">${d == null || !sa ? "–" : `${d > 0 ? "+" : ""}${((d / sa) * 100).toFixed(0)}%`}</td>`
      + `<td>${fmtMB(x?.vram_peak_allocated_mb)}</td><td>${fmtMB(y?.vram_peak_allocated_mb)}</td><td class="l">${flag(x) || flag(y) ? `${esc(flag(x) || "–")} / ${esc(flag(y) || "–")}` : ""}</td></tr>`;
  }
  html += `<tr><td class="l" colspan="2"><b>run wall</b></td><td>${fmtS(ra.wall_s)}</td><td>${fmtS(rb.wall_s)}</td><td colspan="5"></td></tr></table>`;
  return html;
}

function renderPanel() {
  const p = state.panel;
  if (!p || p.style.display === "none") return;
  const cur = state.current?.run?.id ?? "";
  p.innerHTML = `<header><b>Wan Accel telemetry</b>
    <select data-pick="run" title="Show a saved run on the graph"><option value="">— saved runs —</option>${runOptions(cur)}</select>
    <button data-tab="summary" class="${state.tab === "summary" ? "on" : ""}" title="Nodes by cost, totals, steps, model loads">Summary</button>
    <button data-tab="ab" class="${state.tab === "ab" ? "on" : ""}" title="Two runs side by side, per node">A/B</button>
    <button data-close="1" title="Close">×</button></header>` + (state.tab === "ab" ? abHtml() : summaryHtml());
}

function onPanelClick(e) {
  const t = e.target.closest("button");
  if (!t) return;
  if (t.dataset.close) state.panel.style.display = "none";
  if (t.dataset.tab) { state.tab = t.dataset.tab; renderPanel(); }
}
async function onPanelChange(e) {
  const t = e.target;
  if (t.dataset.ab) { state.ab[t.dataset.ab] = t.value; renderPanel(); }
  if (t.dataset.pick === "run" && t.value) {
    try { showRun(await getRun(t.value)); } catch (err) { console.warn("wan_accel telemetry", err); }
  }
}

// ------------------------------------------------------------------ hover tooltip on nodes
function tooltipText(rec) {
  if (!rec) return "";
  if (rec.cached) return `cached — ${TIPS.cached}`;
  const lines = [`${rec.type ?? "node"} #${rec.display_node_id ?? rec.node_id}`,
    `${fmtS(rec.seconds)} — ${TIPS.time}`];
  if (rec.share != null) lines.push(`${fmtPct(rec.share)} — ${TIPS.share}`);
  if (rec.gpu_s != null) lines.push(`GPU ${fmtS(rec.gpu_s)} — ${TIPS.gpu}`);
  if (rec.vram_peak_allocated_mb != null) lines.push(`▲${fmtMB(rec.vram_peak_allocated_mb)} — ${TIPS.vram}`);
  if (rec.steps?.count) lines.push(`${rec.steps.count}×${fmtS(rec.steps.mean_s)} — ${TIPS.steps}`);
  if (rec.partial_load) lines.push(`! ${fmtMB(rec.offloaded_mb ?? 0)} offloaded — ${TIPS.partial}`);
  if (rec.oom_retries) lines.push(`OOM×${rec.oom_retries} — ${TIPS.oom}`);
  if (rec.error?.message) lines.push(`error: ${rec.error.message.slice(0, 200)}`);
  return lines.join("\n");
}

function installTooltip() {
  const tip = document.createElement("div");
  tip.id = "wan-accel-telemetry-tip";
  document.body.appendChild(tip);
  let timer = null;
  document.addEventListener("mousemove", (e) => {
    clearTimeout(timer);
    tip.style.display = "none";
    if (!setting(SETTING_OVERLAY, true) || !state.current) return;
    timer = setTimeout(() => {
      let node = null;
      const el = e.target?.closest?.("[data-node-id]");
      if (el) node = app.graph?.getNodeById?.(el.getAttribute("data-node-id"));
      else if (e.target === app.canvas?.canvas) {
        const [x, y] = app.canvas.graph_mouse ?? [];
        const g = app.canvas.graph ?? app.graph;
        const n = g?.getNodeOnPos?.(x, y);
        // the badges sit just above the title bar: hovering the title area shows the card
        const titleH = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
        if (n && y < n.pos[1] + 4 && y > n.pos[1] - titleH - 26) node = n;
        else if (!n && g) for (const m of g._nodes ?? []) if (m[KEY] && x >= m.pos[0] && x <= m.pos[0] + m.size[0] && y >= m.pos[1] - titleH - 26 && y <= m.pos[1]) node = m;
      }
      const rec = node?.[KEY];
      if (!rec) return;
      tip.textContent = tooltipText(rec);
      tip.style.left = `${Math.min(e.clientX + 14, window.innerWidth - 390)}px`;
      tip.style.top = `${e.clientY + 14}px`;
      tip.style.display = "block";
    }, 350);
  });
}

// ------------------------------------------------------------------ extension
app.registerExtension({
  name: EXT,
  settings: [
    { id: SETTING_OVERLAY, name: "Show per-node telemetry overlay (time, share of run, peak VRAM, partial-load / OOM warnings)", type: "boolean", defaultValue: true, category: ["Wan Accel", "Telemetry", "Overlay"], onChange: () => { for (const n of allNodes()) refreshNode(n); redraw(); } },
    { id: SETTING_PANEL, name: "Open the telemetry summary panel after each run", type: "boolean", defaultValue: false, category: ["Wan Accel", "Telemetry", "Panel"] },
  ],
  commands: [{ id: "WanAccel.Telemetry.TogglePanel", label: "Toggle Wan Accel telemetry panel", icon: "pi pi-stopwatch", function: togglePanel }],
  async setup() {
    api.addEventListener("wan_accel.telemetry.run_start", onRunStart);
    api.addEventListener("wan_accel.telemetry.node", onNode);
    api.addEventListener("wan_accel.telemetry.run", onRun);
    api.addEventListener("wan_accel.telemetry.saved", () => loadRuns());
    ensurePanel();
    const btn = document.createElement("button");
    btn.id = "wan-accel-telemetry-btn";
    btn.textContent = "telemetry";
    btn.title = "Wan Accel telemetry: run summary and A/B view";
    btn.addEventListener("click", togglePanel);
    document.body.appendChild(btn);
    installTooltip();
    for (const n of allNodes()) attachBadges(n);
    window.wanAccelTelemetry = { dom, open: openPanel, toggle: togglePanel, state, showRun, getRun, loadRuns, overlayParts, setTab: (t) => { state.tab = t; renderPanel(); } };
  },
  nodeCreated(node) {
    attachBadges(node);
  },
  loadedGraphNode(node) {
    attachBadges(node);
  },
});
