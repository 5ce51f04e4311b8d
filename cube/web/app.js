// Cube's dashboard: plain JS over the manager's JSON API, signed in with a session cookie (POST /session); every
// action sends the session's X-CSRF-Token. Pages: the overview (#/) and a task (#/task/<id>). The event stream is
// a long poll of /events; each batch of events refreshes the overview. Fields the page does not know are ignored,
// and fields it expects may be missing (an older or newer manager): it shows what is there.
"use strict";

const S = { csrf: null, since: null, tasks: {}, drafts: {}, events: [], polling: null, logs: null, timer: null, busy: 0 };
const $ = (id) => document.getElementById(id);

// ---- helpers ---------------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function badge(state) {
  return h("span", { class: `badge s-${String(state || "unknown").replace(/[^a-z]/g, "")}` }, state || "unknown");
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
function bytes(n) {
  let i = 0;
  n = Number(n) || 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${UNITS[i]}`;
}

function ago(seconds) {
  if (!seconds) return "never";
  const d = Math.max(0, Date.now() / 1000 - seconds);
  if (d < 90) return `${Math.round(d)} s ago`;
  if (d < 5400) return `${Math.round(d / 60)} min ago`;
  if (d < 129600) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} d ago`;
}

function clock(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function short(id) {
  return String(id || "").slice(0, 12);
}

function taskLink(id, label) {
  return h("a", { href: `#/task/${encodeURIComponent(id)}` }, label || short(id));
}

function notice(message, bad) {
  const el = $("notice");
  el.textContent = message || "";
  el.classList.toggle("bad", Boolean(bad));
}

// ---- the API ---------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, options) {
  const headers = {};
  if (S.csrf && method !== "GET") headers["X-CSRF-Token"] = S.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method, headers, credentials: "same-origin", signal: options && options.signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!answer.ok) {
    let message = `${answer.status} ${answer.statusText}`;
    try { message = (await answer.json()).error || message; } catch (_) { /* not the JSON error shape */ }
    if (answer.status === 401 && path !== "/session") signedOut("Your session ended: sign in again.");
    throw new ApiError(answer.status, message);
  }
  return answer.status === 204 ? null : answer.json();
}

async function act(label, method, path, body) {
  notice(`${label}…`);
  let ok = false;
  try {
    await api(method, path, body);
    notice(`${label}: done.`);
    ok = true;
  } catch (error) {
    notice(`${label}: ${error.message}`, true);
  }
  refresh();
  if (location.hash.startsWith("#/task/")) showTask(decodeURIComponent(location.hash.slice(7)), false);
  return ok;
}

// ---- sign-in ---------------------------------------------------------------------------------------------------

function signedOut(message) {
  stopLive();
  S.csrf = null;
  $("app").hidden = true;
  $("signout").hidden = true;
  $("signin").hidden = false;
  $("health").textContent = "";
  $("signin-error").textContent = message || "";
  $("token").focus();
}

function signedIn() {
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = S.csrf === null;
  $("signin-error").textContent = "";
  route();
  refresh();
  // Heartbeat ages move even when nothing happens; a tab out of sight waits (a Pi serves it), events still come.
  S.timer = setInterval(() => { if (!document.hidden) refresh(); }, 5000);
  pollEvents();
}

function stopLive() {
  clearInterval(S.timer);
  if (S.polling) S.polling.abort();
  if (S.logs) S.logs.abort();
  S.polling = S.logs = null;
  S.since = null;
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = $("token");
  try {
    const answer = await api("POST", "/session", { token: field.value.trim() });
    S.csrf = answer.csrf;
    field.value = "";
    signedIn();
  } catch (error) {
    $("signin-error").textContent = error.message;
  }
});

$("signout").addEventListener("click", async () => {
  try { await api("DELETE", "/session"); } catch (_) { /* signed out either way */ }
  signedOut("Signed out.");
});

// ---- the overview ----------------------------------------------------------------------------------------------

