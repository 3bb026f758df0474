// The per-node overlay. Classic canvas: node badges, drawn by LiteGraph above each title. Vue node
// renderer: our own chips in a layer over the graph (#wan-accel-telemetry-layer, one
// [data-wan-accel-node] row per node), placed outside the node where they cover no other node's
// widgets and no group title; Vue nodes get no badges from us, whether or not the front end would
// draw them (1.35 does in the header, 1.49 does not), so what shows never depends on page text.
import { app } from "../../../scripts/app.js";
import { esc } from "./format.js";
import { nodeParts, partColors, tooltipText } from "./parts.js";
import { placeChips, rectAt } from "./placement.js";

export const SETTING_OVERLAY = "WanAccel.Telemetry.Overlay";
export const KEY = "__wanAccelTelemetry"; // the node's own record
export const KEY_ATTN = "__wanAccelAttention"; // attention entries that name this node (WanAccelAttention)
const BADGE_SLOTS = 4;
const RELAYOUT_MS = 500; // Vue node sizes change without the graph knowing (images, text): re-place this often

export function setting(id, fallback) {
  try {
    const v = app.extensionManager?.setting?.get?.(id) ?? app.ui?.settings?.getSettingValue?.(id);
    return v === undefined || v === null ? fallback : v;
  } catch {
    return fallback;
  }
}

const vueOn = () => !!setting("Comfy.VueNodes.Enabled", false);
const overlayOn = () => !!setting(SETTING_OVERLAY, true);

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

const partsOf = (node) => (overlayOn() ? nodeParts(node[KEY], node[KEY_ATTN]) : []);

// ------------------------------------------------------------------ classic canvas: node badges
function makeBadge(node, index) {
  return () => {
    const Badge = window.LGraphBadge;
    const part = vueOn() ? null : partsOf(node)[index];
    if (!Badge) return { text: "" };
    if (!part) return new Badge({ text: "" });
    const c = partColors(part, node[KEY]);
    return new Badge({ text: part.text, fgColor: c.fg, bgColor: c.bg });
  };
}

export function attachBadges(node) {
  if (!node || node.__wanAccelBadges || !Array.isArray(node.badges)) return;
  node.__wanAccelBadges = true;
  for (let i = 0; i < BADGE_SLOTS; i++) node.badges.push(makeBadge(node, i));
}

// ------------------------------------------------------------------ Vue nodes: our chips
export const layer = { el: null, chips: new Map(), raf: 0, signature: "", laidOut: 0 };

function ensureLayer() {
  if (!layer.el) {
    layer.el = document.createElement("div");
    layer.el.id = "wan-accel-telemetry-layer";
    layer.el.style.cssText = "position:fixed;left:0;top:0;width:0;height:0;z-index:900;pointer-events:none";
    document.body.appendChild(layer.el);
  }
  return layer.el;
}

// id -> the Vue node's outermost element (other components carry data-node-id too: take the largest)
function vueNodeRects() {
  const rects = new Map();
  for (const el of document.querySelectorAll("[data-node-id]")) {
    if (el.closest("#wan-accel-telemetry-layer")) continue;
    const r = el.getBoundingClientRect();
    if (r.width <= 0 || r.height <= 0) continue;
    const id = el.getAttribute("data-node-id");
    const old = rects.get(id);
    if (!old || r.width * r.height > (old.right - old.left) * (old.bottom - old.top)) {
      rects.set(id, { left: r.left, top: r.top, right: r.right, bottom: r.bottom });
    }
  }
  return rects;
}

// Group title bars on screen (groups stay on the LiteGraph canvas in the Vue renderer)
function groupTitleRects(graph) {
  const canvas = app.canvas;
  const box = canvas?.canvas?.getBoundingClientRect?.();
  const ds = canvas?.ds;
  if (!box || !ds) return [];
  const out = [];
  for (const g of graph?._groups ?? graph?.groups ?? []) {
    const pos = g._pos ?? g.pos, size = g._size ?? g.size;
    if (!pos || !size) continue;
    const titleH = g.titleHeight ?? window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
    const left = box.left + (pos[0] + ds.offset[0]) * ds.scale;
    const top = box.top + (pos[1] + ds.offset[1]) * ds.scale;
    out.push({ left, top, right: left + size[0] * ds.scale, bottom: top + titleH * ds.scale, group: true });
  }
  return out;
}

