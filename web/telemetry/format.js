// Number and text formatting shared by the overlay, the hover card and the panel (no DOM, no app).
export const fmtS = (s) => (s == null ? "–" : s >= 100 ? `${s.toFixed(0)}s` : s >= 10 ? `${s.toFixed(1)}s` : s >= 0.1 ? `${s.toFixed(2)}s` : `${(s * 1000).toFixed(1)}ms`);
export const fmtMB = (mb) => (mb == null ? "–" : mb >= 10240 ? `${(mb / 1024).toFixed(1)}G` : mb >= 1024 ? `${(mb / 1024).toFixed(2)}G` : `${mb.toFixed(0)}M`);
export const fmtPct = (x) => (x == null ? "–" : `${(x * 100).toFixed(x < 0.1 ? 1 : 0)}%`);
export const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
// badges: one decimal at most above a second (they share one line above the node title)
export const fmtShortS = (s) => (s == null ? "–" : s >= 10 ? `${s.toFixed(0)}s` : s >= 1 ? `${s.toFixed(1)}s` : fmtS(s));
