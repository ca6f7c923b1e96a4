// Drawing for the playground page: the map with its axes, the curves with theirs, and the network.
// Every canvas is sized in CSS pixels times devicePixelRatio, so it is sharp on any screen.
"use strict";

const Draw = (() => {
  const PALETTE = ["#f59322", "#0877bd", "#2ca25f", "#8856a7", "#e34a33", "#636363", "#d95f0e", "#1c9099", "#c51b8a", "#756bb1"];
  const INK = "#1d2733", MUTED = "#5f6b7a", GRIDLINE = "rgba(29, 39, 51, 0.12)";
  const FONT = "11px system-ui, -apple-system, 'DejaVu Sans', sans-serif";
  const POSITIVE = [8, 119, 189], NEGATIVE = [245, 147, 34];

  function rgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  function bytes(text) {
    const raw = atob(text);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  // The canvas's backing store at the screen's density; drawing then uses CSS pixels.
  function fit(canvas, cssHeight) {
    if (cssHeight !== undefined) canvas.style.height = cssHeight + "px";
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    const bw = Math.max(1, Math.round(w * dpr)), bh = Math.max(1, Math.round(h * dpr));
    if (canvas.width !== bw || canvas.height !== bh) { canvas.width = bw; canvas.height = bh; }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(canvas.width / Math.max(1, w), 0, 0, canvas.height / Math.max(1, h), 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = FONT;
    return { ctx, w, h };
  }

  // About `count` round tick values between lo and hi.
  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function label(v) {
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e4 || a < 1e-3) ? v.toExponential(0) : String(Number(v.toPrecision(4)));
  }

  function mix(color, a) {
    return [255 + (color[0] - 255) * a, 255 + (color[1] - 255) * a, 255 + (color[2] - 255) * a];
  }

  // ----- the map ----------------------------------------------------------------------
  const MAP = { left: 40, right: 8, top: 8, bottom: 34 };

  function mapArea(canvas) {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    return { x: MAP.left, y: MAP.top, w: w - MAP.left - MAP.right, h: h - MAP.top - MAP.bottom };
  }

  function toMap(canvas, data, x, y) {
    const [x0, x1, y0, y1] = data.bounds;
    const a = mapArea(canvas);
    return [a.x + (x - x0) / (x1 - x0) * a.w, a.y + (y1 - y) / (y1 - y0) * a.h];
  }

  function heatImage(data, grid) {
    const n = data.grid, k = data.classes.length;
    const p = bytes(grid.p);
    const cells = document.createElement("canvas");
    cells.width = cells.height = n;
    const image = cells.getContext("2d").createImageData(n, n);
    const colors = data.classes.map((_, i) => rgb(PALETTE[i % PALETTE.length]));
    for (let i = 0; i < n * n; i++) {
      let color, strength;
      if (grid.kind === "binary") {
        const q = p[i] / 255;
        color = q >= 0.5 ? colors[1] : colors[0];
        strength = Math.abs(q - 0.5) * 2;
      } else {
        // Each class's colour weighted by its probability: edges between classes blend instead of stepping.
        color = [0, 0, 0];
        let top = 0;
        for (let c = 0; c < grid.planes; c++) {
          const q = p[c * n * n + i] / 255;
          top = Math.max(top, q);
          for (let j = 0; j < 3; j++) color[j] += q * colors[c][j];
        }
        strength = (top - 1 / k) / (1 - 1 / k);
      }
      const rgbValue = mix(color, 0.1 + 0.5 * Math.max(0, Math.min(1, strength)));
      image.data.set([rgbValue[0], rgbValue[1], rgbValue[2], 255], i * 4);
    }
    cells.getContext("2d").putImageData(image, 0, 0);
    return cells;
  }

  function map(canvas, data, grid, selected) {
    const { ctx, w, h } = fit(canvas);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, w, h);
    if (!data) return;
    const a = mapArea(canvas);
    if (grid) {
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(heatImage(data, grid), a.x, a.y, a.w, a.h);
    }
    // Axes: ticks in the data's units and the plotted columns' names.
    const [x0, x1, y0, y1] = data.bounds;
    const xt = ticks(x0, x1, Math.max(3, Math.floor(a.w / 70))), yt = ticks(y0, y1, Math.max(3, Math.floor(a.h / 60)));
    ctx.strokeStyle = GRIDLINE;
    ctx.lineWidth = 1;
    ctx.fillStyle = MUTED;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of xt) {
      const [cx] = toMap(canvas, data, v, y0);
      ctx.beginPath(); ctx.moveTo(cx, a.y); ctx.lineTo(cx, a.y + a.h + 4); ctx.stroke();
      ctx.fillText(label(v), cx, a.y + a.h + 5);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of yt) {
      const [, cy] = toMap(canvas, data, x0, v);
      ctx.beginPath(); ctx.moveTo(a.x - 4, cy); ctx.lineTo(a.x + a.w, cy); ctx.stroke();
      ctx.fillText(label(v), a.x - 6, cy);
    }
    ctx.fillStyle = INK;
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText(data.axes[0], a.x + a.w / 2, h - 1);
    ctx.save();
    ctx.translate(10, a.y + a.h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(data.axes[1], 0, 0);
    ctx.restore();
    ctx.strokeStyle = MUTED;
    ctx.strokeRect(a.x, a.y, a.w, a.h);
    canvas.dataset.xName = data.axes[0];
    canvas.dataset.yName = data.axes[1];
    canvas.dataset.xticks = xt.map(label).join(",");
    canvas.dataset.yticks = yt.map(label).join(",");
    // Points: train rows with a white edge, test rows larger with a dark edge, so both show on any shade.
    ctx.save();
    ctx.beginPath();
    ctx.rect(a.x, a.y, a.w, a.h);
    ctx.clip();
    for (const [part, test] of [["train", false], ["test", true]]) {
      const pts = data[part];
      for (let i = 0; i < pts.x.length; i++) {
        if (pts.x[i] === null || pts.y[i] === null) continue;
        const [cx, cy] = toMap(canvas, data, pts.x[i], pts.y[i]);
        ctx.beginPath();
        ctx.arc(cx, cy, test ? 3.4 : 3.0, 0, 2 * Math.PI);
        ctx.fillStyle = PALETTE[pts.label[i] % PALETTE.length];
        ctx.fill();
        ctx.lineWidth = test ? 1.8 : 1.4;
        ctx.strokeStyle = test ? INK : "#ffffff";
        ctx.stroke();
      }
    }
    if (selected !== null && selected !== undefined) {
      const [cx, cy] = toMap(canvas, data, data.test.x[selected], data.test.y[selected]);
      ctx.beginPath();
      ctx.arc(cx, cy, 9, 0, 2 * Math.PI);
      ctx.lineWidth = 2.5;
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
    ctx.restore();
  }

  // ----- the curves ---------------------------------------------------------------------
  function curve(canvas, rows, column, name, fixedTop) {
    const { ctx, w, h } = fit(canvas);
    const m = { left: 40, right: 10, top: 14, bottom: 28 };
    const a = { x: m.left, y: m.top, w: w - m.left - m.right, h: h - m.top - m.bottom };
    const values = rows.flatMap((r) => [r[column], r[column + 2]]).filter((v) => v !== null && Number.isFinite(v));
    // Before the first epoch there is nothing to scale to: a 0 to 1 axis rather than one of 1e-6.
    const lo = 0, hi = fixedTop !== null ? fixedTop : values.length ? Math.max(1e-6, ...values) : 1;
    const first = rows.length ? Math.max(0, rows[0][0] - 1) : 0, last = rows.length ? rows[rows.length - 1][0] : 1;
    const xt = ticks(first, Math.max(last, first + 1), Math.max(2, Math.floor(a.w / 60))).filter((v) => Number.isInteger(v));
    const yt = ticks(lo, hi, 3);
    const X = (e) => a.x + (e - first) / Math.max(1, last - first) * a.w;
    const Y = (v) => a.y + a.h - (Math.min(v, hi) - lo) / (hi - lo) * a.h;
    ctx.strokeStyle = GRIDLINE;
    ctx.fillStyle = MUTED;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of yt) {
      ctx.beginPath(); ctx.moveTo(a.x - 3, Y(v)); ctx.lineTo(a.x + a.w, Y(v)); ctx.stroke();
      ctx.fillText(label(v), a.x - 5, Y(v));
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const v of xt) {
      ctx.beginPath(); ctx.moveTo(X(v), a.y + a.h); ctx.lineTo(X(v), a.y + a.h + 3); ctx.stroke();
      const half = ctx.measureText(String(v)).width / 2;  // the last label stays inside the canvas
      ctx.fillText(String(v), Math.min(X(v), w - half - 1), a.y + a.h + 4);
    }
    ctx.fillStyle = INK;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillText(name, a.x + 4, 1);
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    ctx.fillText("epoch", w - m.right, h);
    ctx.strokeStyle = MUTED;
    ctx.beginPath(); ctx.moveTo(a.x, a.y); ctx.lineTo(a.x, a.y + a.h); ctx.lineTo(a.x + a.w, a.y + a.h); ctx.stroke();
    canvas.dataset.xticks = xt.join(",");
    canvas.dataset.yticks = yt.map(label).join(",");
    for (const [offset, color] of [[0, "#0877bd"], [2, "#f59322"]]) {
      ctx.beginPath();
      let started = false;
      for (const r of rows) {
        const v = r[column + offset];
        if (v === null || !Number.isFinite(v)) continue;
        if (started) ctx.lineTo(X(r[0]), Y(v)); else ctx.moveTo(X(r[0]), Y(v));
        started = true;
      }
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.6;
      ctx.stroke();
    }
  }

  // ----- the network --------------------------------------------------------------------
  // One neuron's picture: its output over the plane, blue positive and orange negative (byte 128 is 0).
  function neuronImage(pictures, offset, n) {
    const cells = document.createElement("canvas");
    cells.width = cells.height = n;
    const image = cells.getContext("2d").createImageData(n, n);
    for (let i = 0; i < n * n; i++) {
      const v = (pictures[offset + i] - 128) / 127;
      const c = mix(v >= 0 ? POSITIVE : NEGATIVE, Math.min(1, Math.abs(v)));
      image.data.set([c[0], c[1], c[2], 255], i * 4);
    }
    cells.getContext("2d").putImageData(image, 0, 0);
    return cells;
  }

  // Lays out and draws the network; returns the drawn neurons and the layers' centres (for hover and buttons).
  function network(canvas, shape, net) {
    const wide = canvas.clientWidth;
    const cols = shape.sizes.length;
    const labelSpace = 54;
    const size = Math.max(18, Math.min(40, Math.floor((wide - labelSpace) / (cols * 2.1))));
    const gap = Math.max(6, Math.round(size * 0.3));
    const top = 26;
    const tallest = Math.max(...shape.shown);
    const height = top + tallest * (size + gap) + 18;
    const { ctx, w } = fit(canvas, height);
    const span = w - labelSpace - size - 8;
    const xs = shape.sizes.map((_, l) => labelSpace + size / 2 + (cols === 1 ? 0 : l * span / (cols - 1)));
    const nodes = [];
    shape.shown.forEach((n, l) => {
      for (let i = 0; i < n; i++) nodes.push({ layer: l, unit: i, x: xs[l], y: top + i * (size + gap) + size / 2, size });
    });
    const at = (l, i) => nodes.find((d) => d.layer === l && d.unit === i);
    // Edges under the pictures: colour by sign, width and opacity by size, relative to the layer's largest.
    if (net) {
      net.weights.forEach((W, l) => {
        const biggest = Math.max(1e-9, ...W.flat().map(Math.abs));
        W.forEach((row, j) => row.forEach((wgt, i) => {
          const from = at(l, i), to = at(l + 1, j);
          const r = Math.abs(wgt) / biggest;
          ctx.beginPath();
          ctx.moveTo(from.x + size / 2, from.y);
          ctx.bezierCurveTo((from.x + to.x) / 2, from.y, (from.x + to.x) / 2, to.y, to.x - size / 2, to.y);
          ctx.strokeStyle = `rgba(${(wgt >= 0 ? POSITIVE : NEGATIVE).join(",")}, ${0.2 + 0.7 * r})`;
          ctx.lineWidth = 0.4 + 3.6 * r;
          ctx.stroke();
        }));
      });
    } else {
      ctx.strokeStyle = GRIDLINE;
      for (let l = 0; l + 1 < cols; l++) {
        for (let i = 0; i < shape.shown[l]; i++) {
          for (let j = 0; j < shape.shown[l + 1]; j++) {
            const from = at(l, i), to = at(l + 1, j);
            ctx.beginPath(); ctx.moveTo(from.x + size / 2, from.y); ctx.lineTo(to.x - size / 2, to.y); ctx.stroke();
          }
        }
      }
    }
    const pictures = net ? bytes(net.pictures) : null;
    const n = shape.size;
    ctx.imageSmoothingEnabled = true;
    nodes.forEach((d, k) => {
      const x = d.x - size / 2, y = d.y - size / 2;
      if (pictures) {
        d.image = neuronImage(pictures, k * n * n, n);
        d.scale = net.scales[d.layer][d.unit];
        ctx.drawImage(d.image, x, y, size, size);
      } else {
        ctx.fillStyle = "#eef1f4";
        ctx.fillRect(x, y, size, size);
      }
      ctx.strokeStyle = INK;
      ctx.lineWidth = 1;
      ctx.strokeRect(x, y, size, size);
    });
    // Names: the inputs on the left, the outputs on the right; wider layers say how many are not drawn.
    ctx.fillStyle = INK;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    nodes.filter((d) => d.layer === 0).forEach((d) => ctx.fillText(shape.inputs[d.unit], d.x - size / 2 - 4, d.y));
    ctx.fillStyle = MUTED;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    shape.sizes.forEach((units, l) => {
      if (units > shape.shown[l]) ctx.fillText(`+${units - shape.shown[l]} more`, xs[l], top + shape.shown[l] * (size + gap));
    });
    ctx.textBaseline = "bottom";
    ctx.fillText("inputs", xs[0], top - 6);
    ctx.fillText(shape.sizes[cols - 1] > 1 ? "outputs" : "output", xs[cols - 1], top - 6);
    canvas.dataset.neurons = String(nodes.length);
    canvas.dataset.drawn = pictures ? "pictures" : "layout";
    return { nodes, xs, top };
  }

  function zoom(canvas, node) {
    const { ctx, w, h } = fit(canvas);
    ctx.imageSmoothingEnabled = true;
    if (node.image) ctx.drawImage(node.image, 0, 0, w, h);
  }

  return { PALETTE, fit, ticks, map, mapArea, toMap, curve, network, zoom };
})();