// Area of a chip spot that the page's own UI (toolbars, side panels) or the window edge would hide:
// what lies on top at its corners and centre must be the graph (canvas or a Vue node) or our layer.
function hiddenArea(rect) {
  const canvas = app.canvas?.canvas;
  const points = [[rect.left + 1, rect.top + 1], [rect.right - 1, rect.top + 1], [rect.left + 1, rect.bottom - 1],
    [rect.right - 1, rect.bottom - 1], [(rect.left + rect.right) / 2, (rect.top + rect.bottom) / 2]];
  let hidden = 0;
  for (const [x, y] of points) {
    if (x < 0 || y < 0 || x > window.innerWidth || y > window.innerHeight) { hidden += 1; continue; }
    const top = document.elementsFromPoint(x, y).find((el) => !el.closest("#wan-accel-telemetry-layer"));
    if (top && top !== canvas && !top.closest("[data-node-id]")) hidden += 1;
  }
  return (hidden / points.length) * (rect.right - rect.left) * (rect.bottom - rect.top);
}

function chipFor(id) {
  let chip = layer.chips.get(id);
  if (!chip) {
    chip = document.createElement("div");
    chip.className = "wan-accel-chips";
    chip.setAttribute("data-wan-accel-node", id);
    chip.style.cssText = "position:fixed;display:flex;gap:3px;white-space:nowrap;font-family:sans-serif;line-height:1.35;pointer-events:auto;cursor:default";
    ensureLayer().appendChild(chip);
    layer.chips.set(id, chip);
  }
  return chip;
}

function layoutChips() {
  const graph = app.canvas?.graph ?? app.graph;
  const nodes = (graph?._nodes ?? graph?.nodes ?? []).map((n) => [n, partsOf(n)]).filter(([, parts]) => parts.length);
  const rects = vueNodeRects();
  const obstacles = [...rects.values(), ...groupTitleRects(graph)];
  const scale = Math.max(0.75, Math.min(1.15, app.canvas?.ds?.scale ?? 1));
  const seen = new Set();
  for (const [node, parts] of nodes) {
    const id = String(node.id);
    const own = rects.get(id);
    if (!own) continue;
    seen.add(id);
    const chip = chipFor(id);
    const html = parts.map((p) => {
      const c = partColors(p, node[KEY]);
      return `<span data-kind="${p.kind}" style="color:${c.fg};background:${c.bg};border-radius:4px;padding:0 5px">${esc(p.text)}</span>`;
    }).join("");
    const font = `${(11 * scale).toFixed(1)}px`;
    if (chip.__html !== html || chip.style.fontSize !== font) { chip.innerHTML = html; chip.__html = html; chip.style.fontSize = font; }
    const size = { w: chip.offsetWidth, h: chip.offsetHeight };
    const spot = placeChips(own, size, obstacles.filter((o) => o !== own), 3, hiddenArea);
    chip.style.left = `${spot.left}px`;
    chip.style.top = `${spot.top}px`;
    chip.dataset.side = spot.side;
    obstacles.push(rectAt(spot.left, spot.top, size)); // the next node's chips keep off these
  }
  for (const [id, chip] of layer.chips) if (!seen.has(id)) { chip.remove(); layer.chips.delete(id); }
}

// What moves chips: the canvas transform, node and group geometry, the records drawn
function signature() {
  const ds = app.canvas?.ds;
  const graph = app.canvas?.graph ?? app.graph;
  const bits = [ds?.scale, ds?.offset?.[0], ds?.offset?.[1], layer.version];
  for (const n of graph?._nodes ?? graph?.nodes ?? []) bits.push(n.id, n.pos?.[0], n.pos?.[1], n.size?.[0], n.size?.[1]);
  for (const g of graph?._groups ?? graph?.groups ?? []) bits.push((g._pos ?? g.pos)?.join(), (g._size ?? g.size)?.join());
  return bits.join(",");
}

