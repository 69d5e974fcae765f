/* tunery studio: hash-routed pages over the JSON API (/api/...). Plain JS, no build step, no CDN. */
"use strict";
const view = document.getElementById("view");
let timer = null;  // the current page's polling timer, cleared on navigation

function esc(s) {
  return String(s === null || s === undefined ? "-" : s).replace(/[&<>"']/g,
    c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fig(v) { return typeof v === "number" ? String(+v.toPrecision(4)) : "-"; }
function ago(t) {
  if (!t) return "-";
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 120 ? `${s.toFixed(0)}s ago` : s < 7200 ? `${(s / 60).toFixed(0)}m ago` : `${(s / 3600).toFixed(1)}h ago`;
}
function badge(status) { return `<span class="status ${esc(status)}" data-status="${esc(status)}">${esc(status)}</span>`; }

async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const res = await fetch(path, opts);
  const data = await res.json();
  if (!res.ok) throw new Error(data.error || (data.detail && JSON.stringify(data.detail)) || res.statusText);
  return data;
}
function showError(el, err) { el.innerHTML = `<pre class="error">${esc(err.message || err)}</pre>`; }

/* ---- run list ---- */
async function pageRuns() {
  const data = await api("/api/runs");
  const rows = data.runs.map(r => `<tr data-run="${esc(r.name)}">
    <td><input type="checkbox" class="pick" value="${esc(r.name)}"></td>
    <td><a href="#/run/${encodeURIComponent(r.name)}">${esc(r.name)}</a></td><td>${badge(r.status)}</td>
    <td class="num">${r.step === null ? "-" : esc(r.step) + (r.total_steps ? "/" + esc(r.total_steps) : "")}</td>
    <td>${esc([r.method, r.adapter].filter(Boolean).join("/"))}</td><td>${esc(r.base)}</td><td>${esc(r.data.join(", "))}</td>
    <td class="num">${fig(r.best_val_loss)}</td><td class="num">${fig(r.best_score)}</td><td>${esc(r.eval_best)}</td>
    <td class="num">${r.elapsed_s ? fig(r.elapsed_s) + " s" : "-"}</td><td>${ago(r.updated)}</td></tr>`).join("");
  view.innerHTML = `<h1>Runs <span class="muted">in ${esc(data.runs_dir)}</span></h1>
    <button id="compare-btn">Compare selected</button><button id="chat-btn">Chat with selected</button>
    <table id="runs"><tr><th></th><th>name</th><th>status</th><th>step</th><th>method</th><th>base</th><th>data</th>
    <th>best val loss</th><th>best score</th><th>eval</th><th>time</th><th>updated</th></tr>${rows}</table>
    ${data.runs.length ? "" : '<p class="muted">no runs yet: start one from <a href="#/new">New run</a></p>'}`;
  const picked = () => [...view.querySelectorAll(".pick:checked")].map(c => c.value);
  document.getElementById("compare-btn").onclick = () => { location.hash = "#/compare/" + picked().map(encodeURIComponent).join(","); };
  document.getElementById("chat-btn").onclick = () => { location.hash = "#/chat/" + picked().map(encodeURIComponent).join(","); };
  if (data.runs.some(r => r.status === "running" || r.status === "starting")) {
    timer = setTimeout(() => { if (!view.querySelector(".pick:checked")) route(); }, 3000);
  }
}

/* ---- one run: figures, live curves, stop / resume, eval ---- */
function drawCurves(el, records) {
  const c = curvesOf(records);
  el.innerHTML = "";
  el.appendChild(lineChart("training loss", [{label: "loss", points: c.loss}]));
  el.appendChild(lineChart("validation loss", [{label: "val_loss", points: c.validation}]));
  const graders = Object.entries(c.grader).map(([k, pts]) => ({label: k, points: pts}));
  if (graders.length) el.appendChild(lineChart("grader scores", graders));
}

function evalTables(tables) {
  const none = (name) => `<div><h3>${esc(name)}</h3><p class="muted">not evaluated yet: <code>tunery eval RUN --data HELDOUT.jsonl</code></p></div>`;
  return Object.entries(tables).map(([name, t]) => !t ? none(name) : `<div><h3>${esc(name)}</h3>
    <table class="eval" data-run="${esc(name)}"><tr><th>system</th>${t.graders.map(g => `<th>${esc(g)}</th>`).join("")}
    <th>answer loss</th></tr>${t.systems.map(s => `<tr${s.name === t.best ? ' class="differs"' : ""}><td>${esc(s.name)}</td>
    ${t.graders.map(g => `<td class="num">${fig(s.scores[g])}</td>`).join("")}<td class="num">${fig(s.loss)}</td></tr>`).join("")}
    </table><p class="muted">${esc(t.n_examples)} examples; best: ${esc(t.best)}</p></div>`).join("");
}

async function pageRun(name) {
  const run = await api(`/api/runs/${encodeURIComponent(name)}`);
  const s = run.summary;
  view.innerHTML = `<h1>${esc(s.name)} ${badge(s.status)}</h1>
    <div id="actions"></div>
    <table id="figures"><tr><th>step</th><td id="fig-step">${esc(s.step)}/${esc(s.total_steps)}</td><th>base</th><td>${esc(s.base)}</td>
      <th>method</th><td>${esc(s.method)}/${esc(s.adapter)}</td></tr>
      <tr><th>best val loss</th><td>${fig(s.best_val_loss)}</td><th>best score</th><td>${fig(s.best_score)}</td>
      <th>final loss</th><td>${fig(s.final_loss)}</td></tr></table>
    ${s.error ? `<pre class="error">${esc(s.error)}</pre>` : ""}
    <h2>Curves</h2><div class="charts" id="curves"></div>
    <h2>Evaluation</h2>${run.has_report ? `<p><a id="report-link" href="/runs/${encodeURIComponent(name)}/report" target="_blank">open the eval report</a></p>` : ""}
    <div class="side">${evalTables({[s.name]: run.eval})}</div>
    <h2>Output</h2><pre class="log" id="log">${esc(run.log || "(started outside the studio)")}</pre>
    <h2>Config</h2><pre>${esc(JSON.stringify(run.config, null, 2))}</pre>`;
  document.getElementById("log").scrollTop = document.getElementById("log").scrollHeight;
  const actions = document.getElementById("actions");
  const live = s.status === "running" || s.status === "starting" || (run.job && run.job.alive);
  if (live) actions.innerHTML = '<button id="stop-btn">Stop (checkpoint)</button>';
  else if (s.status === "interrupted" || s.status === "failed") actions.innerHTML = '<button id="resume-btn">Resume</button>';
  const act = async (what) => {
    try { await api(`/api/runs/${encodeURIComponent(name)}/${what}`, {}); route(); } catch (e) { showError(actions, e); }
  };
  if (document.getElementById("stop-btn")) document.getElementById("stop-btn").onclick = () => act("stop");
  if (document.getElementById("resume-btn")) document.getElementById("resume-btn").onclick = () => act("resume");
  const records = (await api(`/api/runs/${encodeURIComponent(name)}/metrics`)).records;
  drawCurves(document.getElementById("curves"), records);
  if (live) pollRun(name, records, s.status);
}

function pollRun(name, records, status) {
  timer = setTimeout(async () => {
    try {
      const more = await api(`/api/runs/${encodeURIComponent(name)}/metrics?since=${records.length}`);
      records.push(...more.records);
      if (more.records.length) drawCurves(document.getElementById("curves"), records);
      const run = await api(`/api/runs/${encodeURIComponent(name)}`);
      const log = document.getElementById("log");
      log.textContent = run.log || "";
      log.scrollTop = log.scrollHeight;  // the newest lines
      document.getElementById("fig-step").textContent = `${run.summary.step}/${run.summary.total_steps}`;
      const live = run.summary.status === "running" || run.summary.status === "starting" || (run.job && run.job.alive);
      if (run.summary.status !== status || !live) route(); else pollRun(name, records, status);
    } catch (e) { pollRun(name, records, status); }
  }, 1000);
}

/* ---- compare ---- */
async function pageCompare(names) {
  if (names.length < 2) { view.innerHTML = '<p class="error">pick two or more runs on the run list to compare</p>'; return; }
  const data = await api("/api/compare?" + names.map(n => "runs=" + encodeURIComponent(n)).join("&"));
  const head = `<tr><th>key</th>${data.names.map(n => `<th>${esc(n)}</th>`).join("")}</tr>`;
  const rows = sec => data.rows.filter(r => r.section === sec && (sec !== "config" || r.differs)).map(r =>
    `<tr class="${r.differs ? "differs" : ""}" data-key="${esc(r.key)}"><td>${esc(r.key)}</td>
     ${r.values.map(v => `<td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</td>`).join("")}</tr>`).join("");
  const same = data.rows.filter(r => r.section === "config" && !r.differs).length;
  view.innerHTML = `<h1>Compare ${data.names.map(esc).join(", ")}</h1>
    <h2>Config keys that differ</h2><table id="config-diff">${head}${rows("config")}</table>
    <p class="muted">${same} other config keys are equal in every run</p>
    <h2>Figures</h2><table id="figures">${head}${rows("figures")}</table>
    <h2>Curves</h2><div class="charts" id="curves"></div>
    <h2>Evaluation</h2><div class="side" id="evals">${evalTables(data.eval)}</div>`;
  const curves = Object.fromEntries(Object.entries(data.metrics).map(([n, recs]) => [n, curvesOf(recs)]));
  const el = document.getElementById("curves");
  el.appendChild(lineChart("training loss", data.names.map(n => ({label: n, points: curves[n].loss}))));
  el.appendChild(lineChart("validation loss", data.names.map(n => ({label: n, points: curves[n].validation}))));
}

/* ---- chat side by side ---- */
async function pageChat(preset) {
  const data = await api("/api/runs"), served = await api("/api/served");
  const done = data.runs.filter(r => r.status === "finished");
  view.innerHTML = `<h1>Chat side by side</h1>
    <div id="chat-runs">${done.map(r => `<label><input type="checkbox" class="chat-run" value="${esc(r.name)}"
      ${preset.includes(r.name) ? "checked" : ""}> ${esc(r.name)}</label> `).join("") || '<span class="muted">no finished runs</span>'}
    <label><input type="checkbox" id="with-base" checked> the base model too</label></div>
    ${served.url ? `<div id="served">served by ${esc(served.url)}: ${served.models.map(m => `<label><input type="checkbox"
      class="served-model" value="${esc(m)}"> ${esc(m)}</label> `).join("")}</div>` : ""}
    <p><textarea id="prompt" rows="3" placeholder="Ask all of them the same question"></textarea></p>
    <label>max new tokens <input type="text" id="max-tokens" value="64" size="5" style="width:5rem"></label>
    <button class="primary" id="send">Ask</button>
    <div class="answers" id="answers"></div>`;
  document.getElementById("send").onclick = async () => {
    const out = document.getElementById("answers");
    out.innerHTML = '<p class="muted">answering (the first question loads the models)...</p>';
    try {
      const res = await api("/api/chat", {prompt: document.getElementById("prompt").value,
        runs: [...view.querySelectorAll(".chat-run:checked")].map(c => c.value),
        base: document.getElementById("with-base").checked,
        served: [...view.querySelectorAll(".served-model:checked")].map(c => c.value),
        max_new_tokens: parseInt(document.getElementById("max-tokens").value, 10) || 64});
      out.innerHTML = res.answers.map(a => `<div class="answer" data-label="${esc(a.label)}"><h3>${esc(a.label)}</h3>
        <pre>${esc(a.answer)}</pre><p class="muted">${a.seconds} s</p></div>`).join("");
    } catch (e) { showError(out, e); }
  };
}

/* ---- new run from the config schema ---- */
function resolveRef(schema, prop) { return prop.$ref ? schema.$defs[prop.$ref.split("/").pop()] : null; }

function fieldHtml(key, prop) {
  const types = prop.anyOf ? prop.anyOf.map(a => a.type) : [prop.type];
  const def = prop.default === undefined ? "" : JSON.stringify(prop.default);
  let input;
  if (prop.enum) input = `<select name="${key}"><option value="">(default ${esc(prop.default)})</option>
      ${prop.enum.map(v => `<option>${esc(v)}</option>`).join("")}</select>`;
  else if (types.includes("boolean")) input = `<select name="${key}"><option value="">(default ${esc(def)})</option>
      <option>true</option><option>false</option></select>`;
  else input = `<input type="text" name="${key}" placeholder="${esc(def)}">`;
  return `<div class="field"><label for="${key}">${key}</label>${input}<span class="help">${esc(prop.description || "")}</span></div>`;
}

async function pageNew() {
  const schema = await api("/api/schema");
  const top = [], sections = [];
  for (const [name, prop] of Object.entries(schema.properties)) {
    const sub = resolveRef(schema, prop);
    if (!sub) { top.push(fieldHtml(name, prop)); continue; }
    const open = ["data", "training", "lora", "output"].includes(name) ? "open" : "";
    sections.push(`<details ${open}><summary><b>${name}</b> <span class="muted">${esc(prop.description || "")}</span></summary>
      <fieldset>${Object.entries(sub.properties).filter(([k]) => `${name}.${k}` !== "output.dir")  // runs go to --runs
        .map(([k, p]) => fieldHtml(`${name}.${k}`, p)).join("")}</fieldset></details>`);
  }
  view.innerHTML = `<h1>New run</h1><p class="muted">Empty fields keep the default. Values are read like
    <code>tunery train</code>'s overrides (YAML: <code>[a.jsonl, b.jsonl]</code>, <code>1e-4</code>, <code>true</code>);
    relative paths are relative to the folder the studio was started in.</p>
    <form id="run-form"><fieldset>${top.join("")}</fieldset>${sections.join("")}
    <p>More overrides, one per line:</p><textarea id="extra" rows="3" placeholder="training.lr=1e-4"></textarea>
    <p><button type="button" id="check-btn">Check</button><button type="button" class="primary" id="start-btn">Start</button></p>
    <div id="form-result"></div></form>`;
  const collect = () => {
    const values = {};
    for (const el of view.querySelectorAll("#run-form [name]")) if (el.value.trim() !== "") values[el.name] = el.value;
    return {values, extra: document.getElementById("extra").value.split("\n").filter(l => l.trim())};
  };
  const result = document.getElementById("form-result");
  document.getElementById("check-btn").onclick = async () => {
    try { const r = await api("/api/check", collect()); result.innerHTML = `<p class="ok">the config is valid: run <b>${esc(r.name)}</b></p>`; }
    catch (e) { showError(result, e); }
  };
  document.getElementById("start-btn").onclick = async () => {
    try { const job = await api("/api/train", collect()); location.hash = "#/run/" + encodeURIComponent(job.name); }
    catch (e) { showError(result, e); }
  };
}

/* ---- router ---- */
async function route() {
  clearTimeout(timer);
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const arg = parts.slice(1).join("/");
  const names = arg ? arg.split(",").map(decodeURIComponent).filter(Boolean) : [];
  try {
    if (parts[0] === "run") await pageRun(decodeURIComponent(arg));
    else if (parts[0] === "compare") await pageCompare(names);
    else if (parts[0] === "chat") await pageChat(names);
    else if (parts[0] === "new") await pageNew();
    else await pageRuns();
  } catch (e) { showError(view, e); }
}
window.addEventListener("hashchange", route);
route();
