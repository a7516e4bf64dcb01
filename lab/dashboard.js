// The lab dashboard's page script: fetch the snapshot (what `python -m lab status --json` prints),
// draw it, and again every interval. No library, nothing from the internet: lab/dashboard.py serves this.
// Everything that comes from Redis is set with textContent, never as HTML: a message's arguments
// and errors are data, not markup.
"use strict";

const TOKEN = document.querySelector('meta[name="lab-token"]').content;
const INTERVAL_MS = Number(document.querySelector('meta[name="lab-interval-ms"]').content) || 1000;
const WINDOW_MS = 5 * 60 * 1000;  // the chart's last 5 minutes
const samples = [];  // {t, pending, dead}: one per snapshot, for the chart

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function seconds(ms) {
  const s = Math.max(0, ms) / 1000;
  return s < 120 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

function say(text, isError) {
  const line = document.getElementById("said");
  line.textContent = text;
  line.style.color = isError ? "#b00020" : "";
}

// -- actions: POST with this run's token, after the page asks ------------------------------------

async function act(path, body, question) {
  if (!window.confirm(question)) return;
  try {
    const response = await fetch(path, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-Lab-Token": TOKEN},
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    say(answer.done || answer.error, !response.ok);
  } catch (error) {
    say(`the dashboard did not answer: ${error.message}`, true);
  }
  refresh();
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

// -- drawing ---------------------------------------------------------------------------------------

function numericFields(queues) {
  const fields = [];
  for (const q of queues) {
    for (const [field, value] of Object.entries(q)) {
      if (typeof value === "number" && !fields.includes(field)) fields.push(field);
    }
  }
  return fields;
}

function showQueues(queues) {
  const fields = numericFields(queues);
  const busy = queues.filter(q => fields.some(f => q[f] > 0));
  const idle = queues.filter(q => !busy.includes(q)).map(q => q.name);
  const table = document.getElementById("queues");
  const head = table.tHead;
  head.textContent = "";
  const header = head.insertRow();
  for (const title of ["queue", ...fields.map(f => f.replace(/_/g, " ")), ""]) {
    const th = document.createElement("th");
    th.textContent = title;
    header.appendChild(th);
  }
  const body = table.tBodies[0];
  body.textContent = "";
  for (const q of busy) {
    const row = body.insertRow();
    row.dataset.queue = q.name;
    cell(row, q.name);
    for (const f of fields) {
      const td = cell(row, String(q[f] ?? ""), f === "dead" && q[f] ? "n dead" : "n");
      td.dataset.field = f;
    }
    const waiting = (q.ready || 0) + (q.delayed || 0);
    const actions = row.insertCell();
    if (waiting) {
      actions.appendChild(button("purge", () => act("api/purge", {queue: q.name},
        `Remove the ${waiting} ready and delayed message(s) of ${q.name}? (in flight and dead letters stay)`)));
    }
  }
  document.getElementById("idle").textContent = idle.length ? `${idle.length} idle queue(s): ${idle.join(", ")}` : "";
}

function showWorkers(snapshot) {
  const alive = (snapshot.heartbeats || []).filter(h => h.alive);
  const timeout = (snapshot.heartbeat_timeout_ms || 0) / 1000;
  document.getElementById("workers-title").textContent =
    `Alive: ${alive.length}` + (timeout ? ` (a heartbeat in the last ${timeout} s)` : "");
  const body = document.getElementById("workers").tBodies[0];
  body.textContent = "";
  for (const h of alive) {
    const row = body.insertRow();
    cell(row, h.broker_id);
    cell(row, seconds(snapshot.taken_at_ms - h.last_seen_ms), "n");
    cell(row, String(h.holding), "n");
  }
}

function showDeadLetters(snapshot) {
  const letters = snapshot.dead_letters || [];
  document.getElementById("dead-title").textContent = `Newest dead letters (${letters.length} shown)`;
  const body = document.getElementById("dead").tBodies[0];
  body.textContent = "";
  for (const d of letters) {
    const row = body.insertRow();
    row.dataset.messageId = d.message_id;
    cell(row, `${new Date(d.dead_at_ms).toLocaleTimeString()} (${seconds(snapshot.taken_at_ms - d.dead_at_ms)})`);
    cell(row, d.queue);
    cell(row, d.actor);
    const kwargs = Object.entries(d.kwargs || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
    cell(row, [...(d.args || []).map(a => JSON.stringify(a)), ...kwargs].join(", "), "args");
    cell(row, String(d.tries), "n");
    cell(row, d.why, "why");
    row.insertCell().appendChild(button("requeue", () => act("api/requeue", {queue: d.queue, message_id: d.message_id},
      `Put ${d.actor}(${d.message_id}) back at the end of ${d.queue}? It keeps its retry count.`)));
  }
}

// Rates from successive snapshots: Dramatiq's Redis layout keeps no count of processed messages,
// so "drained" is how much the waiting and running messages went down, net, per second.
function rates() {
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const [a, b] = [samples[i - 1], samples[i]];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    points.push({t: b.t, drained: Math.max(0, a.pending - b.pending) / dt, died: Math.max(0, b.dead - a.dead) / dt});
  }
  return points;
}

function showChart() {
  const svg = document.getElementById("chart");
  const [width, height, pad] = [640, 140, 24];
  const points = rates();
  const peak = Math.max(0, ...points.map(p => Math.max(p.drained, p.died)));
  const top = Math.max(1, peak);
  const now = samples.length ? samples[samples.length - 1].t : 0;
  // The last minute at first, growing to the last 5 as snapshots come in: a fresh page's chart is not empty.
  const span = Math.min(WINDOW_MS, Math.max(60 * 1000, samples.length ? now - samples[0].t : 0));
  const x = t => pad + (width - 2 * pad) * (1 - (now - t) / span);
  const y = v => height - pad - (height - 2 * pad) * v / top;
  const ns = "http://www.w3.org/2000/svg";
  svg.textContent = "";
  const add = (tag, attributes, text) => {
    const element = document.createElementNS(ns, tag);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    if (text !== undefined) element.textContent = text;
    svg.appendChild(element);
    return element;
  };
  add("line", {x1: pad, y1: height - pad, x2: width - pad, y2: height - pad, stroke: "#999"});
  add("line", {x1: pad, y1: pad, x2: pad, y2: height - pad, stroke: "#999"});
  add("text", {x: 2, y: pad - 6, "font-size": 11, fill: "#555"}, `${top.toFixed(top < 10 ? 1 : 0)}/s`);
  add("text", {x: pad, y: height - 6, "font-size": 11, fill: "#555"},
      span < 120 * 1000 ? `${Math.round(span / 1000)} s ago` : `${Math.round(span / 60000)} min ago`);
  add("text", {x: width - pad - 24, y: height - 6, "font-size": 11, fill: "#555"}, "now");
  for (const series of ["drained", "died"]) {
    add("polyline", {class: series, fill: "none", "stroke-width": 2,
                     points: points.map(p => `${x(p.t).toFixed(1)},${y(p[series]).toFixed(1)}`).join(" ")});
  }
  svg.dataset.points = String(points.length);
  svg.dataset.peak = peak.toFixed(2);
  const last = points[points.length - 1];
  document.getElementById("rate-now").textContent = last
    ? `now ${last.drained.toFixed(1)} drained/s, ${last.died.toFixed(1)} dead/s; peak ${peak.toFixed(1)}/s`
    : "collecting: two snapshots make the first point";
}

function show(snapshot) {
  const queues = snapshot.queues || [];
  const sum = field => queues.reduce((total, q) => total + (q[field] || 0), 0);
  samples.push({t: snapshot.taken_at_ms, pending: sum("ready") + sum("delayed") + sum("in_flight"), dead: sum("dead")});
  while (samples.length > 2 && samples[0].t < snapshot.taken_at_ms - WINDOW_MS) samples.shift();
  showQueues(queues);
  showWorkers(snapshot);
  showDeadLetters(snapshot);
  showChart();
  document.getElementById("updated").textContent =
    `updated ${new Date(snapshot.taken_at_ms).toLocaleTimeString()}, every ${INTERVAL_MS / 1000} s`;
}

// -- the loop ----------------------------------------------------------------------------------------

async function refresh() {
  const banner = document.getElementById("error");
  try {
    const response = await fetch("api/status", {cache: "no-store"});
    const snapshot = await response.json();
    if (!response.ok) throw new Error(snapshot.error || response.statusText);
    show(snapshot);
    banner.style.display = "none";
  } catch (error) {
    banner.textContent = error.message.startsWith("cannot reach") ? error.message
      : `no snapshot: ${error.message} (is python -m lab dashboard still running?)`;
    banner.style.display = "block";
  }
}

refresh();
setInterval(refresh, INTERVAL_MS);
