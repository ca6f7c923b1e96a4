// The playground page: controls -> settings over a WebSocket; training news -> drawings.
// Everything is served by the local torchclf server; nothing is fetched from elsewhere.
"use strict";

const PALETTE = ["#f59322", "#0877bd", "#2ca25f", "#8856a7", "#e34a33", "#636363", "#d95f0e", "#1c9099", "#c51b8a", "#756bb1"];
const $ = (id) => document.getElementById(id);

const page = {
  options: null,
  socket: null,
  run: null,        // id of the run the server is showing
  data: null,       // points, classes, bounds of the current run
  grid: null,       // latest heat map
  rows: [],         // [epoch, train loss, train acc, test loss, test acc]
  point: null,
  upload: null,     // the accepted upload's description
  timer: null,     // a pending "configure"
  sent: null,      // the settings last sent, as JSON
};

// ----- messages -----------------------------------------------------------------
function showMessage(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = "message" + (kind === "info" ? " info" : "");
  box.hidden = !text;
}

function setStatus(status) {
  const el = $("status");
  el.textContent = status;
  el.dataset.status = status;
}

function send(message) {
  if (page.socket && page.socket.readyState === WebSocket.OPEN) {
    page.socket.send(JSON.stringify(message));
  }
}

// ----- settings -----------------------------------------------------------------
function currentSettings() {
  const layers = parseInt($("layers").value, 10);
  const units = parseInt($("units").value, 10);
  const batch = $("batch-size").value;
  const settings = {
    dataset: $("dataset").value,
    points: parseInt($("points").value, 10),
    test_size: parseFloat($("test-size").value),
    seed: parseInt($("seed").value, 10),
    preset: $("preset").value || null,
    hidden: Array.from({ length: Number.isFinite(layers) ? Math.max(0, layers) : 0 }, () => units),
    activation: $("activation").value,
    dropout: parseFloat($("dropout").value),
    optimizer: $("optimizer").value,
    lr: parseFloat($("lr").value),
    batch_size: batch === "full" ? null : parseInt(batch, 10),
    epochs: parseInt($("epochs").value, 10),
  };
  if (settings.dataset === "upload") {
    Object.assign(settings, {
      upload: page.upload ? page.upload.id : null,
      x: $("col-x").value, y: $("col-y").value, target: $("col-target").value,
    });
  } else {
    settings.noise = parseFloat($("noise").value);
  }
  return settings;
}

function sendSettings() {
  clearTimeout(page.timer);
  page.timer = null;
  if ($("dataset").value === "upload" && !page.upload) {
    showMessage("Choose a CSV file to upload: two numeric feature columns and a label column.", "info");
    return;
  }
  const text = JSON.stringify(currentSettings());
  // Unchanged settings keep the current run (a blur may fire "change" without a new value).
  if (text === page.sent) return;
  page.sent = text;
  send({ type: "configure", settings: JSON.parse(text) });
}

function configure() {
  clearTimeout(page.timer);
  page.timer = setTimeout(sendSettings, 120);
}

function command(type) {
  // Settings changed just before a button press go first, so the press acts on them.
  if (page.timer !== null) sendSettings();
  send({ type });
}

function fillSelect(select, values, labels) {
  select.innerHTML = "";
  values.forEach((v, i) => {
    const opt = document.createElement("option");
    opt.value = v === null ? "" : v;
    opt.textContent = labels ? labels[i] : v;
    select.appendChild(opt);
  });
}

function setNoiseRange() {
  const info = page.options.datasets[$("dataset").value];
  const upload = $("dataset").value === "upload";
  $("upload-box").hidden = !upload;
  $("noise-label").hidden = upload;
  $("points").disabled = upload;
  if (info) {
    $("noise").max = info.noise_max;
    $("noise").step = info.noise_max / 100;
    $("noise").value = info.noise;
    $("noise-out").textContent = info.noise;
  }
}

function applyPreset(name) {
  const p = page.options.presets[name];
  $("preset-note").textContent = p ? p.description : "torchclf's defaults for everything not on this page";
  if (!p) return;
  $("layers").value = p.hidden.length;
  $("units").value = p.hidden.length ? p.hidden[0] : $("units").value;
  $("activation").value = p.activation;
  $("dropout").value = p.dropout;
  $("optimizer").value = p.optimizer;
  $("lr").value = p.lr;
  const batch = p.batch_size === null ? "full" : String(p.batch_size);
  if (![...$("batch-size").options].some((o) => o.value === batch)) {
    const opt = document.createElement("option");
    opt.value = opt.textContent = batch;
    $("batch-size").appendChild(opt);
  }
  $("batch-size").value = batch;
  $("epochs").value = p.epochs;
}

