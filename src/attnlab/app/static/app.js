// attnlab live explorer: draws what the server computed (the page computes nothing the library did not).
// Every user-supplied string is inserted with textContent; requests go to this page's own origin only.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { view: null, speech: null, head: 0, row: 0, key: 0, model: null, models: {} };
  const HEAD_COLOURS = ["#e53935", "#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#3949ab",
    "#c0ca33", "#d81b60", "#5e35b1", "#00acc1", "#7cb342", "#f4511e", "#546e7a", "#fdd835"];

  function decode(d) {                       // {"shape", "b64"} float32 little-endian -> {shape, data}
    const bin = atob(d.b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const dv = new DataView(bytes.buffer), n = bytes.length / 4, data = new Float32Array(n);
    for (let i = 0; i < n; i++) data[i] = dv.getFloat32(4 * i, true);
    return { shape: d.shape, data: data };
  }
  function at(a, ...idx) {                   // a[i, j, ...] of a decoded array
    let off = 0;
    for (let d = 0; d < idx.length; d++) off = off * a.shape[d] + idx[d];
    for (let d = idx.length; d < a.shape.length; d++) off *= a.shape[d];
    return a.data[off];
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    // style through the CSSOM: the page's CSP (style-src 'self') refuses style attributes
    for (const [k, v] of Object.entries(attrs || {})) { if (k === "style") e.style.cssText = v; else e.setAttribute(k, v); }
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(x) { return Number.isInteger(x) ? String(x) : Number.isFinite(x) ? x.toPrecision(4) : String(x); }
  function status(text, isError) { const s = $("status"); s.textContent = text; s.className = isError ? "error" : ""; }
  async function post(path, body) {
    const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    return out;
  }
  function viridis(t) {
    const c = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    t = Math.max(0, Math.min(1, t)) * 4; const i = Math.min(3, Math.floor(t)), f = t - i;
    return `rgb(${[0, 1, 2].map((k) => Math.round(c[i][k] + f * (c[i + 1][k] - c[i][k]))).join(",")})`;
  }

  // --- the current view ---------------------------------------------------------------------------------------
  function weights() { const v = state.view; return v.what_if ? v.what_if.weightsArr : v.weightsArr; }
  function allowedArr() { const v = state.view; return v.what_if ? v.what_if.allowedArr : v.modelMaskArr; }
  function L() { return state.view.tokens.length; }

  async function runSpeech(wav) {
    const m = state.models[state.model];
    status("transcribing with " + state.model + " ...");
    const layer = $("speech-layer").value, head = $("speech-head").value;
    const body = { model: state.model, layer: layer === "" ? null : Number(layer), head: head === "" ? null : Number(head) };
    if (wav) body.wav = wav; else body.say = $("text").value;
    try {
      const r = await post("/api/speech", body);
      state.speech = r;
      const ls = $("speech-layer"), hs = $("speech-head");
      if (ls.options.length === 1) for (let i = 0; i < r.layers; i++) ls.appendChild(el("option", { value: String(i) }, "decoder L" + i));
      if (hs.options.length === 1) for (let h = 0; h < r.heads; h++) hs.appendChild(el("option", { value: String(h) }, "H" + h));
      $("transcript").textContent = "transcript: " + r.transcript;
      $("words").textContent = "alignment (read off the cross-attention): " + r.words.map((w) => `${w.text}@${w.start.toFixed(2)}s`).join("  ");
      const cross = decode(r.cross), mel = decode(r.mel), n = cross.shape[0], T = cross.shape[1];
      const c = $("speech-cross"), g = c.getContext("2d"), rowH = 18, left = 110, colW = (c.width - left) / T;
      c.height = rowH * n; g.clearRect(0, 0, c.width, c.height); g.font = "12px monospace"; g.textAlign = "right";
      for (let i = 0; i < n; i++) {
        let mx = 0; for (let j = 0; j < T; j++) mx = Math.max(mx, at(cross, i, j));
        for (let j = 0; j < T; j++) { g.fillStyle = viridis(at(cross, i, j) / (mx || 1)); g.fillRect(left + j * colW, i * rowH, Math.ceil(colW), rowH - 1); }
        g.fillStyle = "#222"; g.fillText(r.tokens[i], left - 4, i * rowH + 13);
      }
      const mc = $("speech-mel"), mg = mc.getContext("2d"), F = mel.shape[1], fw = (mc.width - left) / F;
      let lo = Infinity, hi = -Infinity; for (const x of mel.data) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
      mc.height = 80; mg.clearRect(0, 0, mc.width, mc.height);
      for (let b = 0; b < 80; b++) for (let f = 0; f < F; f++) { mg.fillStyle = viridis((at(mel, b, f) - lo) / (hi - lo || 1)); mg.fillRect(left + f * fw, 79 - b, Math.ceil(fw), 1); }
      mg.fillStyle = "#222"; mg.font = "11px monospace"; mg.fillText(`0 .. ${r.seconds.toFixed(2)} s`, 4, 40);
      status(`${r.seconds.toFixed(2)} s of audio, ${n} tokens; cross-attention shown: ${r.shown}`);
    } catch (err) { status(err.message, true); }
  }

  async function run() {
    if (state.models[state.model].kind === "speech") return runSpeech(null);
    const text = $("text").value;
    status("running " + state.model + " ...");
    try {
      const v = await post("/api/attention", { model: state.model, text: text, layer: Number($("layer").value || 0),
        mask: $("mask").value });
      for (const k of ["scores", "weights", "queries", "keys", "values"]) v[k + "Arr"] = decode(v[k]);
      v.modelMaskArr = decode(v.model_mask);
      if (v.what_if) { v.what_if.weightsArr = decode(v.what_if.weights); v.what_if.allowedArr = decode(v.what_if.allowed); }
      v.previewArr = decode(v.previews.weights);
      state.view = v;
      state.head = Math.min(state.head, v.heads - 1);
      state.row = Math.min(state.row, L() - 1); state.key = Math.min(state.key, L() - 1);
      fillSelect($("layer"), v.layers, v.layer, (i) => "L" + i);
      fillSelect($("head"), v.heads, state.head, (i) => "H" + i);
      $("notice").hidden = !v.notice; $("notice").textContent = v.notice || "";
      $("what-if").hidden = !v.what_if; $("what-if").textContent = v.what_if ? v.what_if.note : "";
      status(`${L()} tokens, ${v.layers} layers x ${v.heads} heads (${v.kv_heads} key/value heads)`);
      render();
      if (state.models[state.model].kind === "decoder") nextTokens();
      cost();
    } catch (err) { status(err.message, true); }
  }
  function fillSelect(sel, n, value, label) {
    if (sel.options.length !== n) {
      sel.textContent = "";
      for (let i = 0; i < n; i++) sel.appendChild(el("option", { value: String(i) }, label(i)));
    }
    sel.value = String(value);
  }
  function render() {
    renderTokens(); renderHeatmap(); renderLines(); renderGrid(); renderSteps(); renderNeurons(); renderDiagnostics();
  }

  function renderTokens() {
    const box = $("tokens"); box.textContent = "";
    state.view.tokens.forEach((t, i) => {
      const b = el("button", { "data-i": String(i), class: i === state.row ? "sel" : "" }, t);
      b.addEventListener("click", () => { state.row = i; render(); });
      box.appendChild(b);
    });
  }

  function renderHeatmap() {
    const v = state.view, n = L(), c = $("heatmap"), g = c.getContext("2d"), w = weights(), allow = allowedArr();
    const cell = Math.max(2, Math.min(40, Math.floor(480 / n)));
    c.width = c.height = cell * n; g.clearRect(0, 0, c.width, c.height);
    let vmax = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) vmax = Math.max(vmax, at(w, state.head, i, j));
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      const ok = at(allow, i, j) > 0.5;
      g.fillStyle = ok ? viridis(at(w, state.head, i, j) / (vmax || 1)) : "#ddd";
      g.fillRect(j * cell, i * cell, cell, cell);
      if (cell >= 28 && ok) {
        g.fillStyle = at(w, state.head, i, j) > 0.6 * vmax ? "#000" : "#fff"; g.font = "9px monospace";
        g.fillText(at(w, state.head, i, j).toFixed(2), j * cell + 2, i * cell + cell / 2 + 3);
      }
    }
    g.strokeStyle = "#d32f2f"; g.lineWidth = 2; g.strokeRect(0, state.row * cell, n * cell, cell);
    $("heat-caption").textContent = `L${v.layer}.H${state.head}` + (v.what_if ? " (what-if mask)" : "");
  }

  function renderLines() {
    const v = state.view, n = L(), c = $("lines"), g = c.getContext("2d"), w = weights();
    const toggles = $("head-toggles");
    if (toggles.childElementCount !== v.heads) {
      toggles.textContent = "";
      for (let h = 0; h < v.heads; h++) {
        const box = el("input", { type: "checkbox", "data-h": String(h) });
        box.addEventListener("change", renderLines);
        const lab = el("label", { style: `color:${HEAD_COLOURS[h % HEAD_COLOURS.length]}` });
        lab.appendChild(box); lab.appendChild(document.createTextNode("H" + h)); toggles.appendChild(lab);
      }
    }
    const shown = [...toggles.querySelectorAll("input")].filter((b) => b.checked).map((b) => Number(b.dataset.h));
    const heads = shown.length ? shown : [state.head];
    const rowH = Math.max(12, Math.min(22, Math.floor(900 / n)));
    c.height = rowH * n + 10; g.clearRect(0, 0, c.width, c.height); g.font = "12px monospace";
    const xl = 150, xr = 330;
    v.tokens.forEach((t, i) => {
      g.fillStyle = i === state.row ? "#d32f2f" : "#222";
      g.textAlign = "right"; g.fillText(t, xl - 6, i * rowH + rowH - 4);
      g.textAlign = "left"; g.fillText(t, xr + 6, i * rowH + rowH - 4);
    });
    for (const h of heads) {
      g.strokeStyle = HEAD_COLOURS[h % HEAD_COLOURS.length];
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
        const a = at(w, h, i, j) * (i === state.row ? 1 : 0.25);
        if (a < 0.02) continue;
        g.globalAlpha = Math.min(1, a); g.lineWidth = 1 + 2 * a;
        g.beginPath(); g.moveTo(xl, i * rowH + rowH / 2); g.lineTo(xr, j * rowH + rowH / 2); g.stroke();
      }
    }
    g.globalAlpha = 1;
  }

  function renderGrid() {
    const v = state.view, p = v.previewArr, box = $("grid"), size = v.previews.size, px = 3;
    box.textContent = "";
    v.previews.layers.forEach((layer, li) => {
      const line = el("div", { class: "layer" }); line.appendChild(el("span", {}, "L" + layer));
      for (let h = 0; h < v.heads; h++) {
        const c = el("canvas", { width: String(size * px), height: String(size * px), title: `L${layer}.H${h}`,
          class: layer === v.layer && h === state.head ? "sel" : "" });
        const g = c.getContext("2d");
        for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) {
          g.fillStyle = viridis(at(p, li, h, i, j)); g.fillRect(j * px, i * px, px, px);
        }
        c.addEventListener("click", () => {
          state.head = h; $("head").value = String(h);
          if (layer !== v.layer) { $("layer").value = String(layer); run(); } else render();
        });
        line.appendChild(c);
      }
      box.appendChild(line);
    });
  }

  function renderSteps() {   // scores -> (mask) -> minus the row max -> exp -> / sum -> weights -> weighted sum
    const v = state.view, n = L(), i = state.row, h = state.head, allow = allowedArr();
    let mx = -Infinity;
    for (let j = 0; j < n; j++) if (at(allow, i, j) > 0.5) mx = Math.max(mx, at(v.scoresArr, h, i, j));
    const e = [], ok = [];
    let sum = 0;
    for (let j = 0; j < n; j++) {
      ok.push(at(allow, i, j) > 0.5);
      e.push(ok[j] ? Math.exp(at(v.scoresArr, h, i, j) - mx) : 0); sum += e[j];
    }
    const t = el("table", { id: "steps-table" }), head = el("tr");
    for (const c of ["key", "score = q.k x scale", "allowed", "score - max", "E = exp", "weight = E / Z", "library weight"])
      head.appendChild(el("th", {}, c));
    t.appendChild(head);
    const w = weights();
    for (let j = 0; j < n; j++) {
      const tr = el("tr", { class: (ok[j] ? "" : "blocked") + (j === state.key ? " sel" : "") });
      const s = at(v.scoresArr, h, i, j), wj = sum > 0 ? e[j] / sum : 0;
      const cells = [v.tokens[j], fmt(s), ok[j] ? "yes" : "no", ok[j] ? fmt(s - mx) : "-", ok[j] ? fmt(e[j]) : "0",
        fmt(wj), fmt(at(w, h, i, j))];
      cells.forEach((c, k) => {
        const td = el("td", {}, c);
        if (k === 5) td.dataset.value = String(wj);
        if (k === 6) td.dataset.value = String(at(w, h, i, j));
        tr.appendChild(td);
      });
      tr.addEventListener("click", () => { state.key = j; renderSteps(); renderNeurons(); });
      t.appendChild(tr);
    }
    const box = $("steps"); box.textContent = "";
    box.appendChild(el("p", {}, `query "${v.tokens[i]}" (row ${i}), scale ${fmt(v.scale)}: max ${fmt(mx)}, Z = sum of E = ${fmt(sum)}`));
    box.appendChild(t);
    const Dv = v.valuesArr.shape[2], out = [];
    for (let d = 0; d < Math.min(Dv, 8); d++) {
      let acc = 0; for (let j = 0; j < n; j++) acc += at(w, h, i, j) * at(v.valuesArr, h, j, d); out.push(fmt(acc));
    }
    box.appendChild(el("p", {}, `output = sum_j weight_j v_j, first ${out.length} of ${Dv} dims: [${out.join(", ")}]`));
    $("step-caption").textContent = `L${v.layer}.H${h}, query ${i}`;
  }

  function renderNeurons() {  // q_i and k_j component by component, their product, q.k and the scaled score
    const v = state.view, h = state.head, i = state.row, j = state.key, D = v.queriesArr.shape[2];
    const t = el("table", { id: "neuron-table" }), r0 = el("tr");
    for (const c of ["d", "q[d]", "k[d]", "q[d] k[d]"]) r0.appendChild(el("th", {}, c));
    t.appendChild(r0);
    let dot = 0;
    for (let d = 0; d < D; d++) {
      const q = at(v.queriesArr, h, i, d), k = at(v.keysArr, h, j, d); dot += q * k;
      const tr = el("tr");
      for (const c of [String(d), fmt(q), fmt(k), fmt(q * k)]) tr.appendChild(el("td", {}, c));
      t.appendChild(tr);
    }
    const box = $("neurons"); box.textContent = "";
    const p = el("p", { id: "neuron-sum" }, `q.k = ${fmt(dot)}; x scale ${fmt(v.scale)} = ${fmt(dot * v.scale)} (score ${fmt(at(v.scoresArr, h, i, j))})`);
    p.dataset.value = String(dot * v.scale);
    box.appendChild(p); box.appendChild(t);
    $("neuron-caption").textContent = `query "${v.tokens[i]}" x key "${v.tokens[j]}" (click a row of the steps table)`;
  }

  function renderDiagnostics() {
    const rows = state.view.diagnostics, box = $("diagnostics"); box.textContent = "";
    if (!rows.length) return;
    const cols = Object.keys(rows[0]).filter((k) => k !== "layer");
    const t = el("table"), hr = el("tr");
    for (const c of cols) hr.appendChild(el("th", {}, c));
    t.appendChild(hr);
    for (const r of rows) {
      const tr = el("tr", { class: r.head === state.head ? "sel" : "" });
      for (const c of cols) {
        const x = r[c];
        tr.appendChild(el("td", {}, Array.isArray(x) ? (x.join(",") || "-") : typeof x === "number" ? fmt(x) : String(x)));
      }
      t.appendChild(tr);
    }
    box.appendChild(t);
  }

  // --- decoder: next-token probabilities and generation --------------------------------------------------------
  function sampling() {
    return { temperature: Number($("temperature").value), top_k: Number($("top-k").value) };
  }
  async function nextTokens() {
    try { showNext(await post("/api/next", { model: state.model, text: $("text").value, ...sampling() })); }
    catch (err) { status(err.message, true); }
  }
  function showNext(r) {
    const box = $("next"); box.textContent = "";
    const t = el("table", { id: "next-table" });
    r.tokens.forEach((tok, k) => {
      const tr = el("tr"), bar = el("span", { class: "bar", style: `width:${Math.round(200 * r.probabilities[k])}px` });
      const td = el("td", {}, fmt(r.probabilities[k])); td.dataset.value = String(r.probabilities[k]);
      tr.appendChild(el("td", {}, JSON.stringify(r.texts ? r.texts[k] : tok))); tr.appendChild(td);
      const bt = el("td"); bt.appendChild(bar); tr.appendChild(bt); t.appendChild(tr);
    });
    box.appendChild(t);
  }
  async function generate() {
    try {
      const r = await post("/api/generate", { model: state.model, text: $("text").value, ...sampling(), seed: Date.now() % 100000 });
      $("text").value = r.text;
      const kv = r.kv_cache;
      $("kv").textContent = `KV cache after ${kv.length} tokens: ${kv.bytes.toLocaleString()} bytes ` +
        `(multi-head attention with one key/value head per query head would hold ${kv.mha_bytes.toLocaleString()})`;
      await run();
    } catch (err) { status(err.message, true); }
  }

  // --- masks and cost --------------------------------------------------------------------------------------------
  async function drawMask() {
    try {
      const r = await post("/api/mask", { spec: $("mask-spec").value, n: Number($("mask-n").value), block: Number($("mask-block").value) });
      const a = decode(r.allowed), n = r.n, c = $("mask-cells"), g = c.getContext("2d"), cell = Math.max(1, Math.floor(240 / n));
      c.width = c.height = cell * n;
      for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) { g.fillStyle = at(a, i, j) > 0.5 ? "#1e88e5" : "#eee"; g.fillRect(j * cell, i * cell, cell, cell); }
      const tc = $("mask-tiles"), tg = tc.getContext("2d"), nt = r.tiles.length, tcell = Math.max(1, Math.floor(240 / nt));
      tc.width = tc.height = tcell * nt;
      const colours = ["#eee", "#90caf9", "#1565c0"];
      r.tiles.forEach((row, i) => row.forEach((k, j) => { tg.fillStyle = colours[k]; tg.fillRect(j * tcell, i * tcell, tcell - 1, tcell - 1); }));
      const c2 = r.tile_counts;
      $("mask-info").textContent = `${r.name}: ${(100 * r.allowed_fraction).toFixed(1)}% of cells allowed; tiles of ` +
        `${r.block}: ${c2.full} full, ${c2.partial} partial, ${c2.empty} empty (the kernel skips the empty ones, ` +
        `${(100 * r.skipped_fraction).toFixed(1)}%)`;
    } catch (err) { $("mask-info").textContent = err.message; }
  }
  async function cost() {
    const n = 2 ** Number($("cost-n").value); $("cost-n-value").textContent = String(n);
    try { const r = await post("/api/cost", { model: state.model, n: n }); $("cost").textContent = r.table; }
    catch (err) { $("cost").textContent = err.message; }
  }
  async function exportFigure(format) {
    try {
      const r = await fetch(`/api/figure`, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: state.model, text: $("text").value, layer: state.view.layer, head: state.head,
          mask: $("mask").value, format: format }) });
      if (!r.ok) throw new Error((await r.json()).error);
      download(await r.blob(), `attnlab-L${state.view.layer}-H${state.head}.${format}`);
    } catch (err) { status(err.message, true); }
  }
  async function exportPage() {
    try {
      const r = await fetch(`/api/page`, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: state.model, text: $("text").value, layer: state.view.layer }) });
      if (!r.ok) throw new Error((await r.json()).error);
      download(await r.blob(), "attnlab-explorer.html");
    } catch (err) { status(err.message, true); }
  }
  function download(blob, name) {
    const a = el("a", { href: URL.createObjectURL(blob), download: name }); document.body.appendChild(a); a.click(); a.remove();
  }

  async function init() {
    const r = await (await fetch("/api/models")).json();
    const sel = $("model");
    for (const m of r.models) { state.models[m.name] = m; sel.appendChild(el("option", { value: m.name }, `${m.name} (${m.kind})`)); }
    state.model = r.default; sel.value = r.default;
    const pick = () => {
      state.model = sel.value; const m = state.models[state.model];
      $("model-info").textContent = m.about;
      $("decoder-panel").hidden = m.kind !== "decoder";
      $("speech-panel").hidden = m.kind !== "speech";
      for (const e of document.querySelectorAll(".text-only")) e.hidden = m.kind === "speech";
      $("layer").textContent = ""; run();
    };
    sel.addEventListener("change", pick);
    $("run").addEventListener("click", run);
    $("layer").addEventListener("change", run);
    $("mask").addEventListener("change", run);
    $("head").addEventListener("change", () => { state.head = Number($("head").value); render(); });
    $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; nextTokens(); });
    $("top-k").addEventListener("change", nextTokens);
    $("generate").addEventListener("click", generate);
    $("mask-draw").addEventListener("click", drawMask);
    $("speech-layer").addEventListener("change", () => runSpeech(null));
    $("speech-head").addEventListener("change", () => runSpeech(null));
    $("wav-run").addEventListener("click", () => {
      const f = $("wav").files[0];
      if (!f) { status("choose a WAV file first", true); return; }
      const reader = new FileReader();
      reader.onload = () => runSpeech(String(reader.result).split(",")[1]);
      reader.readAsDataURL(f);
    });
    $("cost-n").addEventListener("input", cost);
    $("export-png").addEventListener("click", () => exportFigure("png"));
    $("export-svg").addEventListener("click", () => exportFigure("svg"));
    $("export-page").addEventListener("click", exportPage);
    pick(); drawMask();
  }
  window.attnlabApp = { state: state };
  init();
})();
