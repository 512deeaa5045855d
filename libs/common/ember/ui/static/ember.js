// Ember dashboard: applies the server-sent updates to the page and draws the metric charts.
// Every update is {"parts": {elementId: html}, "rounds": [...]?}; nothing is polled.
"use strict";
(function () {
  const conn = document.getElementById("conn");
  const roundsData = document.getElementById("rounds-data");
  const rounds = new Map(); // round number -> RoundCompleted
  let fetchingGap = false;

  function setConn(text, ok) {
    if (conn) { conn.textContent = text; conn.className = "conn " + (ok ? "ok" : "down"); }
  }

  window.emberRoundSeen = {}; // round -> when this page first had it (ms since the epoch)
  function addRounds(list) {
    for (const r of list || []) {
      if (!rounds.has(r.round)) window.emberRoundSeen[r.round] = Date.now();
      rounds.set(r.round, r);
    }
  }

  // --- chart: one small SVG line chart per metric (and the round duration) ------------------
  const SVG = "http://www.w3.org/2000/svg";
  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(v) { return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.01) ? v.toExponential(2) : (+v.toFixed(4)).toString(); }

  function drawChart() {
    const box = document.getElementById("chart");
    if (!box) return;
    const list = [...rounds.values()].sort((a, b) => a.round - b.round);
    const series = new Map();
    for (const r of list) {
      for (const [k, v] of Object.entries(r.metrics || {})) {
        if (!series.has(k)) series.set(k, []);
        series.get(k).push([r.round, v]);
      }
      if (!series.has("round_duration_s")) series.set("round_duration_s", []);
      series.get("round_duration_s").push([r.round, r.duration_s || 0]);
    }
    box.dataset.rounds = String(list.length);
    const W = 300, H = 130, L = 44, B = 18, T = 18;
    for (const [name, points] of series) {
      let svg = box.querySelector(`svg[data-metric="${CSS.escape(name)}"]`);
      if (!svg) {
        svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, "data-metric": name, class: "series" });
        box.appendChild(svg);
      }
      svg.replaceChildren();
      const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
      const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
      const sx = (x) => L + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - L - 6);
      const sy = (y) => H - B - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (H - B - T);
      svg.appendChild(el("text", { x: L, y: 12, class: "title" }, name));
      svg.appendChild(el("text", { x: L - 4, y: T + 4, class: "axis", "text-anchor": "end" }, fmt(y1)));
      svg.appendChild(el("text", { x: L - 4, y: H - B, class: "axis", "text-anchor": "end" }, fmt(y0)));
      svg.appendChild(el("text", { x: W - 6, y: H - 4, class: "axis", "text-anchor": "end" }, "round " + x1));
      svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - 6, y2: H - B, class: "frame" }));
      svg.appendChild(el("polyline", { points: points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "), "data-points": points.length }));
    }
  }

  // --- actor logs ---------------------------------------------------------------------------
  function showLog() {
    const select = document.getElementById("log-actor");
    const logs = document.getElementById("logs");
    if (!select || !logs) return;
    const actors = [...logs.querySelectorAll("pre.log")].map((p) => p.dataset.actor);
    const current = select.value;
    if ([...select.options].map((o) => o.value).join() !== actors.join()) {
      select.replaceChildren(...actors.map((a) => new Option(a, a)));
      if (actors.includes(current)) select.value = current;
    }
    for (const pre of logs.querySelectorAll("pre.log")) {
      pre.hidden = pre.dataset.actor !== select.value;
      if (!pre.hidden) pre.scrollTop = pre.scrollHeight;
    }
  }

  function apply(update) {
    const follow = document.getElementById("follow");
    for (const [id, html] of Object.entries(update.parts || {})) {
      if (id === "logs" && follow && !follow.checked) continue; // frozen while not following
      const node = document.getElementById(id);
      if (node) node.innerHTML = html;
    }
    if (update.rounds) {
      const known = rounds.size ? Math.max(...rounds.keys()) : 0;
      const first = update.rounds.length ? update.rounds[0].round : known + 1;
      addRounds(update.rounds);
      if (first > known + 1 && !fetchingGap) fillGap(); // missed rounds: ask for them once
      drawChart();
    }
    showLog();
  }

  function fillGap() {
    fetchingGap = true;
    const job = location.pathname.split("/").pop();
    fetch(`/api/jobs/${encodeURIComponent(job)}/rounds`).then((r) => r.json()).then((list) => {
      if (Array.isArray(list)) { addRounds(list); drawChart(); }
    }).finally(() => { fetchingGap = false; });
  }

  // ages ("3m") move on between updates: recomputed here from data-since, no request
  function age(since) {
    const s = Math.max(0, Math.floor((Date.now() - Date.parse(since)) / 1000));
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) if (s >= size) return Math.floor(s / size) + unit;
    return s + "s";
  }
  setInterval(() => {
    for (const span of document.querySelectorAll(".age[data-since]")) if (span.dataset.since) span.textContent = age(span.dataset.since);
  }, 5000);

  // --- wiring -------------------------------------------------------------------------------
  if (roundsData) { addRounds(JSON.parse(roundsData.textContent || "[]")); drawChart(); }
  showLog();
  document.addEventListener("change", (ev) => { if (ev.target.id === "log-actor" || ev.target.id === "follow") showLog(); });
  document.addEventListener("click", (ev) => {
    const link = ev.target.closest(".show-log");
    if (link) {
      const select = document.getElementById("log-actor");
      if (select) { select.value = link.dataset.actor; showLog(); }
    }
    if (ev.target.id === "cancel") {
      const button = ev.target;
      button.disabled = true;
      fetch(`/api/jobs/${encodeURIComponent(button.dataset.job)}/cancel`, { method: "POST", headers: { "X-Ember": "1" } })
        .then((r) => r.json().then((body) => ({ ok: r.ok, body })))
        .then(({ ok, body }) => { button.textContent = ok ? `cancel: ${body.state}` : `refused: ${body.error}`; });
    }
  });
  for (const url of (document.body.dataset.stream || "").split(" ").filter(Boolean)) {
    const source = new EventSource(url);
    source.onopen = () => setConn("live", true);
    source.onerror = () => setConn("reconnecting…", false);
    source.onmessage = (ev) => apply(JSON.parse(ev.data));
  }
})();
