"use strict";
// attnlab explorer: every number on this page is computed from the scores shipped in the data block, with the
// same definitions as attnlab (softmax over allowed keys, blocked cells 0, fully masked rows 0, masks aligned
// bottom-right). User text is only ever inserted with textContent.
(function () {
  const DATA = JSON.parse(document.getElementById("attnlab-data").textContent);
  const Lq = DATA.Lq, Lk = DATA.Lk, NL = DATA.layers, NH = DATA.heads, OFFSET = Lk - Lq;
  const ROW = 20;                 // token row height in px (CSS .tok)
  const LINE_MIN = 0.002;         // lines for smaller weights are not drawn (the table has every number)
  const TABLE_MAX_CELLS = 4096;   // the all-numbers table is built up to this many cells
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
    [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  const BLOCKED = [212, 212, 212], CROSS = "#6b6b6b", ACCENT = "#d1495b";
  const LABEL_FONT = "12px ui-monospace, Menlo, Consolas, monospace";
  const START = DATA.start || [0, 0];                                         // where the page opens
  const state = { layer: START[0], head: START[1], mask: "none", window: 2, pad: Lk, row: 0 };
  const $ = (id) => document.getElementById(id);

  // ---- data ---------------------------------------------------------------------------------------------
  function bytesOf(b64) {
    const bin = atob(b64), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function float32s(b64) {                 // little-endian float32, whatever this machine's byte order
    const bytes = bytesOf(b64), view = new DataView(bytes.buffer), out = new Float32Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
    return out;
  }
  const decoded = new Map();
  function once(key, make) {
    if (!decoded.has(key)) decoded.set(key, make());
    return decoded.get(key);
  }
  const scoresOf = (l, h) => once(`scores ${l} ${h}`, () => float32s(DATA.scores[l][h]));      // (Lq*Lk)
  const vectorsOf = (name, l, h) => (DATA[name] ? once(`${name} ${l} ${h}`, () => float32s(DATA[name][l][h])) : null);
  function baseMaskOf(l, h) {
    const bm = DATA.base_mask;
    if (!bm) return null;
    if (bm.shared) return once("base", () => bytesOf(bm.shared));
    return once(`base ${l} ${h}`, () => bytesOf(bm.per_head[l][h]));
  }

  // ---- masks and softmax (attnlab's definitions) ---------------------------------------------------------
  function pageMask(i, j) {                // query i sits at key position i + Lk - Lq (bottom-right)
    const p = i + OFFSET;
    switch (state.mask) {
      case "causal": return j <= p;                                                 // masks.causal()
      case "window": return j >= p - state.window && j <= p + state.window;         // masks.sliding_window(w, w)
      case "padding": return j < state.pad;                                         // masks.padding([n])
      default: return true;
    }
  }
  function allowedOf(l, h) {
    const base = baseMaskOf(l, h), out = new Uint8Array(Lq * Lk);
    for (let i = 0; i < Lq; i++) {
      for (let j = 0; j < Lk; j++) out[i * Lk + j] = (!base || base[i * Lk + j]) && pageMask(i, j) ? 1 : 0;
    }
    return out;
  }
  function softmaxRows(scores, allowed) {  // exp(s - row max) / sum over allowed keys; a fully masked row is 0
    const w = new Float64Array(Lq * Lk), max = new Float64Array(Lq), sum = new Float64Array(Lq);
    for (let i = 0; i < Lq; i++) {
      const o = i * Lk;
      let m = -Infinity;
      for (let j = 0; j < Lk; j++) if (allowed[o + j] && scores[o + j] > m) m = scores[o + j];
      let s = 0;
      if (m > -Infinity) {
        for (let j = 0; j < Lk; j++) {
          if (allowed[o + j]) { w[o + j] = Math.exp(scores[o + j] - m); s += w[o + j]; }
        }
        for (let j = 0; j < Lk; j++) w[o + j] /= s;
      }
      max[i] = m; sum[i] = s;
    }
    return { w, max, sum };
  }
  function computeWeights(scores, allowed) {   // the softmax plus what drawing needs: the mask, the largest weight
    const r = softmaxRows(scores, allowed);
    let vmax = 0;
    for (let i = 0; i < r.w.length; i++) if (r.w[i] > vmax) vmax = r.w[i];
    return Object.assign(r, { allowed, vmax: vmax || 1 });
  }
  let maskVersion = 0, current = { key: "", r: null };
  function weightsOf(l, h) {               // {allowed, w, max, sum, vmax} of the shown head under the current mask
    const key = `${l} ${h} ${maskVersion}`;
    if (current.key !== key) current = { key, r: computeWeights(scoresOf(l, h), allowedOf(l, h)) };
    return current.r;
  }

  // ---- small helpers -------------------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  }
  const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;
  const fmt = (x, d = 4) => (x === -Infinity ? "\u2212\u221e" : Number.isFinite(x) ? x.toFixed(d) : "");
  const tokenText = (t) => JSON.stringify(t);
  const isAll = () => state.head === "all";

  function paintMatrix(canvas, cellW, cellH, rows, cols, valueAt, allowedAt, vmax, withNumbers, ox = 0, oy = 0) {
    canvas.width = ox + cols * cellW; canvas.height = oy + rows * cellH;
    const ctx = canvas.getContext("2d"), off = document.createElement("canvas");
    off.width = cols; off.height = rows;
    const octx = off.getContext("2d"), img = octx.createImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const col = allowedAt(r, c) ? viridis(valueAt(r, c) / vmax) : BLOCKED, p = 4 * (r * cols + c);
        img.data[p] = col[0]; img.data[p + 1] = col[1]; img.data[p + 2] = col[2]; img.data[p + 3] = 255;
      }
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(off, ox, oy, cols * cellW, rows * cellH);
    if (Math.min(cellW, cellH) >= 8) {     // a cross in every blocked cell, as in the figures
      ctx.strokeStyle = CROSS; ctx.lineWidth = 1; ctx.beginPath();
      const d = 0.22;
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          if (allowedAt(r, c)) continue;
          const x = ox + (c + 0.5) * cellW, y = oy + (r + 0.5) * cellH, dx = d * cellW, dy = d * cellH;
          ctx.moveTo(x - dx, y - dy); ctx.lineTo(x + dx, y + dy);
          ctx.moveTo(x - dx, y + dy); ctx.lineTo(x + dx, y - dy);
        }
      }
      ctx.stroke();
    }
    if (withNumbers) {
      ctx.font = `${Math.min(12, Math.floor(cellW / 3.2))}px system-ui, sans-serif`;
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          if (!allowedAt(r, c)) continue;
          const v = valueAt(r, c);
          ctx.fillStyle = v / vmax > 0.6 ? "#000" : "#fff";
          ctx.fillText(v.toFixed(2), ox + (c + 0.5) * cellW, oy + (r + 0.5) * cellH);
        }
      }
    }
    return ctx;
  }

  // ---- header and controls -------------------------------------------------------------------------------
  function initHeader() {
    document.title = `${DATA.title} \u00b7 attnlab explorer`;
    $("title").textContent = DATA.title;
    const scale = DATA.scale === null ? "scale not given" : `scale ${DATA.scale.toPrecision(6)}`;
    $("summary").textContent = `${NL} layer${NL > 1 ? "s" : ""} \u00d7 ${NH} head${NH > 1 ? "s" : ""} \u00b7 ` +
      `${Lq} queries \u00d7 ${Lk} keys \u00b7 ${scale}` +
      (DATA.base_mask ? " \u00b7 the model's own mask applied" : "");
    for (const [k, v] of DATA.meta) {
      const row = el("div");
      row.append(el("dt", {}, k), el("dd", {}, v));
      $("meta").append(row);
    }
  }
  function initControls() {
    DATA.layer_names.forEach((name, l) => $("layer").append(el("option", { value: l }, name)));
    $("head").append(el("option", { value: "all" }, "all heads (overview)"));
    DATA.head_names.forEach((name, h) => $("head").append(el("option", { value: h }, name)));
    $("head").value = String(state.head); $("layer").value = String(state.layer);
    $("padlen").value = Lk; $("padlen").max = Lk; $("window").max = Math.max(Lq, Lk);
    $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); render(); });
    $("head").addEventListener("change", () => {
      state.head = $("head").value === "all" ? "all" : Number($("head").value); render();
    });
    for (const radio of document.querySelectorAll("input[name=mask]")) {
      radio.addEventListener("change", () => { state.mask = radio.value; maskChanged(); });
    }
    const number = (input, key, lo, hi) => input.addEventListener("input", () => {
      const v = Math.round(Number(input.value));
      if (!Number.isFinite(v)) return;
      state[key] = Math.min(hi, Math.max(lo, v));
      if ((key === "window" && state.mask === "window") || (key === "pad" && state.mask === "padding")) maskChanged();
    });
    number($("window"), "window", 0, Math.max(Lq, Lk));
    number($("padlen"), "pad", 0, Lk);
    document.addEventListener("keydown", (ev) => {
      if (isAll() || ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        selectRow(Math.min(Lq - 1, Math.max(0, state.row + (ev.key === "ArrowDown" ? 1 : -1))), true);
      }
    });
  }
  function maskCode() {
    const base = DATA.base_mask ? " & the model's own mask" : "";
    switch (state.mask) {
      case "causal": return `mask = attnlab.masks.causal()${base}`;
      case "window": return `mask = attnlab.masks.sliding_window(${state.window}, ${state.window})${base}`;
      case "padding": return `mask = attnlab.masks.padding([${state.pad}])${base}`;
      default: return DATA.base_mask ? "mask = the model's own mask" : "mask = None";
    }
  }
  function maskChanged() { maskVersion++; render(); }

  // ---- token view ----------------------------------------------------------------------------------------
  let qButtons = [], kSpans = [];
  function initTokens() {
    const height = Math.max(Lq, Lk) * ROW;
    $("lines").height = height; $("lines").width = 120;
    $("lines").style.height = `${height}px`;
    qButtons = DATA.q_tokens.map((t, i) => {
      const b = el("button", { class: "tok", type: "button", "data-testid": "q-token", "data-index": i,
        title: `query ${i}` }, t);
      b.addEventListener("click", () => selectRow(i, false));
      return b;
    });
    kSpans = DATA.k_tokens.map((t, j) => {
      const s = el("span", { class: "tok", "data-testid": "k-token", "data-index": j }, t);
      s.addEventListener("mousemove", (ev) => showTip(ev, state.row, j));
      s.addEventListener("mouseleave", hideTip);
      return s;
    });
    $("q-col").append(...qButtons);
    $("k-col").append(...kSpans);
  }
  function renderTokens(r) {
    const i = state.row, o = i * Lk;
    let rowMax = 0;
    for (let j = 0; j < Lk; j++) rowMax = Math.max(rowMax, r.w[o + j]);
    qButtons.forEach((b, q) => {
      b.classList.toggle("selected", q === i);
      b.setAttribute("aria-pressed", q === i ? "true" : "false");
    });
    kSpans.forEach((s, j) => {
      const w = r.w[o + j], a = rowMax > 0 ? w / rowMax : 0;
      s.classList.toggle("blocked", !r.allowed[o + j]);
      s.dataset.weight = String(w);
      s.style.background = `rgba(209, 73, 91, ${(0.85 * a).toFixed(3)})`;
      s.style.color = a > 0.55 ? "#fff" : "";
    });
    $("sel-token").textContent = DATA.q_tokens[i];
    const canvas = $("lines"), ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const y0 = i * ROW + ROW / 2;
    for (let j = 0; j < Lk; j++) {
      const w = r.w[o + j];
      if (w < LINE_MIN) continue;
      ctx.strokeStyle = `rgba(209, 73, 91, ${(0.25 + 0.75 * w / rowMax).toFixed(3)})`;
      ctx.lineWidth = Math.max(0.75, 14 * w);
      ctx.beginPath(); ctx.moveTo(0, y0);
      ctx.bezierCurveTo(60, y0, 60, j * ROW + ROW / 2, 120, j * ROW + ROW / 2);
      ctx.stroke();
    }
  }

  // ---- matrix, row strip, tooltip ------------------------------------------------------------------------
  function cellSize() { return Math.max(1, Math.min(40, Math.floor(560 / Math.max(Lq, Lk)))); }
  function stripCell() { return Math.max(1, Math.min(48, Math.floor(900 / Lk))); }   // the selected-row strip
  const clip = (t) => (t.length > 12 ? `${t.slice(0, 11)}\u2026` : t);
  const margin = (() => {                  // room for token labels beside the matrix when its cells are big enough
    if (cellSize() < 11) return { x: 0, y: 0 };
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = LABEL_FONT;
    const widest = (tokens) => Math.ceil(Math.max(...tokens.map((t) => ctx.measureText(clip(t)).width))) + 8;
    return { x: widest(DATA.q_tokens), y: widest(DATA.k_tokens) };
  })();
  function renderMatrix(r) {
    const cs = cellSize(), canvas = $("matrix"), ox = margin.x, oy = margin.y;
    const ctx = paintMatrix(canvas, cs, cs, Lq, Lk, (a, b) => r.w[a * Lk + b], (a, b) => r.allowed[a * Lk + b],
      r.vmax, cs >= 34, ox, oy);
    Object.assign(canvas.dataset, { cell: cs, left: ox, top: oy, row: state.row });   // geometry, for tests
    if (ox) {
      ctx.font = LABEL_FONT; ctx.fillStyle = "#1d2330"; ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      DATA.q_tokens.forEach((t, i) => ctx.fillText(clip(t), ox - 4, oy + (i + 0.5) * cs));
      ctx.save(); ctx.rotate(-Math.PI / 2); ctx.textAlign = "left";
      DATA.k_tokens.forEach((t, j) => ctx.fillText(clip(t), -oy + 4, ox + (j + 0.5) * cs));
      ctx.restore();
    }
    ctx.strokeStyle = ACCENT; ctx.lineWidth = 2;
    const y = oy + state.row * cs;
    ctx.strokeRect(ox + 1, y + (cs > 4 ? 1 : 0), Lk * cs - 2, Math.max(cs - (cs > 4 ? 2 : 0), 1));
    $("matrix-title").textContent = `${DATA.layer_names[state.layer]} \u00b7 ${DATA.head_names[state.head]}: weights`;
    $("vmax").textContent = r.vmax.toFixed(3);
    const bar = $("colorbar"), bctx = bar.getContext("2d");
    bar.width = 180; bar.height = 10;
    for (let x = 0; x < 180; x++) { bctx.fillStyle = rgb(viridis(x / 179)); bctx.fillRect(x, 0, 1, 10); }
    const cw = stripCell(), o = state.row * Lk;
    paintMatrix($("row"), cw, Math.max(cw, 14), 1, Lk, (a, b) => r.w[o + b], (a, b) => r.allowed[o + b], r.vmax,
      cw >= 34);
  }
  function showTip(ev, i, j) {
    if (isAll()) return;
    const r = weightsOf(state.layer, state.head), k = i * Lk + j, s = scoresOf(state.layer, state.head)[k];
    const lines = [`query ${i} ${tokenText(DATA.q_tokens[i])} \u2192 key ${j} ${tokenText(DATA.k_tokens[j])}`,
      `score   ${s.toPrecision(7)}`,
      r.allowed[k] ? `weight  ${r.w[k].toPrecision(7)}` : "blocked by the mask: weight 0"];
    const tip = $("tooltip");
    tip.textContent = lines.join("\n");
    tip.dataset.q = String(i); tip.dataset.k = String(j); tip.dataset.weight = String(r.w[k]);
    tip.hidden = false;
    tip.style.left = `${Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8)}px`;
    tip.style.top = `${Math.min(ev.clientY + 14, window.innerHeight - tip.offsetHeight - 8)}px`;
  }
  function hideTip() { $("tooltip").hidden = true; }
  function cellAt(canvas, ev, cellW, cellH, ox = 0, oy = 0) {
    const box = canvas.getBoundingClientRect();
    const c = Math.floor(((ev.clientX - box.left) * canvas.width / box.width - ox) / cellW);
    const r = Math.floor(((ev.clientY - box.top) * canvas.height / box.height - oy) / cellH);
    return [r, c];
  }
  function initMatrix() {
    const m = $("matrix");
    m.addEventListener("mousemove", (ev) => {
      const [i, j] = cellAt(m, ev, cellSize(), cellSize(), margin.x, margin.y);
      if (i >= 0 && i < Lq && j >= 0 && j < Lk) showTip(ev, i, j); else hideTip();
    });
    m.addEventListener("mouseleave", hideTip);
    m.addEventListener("click", (ev) => {
      const [i, j] = cellAt(m, ev, cellSize(), cellSize(), margin.x, margin.y);
      if (i >= 0 && i < Lq && j >= 0 && j < Lk) selectRow(i, true);
    });
    const row = $("row");
    row.addEventListener("mousemove", (ev) => {
      const [, j] = cellAt(row, ev, stripCell(), row.height);
      if (j >= 0 && j < Lk) showTip(ev, state.row, j); else hideTip();
    });
    row.addEventListener("mouseleave", hideTip);
  }

  // ---- the step panel ------------------------------------------------------------------------------------
  function renderSteps(r) {
    const l = state.layer, h = state.head, i = state.row, o = i * Lk;
    const scores = scoresOf(l, h), q = vectorsOf("queries", l, h), k = vectorsOf("keys", l, h);
    const v = vectorsOf("values", l, h);
    const D = DATA.D, Dv = DATA.Dv, scale = DATA.scale;
    $("step-title").textContent = `query ${i} ${tokenText(DATA.q_tokens[i])}`;
    const top = Array.from(r.w.subarray(o, o + Lk)).map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 3)
      .filter((x) => x[0] > 0).map((x) => x[1]);
    const body = $("step-body"), rows = [];
    for (let j = 0; j < Lk; j++) {
      const ok = r.allowed[o + j] === 1, s = scores[o + j];
      let raw = NaN;
      if (q && k) { raw = 0; for (let d = 0; d < D; d++) raw += q[i * D + d] * k[j * D + d]; }
      const e = ok ? Math.exp(s - r.max[i]) : 0, w = r.w[o + j];
      const tr = el("tr", { "data-testid": "step-row", "data-k": j, "data-raw": raw, "data-scaled": raw * scale,
        "data-score": s, "data-masked": ok ? s : -Infinity, "data-exp": e, "data-weight": w });
      if (!ok) tr.classList.add("blocked");
      if (top.includes(j)) tr.classList.add("top");
      tr.append(el("td", {}, j), el("td", { class: "text" }, DATA.k_tokens[j]), el("td", {}, q ? fmt(raw) : "\u2013"),
        el("td", {}, q && scale !== null ? fmt(raw * scale) : "\u2013"), el("td", {}, fmt(s)),
        el("td", {}, ok ? fmt(s) : "\u2212\u221e"), el("td", {}, fmt(e)), el("td", {}, fmt(w)));
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    let total = 0;
    for (let j = 0; j < Lk; j++) total += r.w[o + j];
    $("exp-sum").textContent = fmt(r.sum[i]);
    $("row-sum").textContent = fmt(total);
    $("row-sum").dataset.value = String(total);
    const allowedCount = r.allowed.subarray(o, o + Lk).reduce((a, b) => a + b, 0);
    const steps = [
      q ? `raw scores: q\u00b7k for each key (D = ${D})` : "raw scores: q and k are not in this file; the scores are",
      scale === null ? "scaled scores as given"
        : `scaled: \u00d7 scale = ${scale.toPrecision(6)}${D ? ` = 1/\u221a${D}` : ""} \u2192 the score column`,
      `masked: ${Lk - allowedCount} of ${Lk} keys blocked \u2192 \u2212\u221e (${maskCode()})`,
      allowedCount
        ? `softmax: exp(score \u2212 max) / \u03a3, with max = ${fmt(r.max[i])} and \u03a3 = ${fmt(r.sum[i])}`
        : "softmax: every key is blocked, so every weight is 0 (not NaN) and the output is 0",
      v ? `weighted sum: output = \u03a3 weight\u2c7c v\u2c7c (Dv = ${Dv})`
        : "weighted sum: the values are not in this file",
    ];
    $("step-formulas").replaceChildren(...steps.map((t) => el("li", {}, t)));
    const out = $("output");
    if (!v) { out.replaceChildren(el("span", {}, "no values shipped")); return; }
    const spans = [];
    for (let d = 0; d < Dv; d++) {
      let acc = 0;
      for (let j = 0; j < Lk; j++) if (r.w[o + j] !== 0) acc += r.w[o + j] * v[j * Dv + d];
      spans.push(el("span", { "data-testid": "output-value", "data-d": d, "data-value": acc }, fmt(acc)));
    }
    out.replaceChildren(...spans);
  }

  // ---- all numbers ----------------------------------------------------------------------------------------
  function renderNumbers(r) {
    const body = $("numbers-body");
    if (Lq * Lk > TABLE_MAX_CELLS) {
      body.replaceChildren(el("p", { class: "hint" },
        `${Lq * Lk} cells: the table is built up to ${TABLE_MAX_CELLS}; ` +
        "the step panel has every number of the selected row"));
      return;
    }
    const table = el("table", { "data-testid": "weights-table" }), head = el("tr");
    head.append(el("th", {}, ""), ...DATA.k_tokens.map((t) => el("th", {}, t)));
    table.append(head);
    for (let i = 0; i < Lq; i++) {
      const tr = el("tr", { "data-q": i });
      tr.append(el("th", {}, DATA.q_tokens[i]));
      for (let j = 0; j < Lk; j++) {
        const ok = r.allowed[i * Lk + j] === 1, w = r.w[i * Lk + j];
        const td = el("td", { "data-testid": "weight-cell", "data-q": i, "data-k": j, "data-w": w,
          "data-allowed": ok ? 1 : 0 },
          ok ? w.toFixed(4) : "\u00d7");
        if (!ok) td.classList.add("blocked");
        tr.append(td);
      }
      table.append(tr);
    }
    body.replaceChildren(table);
  }

  // ---- overview of every head ------------------------------------------------------------------------------
  function drawThumb(canvas, r, size) {    // max-pooled to size x size, so a one-cell diagonal stays visible
    const best = new Float64Array(size * size).fill(-1);
    for (let i = 0; i < Lq; i++) {
      const ti = Math.floor(i * size / Lq) * size;
      for (let j = 0; j < Lk; j++) {
        const t = ti + Math.floor(j * size / Lk), k = i * Lk + j;
        if (r.allowed[k] && r.w[k] > best[t]) best[t] = r.w[k];
      }
    }
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(size, size);
    for (let t = 0; t < size * size; t++) {
      const col = best[t] < 0 ? BLOCKED : viridis(best[t] / r.vmax);
      img.data.set([col[0], col[1], col[2], 255], 4 * t);
    }
    ctx.putImageData(img, 0, 0);
  }
  let overviewRun = 0;
  function renderOverview() {
    const run = ++overviewRun, thumbs = $("thumbs"), size = Math.min(84, Math.max(Lq, Lk));
    thumbs.style.gridTemplateColumns = `max-content repeat(${NH}, 92px)`;
    document.body.dataset.overview = "drawing";
    const items = [];
    for (let l = 0; l < NL; l++) {
      thumbs.append(el("div", { class: "layer-label" }, DATA.layer_names[l]));
      for (let h = 0; h < NH; h++) {
        const b = el("button", { class: "thumb", type: "button", "data-testid": "head-thumb", "data-layer": l,
          "data-head": h,
          title: `${DATA.layer_names[l]} \u00b7 ${DATA.head_names[h]}` });
        const c = el("canvas", { width: size, height: size });
        b.append(c, el("span", {}, DATA.head_names[h]));
        b.addEventListener("click", () => {
          state.layer = l; state.head = h; $("layer").value = String(l); $("head").value = String(h); render();
        });
        thumbs.append(b);
        items.push([l, h, c]);
      }
    }
    let next = 0;
    (function step() {                     // a few heads per frame: the page stays responsive at 512 tokens
      if (run !== overviewRun) return;
      const end = Math.min(items.length, next + 4);
      for (; next < end; next++) {
        const [l, h, c] = items[next];   // computed, drawn and dropped: nothing kept per head
        drawThumb(c, computeWeights(float32s(DATA.scores[l][h]), allowedOf(l, h)), size);
      }
      if (next < items.length) setTimeout(step, 0); else document.body.dataset.overview = "done";
    })();
  }

  // ---- state changes ---------------------------------------------------------------------------------------
  function selectRow(i, scroll) {
    state.row = i;
    render();
    if (scroll) qButtons[i].scrollIntoView({ block: "nearest" });
  }
  function render() {
    $("mask-code").textContent = maskCode();
    $("overview").hidden = !isAll();
    $("single").hidden = isAll();
    if (isAll()) { $("thumbs").replaceChildren(); renderOverview(); return; }
    overviewRun++;
    const r = weightsOf(state.layer, state.head);
    renderTokens(r);
    renderMatrix(r);
    renderSteps(r);
    renderNumbers(r);
    document.body.dataset.layer = String(state.layer);
    document.body.dataset.head = String(state.head);
    document.body.dataset.row = String(state.row);
    document.body.dataset.mask = state.mask;
  }

  initHeader();
  initControls();
  initTokens();
  initMatrix();
  render();
  document.body.dataset.ready = "true";
})();