function frame(now) {
  layer.raf = 0;
  const on = vueOn() && overlayOn();
  ensureLayer().style.display = on ? "block" : "none";
  if (!on) return;
  const sig = signature();
  if (sig !== layer.signature || now - layer.laidOut > RELAYOUT_MS) {
    layer.signature = sig;
    layer.laidOut = now;
    layoutChips();
  }
  if (layer.chips.size || allNodes().some((n) => n[KEY] || n[KEY_ATTN])) layer.raf = requestAnimationFrame(frame);
}

export function redraw() {
  layer.version = (layer.version ?? 0) + 1;
  if (vueOn() && !layer.raf) layer.raf = requestAnimationFrame(frame);
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
  }
  // the attention node that asked for a kernel shows what ran (the note lands on the sampler)
  for (const entry of rec.attention ?? []) {
    if (entry.node_id == null) continue;
    const target = resolvePath(entry.node_id);
    if (target.length !== String(entry.node_id).split(":").length) continue;
    const node = target[target.length - 1];
    attachBadges(node);
    const list = node[KEY_ATTN] ?? (node[KEY_ATTN] = []);
    if (!list.some((e) => JSON.stringify(e) === JSON.stringify(entry))) list.push(entry);
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
  }
}

export function clearOverlay() {
  for (const n of allNodes()) {
    delete n[KEY];
    delete n[KEY_ATTN];
  }
  redraw();
}

// The chips on screen, found by our own attributes (tests, and the hover card)
export function chipsOnScreen() {
  return [...document.querySelectorAll("#wan-accel-telemetry-layer [data-wan-accel-node]")].map((el) => {
    const r = el.getBoundingClientRect();
    return { node: el.getAttribute("data-wan-accel-node"), text: el.innerText, side: el.dataset.side,
             kinds: [...el.children].map((c) => c.dataset.kind),
             rect: { left: r.left, top: r.top, right: r.right, bottom: r.bottom } };
  });
}

// ------------------------------------------------------------------ hover card
function hoveredNode(e) {
  const graph = app.canvas?.graph ?? app.graph;
  const chip = e.target?.closest?.("[data-wan-accel-node]");
  if (chip) return graph?.getNodeById?.(chip.getAttribute("data-wan-accel-node"));
  const el = e.target?.closest?.("[data-node-id]");
  if (el) {  // Vue node: its header band only, not its widgets
    const r = el.getBoundingClientRect();
    const band = 34 * (app.canvas?.ds?.scale ?? 1);
    return e.clientY <= r.top + band ? graph?.getNodeById?.(el.getAttribute("data-node-id")) : null;
  }
  if (e.target !== app.canvas?.canvas) return null;
  const [x, y] = app.canvas.graph_mouse ?? [];
  const n = graph?.getNodeOnPos?.(x, y);
  // classic canvas: the badges sit just above the title bar; hovering the title area shows the card
  const titleH = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  if (n && y < n.pos[1] + 4 && y > n.pos[1] - titleH - 26) return n;
  if (!n && graph) {
    for (const m of graph._nodes ?? []) {
      if ((m[KEY] || m[KEY_ATTN]) && x >= m.pos[0] && x <= m.pos[0] + m.size[0] && y >= m.pos[1] - titleH - 26 && y <= m.pos[1]) return m;
    }
  }
  return null;
}

export function installTooltip() {
  const tip = document.createElement("div");
  tip.id = "wan-accel-telemetry-tip";
  document.body.appendChild(tip);
  let timer = null;
  document.addEventListener("mousemove", (e) => {
    clearTimeout(timer);
    tip.style.display = "none";
    if (!overlayOn()) return;
    timer = setTimeout(() => {
      const node = hoveredNode(e);
      const text = node ? tooltipText(node[KEY], node[KEY_ATTN]) : "";
      if (!text) return;
      tip.textContent = text;
      tip.style.left = `${Math.max(0, Math.min(e.clientX + 14, window.innerWidth - 530))}px`;
      tip.style.top = `${e.clientY + 14}px`;
      tip.style.display = "block";
    }, 350);
  });
}
