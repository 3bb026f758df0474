// The summary panel's and the A/B view's HTML, from run records (pure: no DOM, no app).
import { esc, fmtMB, fmtPct, fmtS } from "./format.js";
import { attentionLines, attentionParts, loraSeconds, modelLines, stepsName, TIPS } from "./parts.js";

export const CSS = `
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
#wan-accel-telemetry .attn{color:#c9b6ff}
#wan-accel-telemetry .muted{color:#778}
#wan-accel-telemetry .faster{color:#6d6}
#wan-accel-telemetry .slower{color:#f77}
#wan-accel-telemetry .sec{padding:6px 10px}
#wan-accel-telemetry .advice{border-bottom:1px solid #334}
#wan-accel-telemetry .advice ul{margin:4px 0 0;padding-left:18px}
#wan-accel-telemetry .advice li{margin:2px 0}
#wan-accel-telemetry-btn{position:fixed;left:50%;transform:translateX(-50%);bottom:10px;z-index:1101;background:#1b1e24;color:#dde;border:1px solid #445;border-radius:14px;padding:3px 10px;font:12px ui-monospace,monospace;cursor:pointer;opacity:.9}
#wan-accel-telemetry-tip{position:fixed;z-index:1200;pointer-events:none;background:#111;color:#eee;border:1px solid #555;border-radius:6px;padding:6px 8px;font:11px/1.4 ui-monospace,monospace;max-width:520px;display:none;white-space:pre-wrap}
`;

export function totalsHtml(run, recs) {
  const t = run?.totals ?? {};
  const executed = recs.filter((r) => !r.cached);
  const nodeS = executed.reduce((a, r) => a + (r.seconds ?? 0), 0);
  const bits = [
    [`wall <b>${fmtS(run?.wall_s ?? nodeS)}</b>`, "Wall time of the whole prompt, queue pick-up to last node."],
    [`nodes ${executed.length} run, ${recs.length - executed.length} cached`, TIPS.cached],
    [`GPU ${fmtS(t.gpu_s)}`, TIPS.gpu],
    [`peak VRAM ${fmtMB(t.vram_peak_allocated_mb)}`, TIPS.vram],
    [`models moved ${fmtS(t.model_moves_s ?? t.model_load_s ?? 0)}${t.model_swaps ? ` (${t.model_swaps} swap${t.model_swaps > 1 ? "s" : ""})` : ""}`, TIPS.moves],
  ];
  const lora = loraSeconds(t);
  if (lora.total) bits.push([`LoRA ${fmtS(lora.total)}${lora.gpu ? " GPU" : ""}${lora.steps ? ` (${fmtS(lora.steps)} during steps)` : ""}`, TIPS.lora]);
  if (t.dynamic_loads) bits.push([`${t.dynamic_loads} Dynamic VRAM load${t.dynamic_loads > 1 ? "s" : ""}`, TIPS.models]);
  if (t.overhead_s != null) bits.push([`outside nodes ${fmtS(t.overhead_s)}`, "Wall time not spent inside any node: ComfyUI's own scheduling, caching, saving."]);
  let html = bits.map(([h, tip]) => `<span title="${esc(tip)}">${h}</span>`).join("");
  if (t.partial_loads) html += `<span class="warn" title="${esc(TIPS.partial)}">! ${t.partial_loads} partial load(s), ${fmtMB(t.offloaded_mb)} offloaded</span>`;
  if (t.oom_retries) html += `<span class="warn" title="${esc(TIPS.oom)}">! ${t.oom_retries} OOM retr${t.oom_retries > 1 ? "ies" : "y"}</span>`;
  if (run?.status && run.status !== "success") html += `<span class="err">run ${esc(run.status)}</span>`;
  return `<div class="totals">${html}</div>`;
}

