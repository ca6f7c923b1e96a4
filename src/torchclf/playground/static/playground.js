// The playground page: controls -> settings over a WebSocket (live ones change the running model);
// training news -> drawings (draw.js).
// Everything is served by the local torchclf server; nothing is fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);

const page = {
  options: null,
  socket: null,
  run: null,        // id of the run the server is showing
  data: null,       // points, classes, bounds and network shape of the current run
  grid: null,       // latest heat map
  net: null,        // latest neuron pictures and weights
  rows: [],         // [epoch, train loss, train acc, test loss, test acc, lr]
  steps: 0,         // optimizer steps the run has taken
  point: null,
  status: "connecting",
  upload: null,     // the accepted upload's description
  uploadError: null, // why the last file was refused (kept on screen until another file or dataset)
  timer: null,      // a pending settings check
  sent: null,       // the settings the server has
  asked: null,      // settings waiting for "restart with the new settings"
  awaiting: false,  // a configure is on its way
  layout: null,     // where the network's neurons are drawn
  fatal: null,      // an error the server sent before closing the socket
  saving: false,
  exact: true,
  changes: [],
};

const ids = {  // setting -> control
  dataset: "dataset", noise: "noise", points: "points", test_size: "test-size", seed: "seed", preset: "preset",
  hidden: "hidden", activation: "activation", label_smoothing: "label-smoothing", lr: "lr", optimizer: "optimizer",
  batch_size: "batch-size", epochs: "epochs", dropout: "dropout", weight_decay: "weight-decay", l1: "l1",
  x: "col-x", y: "col-y", target: "col-target", upload: "upload", features: "features",
};

// ----- messages -----------------------------------------------------------------
function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = "message" + (kind === "info" ? " info" : "");
  box.hidden = !text;
}

function setStatus(status) {
  page.status = status;
  const el = $("status");
  el.textContent = status === "starting" ? "starting\u2026" : status;
  el.dataset.status = status;
}

function send(message) {
  if (page.socket && page.socket.readyState === WebSocket.OPEN) page.socket.send(JSON.stringify(message));
}

function label(key) { return (page.options && page.options.labels[key]) || key; }

// ----- settings -----------------------------------------------------------------
function mark(key, ok) {
  const el = $(ids[key]);
  if (el) el.setAttribute("aria-invalid", ok ? "false" : "true");
}

// The page's settings from its controls, and what is wrong with them (each naming its control).
function readControls() {
  const problems = [];
  const limits = page.options.limits;
  const number = (key, integer) => {
    const text = String($(ids[key]).value).trim();
    const value = Number(text);
    const [lo, hi] = limits[key];
    const ok = text !== "" && Number.isFinite(value) && value >= lo && value <= hi && (!integer || Number.isInteger(value));
    mark(key, ok);
    if (!ok) problems.push({ field: key, text: `\u201c${label(key)}\u201d: ${text === "" ? "empty" : JSON.stringify(text)} is not ${integer ? "a whole number" : "a number"} from ${lo} to ${hi}` });
    return value;
  };
  const hiddenText = $("hidden").value.trim();
  const hidden = hiddenText === "" || hiddenText === "none" ? [] : hiddenText.split(/[\s,]+/).filter((t) => t).map(Number);
  const [, maxLayers] = limits.layers, [minUnits, maxUnits] = limits.hidden;
  const hiddenOk = hidden.length <= maxLayers && hidden.every((u) => Number.isInteger(u) && u >= minUnits && u <= maxUnits);
  mark("hidden", hiddenOk);
  if (!hiddenOk) {
    problems.push({ field: "hidden", text: `\u201c${label("hidden")}\u201d: ${JSON.stringify(hiddenText)} is not up to ${maxLayers} layers of ${minUnits} to ${maxUnits} units each, such as 8,4 (empty for none)` });
  }
  const features = [...$("features").querySelectorAll("input:checked")].map((el) => el.value);
  $("features").setAttribute("aria-invalid", features.length ? "false" : "true");
  if (!features.length) problems.push({ field: "features", text: `\u201c${label("features")}\u201d: choose at least one input` });
  const batch = $("batch-size").value;
  const settings = {
    dataset: $("dataset").value,
    points: parseInt($("points").value, 10),
    test_size: parseFloat($("test-size").value),
    seed: number("seed", true),
    preset: $("preset").value || null,
    features,
    hidden: hiddenOk ? hidden : [],
    activation: $("activation").value,
    label_smoothing: number("label_smoothing", false),
    lr: number("lr", false),
    optimizer: $("optimizer").value,
    batch_size: batch === "full" ? null : parseInt(batch, 10),
    epochs: number("epochs", true),
    dropout: number("dropout", false),
    weight_decay: number("weight_decay", false),
    l1: number("l1", false),
  };
  if (settings.dataset === "upload") {
    Object.assign(settings, { upload: page.upload ? page.upload.id : null, x: $("col-x").value, y: $("col-y").value,
                              target: $("col-target").value });
  } else {
    settings.noise = parseFloat($("noise").value);
  }
  return { settings, problems };
}

