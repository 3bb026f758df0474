// What a node's record says on the graph: the badge parts, their colours, the hover card's text.
// Pure functions of a record (no DOM, no app), shared by the classic canvas and the Vue renderer.
import { fmtMB, fmtPct, fmtS, fmtShortS } from "./format.js";

export const TIPS = {
  time: "Wall seconds the node itself ran (its own segments; a lazy node's waits for its inputs are not counted).",
  share: "Share of the whole run's wall time spent in this node.",
  gpu: "GPU seconds: CUDA events recorded on the node's stream around it, read after the node (no synchronize inside it).",
  vram: "Peak VRAM allocated by PyTorch while the node ran (reserved by the caching allocator in the tooltip).",
  vram_after: "VRAM allocated / reserved when the node finished.",
  ram: "Process resident memory (RSS) when the node finished, and its change during the node.",
  steps: "Progress steps of the node: count x mean seconds per step. Sampler steps for samplers; VAE steps (one per tile and frame slice) for VAE nodes; hover for every step.",
  models: "Models loaded (+) or unloaded (-) during the node, with the seconds spent moving them (load_models_gpu, free_memory). dyn: ComfyUI's Dynamic VRAM pages the weights in while the model runs; 'resident' is the most that was in VRAM during the node.",
  moves: "Seconds ComfyUI spent moving models into and out of VRAM during the node (loads, unloads, swaps).",
  lora: "Seconds computing LoRA-patched weights (comfy.lora.calculate_weight): once per weight at load, and on every step for weights patched on the fly (partial loads, Dynamic VRAM). GPU time (CUDA events on the weight's stream) where the weights are on the GPU; host time otherwise, which on a GPU reads far above or below the real cost.",
  advice: "Time lost outside the VAE and attention, with the fix you can apply.",
  attention: "Attention kernel that really ran, per model (on the sampler that ran the model and on the Wan Accel Attention node that asked for it). ! marks a fallback: the kernel asked for could not take those calls.",
  partial: "A model was loaded only partially: this much of it stayed offloaded in RAM and is streamed every step (slow).",
  oom: "Out-of-memory retries inside the node (e.g. VAE decode retried tiled).",
  vae_plan: "How the Wan Accel VAE engine ran: tiles and frame slices (one VAE step each), the memory budget it planned for and its estimate, and where the node's seconds went (ComfyUI's load and conversions, the engine's stem and tiles).",
  cached: "Output came from ComfyUI's cache: the node did not run.",
};

export const WARN_COLORS = { fg: "#111", bg: "#ffcc00" };
export const INFO_COLORS = { fg: "#cde", bg: "#263241" };
export const ATTN_COLORS = { fg: "#e6dcff", bg: "#3b2a63" };

export function badgeColors(rec) {
  const share = rec.share ?? 0;
  if (rec.status === "error" || rec.status === "interrupted") return { fg: "#fff", bg: "#a11" };
  if (rec.cached) return { fg: "#bbb", bg: "#333" };
  if (share >= 0.3) return { fg: "#fff", bg: "#b4321e" };
  if (share >= 0.1) return { fg: "#111", bg: "#e0a21b" };
  return { fg: "#dfe", bg: "#1e4a2e" };
}

export function partColors(part, rec) {
  if (part.kind === "warn") return WARN_COLORS;
  if (part.kind === "info") return INFO_COLORS;
  if (part.kind === "attn") return ATTN_COLORS;
  return rec ? badgeColors(rec) : INFO_COLORS;
}

// The kernels that ran, per model: "attn sage", "attn sage+sdpa" (by shape), "attn ! sdpa (not sage)"
// for a fallback (warning colour). entries: a record's "attention" list, or those naming an attention node.
export function attentionParts(entries) {
  if (!entries?.length) return [];
  const models = new Map();
  for (const e of entries) {
    const m = models.get(e.model) ?? { ran: [], asked: new Set(), fallback: false };
    if (!m.ran.includes(e.backend)) m.ran.push(e.backend);
    if (e.fallback) { m.fallback = true; if (e.requested) m.asked.add(e.requested); }
    models.set(e.model, m);
  }
  const segs = [...models.values()].map((m) => {
    const ran = m.ran.join("+");
    const asked = [...m.asked].filter((a) => !m.ran.includes(a));
    return m.fallback ? `! ${ran}${asked.length ? ` (not ${asked.join("/")})` : ""}` : ran;
  });
  const fallback = [...models.values()].some((m) => m.fallback);
  return [{ text: `attn ${segs.join(" | ")}`, kind: fallback ? "warn" : "attn" }];
}

export function attentionLines(entries) {
  return (entries ?? []).map((e) => {
    const asked = e.requested && e.requested !== e.backend ? ` (asked ${e.requested})` : "";
    const why = e.fallback ? ` — fallback: ${String(e.reason ?? "").replace(/^fallback:\s*/, "")}` : e.reason ? ` — ${e.reason}` : "";
    return `${e.fallback ? "! " : ""}attention ${e.model ?? "model"} ${e.shape ?? ""}: ran ${e.backend}${asked}${why}`;
  });
}

// Everything drawn on a node: its own record's parts, then the kernels that ran (attn: entries naming
// this node when it is the attention node; else the record's own, when it is the sampler).
export function nodeParts(rec, attn) {
  return [...overlayParts(rec), ...attentionParts(attn ?? rec?.attention)];
}

// "sampler steps", "VAE step", "steps": what the node's progress bar counted
export function stepsName(steps) {
  const unit = steps?.unit ?? "step";
  return steps?.count === 1 ? unit : `${unit}s`;
}