// ----- upload -------------------------------------------------------------------
async function uploadFile(file) {
  showMessage("Uploading " + file.name + " ...", "info");
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
    showMessage(String(err.message || err), "error");
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
  configure();
}

// ----- drawing ------------------------------------------------------------------
function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function toCanvas(canvas, x, y) {
  const [x0, x1, y0, y1] = page.data.bounds;
  return [(x - x0) / (x1 - x0) * canvas.width, (y1 - y) / (y1 - y0) * canvas.height];
}

function drawBoundary() {
  const canvas = $("boundary");
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!page.data) return;
  const n = page.data.grid;
  const k = page.data.classes.length;
  if (page.grid) {
    const cells = document.createElement("canvas");
    cells.width = cells.height = n;
    const image = cells.getContext("2d").createImageData(n, n);
    const c0 = hexToRgb(PALETTE[0]), c1 = hexToRgb(PALETTE[1]);
    for (let i = 0; i < n * n; i++) {
      const p = page.grid.p[i] / 255;
      let rgb, strength;
      if (page.grid.kind === "binary") {
        rgb = p >= 0.5 ? c1 : c0;
        strength = Math.abs(p - 0.5) * 2;
      } else {
        rgb = hexToRgb(PALETTE[page.grid.cls[i] % PALETTE.length]);
        strength = (p - 1 / k) / (1 - 1 / k);
      }
      const a = 0.15 + 0.55 * Math.max(0, Math.min(1, strength));
      image.data.set([255 + (rgb[0] - 255) * a, 255 + (rgb[1] - 255) * a, 255 + (rgb[2] - 255) * a, 255], i * 4);
    }
    cells.getContext("2d").putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(cells, 0, 0, canvas.width, canvas.height);
  }
  for (const [part, ringed] of [["train", false], ["test", true]]) {
    const pts = page.data[part];
    for (let i = 0; i < pts.x.length; i++) {
      if (pts.x[i] === null || pts.y[i] === null) continue;
      const [cx, cy] = toCanvas(canvas, pts.x[i], pts.y[i]);
      ctx.beginPath();
      ctx.arc(cx, cy, ringed ? 3.6 : 2.8, 0, 2 * Math.PI);
      ctx.fillStyle = PALETTE[pts.label[i] % PALETTE.length];
      ctx.fill();
      ctx.lineWidth = ringed ? 1.4 : 0.6;
      ctx.strokeStyle = ringed ? "#1d2733" : "#ffffff";
      ctx.stroke();
    }
  }
  if (page.point) {
    const i = page.point.index;
    const [cx, cy] = toCanvas(canvas, page.data.test.x[i], page.data.test.y[i]);
    ctx.beginPath();
    ctx.arc(cx, cy, 9, 0, 2 * Math.PI);
    ctx.lineWidth = 2.5;
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }
}

function drawCurve(canvas, column, lo, hi) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const rows = page.rows;
  const label = column === 1 ? "loss" : "accuracy";
  ctx.fillStyle = "#5f6b7a";
  ctx.font = "11px sans-serif";
  ctx.fillText(label, 4, 12);
  if (!rows.length) return;
  const values = rows.flatMap((r) => [r[column], r[column + 2]]).filter((v) => v !== null);
  if (lo === null) lo = 0;
  if (hi === null) hi = Math.max(1e-6, ...values);
  const first = rows[0][0], last = rows[rows.length - 1][0];
  ctx.fillText(hi.toPrecision(2), canvas.width - 30, 12);
  for (const [offset, color] of [[0, "#0877bd"], [2, "#f59322"]]) {
    ctx.beginPath();
    let started = false;
    for (const r of rows) {
      const v = r[column + offset];
      if (v === null) continue;
      const x = ((r[0] - first) / Math.max(1, last - first)) * (canvas.width - 8) + 4;
      const y = canvas.height - 4 - ((Math.min(v, hi) - lo) / (hi - lo)) * (canvas.height - 20);
      if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      started = true;
    }
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.6;
    ctx.stroke();
  }
}

function fmt(v, digits) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }
function pct(v) { return v === null || v === undefined ? "-" : (100 * v).toFixed(1) + "%"; }

