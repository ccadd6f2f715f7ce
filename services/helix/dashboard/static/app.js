// Helix dashboard: times in the viewer's zone, and the live parts of the run and agents
// pages, fed by server-sent events. No framework, no third-party code; text is only ever
// set with textContent (never innerHTML), so nothing a server sends can become markup.
"use strict";

(function () {
  const counts = new Intl.NumberFormat(undefined);
  const scores = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 6 });
  const SVG = "http://www.w3.org/2000/svg";
  const MAX_POINTS = 4000;
  const MAX_EVENTS = 200;
  const MAX_DEPARTED = 20;

  function byId(id) {
    return document.getElementById(id);
  }

  function el(name, text, attrs) {
    const node = document.createElement(name);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function count(value) {
    if (value === null || value === undefined || value === "") return "—";
    return counts.format(Number(value));
  }

  function score(value) {
    if (value === null || value === undefined || value === "") return "—";
    const n = Number(value);
    return Number.isFinite(n) ? scores.format(n) : String(value);
  }

  function axisNumber(value) {
    const a = Math.abs(value);
    if (a !== 0 && (a < 1e-3 || a >= 1e7)) return value.toExponential(2);
    return new Intl.NumberFormat(undefined, { maximumSignificantDigits: 4 }).format(value);
  }

  // A score from the server: null (none yet) is no point at all, not zero.
  function num(value) {
    return value === null || value === undefined ? NaN : Number(value);
  }

  function localTime(iso) {
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function localizeTimes(root) {
    for (const node of root.querySelectorAll("time[datetime]")) {
      node.textContent = localTime(node.getAttribute("datetime"));
      node.title = node.getAttribute("datetime");
    }
  }

  function setLive(text) {
    const live = byId("live");
    if (live) {
      live.textContent = text;
      live.dataset.state = text;
    }
  }

  // ---- the run page --------------------------------------------------------------------

  function runPage(body) {
    const run = body.dataset.run;
    const id = run.replace(/^runs\//, "");
    const chart = byId("chart");
    const points = [];
    const events = byId("events");
    let drawing = false;
    let refreshTimer = null;
    let lastRefresh = 0;

    function draw() {
      drawing = false;
      chart.setAttribute("data-points", String(points.length));
      while (chart.lastChild && chart.lastChild.nodeName !== "title") chart.removeChild(chart.lastChild);
      if (points.length === 0) return;
      const W = 960, H = 320, L = 84, R = 16, T = 14, B = 38;
      const xs = points.map((p) => p.x);
      const ys = [];
      for (const p of points) {
        if (Number.isFinite(p.best)) ys.push(p.best);
        if (Number.isFinite(p.mean)) ys.push(p.mean);
      }
      let x0 = Math.min(...xs), x1 = Math.max(...xs);
      if (x1 === x0) x1 = x0 + 1;
      let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
      // Scores that shrink towards zero over decades read better on a log scale.
      const log = y0 > 0 && y1 / y0 > 1000;
      const f = log ? Math.log10 : (v) => v;
      let f0 = f(y0), f1 = f(y1);
      if (f1 === f0) { f0 -= 1; f1 += 1; }
      chart.setAttribute("data-scale", log ? "log" : "linear");
      const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
      const sy = (y) => T + (1 - (f(y) - f0) / (f1 - f0)) * (H - T - B);
      y0 = log ? y0 : f0;
      y1 = log ? y1 : f1;
      const axis = document.createElementNS(SVG, "path");
      axis.setAttribute("d", `M${L},${T} V${H - B} H${W - R}`);
      axis.setAttribute("class", "axis");
      chart.appendChild(axis);
      const labels = [
        [L - 6, T + 4, "end", axisNumber(y1)],
        [L - 6, H - B, "end", axisNumber(y0)],
        [L, H - B + 16, "start", count(x0)],
        [W - R, H - B + 16, "end", count(x1)],
        [(L + W - R) / 2, H - 4, "middle", log ? "evaluations (score on a log scale)" : "evaluations"],
      ];
      for (const [x, y, anchor, text] of labels) {
        const label = document.createElementNS(SVG, "text");
        label.setAttribute("x", String(x));
        label.setAttribute("y", String(y));
        label.setAttribute("text-anchor", anchor);
        label.textContent = text;
        chart.appendChild(label);
      }
      for (const key of ["mean", "best"]) {
        const coords = points
          .filter((p) => Number.isFinite(p[key]))
          .map((p) => `${sx(p.x).toFixed(1)},${sy(p[key]).toFixed(1)}`);
        if (coords.length === 0) continue;
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", coords.join(" "));
        line.setAttribute("class", `line ${key}`);
        chart.appendChild(line);
        const [cx, cy] = coords[coords.length - 1].split(",");
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", cx);
        dot.setAttribute("cy", cy);
        dot.setAttribute("r", "3.5");
        dot.setAttribute("class", `dot ${key}`);
        chart.appendChild(dot);
      }
    }

    function redraw() {
      if (!drawing) {
        drawing = true;
        window.requestAnimationFrame(draw);
      }
    }

    function addEvent(text, time) {
      const item = el("li");
      if (time) item.appendChild(el("time", localTime(time), { datetime: time }));
      item.appendChild(document.createTextNode(" " + text));
      events.insertBefore(item, events.firstChild);
      while (events.children.length > MAX_EVENTS) events.removeChild(events.lastChild);
    }

    function refreshCandidates() {
      lastRefresh = Date.now();
      fetch(`/runs/${encodeURIComponent(id)}/candidates.json`, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : null))
        .then((data) => {
          if (!data || !Array.isArray(data.candidates)) return;
          const tbody = document.querySelector("#candidates tbody");
          if (!tbody) return;
          const rows = data.candidates.map((c) => {
            const tr = el("tr");
            tr.appendChild(el("td", c.rank, { class: "num" }));
            const idCell = el("td", null, { title: c.id, class: "id" });
            idCell.appendChild(el("code", String(c.id).slice(0, 12)));
            tr.appendChild(idCell);
            tr.appendChild(el("td", count(c.generation), { class: "num" }));
            const status = el("td", c.status, { class: "status" });
            if (c.message) status.title = c.message;
            tr.appendChild(status);
            tr.appendChild(el("td", score(c.score), { class: "num" }));
            const metrics = Object.entries(c.metrics || {}).map(([k, v]) => `${k}=${score(v)}`);
            tr.appendChild(el("td", metrics.join(", ")));
            const genes = el("td", null, { class: "genes" });
            genes.appendChild(el("code", c.genes));
            tr.appendChild(genes);
            return tr;
          });
          tbody.replaceChildren(...rows);
        })
        .catch(() => {});
    }

    function laterRefresh() {
      if (refreshTimer !== null) return;
      const wait = Math.max(0, 2000 - (Date.now() - lastRefresh));
      refreshTimer = window.setTimeout(() => {
        refreshTimer = null;
        refreshCandidates();
      }, wait);
    }

    function onRun(message) {
      const e = JSON.parse(message.data);
      if (e.kind === "generation") {
        if (points.length >= MAX_POINTS) points.splice(0, points.length - MAX_POINTS + 1);
        points.push({ x: Number(e.evaluations), best: num(e.best), mean: num(e.mean) });
        byId("evaluations").textContent = count(e.evaluations);
        byId("generation").textContent = count(e.generation);
        if (e.best !== null) byId("best-score").textContent = score(e.best);
        redraw();
        addEvent(
          `generation ${count(e.generation)}: ${count(e.evaluations)} evaluations, best ${score(e.best)}, mean ${score(e.mean)}`,
          e.time,
        );
      } else if (e.kind === "state") {
        const state = byId("run-state");
        state.textContent = e.state;
        state.className = `state state-${e.state.toLowerCase()}`;
        if (e.stop_reason) byId("stop-reason").textContent = e.stop_reason;
        addEvent(`state ${e.state}${e.stop_reason ? " (" + e.stop_reason + ")" : ""}${e.error ? ": " + e.error : ""}`, e.time);
        if (["SUCCEEDED", "FAILED", "CANCELLED"].includes(e.state)) {
          const cancel = byId("cancel-form");
          if (cancel) cancel.remove();
        }
      } else if (e.kind === "best") {
        byId("best-score").textContent = score(e.score);
        addEvent(`new best ${score(e.score)} (candidate ${String(e.candidate).slice(0, 12)})`, e.time);
        laterRefresh();
      }
    }

    let lastSequence = 0;
    let ended = false;

    // EventSource resumes a dropped stream by itself (Last-Event-ID); a refused one (429
    // while slots are taken, 401 once the session expired) it abandons: that is retried
    // here after a pause, from the last event received.
    function connect() {
      const source = new EventSource(`/runs/${encodeURIComponent(id)}/events?after=${lastSequence}`);
      source.addEventListener("open", () => setLive("live"));
      source.addEventListener("run", (message) => {
        lastSequence = Number(message.lastEventId) || lastSequence;
        onRun(message);
      });
      source.addEventListener("gap", (message) => {
        addEvent(`events before ${count(JSON.parse(message.data).first_sequence)} are no longer kept`);
      });
      source.addEventListener("end", () => {
        ended = true;
        source.close();
        setLive("ended");
        refreshCandidates();
      });
      source.addEventListener("fatal", (message) => {
        ended = true;
        source.close();
        setLive("stopped");
        addEvent(`the live view stopped: ${JSON.parse(message.data).message}`);
      });
      source.addEventListener("failure", () => setLive("reconnecting"));
      source.addEventListener("error", () => {
        if (ended) return;
        setLive("reconnecting");
        if (source.readyState === EventSource.CLOSED) window.setTimeout(connect, 5000);
      });
    }
    connect();
  }

  // ---- the agents page -----------------------------------------------------------------

  function duration(seconds) {
    let s = Math.max(0, Math.floor(seconds));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min ${s} s`;
    return `${s} s`;
  }

  function leaseText(ttl, created) {
    const age = created ? ` · age ${duration((Date.now() - new Date(created).getTime()) / 1000)}` : "";
    return `ttl ${duration(Number(ttl))}${age}`;
  }

  function agentsPage() {
    const tbody = document.querySelector("#agents tbody");
    const departed = byId("departed");
    const none = byId("no-agents");

    function row(a) {
      const tr = el("tr", null, { "data-agent": a.name });
      tr.appendChild(el("td", a.name.replace(/^agents\//, "")));
      tr.appendChild(el("td", a.kind, { class: "kind" }));
      const endpoint = el("td", null, { class: "endpoint" });
      endpoint.appendChild(el("code", a.endpoint));
      tr.appendChild(endpoint);
      tr.appendChild(el("td", a.health, { class: `health health-${a.health.toLowerCase()}` }));
      let load = `${count(a.in_flight)} / ${count(a.capacity)}`;
      if (a.queued) load += ` (+${count(a.queued)} queued)`;
      tr.appendChild(el("td", load, { class: "load num" }));
      const labels = el("td", null, { class: "labels" });
      for (const [k, v] of Object.entries(a.labels || {})) labels.appendChild(el("span", `${k}=${v}`, { class: "label" }));
      tr.appendChild(labels);
      tr.appendChild(el("td", leaseText(a.ttl, a.created), { class: "lease", "data-ttl": String(a.ttl) }));
      const registered = el("td", null, { class: "registered", "data-created": a.created });
      if (a.created) registered.appendChild(el("time", localTime(a.created), { datetime: a.created }));
      else registered.textContent = "—";
      tr.appendChild(registered);
      let serves = (a.serves || []).join(", ");
      if (a.serves_total > (a.serves || []).length) serves += ` … (${count(a.serves_total)} in all)`;
      tr.appendChild(el("td", serves, { class: "serves" }));
      return tr;
    }

    function find(name) {
      for (const tr of tbody.children) if (tr.dataset.agent === name) return tr;
      return null;
    }

    function settle() {
      none.hidden = tbody.children.length > 0;
    }

    function onSnapshot(message) {
      const data = JSON.parse(message.data);
      tbody.replaceChildren(...data.agents.map(row));
      settle();
    }

    function onAgents(message) {
      const data = JSON.parse(message.data);
      for (const change of data.changes) {
        const old = find(change.name);
        if (change.type === "put") {
          const fresh = row(change.agent);
          if (old) tbody.replaceChild(fresh, old);
          else {
            const after = Array.from(tbody.children).find((tr) => tr.dataset.agent > change.name);
            tbody.insertBefore(fresh, after || null);
          }
        } else {
          if (old) old.remove();
          const item = el("li", null, { "data-agent": change.name });
          item.appendChild(el("time", new Date().toLocaleString(), { datetime: new Date().toISOString() }));
          item.appendChild(document.createTextNode(` ${change.name} left: ${change.reason}`));
          departed.insertBefore(item, departed.firstChild);
          while (departed.children.length > MAX_DEPARTED) departed.removeChild(departed.lastChild);
        }
      }
      settle();
    }

    // Ages grow by themselves: recomputed here every few seconds (no request is made).
    window.setInterval(() => {
      for (const tr of tbody.children) {
        const lease = tr.querySelector("td.lease");
        const registered = tr.querySelector("td.registered");
        if (lease && registered) lease.textContent = leaseText(lease.dataset.ttl, registered.dataset.created);
      }
    }, 5000);

    let stopped = false;

    function connect() {
      const source = new EventSource("/agents/events");
      source.addEventListener("open", () => setLive("live"));
      source.addEventListener("snapshot", onSnapshot);
      source.addEventListener("agents", onAgents);
      source.addEventListener("fatal", () => {
        stopped = true;
        source.close();
        setLive("stopped");
      });
      source.addEventListener("failure", () => setLive("reconnecting"));
      source.addEventListener("error", () => {
        if (stopped) return;
        setLive("reconnecting");
        if (source.readyState === EventSource.CLOSED) window.setTimeout(connect, 5000);
      });
    }
    connect();
  }

  document.addEventListener("DOMContentLoaded", () => {
    localizeTimes(document);
    const body = document.body;
    if (body.dataset.page === "runs" && body.dataset.run) runPage(body);
    else if (body.dataset.page === "agents" && byId("agents")) agentsPage();
  });
})();
