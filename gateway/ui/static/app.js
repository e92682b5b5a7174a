// foreman status page. Plain script, no framework, nothing fetched from outside foreman.
// Every value that comes from a job (ids, models, programs, errors) goes into the page as
// text (textContent, createTextNode, setAttribute), never as HTML.
"use strict";

const POLL_MS = 1500;
// A poll that has no whole answer by then is given up: a fetch has no time limit of its
// own, and one a frozen foreman (or a dead connection) holds would hold every later poll,
// the page showing its last data as if it were current.
const POLL_TIMEOUT_MS = 10000;
const HOUR_MS = 3600 * 1000;
const TOKEN_KEY = "foreman-token";
const TERMINAL = new Set(["done", "failed", "canceled"]);
const RECENT = 15;      // finished jobs listed
const ERROR_CLIP = 200; // characters of a job's error shown in the list (all in its tooltip)
const COLORS = ["#0a66c2", "#e8710a", "#2e7d32", "#c62828", "#6a1b9a", "#00838f", "#ad1457", "#827717"];

// history of the last hour, gathered while the page is open.
const history = {
  depth: [],        // {t, byModel: {model: n}}
  waits: [],        // {t, ms, model}
  loads: [],        // t of each observed model load
  seenStarts: new Map(), // job id -> when first seen started, forgotten after the hour
  loadSeen: new Map(),   // job id -> when first seen loading, forgotten after the hour
  metricLoads: null, // foreman_model_loads_total at the last poll, when served
};
const modelColors = new Map();

// ---- DOM helpers -----------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

// el builds an element; attrs are set as attributes, children as nodes or text.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// field holds one value a caller, another foreman or Ollama chose (a model, a program,
// an error, an id) in a <bdi>: a bidi control in it (U+202E reverses the text after it)
// ends with it instead of reversing the rest of its line, and a right-to-left value is
// laid out on its own.
function field(value, attrs) {
  return el("bdi", attrs || {}, value);
}

function svg(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function replaceChildren(node, children) {
  node.replaceChildren(...children);
}

// ---- formatting ------------------------------------------------------------------------

function fmtDur(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "–";
  if (ms < 0) ms = 0;
  if (ms < 1000) return Math.round(ms) + "ms";
  let s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (h) return h + "h" + String(m).padStart(2, "0") + "m";
  if (m) return m + "m" + String(s).padStart(2, "0") + "s";
  return s + "s";
}

function fmtClock(t) {
  const d = new Date(t);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, "0")).join(":");
}

function ms(ts) { return ts ? Date.parse(ts) : NaN; }

// clockSkew is foreman's clock less this browser's, from the last GET /queue's "now". The
// times shown (a job's start, an ETA, a pause's start) are foreman's: spans to them are
// taken on its clock (nowMs), or a browser whose clock is off would show them off by as
// much (every ETA passed, a job that just started running for minutes).
let clockSkew = 0;
function nowMs() { return Date.now() + clockSkew; }
function noteForemanNow(q) {
  const t = ms(q && q.now);
  if (!isNaN(t)) clockSkew = t - Date.now();
}

// etaMs reads an ETA as foreman gives it: seconds from now, an RFC 3339 time, or a Go
// duration string; it returns milliseconds from now, or NaN.
function etaMs(eta) {
  if (eta === null || eta === undefined || eta === "") return NaN;
  if (typeof eta === "number") return eta * 1000;
  if (typeof eta === "object") {
    if ("seconds" in eta) return etaMs(eta.seconds);
    if ("at" in eta) return etaMs(eta.at);
    return NaN;
  }
  const t = Date.parse(eta);
  if (!isNaN(t) && /\d{4}-\d\d-\d\d/.test(eta)) return t > 0 ? t - nowMs() : NaN; // zero time: unknown
  let total = 0, matched = false;
  for (const [, n, unit] of String(eta).matchAll(/([\d.]+)(h|ms|m|s)/g)) {
    matched = true;
    total += parseFloat(n) * { h: 3600e3, m: 60e3, s: 1e3, ms: 1 }[unit];
  }
  return matched ? total : NaN;
}