export function overlayParts(rec) {
  // The figures drawn on a node, compact.
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
  // costs worth a line of advice (the run record's findings) get a mark on the graph too
  const found = new Set((rec.advice ?? []).map((a) => a.kind));
  if (found.has("model_swap")) warn.push(`swap ${fmtShortS(rec.model_moves_s)}`);
  else if (found.has("model_load")) warn.push(`load ${fmtShortS(rec.model_moves_s)}`);
  if (found.has("lora_steps") || found.has("lora_load")) warn.push(`LoRA ${fmtShortS(loraSeconds(rec).total)}`);
  const streamed = (rec.advice ?? []).find((a) => a.kind === "dynamic_streamed");
  if (streamed) warn.push(`${fmtMB(streamed.mb)} streamed`);
  if (warn.length) parts.push({ text: `! ${warn.join(" ")}`, kind: "warn" });
  return parts;
}

export function tooltipText(rec, attn) {
  const kernels = attentionLines(attn ?? rec?.attention);
  if (!rec) return kernels.length ? [...kernels, TIPS.attention].join("\n") : "";
  if (rec.cached) return [`cached — ${TIPS.cached}`, ...kernels].join("\n");
  const lines = [`${rec.type ?? "node"} #${rec.display_node_id ?? rec.node_id}`,
    `${fmtS(rec.seconds)} — ${TIPS.time}`];
  if (rec.share != null) lines.push(`${fmtPct(rec.share)} — ${TIPS.share}`);
  if (rec.gpu_s != null) lines.push(`GPU ${fmtS(rec.gpu_s)} — ${TIPS.gpu}`);
  if (rec.vram_peak_allocated_mb != null) lines.push(`▲${fmtMB(rec.vram_peak_allocated_mb)} — ${TIPS.vram}`);
  if (rec.steps?.count) lines.push(`${rec.steps.count} ${stepsName(rec.steps)} × ${fmtS(rec.steps.mean_s)} — ${TIPS.steps}`);
  if (rec.partial_load) lines.push(`! ${fmtMB(rec.offloaded_mb ?? 0)} offloaded — ${TIPS.partial}`);
  if (rec.oom_retries) lines.push(`OOM×${rec.oom_retries} — ${TIPS.oom}`);
  lines.push(...modelLines(rec));
  lines.push(...vaeLines(rec));
  lines.push(...kernels);
  if (rec.error?.message) lines.push(`error: ${rec.error.message.slice(0, 200)}`);
  for (const a of rec.advice ?? []) lines.push(`→ ${a.text}`);
  return lines.join("\n");
}

// How the VAE engine ran in the node (its vae_plan notes) and where the node's time went (phases).
export function vaeLines(rec) {
  const lines = [];
  for (const p of rec.vae_plan ?? []) {
    const budget = p.budget_mb == null ? "no budget" : `budget ${fmtMB(p.budget_mb)}`;
    const staged = p.staged_mb ? `, input staged on the GPU ${fmtMB(p.staged_mb)}` : "";
    const devices = p.devices > 1 ? ` on ${p.devices} devices` : "";
    lines.push(`VAE ${p.stage}: ${p.tiles} tile${p.tiles === 1 ? "" : "s"} of ${p.tile_px} px × ${p.slices} slice${p.slices === 1 ? "" : "s"} = ${p.steps} steps${devices}; ${budget} (est. ${fmtMB(p.estimated_mb)})${staged}`);
  }
  const totals = new Map();
  for (const ph of rec.phases ?? []) {
    if (!String(ph.name).startsWith("vae.")) continue;
    totals.set(ph.name.slice(4), (totals.get(ph.name.slice(4)) ?? 0) + (ph.seconds ?? 0));
  }
  if (totals.size) lines.push(`VAE time: ${[...totals].map(([k, v]) => `${k.replace("_", " ")} ${fmtS(v)}`).join(", ")}`);
  if (lines.length) lines.push(TIPS.vae_plan);
  return lines;
}

// What happened to models during the node, one line each (hover card, panel tooltips).
// LoRA seconds of a node or run totals: GPU time where it was measured (the host's time misleads on a GPU)
export function loraSeconds(r) {
  const gpu = r.lora_patch_gpu_s != null;
  return gpu ? { gpu, total: r.lora_patch_gpu_s, steps: r.lora_patch_steps_gpu_s }
    : { gpu, total: r.lora_patch_s, steps: r.lora_patch_steps_s };
}

export function modelLines(rec) {
  const lines = [];
  if (rec.model_moves_s) {
    let t = `models moved ${fmtS(rec.model_moves_s)}`;
    if (rec.model_unload_s) t += ` (unloading ${fmtS(rec.model_unload_s)})`;
    if (rec.model_swap) t += `: swap, ${(rec.models_unloaded ?? []).map((m) => m.name).join(", ")} out, ${(rec.models_loaded ?? []).map((m) => m.name).join(", ")} in`;
    lines.push(t);
  }
  const lora = loraSeconds(rec);
  if (lora.total) lines.push(`LoRA patching ${fmtS(lora.total)}${lora.gpu ? " of GPU time" : ""}${lora.steps ? `, ${fmtS(lora.steps)} of it on the fly during the steps` : " at load"} (${rec.lora_patches} weights${lora.gpu ? `; host ${fmtS(rec.lora_patch_s)}` : ""})`);
  for (const m of rec.models_resident ?? []) {
    if (!m.dynamic) continue;
    lines.push(`${m.name}: Dynamic VRAM, up to ${fmtMB(m.peak_mb)} of ${fmtMB(m.size_mb)} resident (${fmtMB(m.start_mb)} at the start, ${fmtMB(m.end_mb)} at the end); not a partial load`);
  }
  return lines;
}
