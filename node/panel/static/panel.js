// The rainnet panel page: one WebSocket (/live) brings the whole view, then a delta a second
// (per section, the entries that changed, null for those that went). The page keeps the view
// and redraws only what changed. Text from the network is only ever set as textContent; the one
// piece of markup inserted is the credit plot's SVG, which the node draws from numbers.
"use strict";

const SECTIONS = ["nodes", "jobs", "guests", "mpi", "exchanges", "info"];
const LIGHTS = [["up", "up"], ["net", "net"], ["temp", "temp"], ["user1", "u1"], ["user2", "u2"]];
const LOAD_STEPS = 8;
const view = Object.fromEntries(SECTIONS.map((s) => [s, {}]));
const nodeEls = new Map();
let selfId = null;
let retries = 0;

// For tests and benchmarks: the view as the page holds it, the last messages applied (size,
// time to apply), and when each node's and job's state changed on the page (epoch seconds).
const probe = (window.__rain = { seq: 0, messages: 0, applied: [], events: [], view });
function note(list, item, max) {
  list.push(item);
  if (list.length > max) list.splice(0, list.length - max);
}

const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}
function short(id) {
  return id ? "…" + id.slice(-8) : "-";
}
function size(bytes) {
  if (bytes === null || bytes === undefined) return "-";
  const units = ["B", "K", "M", "G", "T"];
  let v = bytes, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (v >= 10 || i === 0 ? v.toFixed(0) : v.toFixed(1)) + units[i];
}
function num(v, digits = 1) {
  return v === null || v === undefined ? "-" : Number(v).toFixed(digits);
}
function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "-";
  const s = Math.floor(seconds);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

// ----- the live channel -------------------------------------------------------------------

function connect() {
  const ws = new WebSocket(`ws://${location.host}/live`);
  ws.onopen = () => { retries = 0; setConn("live"); };
  ws.onmessage = (event) => apply(JSON.parse(event.data), event.data.length);
  ws.onclose = () => {
    setConn("reconnecting");
    const wait = Math.min(5000, 500 * 2 ** retries++);
    setTimeout(connect, wait);
  };
}
function setConn(state) {
  const c = $("conn");
  c.dataset.conn = state;
  c.textContent = state;
}

function apply(msg, bytes) {
  const started = performance.now();
  let changed;
  if (msg.type === "view") {
    for (const s of SECTIONS) view[s] = msg.view[s] || {};
    for (const e of nodeEls.values()) e.remove();
    nodeEls.clear();
    changed = Object.fromEntries(SECTIONS.map((s) => [s, Object.keys(view[s])]));
  } else {
    changed = {};
    for (const [section, entries] of Object.entries(msg.changes)) {
      changed[section] = Object.keys(entries);
      for (const [key, value] of Object.entries(entries)) {
        if (value === null) delete view[section][key];
        else view[section][key] = value;
      }
    }
  }
  if (changed.info) drawInfo();
  if (changed.nodes) drawNodes(changed.nodes);
  if (changed.jobs) drawJobs();
  if (changed.guests) drawGuests();
  if (changed.mpi) drawMpi();
  if (changed.exchanges) drawExchanges();
  probe.seq = msg.seq;
  probe.messages++;
  note(probe.applied, { seq: msg.seq, type: msg.type, at: Date.now() / 1000, bytes,
    ms: performance.now() - started }, 200);
}

// ----- nodes ------------------------------------------------------------------------------

function nodePanel(id) {
  const lights = el("div", { class: "row lights" });
  for (const [key, label] of LIGHTS) {
    lights.append(el("div", { class: "light" }, el("span", { class: "led", "data-light": key }),
      el("small", {}, label)));
  }
  const bar = el("div", { class: "row bar" });
  for (let i = 0; i < LOAD_STEPS; i++) bar.append(el("span", { class: "seg" }));
  const fill = el("div", { class: "fill" });
  const e = el("div", { class: "node", "data-peer": id },
    el("div", { class: "name", title: id }, short(id)), lights, bar,
    el("div", { class: "state" }), el("div", { class: "res" }),
    el("div", { class: "load", title: "load" }, fill));
  return e;
}