export function modelsCell(r) {
  const out = [];
  const peak = new Map((r.models_resident ?? []).filter((m) => m.dynamic).map((m) => [m.name, m.peak_mb]));
  for (const m of r.models_loaded ?? []) {
    if (m.dynamic) out.push(`+${m.name} dyn ${fmtMB(peak.get(m.name) ?? m.loaded_mb)}/${fmtMB(m.size_mb)}`);
    else out.push(`+${m.name} ${fmtMB(m.loaded_mb)}${m.offloaded_mb ? `/${fmtMB(m.size_mb)}` : ""}`);
  }
  for (const m of r.models_unloaded ?? []) out.push(`−${m.name} ${fmtMB(m.freed_mb)}`);
  if (r.model_moves_s) out.push(`${fmtS(r.model_moves_s)}`);
  const text = out.join(" ");
  const tip = [TIPS.models, ...modelLines(r)].join("\n");
  return `<td class="l wrap" title="${esc(tip)}">${esc(text.length > 60 ? text.slice(0, 59) + "…" : text)}</td>`;
}

// The run's findings: time lost outside the VAE and attention, each with its fix.
export function adviceHtml(run) {
  const found = run?.advice ?? [];
  if (!found.length) return "";
  const items = found.map((a) => `<li><span class="warn">#${esc(a.node_id)} ${esc(a.type ?? "")}</span> ${esc(a.text)}</li>`).join("");
  return `<div class="sec advice" title="${esc(TIPS.advice)}"><b>Time lost outside the VAE and attention</b><ul>${items}</ul></div>`;
}

// cur: {records: Map, run, done}; runUrl(id, format) -> the route's URL
export function summaryHtml(cur, runUrl) {
  if (!cur) return `<div class="sec muted">No run yet: queue a prompt, or pick a saved run above.</div>`;
  const recs = [...cur.records.values()];
  const wall = cur.run?.wall_s;
  const sorted = recs.slice().sort((a, b) => (b.seconds ?? 0) - (a.seconds ?? 0));
  const maxS = Math.max(1e-9, ...sorted.map((r) => r.seconds ?? 0));
  const head = [
    ["node", "Node id (subgraph nodes as parent:child)", "l"], ["type", "Node class", "l"], ["time", TIPS.time], ["share", TIPS.share],
    ["GPU", TIPS.gpu], ["peak VRAM", TIPS.vram], ["VRAM after", TIPS.vram_after], ["RAM", TIPS.ram], ["steps", TIPS.steps], ["models", TIPS.models, "l"], ["", `${TIPS.partial}\n${TIPS.oom}`, "l"],
  ];
  let html = totalsHtml(cur.run, recs) + adviceHtml(cur.run);
  html += `<table><tr>${head.map(([h, tip, c]) => `<th class="${c ?? ""}" title="${esc(tip)}">${h}</th>`).join("")}</tr>`;
  for (const r of sorted) {
    const share = r.share ?? (wall ? (r.seconds ?? 0) / wall : null);
    const flags = [];
    if (r.partial_load) flags.push(`<span class="warn" title="${esc(TIPS.partial + "\n" + (r.partial_models ?? []).map((m) => `${m.name}: ${fmtMB(m.loaded_mb)} of ${fmtMB(m.size_mb)} on GPU`).join("\n"))}">! ${fmtMB(r.offloaded_mb ?? 0)} offloaded</span>`);
    if (r.oom_retries) flags.push(`<span class="warn" title="${esc(TIPS.oom)}">OOM×${r.oom_retries}</span>`);
    if (r.lora_patch_s && (r.advice ?? []).some((a) => a.kind.startsWith("lora"))) flags.push(`<span class="warn" title="${esc(TIPS.lora)}">LoRA ${fmtS(loraSeconds(r).total)}</span>`);
    if (r.status === "error" || r.status === "interrupted") flags.push(`<span class="err" title="${esc(r.error?.message ?? r.status)}">${esc(r.status)}</span>`);
    if (r.cached) flags.push(`<span class="muted" title="${esc(TIPS.cached)}">cached</span>`);
    for (const p of attentionParts(r.attention)) flags.push(`<span class="${p.kind === "warn" ? "warn" : "attn"}" title="${esc([TIPS.attention, ...attentionLines(r.attention)].join("\n"))}">${esc(p.text)}</span>`);
    const unit = r.steps?.unit ?? "step";
    const steps = r.steps?.count ? `<span title="${esc(`${r.steps.count} ${stepsName(r.steps)}\n` + (r.steps.seconds ?? []).map((s, i) => `${unit} ${i + 1}: ${fmtS(s)}`).join("\n"))}">${r.steps.count}×${fmtS(r.steps.mean_s)}</span>` : "";
    const phases = (r.phases ?? []).map((p) => `${p.name}: ${fmtS(p.seconds)}`).join("\n");
    html += `<tr><td class="l" title="${esc(phases ? "phases:\n" + phases : "")}">${esc(r.display_node_id ?? r.node_id)}</td><td class="l wrap">${esc(r.type ?? "")}</td>`
      + `<td title="${esc(TIPS.time)}${r.span_s != null && r.span_s > (r.seconds ?? 0) * 1.05 ? esc(`\nfirst start to finish: ${fmtS(r.span_s)}`) : ""}">${r.cached ? "–" : fmtS(r.seconds)}</td>`
      + `<td class="l" title="${esc(TIPS.share)}"><span class="bar" style="width:${Math.round(((r.seconds ?? 0) / maxS) * 60)}px"></span>${r.cached ? "–" : fmtPct(share)}</td>`
      + `<td>${fmtS(r.gpu_s)}</td><td title="${esc(`reserved peak ${fmtMB(r.vram_peak_reserved_mb)}`)}">${fmtMB(r.vram_peak_allocated_mb)}</td>`
      + `<td>${r.vram_allocated_mb == null ? "–" : `${fmtMB(r.vram_allocated_mb)}/${fmtMB(r.vram_reserved_mb)}`}</td>`
      + `<td title="${esc(r.ram_delta_mb != null ? `change ${r.ram_delta_mb} MB` : "")}">${fmtMB(r.ram_rss_mb)}</td><td>${steps}</td>${modelsCell(r)}<td class="l wrap">${flags.join(" ")}</td></tr>`;
  }
  html += `</table>`;
  if (cur.run?.id) {
    const id = cur.run.id;
    html += `<div class="sec muted">run ${esc(id)} · <a style="color:#8af" href="${esc(runUrl(id, "json"))}" target="_blank">JSON</a> · <a style="color:#8af" href="${esc(runUrl(id, "csv"))}" target="_blank">CSV</a> · saved under output/wan_accel/telemetry/</div>`;
  } else if (!cur.done) html += `<div class="sec muted">running…</div>`;
  return html;
}

