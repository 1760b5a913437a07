// Dashboard: tiers against their limits, the last hour's hit ratio and origin traffic (charts from
// /api/v1/stats/history, every 5 s), per-mount origin figures, fills in flight, jobs, top objects.
// Without an admin token (or server.public_stats) the top objects are not shown: the rest is public.
"use strict";

(() => {
  const { api, el, bytes, percent, showError, token } = Tessera;
  const REFRESH = 5000;
  const status = document.getElementById("status");
  const charts = {};

  function card(list, label, value, key) {
    let dd = list.querySelector(`dd[data-key="${key}"]`);
    if (!dd) {
      dd = el("dd", { "data-key": key });
      list.append(el("div", {}, el("dt", { text: label }), dd));
    }
    dd.textContent = value;
  }

  function tiers(cache) {
    const box = document.getElementById("tiers");
    const entries = Object.entries(cache.tiers);
    entries.push(["pinned", cache.pinned]);
    for (const [name, tier] of entries) {
      const id = `tier-${name}`;
      let meter = document.getElementById(id);
      if (!meter) {
        meter = el("meter", { id, min: "0" });
        const label = el("label", { for: id }, el("span", { class: "name", text: name }), el("span", { class: "value" }));
        box.append(el("div", { class: "tier" }, label, meter));
      }
      meter.max = Math.max(tier.limit, 1);
      meter.value = tier.bytes;
      meter.high = 0.95 * meter.max;
      const objects = tier.objects === undefined ? "" : `, ${tier.objects} objects`;
      meter.labels[0].querySelector(".value").textContent =
        `${bytes(tier.bytes)} of ${bytes(tier.limit)} (${percent(tier.limit ? tier.bytes / tier.limit : 0)})${objects}`;
    }
  }

  function chart(id, label, format, series) {
    const target = document.getElementById(id);
    const width = Math.max(200, target.clientWidth);
    if (!charts[id]) {
      charts[id] = new uPlot({
        width,
        height: 180,
        series: [{}, { label, stroke: "#0b5cad", fill: "rgba(11, 92, 173, 0.12)", value: (u, v) => format(v) }],
        axes: [{}, { values: (u, values) => values.map(format), size: 70 }],
        scales: { x: { time: true } },
        legend: { show: true },
      }, series, target);
      new ResizeObserver(() => charts[id].setSize({ width: Math.max(200, target.clientWidth), height: 180 }))
        .observe(target);
    } else {
      charts[id].setData(series);
    }
  }

  function history(data) {
    const points = data.points;
    const t = points.map((p) => p.t);
    chart("chart-hits", "Hit ratio", (v) => (v === null ? "–" : `${Math.round(100 * v)} %`),
      [t, points.map((p) => p.hit_ratio)]);
    chart("chart-origin", "From origins", (v) => (v === null ? "–" : `${bytes(v)}/s`),
      [t, points.map((p) => p.origin_bytes / data.interval)]);
    const reads = points.reduce((sum, p) => sum + p.reads, 0);
    const hits = points.reduce((sum, p) => sum + (p.hit_ratio || 0) * p.reads, 0);
    const origin = points.reduce((sum, p) => sum + p.origin_bytes, 0);
    const errors = points.reduce((sum, p) => sum + p.origin_errors, 0);
    const minutes = Math.round((points.length * data.interval) / 60);
    document.getElementById("hour-summary").textContent =
      `Over the last ${minutes} min: ${reads} block reads, ${percent(reads ? hits / reads : null)} from the cache, ` +
      `${bytes(origin)} from origins, ${errors} origin errors.`;
    const figures = document.getElementById("figures");
    card(figures, "Origin bytes, last hour", bytes(origin), "origin-hour");
    card(figures, "Origin errors, last hour", String(errors), "errors-hour");
    const last = points[points.length - 1];
    card(figures, "Blocks being fetched", last ? String(last.fills) : "0", "fills");
    const jobs = document.getElementById("jobs");
    for (const state of ["queued", "running", "done", "failed", "cancelled"]) {
      card(jobs, state, String(data.jobs[state] || 0), state);
    }
  }

  function totals(cache) {
    const figures = document.getElementById("figures");
    const hits = Object.values(cache.hits).reduce((a, b) => a + b, 0);
    const reads = hits + cache.misses;
    card(figures, "Hit ratio since start", percent(reads ? hits / reads : null), "hit-ratio");
    card(figures, "Block reads since start", String(reads), "reads");
    card(figures, "Origin bytes since start", bytes(cache.origin_bytes), "origin-bytes");
    tiers(cache);
    const note = document.getElementById("top-note");
    const table = document.getElementById("top-table");
    if (!cache.top) {
      note.textContent = token()
        ? "The token set in this tab is not an admin token for every path: the most read objects are not shown."
        : "Set an admin token (Token, at the top) to see the most read objects.";
      note.hidden = false;
      table.hidden = true;
      return;
    }
    note.hidden = true;
    table.hidden = false;
    const rows = document.getElementById("top-rows");
    rows.replaceChildren(...cache.top.map((item) => el("tr", {},
      el("td", {}, el("code", { text: item.key }), el("span", { class: "muted", text: ` ${item.origin}` })),
      el("td", { class: "num", text: String(item.hits) }),
      el("td", { class: "num", text: `${bytes(item.cached)} of ${bytes(item.size)}` }),
      el("td", { text: item.tier }))));
  }

  function mounts(stats) {
    const rows = document.getElementById("mount-rows");
    rows.replaceChildren(...Object.entries(stats.mounts).map(([name, mount]) => el("tr", {},
      el("th", { scope: "row", text: `/${name}` }),
      el("td", { class: "num", text: percent(mount.hit_ratio) }),
      el("td", { class: "num", text: bytes(mount.origin_bytes) }),
      el("td", { class: "num", text: String(mount.origin_errors) }),
      el("td", { class: "num", text: mount.origin_latency.p95 === null ? "–" : `${(1000 * mount.origin_latency.p95).toFixed(0)} ms` }))));
  }

  async function refresh() {
    const results = await Promise.allSettled([
      api("/api/v1/cache/stats?top=10").then(totals),
      api("/api/v1/stats/history").then(history),
      api("/api/v1/stats").then(mounts),
    ]);
    const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason.message);
    showError(failed.length ? `Some figures could not be read: ${failed.join("; ")}` : "");
    status.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  }

  refresh();
  setInterval(refresh, REFRESH);
  document.addEventListener("tessera:token", refresh);
})();