let refreshing = null;
let again = false;
function refresh() {
  if (refreshing) { again = true; return refreshing; }
  refreshing = load().catch((error) => {
    if (error.status !== 401) notice(`cannot reach the manager: ${error.message}`, true);
  }).finally(() => {
    refreshing = null;
    if (again) { again = false; refresh(); }
  });
  return refreshing;
}

async function load() {
  const states = ["running", "scheduled", "pending", "failed"];
  const [health, nodes, jobs, stacks, ...lists] = await Promise.all([
    api("GET", "/health"), api("GET", "/nodes"), api("GET", "/jobs"), api("GET", "/stacks"),
    ...states.map((state) => api("GET", `/tasks?state=${state}&limit=200`)),
  ]);
  const tasks = lists.flat();
  for (const task of tasks) S.tasks[task.id] = task;
  renderHealth(health, nodes, tasks);
  renderNodes(nodes);
  renderAttention(tasks);
  const typing = document.activeElement;
  if (!(typing && typing.tagName === "INPUT" && $("jobs").contains(typing))) renderJobs(jobs); // keep a count being typed
  renderStacks(stacks);
  renderTasks(tasks.filter((t) => t.state !== "failed"));
  renderEvents(); // events that came before their tasks were known get their names
}

function renderHealth(health, nodes, tasks) {
  const ready = nodes.filter((n) => n.state === "ready").length;
  const draining = nodes.filter((n) => n.eligibility === "draining").length;
  const versions = new Set(nodes.map((n) => n.version || (n.labels || {}).version).filter(Boolean));
  const skew = versions.size === 0 ? "worker versions not reported"
    : [...versions].every((v) => v === health.version) ? "no version skew"
    : `version skew: ${[...versions].join(", ")}`;
  const running = tasks.filter((t) => t.state === "running").length;
  fill($("health"),
    badge(health.status === "ok" ? "ok" : health.status), ` manager ${health.version || ""} · `,
    h("span", { id: "nodes-ready" }, `nodes ${ready}/${nodes.length} ready`),
    draining ? ` · ${draining} draining` : "", ` · ${skew} · ${running} running`);
}

function bar(label, allocated, capacity, used, format) {
  const share = (x) => `${capacity > 0 ? Math.min(100, (100 * x) / capacity) : 0}%`;
  const track = h("div", { class: "track" });
  const alloc = h("span", { class: "alloc" });
  alloc.style.width = share(allocated);
  track.append(alloc);
  if (used !== undefined && used !== null) {
    const mark = h("span", { class: "used" });
    mark.style.width = share(used);
    track.append(mark);
  }
  const text = `${format(allocated)} / ${format(capacity)}` + (used !== undefined && used !== null ? ` (used ${format(used)})` : "");
  return h("div", { class: "bar", title: `${label}: allocated ${text}` }, h("span", {}, label), track, h("span", {}, text));
}

function renderNodes(nodes) {
  if (!nodes.length) {
    fill($("nodes"), h("p", { class: "empty" }, "No nodes yet: start a worker (cube worker)."));
    return;
  }
  fill($("nodes"), nodes.map((node) => {
    const cap = node.capacity || { cpu: node.cpus, memory: node.memory, disk: node.disk };
    const alloc = node.allocated || {};
    const used = node.used || {};
    const draining = node.eligibility === "draining";
    const held = Boolean(node.eligibility) && node.eligibility !== "eligible"; // draining, or drained
    const cores = (x) => `${Math.round((Number(x) || 0) * 100) / 100}`;
    return h("div", { class: "card node", "data-node": node.name },
      h("h3", {}, h("span", { class: "mono" }, node.name), badge(node.state)),
      h("p", { class: "muted" }, [node.arch || (node.labels || {}).arch || "?", node.address].filter(Boolean).join(" · ")),
      node.reason ? h("p", { class: "s-unhealthy" }, node.reason) : null,
      h("p", {}, `heartbeat ${ago(node.last_seen)} · ${node.tasks || 0} task(s) · `,
        node.eligibility ? badge(node.eligibility) : h("span", { class: "muted" }, "eligibility not reported")),
      draining && node.drain ? h("p", { class: "muted" }, describeDrain(node.drain)) : null,
      bar("cpu", alloc.cpu || 0, cap.cpu || 0, used.cpu, cores),
      bar("memory", alloc.memory || 0, cap.memory || 0, used.memory, bytes),
      bar("disk", alloc.disk || 0, cap.disk || 0, used.disk, bytes),
      h("div", { class: "actions" }, held
        ? h("button", { type: "button", onclick: () => act(`Make ${node.name} eligible`, "POST", `/nodes/${encodeURIComponent(node.name)}/eligible`, {}) }, "Make eligible")
        : h("button", { type: "button", onclick: () => act(`Drain ${node.name}`, "POST", `/nodes/${encodeURIComponent(node.name)}/drain`, { deadline: null, force: false }) }, "Drain")));
  }));
}