function fmtEta(eta) {
  const d = etaMs(eta);
  if (isNaN(d)) return "–";
  // The expected start has passed: the job ahead runs longer than its model's average.
  if (d < 1000) return "any moment (was " + fmtClock(nowMs() + d) + ")";
  return "in " + fmtDur(d) + " (" + fmtClock(nowMs() + d) + ")";
}

function jobId(j) { return j.job_id || j.id || ""; }

function colorOf(model) {
  if (!modelColors.has(model)) modelColors.set(model, COLORS[modelColors.size % COLORS.length]);
  return modelColors.get(model);
}

// ---- API -------------------------------------------------------------------------------

class AuthError extends Error {}

async function api(path, opts) {
  opts = opts || {};
  const headers = new Headers(opts.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set("Authorization", "Bearer " + token);
  const resp = await fetch(path, { ...opts, headers, cache: "no-store", credentials: "omit", signal: opts.signal });
  if (resp.status === 401) throw new AuthError("token needed");
  return resp;
}

async function apiJSON(path, opts) {
  const resp = await api(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { /* no JSON body */ }
  if (!resp.ok) throw new Error(path + ": " + ((body && body.error) || resp.status));
  return body;
}

// loadsFromMetrics sums foreman_model_loads_total over its labels; null when not served.
async function loadsFromMetrics(signal) {
  try {
    const resp = await api("/metrics", { signal });
    if (!resp.ok) return null;
    const text = await resp.text();
    let sum = null;
    for (const line of text.split("\n")) {
      const m = /^foreman_model_loads_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)/.exec(line);
      if (m) sum = (sum || 0) + parseFloat(m[1]);
    }
    return sum;
  } catch (e) {
    if (e instanceof AuthError) throw e;
    return null;
  }
}

async function cancelJob(id, button) {
  if (!confirm("Cancel job " + id + "?")) return;
  button.disabled = true;
  try {
    await apiJSON("/jobs/" + encodeURIComponent(id), { method: "DELETE" });
  } catch (e) {
    if (e instanceof AuthError) askToken();
    setStatus("cancel " + id + ": " + e.message, true);
  }
  poll();
}

// ---- token -----------------------------------------------------------------------------

function askToken() {
  $("token-form").hidden = false;
  $("token-input").focus();
}

function setupToken() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-form").hidden = true;
    poll();
  });
}

// ---- rendering -------------------------------------------------------------------------

function setStatus(text, bad) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!bad);
}

function cancelButton(id) {
  const b = el("button", { class: "cancel", type: "button", title: "cancel this job" }, "cancel");
  b.addEventListener("click", () => cancelJob(id, b));
  return b;
}

function renderRunning(job) {
  const box = $("running");
  if (!job) {
    replaceChildren(box, [el("span", { class: "muted" }, "nothing")]);
    return;
  }
  const since = ms(job.started_at) || ms(job.created_at);
  const dl = el("dl", { class: "kv" },
    el("dt", {}, "model"), el("dd", { "data-field": "model" }, field(job.model)),
    el("dt", {}, "program"), el("dd", {}, job.program ? field(job.program) : "(anonymous)"),
    el("dt", {}, "state"), el("dd", {}, field(job.state), " · ", field(job.kind || "")),
    el("dt", {}, "elapsed"), el("dd", {}, fmtDur(nowMs() - since)),
    el("dt", {}, "job"), el("dd", { class: "id" }, field(jobId(job)), " ", cancelButton(jobId(job))),
  );
  replaceChildren(box, [dl]);
}

// Jobs of the shared queue that other foremen run (several Macs on one NATS).
function renderElsewhere(jobs) {
  const box = $("elsewhere");
  jobs = jobs || [];
  box.hidden = !jobs.length;
  replaceChildren(box, jobs.map((j) => el("li", { "data-job-id": jobId(j), class: "elsewhere-job" },
    el("span", { class: "muted" }, ...(j.runner ? ["on ", field(j.runner), ": "] : ["on another Mac: "])),
    field(j.model), " · ", field(j.state), " · " + fmtDur(nowMs() - (ms(j.started_at) || ms(j.created_at))) + " ",
    field(jobId(j), { class: "id" }),
    j.runner_gone ? el("span", { class: "warn", "data-field": "runner-gone" }, " its foreman is gone: runs again once its ack wait ends") : null,
  )));
}

