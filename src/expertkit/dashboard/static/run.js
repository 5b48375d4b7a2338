// The run page's charts (uPlot, vendored) and their live updates (server-sent "run" events).
// The server sends each series downsampled as {x: steps, y: values}; series with different steps
// (train loss every logging step, eval loss at each evaluation) are joined on the union of steps.
(function () {
  const data = JSON.parse(document.getElementById("run-data").textContent);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const palette = { loss: color("--accent"), eval_loss: "#d29922", learning_rate: "#8250df", tokens_per_s: "#1a7f37", peak_rss_mib: "#cf222e" };
  const charts = {};
  // Tick labels that stay readable for a learning rate (3e-4) and for memory (7,575) alike.
  const tick = (v) => (v == null ? "" : v !== 0 && Math.abs(v) < 0.01 ? v.toExponential(1) : Number(v.toPrecision(4)).toLocaleString());

  function joined(curves, names) {
    const steps = [...new Set(names.flatMap((n) => curves[n].x))].sort((a, b) => a - b);
    const columns = names.map((n) => {
      const at = new Map(curves[n].x.map((x, i) => [x, curves[n].y[i]]));
      return steps.map((s) => (at.has(s) ? at.get(s) : null));
    });
    return [steps, ...columns];
  }

  function draw(curves) {
    document.querySelectorAll(".chart").forEach((el) => {
      const names = el.dataset.series.split(" ");
      const rows = joined(curves, names);
      el.dataset.points = String(rows[0].length);
      if (charts[el.id]) { charts[el.id].setData(rows); return; }
      const opts = {
        width: Math.max(el.clientWidth, 300), height: 220,
        scales: { x: { time: false } },
        axes: [{ stroke: color("--fg"), grid: { stroke: color("--line") }, label: "step" },
               { stroke: color("--fg"), grid: { stroke: color("--line") }, size: 64, values: (u, splits) => splits.map(tick) }],
        series: [{ label: "step" }, ...names.map((n) => ({ label: n, stroke: palette[n], width: 2, spanGaps: true, points: { show: rows[0].length < 60 } }))],
      };
      charts[el.id] = new uPlot(opts, rows, el);
    });
  }

  draw(data.curves);
  window.expertkitCharts = charts;
  if (data.live && window.EventSource) {
    const stream = new EventSource(`/api/stream/runs/${encodeURIComponent(data.key)}`);
    stream.addEventListener("run", (event) => {
      const update = JSON.parse(event.data);
      draw(update.curves);
      const s = update.summary;
      document.getElementById("run-status").textContent = s.status;
      document.getElementById("run-progress").firstElementChild.textContent = String(s.step);
      if (s.status !== "running") stream.close();
    });
  }
})();
