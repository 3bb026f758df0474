// The per-node overlay: node badges (drawn by the classic canvas and by Vue node renderers that show
// badges), DOM chips over the canvas where the Vue renderer shows none, and the hover card.
import { app } from "../../../scripts/app.js";
import { esc } from "./format.js";
import { overlayParts, partColors, tooltipText } from "./parts.js";

export const SETTING_OVERLAY = "WanAccel.Telemetry.Overlay";
export const KEY = "__wanAccelTelemetry";

export function setting(id, fallback) {
  try {
    const v = app.extensionManager?.setting?.get?.(id) ?? app.ui?.settings?.getSettingValue?.(id);
    return v === undefined || v === null ? fallback : v;
  } catch {
    return fallback;
  }
}

export function allNodes(graph = app.graph, out = []) {
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

// ------------------------------------------------------------------ node badges
function makeBadge(node, index) {
  return () => {
    const Badge = window.LGraphBadge;
    const rec = setting(SETTING_OVERLAY, true) ? node[KEY] : null;
    const part = overlayParts(rec)[index];
    if (!Badge) return { text: "" };
    if (!part) return new Badge({ text: "" });
    const c = partColors(part, rec);
    return new Badge({ text: part.text, fgColor: c.fg, bgColor: c.bg });
  };
}

export function attachBadges(node) {
  if (!node || node.__wanAccelBadges || !Array.isArray(node.badges)) return;
  node.__wanAccelBadges = true;
  for (let i = 0; i < 3; i++) node.badges.push(makeBadge(node, i));
}

export function refreshNode(node) {
  // Classic canvas redraws badges every frame; the Vue renderer re-reads them on a property event.
  try {
    if (setting("Comfy.VueNodes.Enabled", false) && node.graph?.trigger) {
      node.graph.trigger("node:property:changed", { nodeId: node.id, property: "title", oldValue: node.title, newValue: node.title });
    }
  } catch {}
}

// ------------------------------------------------------------------ DOM chips (Vue renderers without badges)
// Vue renderers that do not show node badges (early Vue nodes, e.g. front end 1.27): draw the same
// parts as DOM chips over the canvas, placed with the canvas transform every frame.
export const dom = { native: null, layer: null, chips: new Map(), raf: 0 };

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
      const c = partColors(p, node[KEY]);
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

export function redraw() {
  domOverlay();
  try {
    app.graph?.setDirtyCanvas?.(true, true);
    app.canvas?.setDirty?.(true, true);
  } catch {}
}

// ------------------------------------------------------------------ records onto nodes
export function applyRecord(rec) {
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

export function clearOverlay() {
  for (const n of allNodes()) {
    if (n[KEY]) {
      delete n[KEY];
      refreshNode(n);
    }
  }
  redraw();
}

// ------------------------------------------------------------------ hover card
export function installTooltip(hasRun) {
  const tip = document.createElement("div");
  tip.id = "wan-accel-telemetry-tip";
  document.body.appendChild(tip);
  let timer = null;
  document.addEventListener("mousemove", (e) => {
    clearTimeout(timer);
    tip.style.display = "none";
    if (!setting(SETTING_OVERLAY, true) || !hasRun()) return;
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