const PAUSE_REASONS = {
  target_unreachable: "Ollama is unreachable",
  store_refuses_writes: "the job store refuses writes",
  target_busy: "Ollama answers that it is busy",
};

// restartAdvice is what a pause that only a restart ends (restart_needed) asks of the
// operator first: a data directory gone read-only after a disk error (the store's error
// names the read-only file system, ADR-0139) needs its disk fixed, which room would not
// do; as foreman queue and top say it.
function restartAdvice(p) {
  if ((p.error || "").includes("read-only file system")) {
    return "Fix its disk (its data directory went read-only), then restart foreman.";
  }
  return "Restart foreman, once its disk has room if it is full.";
}

// A paused worker: why, for how long, and the error; hidden while it runs. A pause that
// only a restart of foreman ends (restart_needed) says so: it never resumes by itself.
function renderPaused(p) {
  const box = $("paused");
  box.hidden = !p;
  box.classList.toggle("restart", !!(p && p.restart_needed));
  if (!p) {
    replaceChildren(box, []);
    return;
  }
  const since = " for " + fmtDur(nowMs() - ms(p.since));
  replaceChildren(box, p.restart_needed ? [
    el("span", { class: "why" }, "Worker stopped: the job store cannot write until foreman is restarted"),
    since + "; it does not resume by itself. " + restartAdvice(p) + " ",
    field(p.error || "", { class: "err" }),
  ] : [
    el("span", { class: "why" }, "Worker paused: ", PAUSE_REASONS[p.reason] || field(p.reason)),
    since + "; jobs wait until it resumes. ",
    field(p.error || "", { class: "err" }),
  ]);
}

// This foreman's own Ollama while its polls fail and the worker is not paused for it
// already: a job may be running, waiting on an Ollama that does not answer. A poll
// answered with an error status (no down_since: a proxy passing only the model calls
// answers 401 or 404 for the list, ADR-0057) is an answer: Ollama counts as there, and
// the worker runs jobs on it, so nothing is said to wait for it.
function renderTargetDown(q) {
  const box = $("target-down");
  const own = (q.targets || []).find((t) => t.own);
  const pausedForIt = q.paused && q.paused.reason === "target_unreachable";
  const show = own && !own.reachable && (own.down_since || own.error) && !pausedForIt;
  box.hidden = !show;
  if (!show) {
    replaceChildren(box, []);
    return;
  }
  let what, then;
  if (own.down_since) {
    what = "Ollama has not answered foreman's polls since " + fmtClock(ms(own.down_since)) + " (" + fmtDur(nowMs() - ms(own.down_since)) + ")";
    then = q.running
      ? "; the running job gets no answer from it until it is back or its attempt is given up. "
      : "; jobs wait until it answers. ";
  } else {
    what = "Ollama answered foreman's last poll with an error";
    then = "; it counts as there, so the worker does not wait for it. ";
  }
  replaceChildren(box, [el("span", { class: "why" }, what), then, field(own.error || "", { class: "err" })]);
}

function renderLoaded(models) {
  replaceChildren($("loaded"), (models && models.length)
    ? models.map((m) => el("li", {}, field(m)))
    : [el("li", { class: "muted" }, "none")]);
}

// waitState is a waiting job's state cell: a job backing off after a failed attempt
// says so, with the attempt and its error (cut short, whole in the tooltip); one this
// foreman's worker leaves to another Mac for now (left_elsewhere, ADR-0066) says that
// too: its ETA is for running here only once that wait is over. One of
// waiting_elsewhere (no position: this foreman's Mac lacks its model, or is down while
// another has it) says it waits for another Mac.
function waitState(j) {
  let left = null;
  if (j.left_elsewhere) {
    left = el("div", { class: "left-elsewhere", "data-field": "left-elsewhere" }, "left to another Mac that has its model");
  } else if (!j.queue_position) {
    left = el("div", { class: "left-elsewhere", "data-field": "waiting-elsewhere" }, "for another Mac: not run here");
  }
  if (j.state !== "retrying") return el("td", { class: "muted", "data-field": "state" }, "waiting", left);
  return el("td", { class: "retrying", "data-field": "state", title: j.error || null },
    j.attempts ? "retrying after attempt " + j.attempts : "retrying", // 0: not counted (Ollama busy)
    j.error ? el("div", { class: "err" }, field(clip(j.error, ERROR_CLIP))) : null, left);
}