function describeDrain(drain) {
  if (typeof drain !== "object") return String(drain);
  return Object.entries(drain).filter(([, v]) => v !== null && v !== "").map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · ");
}

function renderAttention(tasks) {
  const hour = Date.now() / 1000 - 3600;
  const items = tasks.filter((t) => t.state === "pending"
    || (t.state === "failed" && (t.desired === "run" || (t.finished_at || t.updated_at || 0) > hour)));
  if (!items.length) {
    fill($("attention"), h("p", { class: "empty" }, "Nothing: every task is placed and none failed in the last hour."));
    return;
  }
  fill($("attention"), items.slice(0, 50).map((t) => h("div", { class: `attention ${t.state}` },
    taskLink(t.id, t.name), " ", badge(t.state), t.job ? h("span", { class: "muted" }, ` job ${t.job}`) : null,
    h("div", {}, t.reason || t.note || "no reason given"))));
}

function renderJobs(jobs) {
  const rows = jobs.filter((j) => !j.stopped).map((job) => {
    const tasks = job.tasks || [];
    const failed = tasks.filter((t) => t.state === "failed").length;
    const draft = S.drafts[job.name] ?? job.count;
    const input = h("input", { type: "number", min: "0", value: draft, "aria-label": `count of ${job.name}`,
      oninput: (e) => { S.drafts[job.name] = e.target.value; } });
    const scale = () => {
      delete S.drafts[job.name];
      act(`Scale ${job.name} to ${input.value}`, "POST", `/jobs/${encodeURIComponent(job.name)}/scale`, { count: Number(input.value) });
    };
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") scale(); });
    return h("tr", { "data-job": job.name },
      h("td", {}, h("span", { class: "mono" }, job.name), job.stack ? h("div", { class: "muted" }, `stack ${job.stack}`) : null),
      h("td", {}, job.type || ""),
      h("td", { class: "count" }, `${job.running ?? 0} / ${job.count ?? "?"}`),
      h("td", {}, failed ? h("span", { class: "s-failed" }, failed) : "0"),
      h("td", {}, `v${job.version ?? "?"}`),
      h("td", {}, rollout(job.deployment)),
      h("td", {}, h("div", { class: "actions" }, input,
        h("button", { type: "button", onclick: scale }, "Scale"),
        h("button", { type: "button", onclick: () => act(`Roll back ${job.name}`, "POST", `/jobs/${encodeURIComponent(job.name)}/rollback`, {}) }, "Roll back"),
        h("button", { type: "button", class: "danger", onclick: () => confirm(`Stop every task of job ${job.name}?`) && act(`Stop ${job.name}`, "DELETE", `/jobs/${encodeURIComponent(job.name)}`) }, "Stop"))));
  });
  fill($("jobs").tBodies[0], rows.length ? rows : h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No jobs.")));
}

function rollout(deployment) {
  if (!deployment) return h("span", { class: "muted" }, "—");
  const parts = [badge(deployment.status)];
  if (deployment.from_version) parts.push(` v${deployment.from_version} → v${deployment.version}`);
  if (deployment.tasks !== undefined) parts.push(` · ${deployment.at_version ?? 0}/${deployment.tasks} at version`);
  if (deployment.reason) parts.push(h("div", { class: "muted" }, deployment.reason));
  return h("span", {}, parts);
}

function renderStacks(stacks) {
  fill($("stacks").tBodies[0], stacks.length ? stacks.map((s) => h("tr", {},
    h("td", { class: "mono" }, s.name), h("td", {}, s.jobs), h("td", {}, `${s.running ?? 0} / ${s.desired ?? "?"}`)))
    : h("tr", {}, h("td", { colspan: 3, class: "empty" }, "No stacks.")));
}

function renderTasks(tasks) {
  fill($("tasks").tBodies[0], tasks.length ? tasks.map((t) => h("tr", { "data-task": t.id },
    h("td", {}, taskLink(t.id, t.name)), h("td", {}, t.job || ""), h("td", {}, badge(t.state)),
    h("td", { class: "mono" }, t.node || ""), h("td", { class: "mono" }, t.image || ""), h("td", {}, ago(t.started_at)),
    h("td", {}, taskActions(t))))
    : h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No tasks running or waiting.")));
}

function taskActions(t) {
  const ref = encodeURIComponent(t.id);
  return h("div", { class: "actions" },
    h("button", { type: "button", onclick: () => act(`Restart ${t.name}`, "POST", `/tasks/${ref}/restart`, {}) }, "Restart"),
    h("button", { type: "button", class: "danger", onclick: () => act(`Stop ${t.name}`, "DELETE", `/tasks/${ref}`) }, "Stop"));
}

$("run-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target.elements;
  const task = { image: form.image.value.trim() };
  const command = form.command.value.trim();
  if (command) task.command = command.split(/\s+/);
  const name = form.name.value.trim();
  const count = Number(form.count.value) || 1;
  let done;
  if (count > 1) {
    if (!name) { notice("A job of several tasks needs a name.", true); return; }
    done = act(`Run job ${name}`, "POST", "/jobs", { name, count, task });
  } else {
    if (name) task.name = name;
    done = act(`Run ${name || task.image}`, "POST", "/tasks", task);
  }
  done.then((ok) => { if (ok) event.target.reset(); }); // a refused one stays, to be corrected
});

// ---- events ----------------------------------------------------------------------------------------------------

async function pollEvents() {
  const controller = new AbortController();
  S.polling = controller;
  while (S.polling === controller) {
    const query = S.since === null ? "tail=50" : `since=${S.since}&wait=25`;
    try {
      const events = await api("GET", `/events?${query}&limit=200`, undefined, { signal: controller.signal });
      const first = S.since === null; // the newest events, read with the first load: nothing to refresh for
      if (first) S.since = 0;
      for (const event of events) S.since = Math.max(S.since, event.id);
      if (events.length || first) {
        S.events = events.reverse().concat(S.events).slice(0, 200);
        renderEvents();
        if (!first) refresh();
      }
    } catch (error) {
      if (controller.signal.aborted || error.status === 401) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

function eventItem(e) {
  const task = S.tasks[e.task_id];
  return h("li", {}, h("time", {}, clock(e.time)), e.task_id ? taskLink(e.task_id, task ? task.name : short(e.task_id)) : null,
    " ", badge(e.state), e.node ? h("span", { class: "muted" }, ` on ${e.node}`) : null, e.message ? ` — ${e.message}` : "");
}

function renderEvents() {
  fill($("events"), S.events.length ? S.events.map(eventItem) : h("li", { class: "empty" }, "No events yet."));
}

// ---- a task's page ---------------------------------------------------------------------------------------------

async function showTask(id, withLogs) {
  let task;
  try {
    task = await api("GET", `/tasks/${encodeURIComponent(id)}`);
  } catch (error) {
    fill($("task-title"), `Task ${id}: ${error.message}`);
    return;
  }
  S.tasks[task.id] = task;
  fill($("task-title"), task.name, " ", badge(task.state));
  fill($("task-actions"), taskActions(task));
  const fields = [
    ["id", task.id], ["state", task.state], ["reason", task.reason], ["note", task.note], ["desired", task.desired],
    ["job", task.job], ["node", task.node], ["image", task.image], ["version", task.version],
    ["generation", task.generation], ["restarts", task.restarts], ["exit code", task.exit_code],
    ["ports", Object.entries(task.host_ports || {}).map(([k, v]) => `${v} → ${k}`).join(", ")],
    ["address", task.address], ["started", task.started_at ? `${clock(task.started_at)} (${ago(task.started_at)})` : ""],
  ];
  fill($("task-fields"), fields.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  fill($("task-events"), (task.events || []).slice().reverse().map(eventItem));
  showPlacement(task);
  if (withLogs) followLogs(task.id);
}

async function showPlacement(task) {
  let explained = null;
  try {
    explained = await api("GET", `/tasks/${encodeURIComponent(task.id)}/explain`);
  } catch (error) {
    if (error.status !== 404) notice(`placement: ${error.message}`, true);
  }
  const placement = task.placement || {};
  const parts = [];
  if (explained && explained.summary) parts.push(h("p", {}, explained.summary));
  const nodes = explained && Array.isArray(explained.nodes) ? explained.nodes : null;
  if (nodes) {
    parts.push(h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Feasible"), h("th", {}, "Score"), h("th", {}, "Reasons"))),
      h("tbody", {}, nodes.map((n) => h("tr", {}, h("td", { class: "mono" }, n.name), h("td", {}, n.feasible ? "yes" : "no"),
        h("td", {}, n.score ?? "", n.best ? " (best)" : ""),
        h("td", {}, reasons(n.reasons) || n.reason || n.kind || ""))))));
  } else if (placement.node || placement.reasons) {
    parts.push(h("p", {}, placement.node ? `Placed on ${placement.node}` : "Not placed",
      placement.strategy ? ` by the ${placement.strategy} scheduler` : "", placement.time ? ` at ${clock(placement.time)}` : ""));
    const refused = reasons(placement.reasons);
    if (refused) parts.push(h("p", {}, "Refused: ", refused));
  }
  fill($("task-placement"), parts.length ? parts : h("p", { class: "empty" }, "No placement recorded."));
}

function reasons(value) {
  if (!value) return "";
  if (Array.isArray(value)) return value.join("; ");
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => (typeof v === "number" ? `${k} (${v})` : `${k}: ${v}`)).join("; ");
  return String(value);
}

async function followLogs(id) {
  if (S.logs) S.logs.abort();
  const controller = new AbortController();
  S.logs = controller;
  const pre = $("task-logs");
  pre.textContent = "";
  $("log-state").textContent = "(following)";
  try {
    const answer = await fetch(`/tasks/${encodeURIComponent(id)}/logs?follow=1&tail=500`, { credentials: "same-origin", signal: controller.signal });
    if (!answer.ok) {
      let message = answer.statusText;
      try { message = (await answer.json()).error || message; } catch (_) { /* not JSON */ }
      $("log-state").textContent = `(${message})`;
      return;
    }
    const reader = answer.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = (pre.textContent + decoder.decode(value, { stream: true })).slice(-200000);
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
    $("log-state").textContent = "(ended)";
  } catch (error) {
    if (!controller.signal.aborted) $("log-state").textContent = `(${error.message})`;
  }
}

// ---- pages -----------------------------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/task\/(.+)$/);
  $("overview").hidden = Boolean(match);
  $("task-page").hidden = !match;
  if (match) {
    showTask(decodeURIComponent(match[1]), true);
  } else if (S.logs) {
    S.logs.abort();
    S.logs = null;
  }
}

window.addEventListener("hashchange", () => { if (!$("app").hidden) route(); });

(async function start() {
  try {
    const answer = await api("GET", "/session");
    S.csrf = answer.csrf;
    signedIn();
  } catch (error) {
    signedOut(error.status === 401 ? "" : `cannot reach the manager: ${error.message}`);
  }
})();