function writeControls(s) {
  for (const [key, id] of Object.entries(ids)) {
    if (!(key in s) || ["upload", "x", "y", "target", "features", "preset", "dataset", "noise"].includes(key)) continue;
    const v = s[key];
    $(id).value = key === "hidden" ? v.join(",") : key === "batch_size" && v === null ? "full" : String(v);
    mark(key, true);
  }
  if (s.batch_size !== null && s.batch_size !== undefined) ensureOption($("batch-size"), String(s.batch_size));
  $("batch-size").value = s.batch_size === null ? "full" : String(s.batch_size);
  $("preset").value = s.preset || "";
  if (s.features) $("features").querySelectorAll("input").forEach((el) => { el.checked = s.features.includes(el.value); });
  if (s.dataset && s.dataset in page.options.datasets) {
    $("dataset").value = s.dataset;
    setNoiseRange(s.noise);
  }
  $("test-out").textContent = $("test-size").value;
}

function ensureOption(select, value) {
  if (![...select.options].some((o) => o.value === value)) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = value;
    select.appendChild(opt);
  }
}

function changedKeys(a, b) {
  if (!b) return Object.keys(a);
  return Object.keys({ ...a, ...b }).filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
}

function trained() { return page.steps > 0 || page.rows.length > 0; }

// Something changed on the page: live settings go to the running model; others start a new network,
// after asking when the current one has trained.
function settingsChanged() {
  clearTimeout(page.timer);
  page.timer = null;
  if ($("dataset").value === "upload" && !page.upload) {
    // A settings check that was waiting when a file was refused must not hide why it was.
    if (page.uploadError) showMessage(page.uploadError, "error");
    else showMessage("Choose a CSV file to upload: two numeric feature columns and a label column.", "info");
    return;
  }
  const { settings, problems } = readControls();
  if (problems.length) {
    showMessage(problems.map((p) => p.text).join("; "));
    setStale(problems[0].text);
    return;
  }
  setStale(null);
  const changed = changedKeys(settings, page.sent);
  if (!changed.length) {
    $("restart-bar").hidden = true;
    page.asked = null;
    return;
  }
  const structural = changed.filter((k) => !page.options.live.includes(k));
  if (page.sent && trained() && structural.length) {
    page.asked = settings;
    $("restart-text").textContent = `Changing ${structural.map((k) => "\u201c" + label(k) + "\u201d").join(", ")} needs a new network: training restarts from epoch 0.`;
    $("restart-bar").hidden = false;
    return;
  }
  configure(settings);
}

function configure(settings) {
  $("restart-bar").hidden = true;
  page.asked = null;
  page.sent = settings;
  page.awaiting = true;
  showMessage("");
  writeUrl();
  send({ type: "configure", settings });
}

function later() {
  clearTimeout(page.timer);
  page.timer = setTimeout(settingsChanged, 150);
}

function setStale(text) {
  $("stale").textContent = text ? `Not shown: ${text}. The map and numbers are those of the last valid settings.` : "";
  $("stale").hidden = !text;
  $("play").disabled = $("step").disabled = $("step-epoch").disabled = !!text;
}

function command(type, extra) {
  if (page.timer !== null) settingsChanged();  // a change typed just before the press goes first
  if (type === "play" && ["ready", "paused"].includes(page.status) && page.steps === 0) setStatus("starting");
  send({ type, ...extra });
}

// ----- the address: settings and seed, so a link repeats the run -------------------------
function writeUrl() {
  const s = page.sent;
  if (!s || s.dataset === "upload") return;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(s)) {
    q.set(k, Array.isArray(v) ? v.join(",") : v === null ? (k === "batch_size" ? "full" : "") : String(v));
  }
  q.set("speed", $("speed").value);
  history.replaceState(null, "", "?" + q.toString());
}