// renderQueue lists this foreman's worker's waiting jobs in its order, then those it
// leaves to other Macs (waiting_elsewhere: several Macs on one NATS), with no position
// or ETA.
function renderQueue(q) {
  const now = nowMs();
  const waiting = (q.queued || []).concat(q.waiting_elsewhere || []);
  const rows = waiting.map((j) => el("tr", { "data-job-id": jobId(j), class: "queued-job" },
    el("td", {}, j.queue_position || "–"),
    el("td", {}, j.queue_position ? fmtEta(j.eta) : "–"),
    el("td", {}, field(j.model)),
    el("td", { class: "prio-" + j.priority }, field(j.priority)),
    el("td", {}, j.program ? field(j.program) : "(anonymous)"),
    el("td", {}, field(j.kind)),
    el("td", {}, fmtDur(now - ms(j.created_at))),
    waitState(j),
    el("td", { class: "id" }, field(jobId(j))),
    el("td", {}, cancelButton(jobId(j))),
  ));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 10, class: "muted" }, "the queue is empty")));
  replaceChildren($("queue-rows"), rows);
  const total = q.total || 0, shown = (q.queued || []).length;
  // depth counts the whole queue, total this foreman's worker's jobs.
  const others = Object.values(q.depth || {}).reduce((a, n) => a + n, 0) - total;
  $("queue-total").textContent = String(total);
  $("queue-others").hidden = others <= 0;
  $("queue-others").textContent = others > 0 ? "and " + others + " for other Macs" : "";
  const more = $("queue-more");
  more.hidden = total <= shown;
  more.textContent = total > shown ? "… and " + (total - shown) + " more" : "";
}

// clip shortens text to n characters, whole ones as a person counts them (an emoji with
// its skin tone, a flag, a letter with its accents; code points where the browser cannot
// segment), never half of one: String.slice counts UTF-16 units and split an emoji into
// a lone surrogate, drawn as a replacement box. The cell's title keeps all of it.
function clip(text, n) {
  if (text.length <= n) return text; // n UTF-16 units hold at most n characters
  let end = 0, count = 0;
  for (const c of characters(text)) {
    if (count === n) return text.slice(0, end) + "…";
    end += c.length;
    count++;
  }
  return text;
}

const graphemes = typeof Intl !== "undefined" && Intl.Segmenter ? new Intl.Segmenter(undefined, { granularity: "grapheme" }) : null;

// characters yields text's user-perceived characters (grapheme clusters), else its code
// points.
function* characters(text) {
  if (!graphemes) {
    yield* text;
    return;
  }
  for (const s of graphemes.segment(text)) yield s.segment;
}