function showNumbers(epoch) {
  $("epoch").textContent = epoch;
  const last = page.rows[page.rows.length - 1];
  $("train-loss").textContent = last ? fmt(last[1], 4) : "-";
  $("train-acc").textContent = last ? pct(last[2]) : "-";
  $("test-loss").textContent = last ? fmt(last[3], 4) : "-";
  $("test-acc").textContent = last ? pct(last[4]) : "-";
  drawCurve($("loss-curve"), 1, 0, null);
  drawCurve($("acc-curve"), 2, 0, 1);
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
    <tr><td>features</td><td>${escapeHtml(features)}</td></tr>
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
    span.style.setProperty("--c", PALETTE[i % PALETTE.length]);
    span.textContent = c;
    legend.appendChild(span);
  });
}

// ----- server messages ----------------------------------------------------------
function onMessage(event) {
  const m = JSON.parse(event.data);
  if (m.type === "hello") {
    document.body.dataset.session = m.session;
    page.sent = null;
    configure();
  } else if (m.type === "data") {
    page.run = m.run;
    page.data = m;
    page.rows = [];
    page.grid = null;
    page.point = null;
    $("command").textContent = m.command;
    $("saved").textContent = "";
    showMessage("");
    showLegend();
    showNumbers(0);
    showPoint();
    drawBoundary();
  } else if (m.type === "tick") {
    if (m.run !== page.run) return;
    page.rows.push(...m.rows);
    if (m.grid) page.grid = m.grid;
    if (m.point) page.point = m.point;
    setStatus(m.status);
    $("command").textContent = m.command;
    if (m.error) showMessage(m.error, "error");
    showNumbers(m.epoch);
    showPoint();
    drawBoundary();
  } else if (m.type === "saved") {
    $("saved").innerHTML = `Saved ${m.epochs} epochs to <code id="saved-path">${escapeHtml(m.path)}</code>`;
    $("command").textContent = m.command;
    showMessage("");
  } else if (m.type === "error") {
    showMessage(m.message, "error");
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + "/ws");
  page.socket = socket;
  socket.onopen = () => setStatus("ready");
  socket.onmessage = onMessage;
  socket.onclose = () => {
    setStatus("closed");
    showMessage("The connection to the playground server closed; reload the page when the server runs again.");
  };
}

// ----- wiring -------------------------------------------------------------------
function nearestTestPoint(event) {
  if (!page.data) return null;
  const canvas = $("boundary");
  const rect = canvas.getBoundingClientRect();
  const mx = (event.clientX - rect.left) * canvas.width / rect.width;
  const my = (event.clientY - rect.top) * canvas.height / rect.height;
  let best = null, bestD = 15 * 15;
  const t = page.data.test;
  for (let i = 0; i < t.x.length; i++) {
    const [cx, cy] = toCanvas(canvas, t.x[i], t.y[i]);
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
  $("activation").value = "relu";
  $("optimizer").value = "adamw";
  // Each tab starts with its own seed, shown and editable, so its run can be repeated.
  $("seed").value = Math.floor(Math.random() * 10000);
  setNoiseRange();
  $("test-out").textContent = $("test-size").value;
  applyPreset("");

  $("dataset").addEventListener("change", () => { setNoiseRange(); configure(); });
  $("noise").addEventListener("input", () => { $("noise-out").textContent = $("noise").value; });
  $("test-size").addEventListener("input", () => { $("test-out").textContent = $("test-size").value; });
  $("preset").addEventListener("change", () => { applyPreset($("preset").value); configure(); });
  for (const id of ["noise", "points", "test-size", "seed", "layers", "units", "activation", "dropout",
                    "optimizer", "lr", "batch-size", "epochs", "col-x", "col-y", "col-target"]) {
    $(id).addEventListener("change", configure);
  }
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) uploadFile(file);
  });
  $("play").addEventListener("click", () => command("play"));
  $("pause").addEventListener("click", () => command("pause"));
  $("step").addEventListener("click", () => command("step"));
  $("reset").addEventListener("click", () => command("reset"));
  $("save").addEventListener("click", () => send({ type: "save", name: $("run-name").value.trim() || null }));
  $("boundary").addEventListener("click", (event) => {
    const i = nearestTestPoint(event);
    if (i !== null) send({ type: "select", index: i });
  });
  drawBoundary();
  connect();
}

start().catch((err) => showMessage("The page could not start: " + err));