function drawNode(e, n) {
  const was = e.dataset.up;
  const wasState = e.dataset.state;
  e.dataset.up = String(n.up);
  e.dataset.state = n.state;
  if (n.me) e.dataset.me = ""; else delete e.dataset.me;
  const values = { up: n.up ? "on" : "off", net: n.net, temp: n.hot ? "on" : "off",
    user1: n.user1, user2: n.user2 };
  for (const led of e.querySelectorAll(".led")) {
    const v = values[led.dataset.light];
    if (led.dataset.value !== v) led.dataset.value = v;
  }
  e.querySelectorAll(".seg").forEach((seg, i) => {
    if (i < n.load) seg.dataset.lit = ""; else delete seg.dataset.lit;
  });
  e.querySelector(".state").textContent = n.up ? n.state : "left";
  e.querySelector(".res").textContent =
    `${n.cpus ?? "-"} CPU · ${size(n.memory)} · ${n.gpus ?? "-"} GPU`;
  e.querySelector(".load .fill").style.width = (100 * n.load / LOAD_STEPS) + "%";
  if (was !== String(n.up) || wasState !== n.state) {
    note(probe.events, { peer: n.id, up: n.up, state: n.state, at: Date.now() / 1000 }, 2000);
  }
}

function nodeOrder(a, b) {
  // this node first, then the live ones, then those that left; by peer id within each
  const rank = (n) => (n.me ? 0 : n.up ? 1 : 2);
  return rank(a) - rank(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function drawNodes(keys) {
  let reorder = false;
  for (const id of keys) {
    const n = view.nodes[id];
    let e = nodeEls.get(id);
    if (!n) {
      if (e) { e.remove(); nodeEls.delete(id); }
      continue;
    }
    if (!e) {
      e = nodePanel(id);
      nodeEls.set(id, e);
      reorder = true;
    } else if (e.dataset.up !== String(n.up)) {
      reorder = true;
    }
    drawNode(e, n);
  }
  if (reorder) {
    const box = $("nodes");
    const sorted = Object.values(view.nodes).sort(nodeOrder);
    box.append(...sorted.map((n) => nodeEls.get(n.id)));
  }
  const all = Object.values(view.nodes);
  const up = all.filter((n) => n.up).length;
  $("counts").textContent = `${up} up` + (all.length > up ? `, ${all.length - up} left` : "");
  if (selfId && keys.includes(selfId)) drawLightControls();
}

// ----- tables -----------------------------------------------------------------------------

function fill(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  table.classList.toggle("has-rows", rows.length > 0);
}
function cell(text, cls) {
  return el("td", cls ? { class: cls } : {}, text === null || text === undefined ? "-" : String(text));
}
function elapsedCell(since, until) {
  const td = el("td", { class: "elapsed", "data-since": since });
  if (until !== null && until !== undefined) td.dataset.until = until;
  td.textContent = duration((until ?? Date.now() / 1000) - since);
  return td;
}
function tickElapsed() {
  const now = Date.now() / 1000;
  for (const td of document.querySelectorAll("td.elapsed:not([data-until])")) {
    td.textContent = duration(now - Number(td.dataset.since));
  }
}

const jobStates = new Map();
function drawJobs() {
  const jobs = Object.values(view.jobs).sort((a, b) => b.since - a.since || (a.id < b.id ? 1 : -1));
  const rows = jobs.map((j) => {
    const tr = el("tr", { "data-job": j.id, "data-kind": j.kind, "data-state": j.state });
    const finished = j.done + j.failed;
    const progress = el("td");
    if (j.kind === "array") {
      const bar = el("span", { class: "progress", "data-progress": String(finished / j.tasks) });
      const ok = el("span", { class: "ok" }), bad = el("span", { class: "bad" });
      ok.style.width = (100 * j.done / j.tasks) + "%";
      bad.style.width = (100 * j.failed / j.tasks) + "%";
      bar.append(ok, bad);
      progress.append(bar, el("span", { class: "progress-text" }, `${finished}/${j.tasks}`));
    }
    const actions = el("td");
    if (j.kind === "job" && !["done", "failed", "cancelled"].includes(j.state)) {
      const b = el("button", { type: "button", "data-cancel": j.id }, "cancel");
      b.addEventListener("click", () => post(`/api/jobs/${encodeURIComponent(j.id)}/cancel`, {}));
      actions.append(b);
    }
    tr.append(
      el("td", { class: "mono", title: j.id }, short(j.id)),
      el("td", { class: "cmd mono", title: j.command }, (j.kind === "array" ? `[${j.tasks}] ` : "") + j.command),
      cell(j.state, "state-" + j.state),
      j.kind === "array" ? cell(`${j.workers} worker${j.workers === 1 ? "" : "s"}`) :
        el("td", { class: "mono", title: j.worker || "" }, short(j.worker)),
      elapsedCell(j.since, j.until),
      cell(num(j.cpu, 2), "num"), cell(num(j.credit, 2), "num"), progress, actions);
    if (jobStates.get(j.id) !== j.state) {
      jobStates.set(j.id, j.state);
      note(probe.events, { job: j.id, state: j.state, at: Date.now() / 1000 }, 2000);
    }
    return tr;
  });
  fill($("jobs"), rows);
}

function drawGuests() {
  const guests = Object.values(view.guests).sort((a, b) => b.since - a.since);
  fill($("guests"), guests.map((g) => {
    const tr = el("tr", { "data-guest": g.id });
    tr.append(el("td", { class: "mono", title: g.id }, short(g.id)),
      el("td", { class: "mono", title: g.requester }, short(g.requester)),
      cell(num(g.cpus, 1), "num"), cell(size(g.memory)), elapsedCell(g.since, null), cell(g.stage));
    return tr;
  }));
}

function drawMpi() {
  fill($("mpi"), Object.values(view.mpi).map((g) => {
    const tr = el("tr", { "data-group": g.id });
    tr.append(cell(g.id, "mono"), cell(g.state), cell(g.members.map(short).join(", "), "mono"));
    return tr;
  }));
}

function drawExchanges() {
  const rows = Object.values(view.exchanges).sort((a, b) => b.seq - a.seq);
  fill($("exchanges"), rows.map((x) => {
    const tr = el("tr", { "data-exchange": String(x.seq) });
    tr.append(cell(clock(x.time)), el("td", { class: "mono", title: x.peer }, short(x.peer)),
      el("td", { class: "mono", title: x.job }, short(x.job)),
      cell((x.amount > 0 ? "+" : "") + num(x.amount, 2), "num"), cell(x.role, "role-" + x.role));
    return tr;
  }));
}

// ----- this node: credit, plot, policy, lights ---------------------------------------------

let plotSvg = null;
function drawInfo() {
  const info = view.info;
  const me = info.self;
  if (me) {
    selfId = me.peer_id;
    $("me-id").textContent = short(me.peer_id);
    $("me-id").title = me.peer_id;
    $("me-state").textContent = me.state;
    document.title = `rainnet ${short(me.peer_id)} · ${me.state}`;
  }
  if (info.credit) {
    $("credit-balance").textContent = num(info.credit.balance, 2);
    $("credit-earned").textContent = num(info.credit.earned, 2);
    $("credit-spent").textContent = num(info.credit.spent, 2);
    $("credit-floor").textContent = num(info.credit.floor, 0);
  }
  if (info.plot && info.plot.svg !== plotSvg) {
    plotSvg = info.plot.svg;
    $("plot").innerHTML = plotSvg; // drawn by the node from numbers only
  }
  if (info.policy) {
    const p = info.policy;
    $("policy-lend").textContent = p.lend;
    $("policy-state").textContent = p.state ?? "starting";
    $("policy-accepts").textContent = p.accepts ? "accepts guests now" : "refuses guests now";
    $("policy-reason").textContent = p.reason;
  }
  drawLightControls();
}

function drawLightControls() {
  const me = selfId && view.nodes[selfId];
  for (const group of document.querySelectorAll(".light-controls [data-user]")) {
    const current = me ? me[group.dataset.user] : null;
    for (const b of group.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.light === current));
    }
  }
}

async function post(path, body) {
  const error = $("action-error");
  try {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body), credentials: "same-origin" });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(answer.error || `HTTP ${r.status}`);
    error.hidden = true;
  } catch (e) {
    error.textContent = String(e.message || e);
    error.hidden = false;
  }
}

function setup() {
  const sw = $("mode-switch");
  const mode = () => document.body.classList.toggle("mode-load", sw.checked);
  sw.addEventListener("change", mode);
  mode();
  for (const group of document.querySelectorAll(".light-controls [data-user]")) {
    for (const b of group.querySelectorAll("button")) {
      b.addEventListener("click", () => post("/api/light",
        { which: group.dataset.user, light: b.dataset.light }));
    }
  }
  setInterval(tickElapsed, 1000);
  setInterval(() => document.body.classList.toggle("blink-off"), 500);
  connect();
}

setup();