function renderRecent(jobs) {
  // Newest end first, as the Finished column reads (the list comes newest created first).
  const done = jobs.filter((j) => TERMINAL.has(j.state))
    .sort((a, b) => (ms(b.finished_at) || 0) - (ms(a.finished_at) || 0)).slice(0, RECENT);
  const rows = done.map((j) => {
    const wait = j.started_at ? ms(j.started_at) - ms(j.created_at) : NaN;
    const run = j.started_at && j.finished_at ? ms(j.finished_at) - ms(j.started_at) : NaN;
    return el("tr", { "data-job-id": jobId(j) },
      el("td", {}, j.finished_at ? fmtClock(ms(j.finished_at)) : "–"),
      el("td", { class: "state-" + j.state }, field(j.state)),
      el("td", {}, field(j.model)),
      el("td", {}, j.program ? field(j.program) : "(anonymous)"),
      el("td", {}, field(j.kind)),
      el("td", {}, fmtDur(wait)),
      el("td", {}, fmtDur(run)),
      el("td", { class: "id" }, field(jobId(j))),
      el("td", { class: "err", title: j.error || null }, field(clip(j.error || "", ERROR_CLIP))),
    );
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no finished jobs yet")));
  replaceChildren($("recent-rows"), rows);
}

function renderLoads() {
  const fromMetrics = history.metricLoads !== null;
  $("load-count").textContent = String(fromMetrics ? history.metricLoads : history.loads.length);
  $("load-source").textContent = fromMetrics ? "since foreman started" : "seen by this page";
}

// ---- history ---------------------------------------------------------------------------

function record(q, jobs, metricLoads) {
  const now = nowMs();
  // depth counts the whole queue; the list shows only its head.
  history.depth.push({ t: now, byModel: { ...(q.depth || {}) } });

  // A wait is known once a job starts; the running job and the finished ones show it.
  const started = (jobs || []).concat(q.running ? [q.running] : [], q.running_elsewhere || []);
  for (const j of started) {
    const id = jobId(j);
    if (!j.started_at || history.seenStarts.has(id)) continue;
    history.seenStarts.set(id, now);
    const t = ms(j.started_at);
    if (now - t <= HOUR_MS) history.waits.push({ t, ms: t - ms(j.created_at), model: j.model });
  }

  // Loads: from the counter when foreman serves it, else a running job seen loading.
  if (metricLoads !== null && history.metricLoads !== null && metricLoads > history.metricLoads) {
    for (let i = history.metricLoads; i < metricLoads; i++) history.loads.push(now);
  }
  if (metricLoads === null && q.running && q.running.state === "loading" && !history.loadSeen.has(jobId(q.running))) {
    history.loadSeen.set(jobId(q.running), now);
    history.loads.push(now);
  }
  history.metricLoads = metricLoads;

  const cut = now - HOUR_MS;
  while (history.depth.length && history.depth[0].t < cut) history.depth.shift();
  history.waits = history.waits.filter((w) => w.t >= cut); // found out of order
  while (history.loads.length && history.loads[0] < cut) history.loads.shift();
  // A job seen an hour ago and listed still started before the cut: seen again, it adds
  // no wait. So the page open for days keeps an hour of ids, not every id it ever saw.
  for (const seen of [history.seenStarts, history.loadSeen]) {
    for (const [id, t] of seen) if (t < cut) seen.delete(id);
  }
}

// ---- charts (inline SVG) ---------------------------------------------------------------

const W = 600, H = 160, PAD = { l: 40, r: 8, t: 8, b: 20 };

// span is the charts' time range: from the oldest thing known (at least 5 minutes back,
// at most an hour), so a page opened a minute ago does not squeeze it all into the edge.
function span() {
  const t1 = nowMs();
  let oldest = t1;
  if (history.depth.length) oldest = Math.min(oldest, history.depth[0].t);
  if (history.waits.length) oldest = Math.min(oldest, ...history.waits.map((w) => w.t));
  if (history.loads.length) oldest = Math.min(oldest, history.loads[0]);
  const d = Math.min(HOUR_MS, Math.max(5 * 60 * 1000, t1 - oldest));
  return [t1 - d, t1];
}

function axes(node, t0, t1, ymax, yfmt) {
  const x = (t) => PAD.l + (t - t0) / (t1 - t0) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - v / ymax * (H - PAD.t - PAD.b);
  const parts = [svg("line", { class: "axis", x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b }),
    svg("line", { class: "axis", x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b })];
  for (const v of [0, ymax / 2, ymax]) {
    parts.push(svg("text", { x: PAD.l - 4, y: y(v) + 3, "text-anchor": "end" }, yfmt(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (t1 - t0) * i / 4;
    parts.push(svg("text", { x: x(t), y: H - 5, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" },
      i === 4 ? "now" : "-" + Math.round((t1 - t) / 60000) + "m"));
  }
  node.replaceChildren(...parts);
  return { x, y };
}

// depthTop is the top of the depth chart's scale for a deepest queue of max jobs: an even
// count, so that the middle label, half of it, is a whole job where its line is drawn.
function depthTop(max) {
  const top = Math.max(2, Math.ceil(max));
  return top % 2 ? top + 1 : top;
}

// waitTop is the top of the wait chart's scale for a longest wait of ms: above it, and a
// time whose half, too, fmtDur shows whole (it cuts to seconds, and to minutes past an
// hour), so that the top label and the middle one say the values where they are drawn.
const WAIT_TOPS_S = [1, 2, 4, 10, 20, 40, 120, 240, 600, 1200, 2400, 7200, 14400, 36000, 72000];
function waitTop(ms) {
  for (const s of WAIT_TOPS_S) if (s * 1000 > ms) return s * 1000;
  let top = WAIT_TOPS_S.at(-1) * 1000;
  while (top <= ms) top *= 2;
  return top;
}

function drawDepth() {
  const node = $("chart-depth");
  const [t0, t1] = span();
  const models = new Set();
  let max = 1;
  for (const s of history.depth) {
    for (const [m, n] of Object.entries(s.byModel)) { models.add(m); max = Math.max(max, n); }
  }
  const { x, y } = axes(node, t0, t1, depthTop(max), (v) => String(v));
  for (const t of history.loads) {
    node.appendChild(svg("line", { class: "load", x1: x(t), y1: PAD.t, x2: x(t), y2: H - PAD.b }));
  }
  for (const m of models) {
    // A step line: the depth holds until the next sample.
    let d = "";
    for (const s of history.depth) {
      const px = x(s.t).toFixed(1), py = y(s.byModel[m] || 0).toFixed(1);
      d += d ? " H" + px + " V" + py : "M" + px + " " + py;
    }
    if (history.depth.length) d += " H" + x(t1).toFixed(1);
    node.appendChild(svg("path", { d, fill: "none", stroke: colorOf(m), "stroke-width": 1.8 }));
  }
  const legend = [...models].map((m) => {
    const sw = el("span", { class: "swatch" });
    sw.style.background = colorOf(m);
    return el("span", {}, sw, field(m));
  });
  replaceChildren($("chart-legend"), legend);
}

function drawWaits() {
  const node = $("chart-wait");
  const [t0, t1] = span();
  let max = 0;
  for (const w of history.waits) max = Math.max(max, w.ms);
  const { x, y } = axes(node, t0, t1, waitTop(max), (v) => fmtDur(v));
  for (const w of history.waits) {
    const c = svg("circle", { cx: x(w.t), cy: y(w.ms), r: 3, fill: colorOf(w.model) });
    c.appendChild(svg("title", {}, w.model + ": waited " + fmtDur(w.ms)));
    node.appendChild(c);
  }
}

// ---- loop ------------------------------------------------------------------------------

let polling = false;
let shownAt = null; // when the data shown was read

// The finished jobs are read every RECENT_EVERY polls only: while a backlog lasts, the
// read walks the records of every job newer than the newest finished one.
const RECENT_EVERY = 4;
let polls = 0;
let recentJobs = null;

async function poll() {
  if (polling) return;
  polling = true;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), POLL_TIMEOUT_MS);
  const signal = ctl.signal;
  try {
    const wantRecent = recentJobs === null || polls % RECENT_EVERY === 0;
    polls++;
    const [q, list, loads] = await Promise.all([
      apiJSON("/queue?limit=100", { signal }),
      // The finished jobs by state: the newest jobs are all waiting while a backlog lasts.
      wantRecent ? apiJSON("/jobs?state=done,failed,canceled&limit=" + RECENT, { signal }) : Promise.resolve(null),
      loadsFromMetrics(signal),
    ]);
    if (list) recentJobs = list.jobs || [];
    const jobs = recentJobs || [];
    noteForemanNow(q);
    record(q, jobs, loads);
    renderRunning(q.running);
    renderElsewhere(q.running_elsewhere);
    renderPaused(q.paused);
    renderTargetDown(q);
    renderLoaded(q.loaded);
    renderQueue(q);
    renderRecent(jobs);
    renderLoads();
    drawDepth();
    drawWaits();
    shownAt = Date.now();
    setStatus("updated " + fmtClock(shownAt));
  } catch (e) {
    // What the page shows is then older than this poll: it says from when.
    const stale = shownAt === null ? "" : " (shown: as of " + fmtClock(shownAt) + ")";
    if (e instanceof AuthError) {
      askToken();
      setStatus("a bearer token is needed", true);
    } else if (signal.aborted) {
      setStatus("no answer from foreman within " + fmtDur(POLL_TIMEOUT_MS) + stale, true);
    } else {
      setStatus("cannot reach foreman: " + e.message + stale, true);
    }
  } finally {
    clearTimeout(timer);
    polling = false;
  }
}

setupToken();
poll();
setInterval(poll, POLL_MS);