export function runOptions(runs, selected) {
  return runs.map((r) => `<option value="${esc(r.id)}" ${r.id === selected ? "selected" : ""}>${esc(r.id)} · ${fmtS(r.wall_s)} · ${esc(r.status)}</option>`).join("");
}

// Defaults: the newest run that executed something as B, the one before it as A (all-cached runs skipped).
export function abDefaults(runs, chosen) {
  const useful = runs.filter((r) => (r.nodes ?? 0) > (r.cached ?? 0));
  const b = chosen.b ?? (useful[0] ?? runs[0]).id;
  const a = chosen.a ?? (useful.find((r) => r.id !== b) ?? runs.find((r) => r.id !== b) ?? runs[0]).id;
  return { a, b };
}

export function abTable(ra, rb) {
  const key = (r) => `${r.display_node_id ?? r.node_id}|${r.type}`;
  const ma = new Map((ra.nodes ?? []).map((r) => [key(r), r]));
  const mb = new Map((rb.nodes ?? []).map((r) => [key(r), r]));
  const keys = [...new Set([...ma.keys(), ...mb.keys()])];
  const rows = keys.map((k) => ({ k, a: ma.get(k), b: mb.get(k) }));
  rows.sort((x, y) => Math.max(y.a?.seconds ?? 0, y.b?.seconds ?? 0) - Math.max(x.a?.seconds ?? 0, x.b?.seconds ?? 0));
  const tipD = "B minus A; green: B faster, red: B slower.";
  let html = `<table><tr><th class="l">node</th><th class="l">type</th><th title="${esc(TIPS.time)}">A</th><th title="${esc(TIPS.time)}">B</th><th title="${esc(tipD)}">Δ</th><th title="${esc(tipD)}">Δ%</th><th title="${esc(TIPS.vram)}">VRAM A</th><th title="${esc(TIPS.vram)}">VRAM B</th><th class="l" title="${esc(TIPS.partial)}">flags A / B</th></tr>`;
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