function readUrl() {
  const q = new URLSearchParams(location.search);
  if (!q.has("dataset")) return null;
  const s = {};
  for (const [k, v] of q.entries()) {
    if (k === "hidden" || k === "features") s[k] = v === "" ? [] : v.split(",").map((t) => (k === "hidden" ? Number(t) : t));
    else if (k === "batch_size") s[k] = v === "full" ? null : Number(v);
    else if (k === "preset") s[k] = v || null;
    else if (["dataset", "activation", "optimizer"].includes(k)) s[k] = v;
    else s[k] = Number(v);
  }
  if (s.dataset === "upload") {
    showMessage("A link cannot carry an uploaded file: choose the file again.", "info");
    return null;
  }
  return s;
}

// ----- controls -----------------------------------------------------------------
function fillSelect(select, values, labels) {
  select.innerHTML = "";
  values.forEach((v, i) => {
    const opt = document.createElement("option");
    opt.value = v === null ? "" : v;
    opt.textContent = labels ? labels[i] : v;
    select.appendChild(opt);
  });
}

function setNoiseRange(value) {
  const info = page.options.datasets[$("dataset").value];
  const upload = $("dataset").value === "upload";
  $("upload-box").hidden = !upload;
  $("noise-label").hidden = upload;
  $("points").disabled = upload;
  if (info) {
    $("noise").max = info.noise_max;
    $("noise").step = info.noise_step;
    $("noise").value = value === undefined || value === null || Number.isNaN(value) ? info.noise : value;
    $("noise-out").textContent = $("noise").value;  // the slider's own value: the one that is sent
  }
}

function applyPreset(name) {
  const p = page.options.presets[name];
  $("preset-note").textContent = p ? p.description : "torchclf's defaults for everything not on this page";
  if (!p) return;
  writeControls({ ...p, dataset: undefined, preset: name });
}

function setHidden(hidden) {
  $("hidden").value = hidden.join(",");
  settingsChanged();
}

function currentHidden() {
  const text = $("hidden").value.trim();
  return text === "" ? [] : text.split(/[\s,]+/).map(Number).filter((u) => Number.isInteger(u));
}

// ----- upload -------------------------------------------------------------------
async function uploadFile(file) {
  showMessage("Uploading " + file.name + " ...", "info");
  page.uploadError = null;
  let reply;
  try {
    const response = await fetch("/api/upload?name=" + encodeURIComponent(file.name), {
      method: "POST", body: file, headers: { "Content-Type": "text/csv" },
    });
    reply = await response.json();
    if (!response.ok) throw new Error(reply.error || ("upload failed with status " + response.status));
  } catch (err) {
    page.upload = null;
    $("upload-info").textContent = "";
    page.uploadError = String(err.message || err);
    showMessage(page.uploadError, "error");
    $("upload").value = "";
    return;
  }
  page.upload = reply;
  $("upload-info").textContent = `${reply.name}: ${reply.rows} rows, ${reply.columns.length} columns`;
  fillSelect($("col-x"), reply.numeric);
  fillSelect($("col-y"), reply.numeric);
  fillSelect($("col-target"), reply.columns);
  $("col-x").value = reply.suggested.x;
  $("col-y").value = reply.suggested.y;
  if (reply.suggested.target) $("col-target").value = reply.suggested.target;
  showMessage("");
  settingsChanged();
}

// ----- drawing ------------------------------------------------------------------
function drawMap() {
  Draw.map($("boundary"), page.data, page.grid, page.point ? page.point.index : null);
}

function drawNetwork() {
  if (!page.data) return;
  page.layout = Draw.network($("network"), page.data.network, page.net);
  placeUnitButtons();
}

function placeUnitButtons() {
  const box = $("unit-buttons");
  const shape = page.data.network;
  const key = JSON.stringify([shape.sizes, page.layout.xs.map(Math.round)]);
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.innerHTML = "";
  for (let l = 1; l < shape.sizes.length - 1; l++) {
    const div = document.createElement("div");
    div.className = "units";
    div.style.left = page.layout.xs[l] + "px";
    div.innerHTML = `<button title="one unit fewer">&minus;</button><span>${shape.sizes[l]}</span><button title="one unit more">+</button>`;
    const [minus, plus] = div.querySelectorAll("button");
    const change = (d) => {
      const hidden = currentHidden();
      const [lo, hi] = page.options.limits.hidden;
      hidden[l - 1] = Math.max(lo, Math.min(hi, hidden[l - 1] + d));
      setHidden(hidden);
    };
    minus.addEventListener("click", () => change(-1));
    plus.addEventListener("click", () => change(1));
    box.appendChild(div);
  }
}

