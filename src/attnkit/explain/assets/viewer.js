// attnkit explain viewer: everything drawn on <canvas> so thousands of tokens stay responsive.
// Data: JSON in #attnkit-data (see attnkit/explain/render_html.py for the format).
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("attnkit-data").textContent);
  const MAX_MAP_PX = 560;     // heatmap side in CSS pixels
  const LINK_ROWS_LABELLED = 9; // px per row needed before token labels are drawn
  const LINKS_PER_ROW = 8;    // strongest links drawn per query row
  const state = { method: 0, layer: 0, head: 0, query: 0, queries: {}, view: "head", sqrt: false, rowScale: false };
  const cache = new Map();
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- decoding
  function bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function floats(b64) { const b = bytes(b64); return new Float32Array(b.buffer, 0, b.length >> 2); }
  function ints(b64, type) {
    const b = bytes(b64);
    return type === "u16" ? new Uint16Array(b.buffer, 0, b.length >> 1)
                          : new Int32Array(b.buffer, 0, b.length >> 2);
  }

  // A decoded map: sparse rows for links, get(i, j) for hover, forEach over stored entries.
  function decode(head) {
    if (cache.has(head)) return cache.get(head);
    const lq = head.lq, lk = head.lk;
    const values = floats(head.values);
    let map;
    if (head.format === "dense") {
      map = {
        lq, lk, vmax: head.vmax,
        get: (i, j) => values[i * lk + j],
        forEach(fn) { for (let i = 0; i < lq; i++) for (let j = 0; j < lk; j++) fn(i, j, values[i * lk + j]); },
        row(i) { // strongest LINKS_PER_ROW entries of row i
          const order = [];
          for (let j = 0; j < lk; j++) order.push(j);
          order.sort((a, b) => values[i * lk + b] - values[i * lk + a]);
          return order.slice(0, LINKS_PER_ROW).map((j) => [j, values[i * lk + j]]);
        },
        full(i) { return Array.from(values.subarray(i * lk, (i + 1) * lk)); },
      };
    } else {
      const k = head.k, idx = ints(head.indices, head.itype);
      map = {
        lq, lk, vmax: head.vmax,
        get(i, j) { for (let t = 0; t < k; t++) if (idx[i * k + t] === j) return values[i * k + t]; return 0; },
        forEach(fn) { for (let i = 0; i < lq; i++) for (let t = 0; t < k; t++) fn(i, idx[i * k + t], values[i * k + t]); },
        row(i) { const out = []; for (let t = 0; t < Math.min(k, LINKS_PER_ROW); t++) out.push([idx[i * k + t], values[i * k + t]]); return out; },
        full(i) { const out = new Array(lk).fill(0); for (let t = 0; t < k; t++) out[idx[i * k + t]] = values[i * k + t]; return out; },
      };
    }
    // per-row maxima, for the "scale each row" option (rollout of causal models: row 0 is 1)
    map.rowMax = new Float32Array(lq);
    map.forEach((i, j, v) => { if (v > map.rowMax[i]) map.rowMax[i] = v; });
    map.norm = (i) => (state.rowScale ? map.rowMax[i] : map.vmax);
    cache.set(head, map);
    return map;
  }

  // ---------------------------------------------------------------- colours
  const STOPS = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  function scale(v, vmax) {
    let t = vmax > 0 ? Math.max(0, v) / vmax : 0;
    if (state.sqrt) t = Math.sqrt(t);
    return Math.min(1, t);
  }
  function colour(t) {
    const x = t * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
    const a = STOPS[i], b = STOPS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function css(t) { const c = colour(t); return `rgb(${c[0] | 0},${c[1] | 0},${c[2] | 0})`; }

  // ---------------------------------------------------------------- current selection
  const method = () => DATA.methods[state.method];
  const layer = () => method().layers[Math.min(state.layer, method().layers.length - 1)];
  const headData = () => layer().heads[Math.min(state.head, layer().heads.length - 1)];
  const qLabels = () => DATA.labels[layer().q];
  const kLabels = () => DATA.labels[layer().k];
  const short = (s, n) => (s.length > n ? s.slice(0, n - 1) + "…" : s);

  // ---------------------------------------------------------------- heatmap (ImageData)
  function drawHeatmap() {
    const map = decode(headData());
    const canvas = $("heatmap");
    const width = MAX_MAP_PX;
    const height = Math.max(60, Math.min(MAX_MAP_PX, Math.round(MAX_MAP_PX * map.lq / map.lk)));
    canvas.width = width; canvas.height = height;
    // pool into at most one cell per canvas pixel, keeping the maximum
    const w = Math.min(map.lk, width), h = Math.min(map.lq, height);
    const pooled = new Float32Array(w * h);
    map.forEach((i, j, v) => {
      const p = Math.floor(i * h / map.lq) * w + Math.floor(j * w / map.lk);
      const t = scale(v, map.norm(i));
      if (t > pooled[p]) pooled[p] = t;
    });
    const off = document.createElement("canvas");
    off.width = w; off.height = h;
    const octx = off.getContext("2d");
    const img = octx.createImageData(w, h);
    for (let p = 0; p < pooled.length; p++) {
      const c = colour(pooled[p]);
      img.data[4 * p] = c[0]; img.data[4 * p + 1] = c[1]; img.data[4 * p + 2] = c[2]; img.data[4 * p + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, width, height);
    ctx.drawImage(off, 0, 0, width, height);
    // selected query row
    ctx.strokeStyle = "rgba(220,60,40,0.9)";
    ctx.lineWidth = 1;
    const rowH = height / map.lq;
    ctx.strokeRect(0.5, state.query * rowH + 0.5, width - 1, Math.max(1, rowH - 1));
  }

  // ---------------------------------------------------------------- links (top-k per row)
  function drawLinks() {
    const map = decode(headData());
    const canvas = $("links");
    const rows = Math.max(map.lq, map.lk);
    const height = Math.max(200, Math.min(1400, rows * 14));
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, height);
    const left = 120, right = canvas.width - 120;
    const yq = (i) => (i + 0.5) * height / map.lq, yk = (j) => (j + 0.5) * height / map.lk;
    // bucket lines by opacity so thousands of links cost a dozen strokes
    const buckets = Array.from({ length: 10 }, () => []);
    for (let i = 0; i < map.lq; i++) {
      if (i === state.query) continue;
      for (const [j, v] of map.row(i)) {
        const t = scale(v, map.norm(i));
        if (t > 0.02) buckets[Math.min(9, Math.floor(t * 10))].push(i, j);
      }
    }
    ctx.lineWidth = 1;
    buckets.forEach((pairs, b) => {
      if (!pairs.length) return;
      const crowd = Math.min(1, 300 / map.lq); // fainter when thousands of rows overlap
      ctx.strokeStyle = `rgba(40,64,107,${(0.05 + 0.06 * b) * crowd})`;
      ctx.beginPath();
      for (let p = 0; p < pairs.length; p += 2) { ctx.moveTo(left, yq(pairs[p])); ctx.lineTo(right, yk(pairs[p + 1])); }
      ctx.stroke();
    });
    ctx.lineWidth = 2;
    for (const [j, v] of map.row(state.query)) {
      ctx.strokeStyle = `rgba(220,60,40,${0.15 + 0.85 * scale(v, map.norm(state.query))})`;
      ctx.beginPath(); ctx.moveTo(left, yq(state.query)); ctx.lineTo(right, yk(j)); ctx.stroke();
    }
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    const q = qLabels(), k = kLabels();
    if (height / map.lq >= LINK_ROWS_LABELLED) {
      ctx.textAlign = "right";
      for (let i = 0; i < map.lq; i++) {
        ctx.fillStyle = i === state.query ? "#c0392b" : "#1d2330";
        ctx.fillText(short(q[i], 16), left - 4, yq(i));
      }
    } else {
      ctx.textAlign = "right"; ctx.fillStyle = "#c0392b";
      ctx.fillText(short(q[state.query], 16), left - 4, yq(state.query));
    }
    if (height / map.lk >= LINK_ROWS_LABELLED) {
      ctx.textAlign = "left"; ctx.fillStyle = "#1d2330";
      for (let j = 0; j < map.lk; j++) ctx.fillText(short(k[j], 16), right + 4, yk(j));
    }
    $("links-caption").textContent = `strongest ${LINKS_PER_ROW} links per query of ${map.lq} ` +
      `(selected: #${state.query} "${q[state.query]}")`;
  }

  // ---------------------------------------------------------------- token highlighting
  function drawTokenStrip(canvas, labels, values, vmax, marked) {
    const ctx = canvas.getContext("2d");
    ctx.font = "13px sans-serif";
    const width = canvas.width, lineH = 20, pad = 4;
    const pos = [];
    let x = pad, y = pad;
    for (let i = 0; i < labels.length; i++) {
      const text = short(String(labels[i]), 24);
      const w = ctx.measureText(text).width + 8;
      if (x + w > width - pad && x > pad) { x = pad; y += lineH + 2; }
      pos.push([x, y, w, text]);
      x += w + 2;
    }
    canvas.height = y + lineH + pad;
    ctx.font = "13px sans-serif";
    ctx.textBaseline = "middle";
    for (let i = 0; i < labels.length; i++) {
      const [px, py, w, text] = pos[i];
      const t = scale(values[i] || 0, vmax);
      ctx.fillStyle = css(t);
      ctx.fillRect(px, py, w, lineH);
      if (i === marked) { ctx.strokeStyle = "#c0392b"; ctx.lineWidth = 2; ctx.strokeRect(px + 1, py + 1, w - 2, lineH - 2); }
      ctx.fillStyle = t > 0.55 ? "#fff" : "#1d2330";
      ctx.fillText(text, px + 4, py + lineH / 2);
    }
    canvas._positions = pos;
  }

  function drawTokens() {
    const map = decode(headData());
    const row = map.full(state.query);
    const sameSide = layer().q === layer().k;
    drawTokenStrip($("tokens"), kLabels(), row, map.norm(state.query), sameSide ? state.query : -1);
    $("tokens-caption").textContent = `keys coloured by the weights of query #${state.query} ` +
      `"${qLabels()[state.query]}" (${method().name}, ${layer().name}, ${headData().name})`;
  }

  // ---------------------------------------------------------------- model view (thumbnails)
  function drawGrid() {
    const layers = method().layers;
    const heads = Math.max(...layers.map((l) => l.heads.length));
    const cell = 72, gap = 6;
    const canvas = $("grid");
    const layerName = (l) => l.name + (l.kind === "cross" ? " (cross)" : "");
    const measure = canvas.getContext("2d");
    measure.font = "11px sans-serif";
    // The label column fits the longest layer name: names are never cut.
    const labelW = 12 + Math.max(...layers.map((l) => measure.measureText(layerName(l)).width));
    canvas.width = labelW + heads * (cell + gap);
    canvas.height = 20 + layers.length * (cell + gap);
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "11px sans-serif"; ctx.textBaseline = "middle"; ctx.fillStyle = "#1d2330";
    for (let h = 0; h < heads; h++) ctx.fillText(layers[0].heads[h] ? layers[0].heads[h].name : "", labelW + h * (cell + gap), 10);
    layers.forEach((l, li) => {
      const y = 20 + li * (cell + gap);
      ctx.fillStyle = "#1d2330";
      ctx.fillText(layerName(l), 2, y + cell / 2);
      l.heads.forEach((hd, hi) => {
        const thumb = bytes(hd.thumb);
        const off = document.createElement("canvas");
        off.width = hd.tw; off.height = hd.th;
        const octx = off.getContext("2d");
        const img = octx.createImageData(hd.tw, hd.th);
        for (let p = 0; p < thumb.length; p++) {
          const c = colour(scale(thumb[p], 255));
          img.data[4 * p] = c[0]; img.data[4 * p + 1] = c[1]; img.data[4 * p + 2] = c[2]; img.data[4 * p + 3] = 255;
        }
        octx.putImageData(img, 0, 0);
        ctx.imageSmoothingEnabled = false;
        const x = labelW + hi * (cell + gap);
        ctx.drawImage(off, x, y, cell, cell);
        if (li === state.layer && hi === state.head) { ctx.strokeStyle = "#c0392b"; ctx.lineWidth = 2; ctx.strokeRect(x - 1, y - 1, cell + 2, cell + 2); }
      });
    });
    canvas._cell = { cell, gap, labelW };
  }

  // ---------------------------------------------------------------- attributions
  function drawAttributions() {
    const host = $("attributions");
    host.textContent = "";
    if (!DATA.attributions.length) return;
    const title = document.createElement("h2");
    title.textContent = "what the prediction is attributed to";
    host.appendChild(title);
    for (const a of DATA.attributions) {
      const h = document.createElement("h2");
      h.textContent = a.method;
      host.appendChild(h);
      if (a.note) { const p = document.createElement("p"); p.className = "note"; p.textContent = a.note; host.appendChild(p); }
      const canvas = document.createElement("canvas");
      canvas.className = "attribution";
      // min-max scaling (negative values blank): near-uniform maps still show their ranking
      const low = Math.max(0, Math.min(...a.values)), high = Math.max(...a.values);
      const shifted = a.values.map((v) => Math.max(0, v - low));
      const span = Math.max(1e-12, high - low);
      const labels = DATA.labels[a.labels] || a.values.map((_, i) => String(i));
      if (a.image && DATA.image) drawOverlay(canvas, shifted, span);
      else { canvas.width = 960; drawTokenStrip(canvas, labels, shifted, span, -1); }
      host.appendChild(canvas);
    }
  }

  function drawOverlay(canvas, values, vmax) {
    const im = DATA.image, px = bytes(im.pixels);
    const zoom = Math.max(1, Math.floor(256 / Math.max(im.width, im.height)));
    canvas.width = im.width * zoom * 2 + 12; canvas.height = im.height * zoom;
    const ctx = canvas.getContext("2d");
    const off = document.createElement("canvas");
    off.width = im.width; off.height = im.height;
    const octx = off.getContext("2d");
    const img = octx.createImageData(im.width, im.height);
    for (let p = 0; p < im.width * im.height; p++) {
      for (let c = 0; c < 3; c++) img.data[4 * p + c] = px[p * im.channels + (im.channels === 3 ? c : 0)];
      img.data[4 * p + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, 0, 0, im.width * zoom, im.height * zoom);
    ctx.drawImage(off, im.width * zoom + 12, 0, im.width * zoom, im.height * zoom);
    const [gh, gw] = im.grid, cw = im.width * zoom / gw, ch = im.height * zoom / gh;
    for (let r = 0; r < gh; r++) for (let c = 0; c < gw; c++) {
      const t = Math.max(0, values[r * gw + c]) / vmax;
      ctx.fillStyle = `rgba(230,60,30,${0.75 * t})`;
      ctx.fillRect(im.width * zoom + 12 + c * cw, r * ch, cw, ch);
    }
  }

  // ---------------------------------------------------------------- controls
  function fill(select, names, chosen) {
    select.textContent = "";
    names.forEach((n, i) => { const o = document.createElement("option"); o.value = String(i); o.textContent = n; select.appendChild(o); });
    select.value = String(chosen);
  }
  function syncControls() {
    const layers = method().layers;
    state.layer = Math.min(state.layer, layers.length - 1);
    state.head = Math.min(state.head, layer().heads.length - 1);
    // The selected query row belongs to the layer's query tokens (input or target), so a
    // decoder or cross layer shows the target row and an encoder layer the input row.
    const rows = layer().heads[0].lq;
    const chosen = state.queries[layer().q];
    state.query = Math.max(0, Math.min(rows - 1, chosen === undefined ? 0 : chosen));
    fill($("method"), DATA.methods.map((m) => m.name), state.method);
    fill($("layer"), layers.map((l) => l.name + (l.kind === "cross" ? " (cross)" : "")), state.layer);
    fill($("head"), layer().heads.map((h) => h.name), state.head);
  }

  function render() {
    const t0 = performance.now();
    syncControls();
    $("head-view").hidden = state.view !== "head";
    $("model-view").hidden = state.view !== "model";
    $("view-head").classList.toggle("active", state.view === "head");
    $("view-model").classList.toggle("active", state.view === "model");
    if (state.view === "head") { drawHeatmap(); drawLinks(); drawTokens(); } else drawGrid();
    api.lastRenderMs = performance.now() - t0;
    api.renders += 1;
  }

  const tooltip = $("tooltip");
  function showTip(ev, text) {
    tooltip.textContent = text; tooltip.hidden = false;
    tooltip.style.left = `${ev.clientX + 14}px`; tooltip.style.top = `${ev.clientY + 14}px`;
  }
  function cellAt(ev) {
    const canvas = $("heatmap"), rect = canvas.getBoundingClientRect(), map = decode(headData());
    const i = Math.floor((ev.clientY - rect.top) / rect.height * map.lq);
    const j = Math.floor((ev.clientX - rect.left) / rect.width * map.lk);
    return [Math.max(0, Math.min(map.lq - 1, i)), Math.max(0, Math.min(map.lk - 1, j)), map];
  }

  function bind() {
    $("method").addEventListener("change", (e) => { state.method = +e.target.value; render(); });
    $("layer").addEventListener("change", (e) => { state.layer = +e.target.value; render(); });
    $("head").addEventListener("change", (e) => { state.head = +e.target.value; render(); });
    $("sqrt").addEventListener("change", (e) => { state.sqrt = e.target.checked; render(); drawAttributions(); });
    $("rowscale").addEventListener("change", (e) => { state.rowScale = e.target.checked; render(); });
    $("view-head").addEventListener("click", () => { state.view = "head"; render(); });
    $("view-model").addEventListener("click", () => { state.view = "model"; render(); });
    const heat = $("heatmap");
    heat.addEventListener("mousemove", (ev) => {
      const [i, j, map] = cellAt(ev);
      showTip(ev, `query #${i} "${qLabels()[i]}" → key #${j} "${kLabels()[j]}"\nweight ${map.get(i, j).toPrecision(4)}`);
    });
    heat.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    heat.addEventListener("click", (ev) => { state.queries[layer().q] = cellAt(ev)[0]; render(); });
    const links = $("links");
    links.addEventListener("click", (ev) => {
      const rect = links.getBoundingClientRect(), map = decode(headData());
      state.queries[layer().q] = Math.max(0, Math.min(map.lq - 1, Math.floor((ev.clientY - rect.top) / rect.height * map.lq)));
      render();
    });
    // Labels drawn on canvases are shortened to fit; hovering shows the whole label.
    links.addEventListener("mousemove", (ev) => {
      const rect = links.getBoundingClientRect(), map = decode(headData());
      const x = (ev.clientX - rect.left) / rect.width, y = (ev.clientY - rect.top) / rect.height;
      if (x < 0.5) { const i = Math.min(map.lq - 1, Math.floor(y * map.lq)); showTip(ev, `query #${i} "${qLabels()[i]}"`); }
      else { const j = Math.min(map.lk - 1, Math.floor(y * map.lk)); showTip(ev, `key #${j} "${kLabels()[j]}"`); }
    });
    links.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    const tokens = $("tokens");
    tokens.addEventListener("mousemove", (ev) => {
      const rect = tokens.getBoundingClientRect(), x = ev.clientX - rect.left, y = ev.clientY - rect.top;
      const pos = tokens._positions || [];
      const row = decode(headData()).full(state.query);
      for (let j = 0; j < pos.length; j++) {
        const [px, py, w] = pos[j];
        if (x >= px && x <= px + w && y >= py && y <= py + 20) { showTip(ev, `key #${j} "${kLabels()[j]}": ${(row[j] || 0).toPrecision(4)}`); return; }
      }
      tooltip.hidden = true;
    });
    tokens.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    const grid = $("grid");
    function gridCell(ev) {
      const rect = grid.getBoundingClientRect(), g = grid._cell;
      const x = ev.clientX - rect.left - g.labelW, y = ev.clientY - rect.top - 20;
      const hi = Math.floor(x / (g.cell + g.gap)), li = Math.floor(y / (g.cell + g.gap));
      const layers = method().layers;
      return li >= 0 && li < layers.length && hi >= 0 && hi < layers[li].heads.length ? [li, hi] : null;
    }
    grid.addEventListener("mousemove", (ev) => {
      const c = gridCell(ev);
      if (!c) { tooltip.hidden = true; return; }
      const l = method().layers[c[0]];
      showTip(ev, `${l.name}${l.kind === "cross" ? " (cross)" : ""}, ${l.heads[c[1]].name}\nmax weight ${l.heads[c[1]].vmax.toPrecision(4)}`);
    });
    grid.addEventListener("mouseleave", () => { tooltip.hidden = true; });
    grid.addEventListener("click", (ev) => {
      const c = gridCell(ev);
      if (c) { state.layer = c[0]; state.head = c[1]; state.view = "head"; tooltip.hidden = true; render(); }
    });
  }

  const api = { state, render, renders: 0, lastRenderMs: 0, ready: false };
  window.attnkit = api;
  $("notes").textContent = DATA.notes || "";
  // Initial query row per label set ("input", "target"): the explained token where it is one.
  for (const [name, row] of Object.entries(DATA.queries || {})) state.queries[name] = row;
  $("input-text").textContent = DATA.text || "";
  $("input-panel").hidden = !DATA.text;
  bind();
  render();
  drawAttributions();
  api.ready = true;
})();
