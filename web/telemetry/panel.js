// The summary panel (bottom right): totals and nodes by cost, saved runs, the A/B view.
import { abDefaults, abTable, CSS, runOptions, summaryHtml } from "./panel_html.js";

// data: {state: {current, runs, tab, ab}, getRun(id), cachedRun(id), loadRuns(), showRun(run), runUrl(id, format)}
export class Panel {
  constructor(data) {
    this.data = data;
    this.el = null;
  }

  ensure() {
    if (this.el) return this.el;
    const style = document.createElement("style");
    style.textContent = CSS;
    document.head.appendChild(style);
    const el = document.createElement("div");
    el.id = "wan-accel-telemetry";
    el.style.display = "none";
    el.addEventListener("click", (e) => this.onClick(e));
    el.addEventListener("change", (e) => this.onChange(e));
    document.body.appendChild(el);
    this.el = el;
    return el;
  }

  get visible() {
    return !!this.el && this.el.style.display !== "none";
  }

  open() {
    this.ensure().style.display = "block";
    this.render(); // what is known now; the saved-run list follows
    this.data.loadRuns();
  }

  toggle() {
    if (this.visible) this.el.style.display = "none";
    else this.open();
  }

  setTab(tab) {
    this.data.state.tab = tab;
    this.render();
  }

  render() {
    if (!this.visible) return;
    const { state } = this.data;
    const cur = state.current?.run?.id ?? "";
    this.el.innerHTML = `<header><b>Wan Accel telemetry</b>
    <select data-pick="run" title="Show a saved run on the graph"><option value="">— saved runs —</option>${runOptions(state.runs, cur)}</select>
    <button data-tab="summary" class="${state.tab === "summary" ? "on" : ""}" title="Nodes by cost, totals, steps, model loads">Summary</button>
    <button data-tab="ab" class="${state.tab === "ab" ? "on" : ""}" title="Two runs side by side, per node">A/B</button>
    <button data-close="1" title="Close">×</button></header>` + (state.tab === "ab" ? this.abHtml() : summaryHtml(state.current, this.data.runUrl));
  }

  abHtml() {
    const { state } = this.data;
    if (state.runs.length < 1) return `<div class="sec muted">No saved runs yet.</div>`;
    const { a, b } = abDefaults(state.runs, state.ab);
    const html = `<div class="sec">A <select data-ab="a">${runOptions(state.runs, a)}</select> B <select data-ab="b">${runOptions(state.runs, b)}</select></div>`;
    const ra = this.data.cachedRun(a), rb = this.data.cachedRun(b);
    if (!ra || !rb) {
      Promise.all([this.data.getRun(a), this.data.getRun(b)]).then(() => this.render()).catch(() => {});
      return html + `<div class="sec muted">loading…</div>`;
    }
    return html + abTable(ra, rb);
  }

  onClick(e) {
    const t = e.target.closest("button");
    if (!t) return;
    if (t.dataset.close) this.el.style.display = "none";
    if (t.dataset.tab) this.setTab(t.dataset.tab);
  }

  async onChange(e) {
    const t = e.target;
    if (t.dataset.ab) { this.data.state.ab[t.dataset.ab] = t.value; this.render(); }
    if (t.dataset.pick === "run" && t.value) {
      try { this.data.showRun(await this.data.getRun(t.value)); } catch (err) { console.warn("wan_accel telemetry", err); }
    }
  }
}