function showNeuron(event) {
  const zoom = $("neuron-zoom");
  if (!page.layout || !page.net) { zoom.hidden = true; return; }
  const rect = $("network").getBoundingClientRect();
  const mx = event.clientX - rect.left, my = event.clientY - rect.top;
  const node = page.layout.nodes.find((d) => Math.abs(mx - d.x) <= d.size / 2 && Math.abs(my - d.y) <= d.size / 2);
  if (!node) { zoom.hidden = true; return; }
  const shape = page.data.network;
  const last = shape.sizes.length - 1;
  const name = node.layer === 0 ? `input ${shape.inputs[node.unit]}`
    : node.layer === last ? (last && shape.sizes[last] > 1 ? `output ${page.data.classes[node.unit]} (logit)` : "output (logit)")
    : `layer ${node.layer}, neuron ${node.unit + 1}`;
  $("neuron-zoom-text").textContent = `${name}; largest |value| ${node.scale}`;
  zoom.hidden = false;
  Draw.zoom($("neuron-zoom-canvas"), node);
  const box = $("network-box").getBoundingClientRect();
  const left = Math.min(box.width - 172, node.x + node.size / 2 + 6);
  zoom.style.left = Math.max(0, left) + "px";
  zoom.style.top = Math.max(0, node.y - 60) + "px";
  zoom.dataset.layer = node.layer;
  zoom.dataset.unit = node.unit;
}

function fmt(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
function pct(v) { return v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%"; }

function showNumbers(epoch, step, steps) {
  $("epoch").textContent = epoch;
  $("step-of").textContent = steps ? `${step}/${steps}` : "0";
  const last = page.rows[page.rows.length - 1];
  $("train-loss").textContent = last ? fmt(last[1], 4) : "-";
  $("train-acc").textContent = last ? pct(last[2]) : "-";
  $("test-loss").textContent = last ? fmt(last[3], 4) : "-";
  $("test-acc").textContent = last ? pct(last[4]) : "-";
  drawCurves();
}

function drawCurves() {
  Draw.curve($("loss-curve"), page.rows, 1, "loss", null);
  Draw.curve($("acc-curve"), page.rows, 2, "accuracy", 1);
}

function showCommand(text) {
  const box = $("command");
  box.innerHTML = "";
  // One span per argument, so that lines break between arguments and never inside a flag.
  (text.match(/(?:[^\s']+|'[^']*')+/g) || []).forEach((word, i) => {
    if (i) box.appendChild(document.createTextNode(" "));
    const span = document.createElement("span");
    span.textContent = word;
    if (word.length > 28) span.className = "long";
    box.appendChild(span);
  });
  box.dataset.command = text;
  showExactness();
}

function showExactness() {
  const el = $("exactness");
  if (!page.exact) {
    el.className = "note warn";
    el.textContent = `Settings changed during training: ${page.changes.join("; ")}. The command trains with the ` +
      "settings shown from the first step: a different training, so it does not give this model.";
  } else if (page.sent && page.sent.dropout > 0) {
    el.className = "note";
    el.textContent = "With dropout the command gives a similar model, not the same weights (tabs share torch's random generator).";
  } else {
    el.className = "note";
    el.textContent = "The command repeats this training exactly: the same weights.";
  }
}

function showPoint() {
  const p = page.point;
  const box = $("point-info");
  if (!p) { box.textContent = ""; return; }
  $("point-index").textContent = "#" + p.index;
  const features = Object.entries(p.features).map(([k, v]) => `${k} = ${v}`).join(", ");
  const probs = Object.entries(p.proba).map(([c, v]) => `<tr><td>P(${escapeHtml(c)})</td><td>${fmt(v, 4)}</td></tr>`).join("");
  const verdict = p.predicted === p.label ? "right" : "wrong";
  box.innerHTML = `<table>
    <tr><td>inputs</td><td>${escapeHtml(features)}</td></tr>
    <tr><td>logits</td><td id="point-logits">${p.logits.map((v) => fmt(v, 4)).join(", ")}</td></tr>
    ${probs}
    <tr><td>predicted</td><td id="point-predicted" class="${verdict}">${escapeHtml(p.predicted)}</td></tr>
    <tr><td>true label</td><td id="point-label">${escapeHtml(p.label)}</td></tr></table>`;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function showLegend() {
  const legend = $("legend");
  legend.innerHTML = "";
  (page.data ? page.data.classes : []).forEach((c, i) => {
    const span = document.createElement("span");
    span.style.setProperty("--c", Draw.PALETTE[i % Draw.PALETTE.length]);
    span.textContent = c;
    legend.appendChild(span);
  });
}

function redrawAll() {
  drawMap();
  drawNetwork();
  drawCurves();
}

// ----- server messages ----------------------------------------------------------
function onMessage(event) {
  const m = JSON.parse(event.data);
  if (m.type === "hello") {
    document.body.dataset.session = m.session;
    page.sent = null;
    send({ type: "speed", steps_per_second: Number($("speed").value) || null });  // a linked speed too
    settingsChanged();
  } else if (m.type === "data") {
    page.awaiting = false;
    Object.assign(page, { run: m.run, data: m, rows: [], grid: null, net: null, point: null, steps: 0, exact: true,
                          changes: [] });
    $("saved").textContent = "";
    $("unit-buttons").dataset.key = "";
    showMessage("");
    showCommand(m.command);
    showLegend();
    showNumbers(0, 0, 0);
    showPoint();
    drawMap();
    drawNetwork();
  } else if (m.type === "changed") {
    page.awaiting = false;
    showCommand(m.command);
    showMessage(`${m.settings.map(label).join(", ")} changed on the running model (from its next step).`, "info");
  } else if (m.type === "tick") {
    if (m.run !== page.run) return;
    page.rows.push(...m.rows);
    page.steps = m.steps;
    if (m.grid) { page.grid = m.grid; page.net = m.net; document.body.dataset.draws = String(Number(document.body.dataset.draws || 0) + 1); }
    if (m.point) page.point = m.point;
    if (m.changes) page.changes = m.changes;
    page.exact = m.exact;
    setStatus(m.status === "playing" && m.steps === 0 ? "starting" : m.status);
    showCommand(m.command);
    if (m.error) showMessage(m.error, "error");
    else if (m.stop_reason && m.status === "finished") showMessage(m.stop_reason, "info");
    showNumbers(m.epoch, m.step, m.steps_per_epoch);
    showPoint();
    if (m.grid || m.point) { drawMap(); }
    if (m.grid) drawNetwork();
  } else if (m.type === "saved") {
    saving(false);
    const notes = [];
    if (m.again) notes.push("already saved with these epochs and settings: no second folder");
    if (m.steps_left_out) notes.push(`the ${m.steps_left_out} steps of the unfinished epoch are not in it`);
    $("saved").innerHTML = `Saved ${m.epochs} epochs to <code id="saved-path">${escapeHtml(m.path)}</code>` +
      (notes.length ? ` (${escapeHtml(notes.join("; "))})` : "") +
      (m.exact ? "" : `<br><span id="saved-warning" class="warn">Settings changed during training, so the command below does not repeat it: ${escapeHtml(m.changes.join("; "))}.</span>`);
    showCommand(m.command);
    showMessage("");
  } else if (m.type === "error") {
    if (page.saving) saving(false);
    if (!document.body.dataset.session) page.fatal = m.message;  // refused before the session began
    if (m.field) mark(m.field, false);
    if (page.awaiting && (m.field || m.message.startsWith("setting"))) setStale(m.message);
    page.awaiting = false;
    showMessage(m.message, "error");
  }
}

function saving(on) {
  page.saving = on;
  $("save").disabled = on;
  $("save").textContent = on ? "Saving\u2026" : "Save run";
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + "/ws");
  page.socket = socket;
  socket.onopen = () => setStatus("ready");
  socket.onmessage = onMessage;
  socket.onclose = () => {
    setStatus("closed");
    // Keep the server's own reason (such as "8 tabs are already open") rather than a generic one.
    showMessage(page.fatal || "The connection to the playground server closed; reload the page when the server runs again.");
  };
}

// ----- wiring -------------------------------------------------------------------
function nearestTestPoint(event) {
  if (!page.data) return null;
  const canvas = $("boundary");
  const rect = canvas.getBoundingClientRect();
  const mx = event.clientX - rect.left, my = event.clientY - rect.top;
  let best = null, bestD = 12 * 12;
  const t = page.data.test;
  for (let i = 0; i < t.x.length; i++) {
    const [cx, cy] = Draw.toMap(canvas, page.data, t.x[i], t.y[i]);
    const d = (cx - mx) ** 2 + (cy - my) ** 2;
    if (d < bestD) { best = i; bestD = d; }
  }
  return best;
}

async function start() {
  page.options = await (await fetch("/api/options")).json();
  const names = Object.keys(page.options.datasets);
  fillSelect($("dataset"), [...names, "upload"], [...names, "upload a CSV ..."]);
  const presets = Object.keys(page.options.presets);
  fillSelect($("preset"), [null, ...presets], ["(none: torchclf defaults)", ...presets]);
  fillSelect($("activation"), page.options.activations);
  fillSelect($("optimizer"), page.options.optimizers);
  for (const [token, name] of Object.entries(page.options.features)) {
    const el = document.createElement("label");
    el.innerHTML = `<input type="checkbox" value="${token}"> ${escapeHtml(name)}`;
    $("features").appendChild(el);
  }
  const defaults = page.options.defaults;
  writeControls({ ...defaults, dataset: "circles", preset: null });
  applyPreset("");
  const linked = readUrl();
  if (linked) {
    writeControls({ ...defaults, ...linked });
    if (linked.preset) $("preset-note").textContent = page.options.presets[linked.preset].description;
    if (linked.speed !== undefined) $("speed").value = String(linked.speed);
  } else {
    // Each tab starts with its own seed, shown and editable (and kept in the address), so its run can be repeated.
    $("seed").value = Math.floor(Math.random() * 10000);
  }

  $("dataset").addEventListener("change", () => { page.uploadError = null; setNoiseRange(); later(); });
  $("noise").addEventListener("input", () => { $("noise-out").textContent = $("noise").value; });
  $("test-size").addEventListener("input", () => { $("test-out").textContent = $("test-size").value; });
  $("preset").addEventListener("change", () => { applyPreset($("preset").value); later(); });
  for (const id of ["noise", "points", "test-size", "seed", "hidden", "activation", "label-smoothing", "dropout",
                    "weight-decay", "l1", "optimizer", "lr", "batch-size", "epochs", "col-x", "col-y", "col-target"]) {
    $(id).addEventListener("change", later);
  }
  $("features").addEventListener("change", later);
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) uploadFile(file);
  });
  $("restart-yes").addEventListener("click", () => {
    clearTimeout(page.timer);  // the controls as they are now, including a change still waiting
    page.timer = null;
    const { settings, problems } = readControls();
    if (!problems.length) configure(settings);
  });
  $("restart-no").addEventListener("click", () => {
    writeControls(page.sent);
    $("restart-bar").hidden = true;
    page.asked = null;
  });
  $("layer-add").addEventListener("click", () => {
    const hidden = currentHidden();
    if (hidden.length < page.options.limits.layers[1]) setHidden([...hidden, hidden.length ? hidden[hidden.length - 1] : 4]);
  });
  $("layer-remove").addEventListener("click", () => setHidden(currentHidden().slice(0, -1)));
  $("speed").addEventListener("change", () => {
    send({ type: "speed", steps_per_second: Number($("speed").value) || null });
    writeUrl();
  });
  $("play").addEventListener("click", () => command("play"));
  $("pause").addEventListener("click", () => command("pause"));
  $("step").addEventListener("click", () => command("step", { unit: "step" }));
  $("step-epoch").addEventListener("click", () => command("step", { unit: "epoch" }));
  $("reset").addEventListener("click", () => command("reset"));
  $("save").addEventListener("click", () => {
    if (page.saving) return;  // one save at a time: a double click writes one run
    saving(true);
    send({ type: "save", name: $("run-name").value.trim() || null });
  });
  $("boundary").addEventListener("click", (event) => {
    const i = nearestTestPoint(event);
    if (i !== null) send({ type: "select", index: i });
  });
  $("network").addEventListener("mousemove", showNeuron);
  $("network").addEventListener("click", showNeuron);
  $("network").addEventListener("mouseleave", () => { $("neuron-zoom").hidden = true; });
  let frame = null;
  new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(redrawAll);
  }).observe(document.querySelector("main"));
  redrawAll();
  connect();
}

start().catch((err) => showMessage("The page could not start: " + err));
