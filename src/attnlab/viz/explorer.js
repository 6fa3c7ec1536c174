"use strict";
// attnlab explorer: every number on this page is computed from the scores shipped in the data block, with the
// same definitions as attnlab (softmax over allowed keys, blocked cells 0, fully masked rows 0). Masks are specs of
// attnlab's one mask grammar (attnlab.masks.SPEC_GRAMMAR), parsed and evaluated here exactly as
// attnlab.viz.explorer.page_mask does (tests compare them cell for cell and error for error). User text is only
// ever inserted with textContent.
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
  const state = { layer: START[0], head: START[1], spec: "", mask: null, error: "", row: 0 };
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

  // ---- the mask grammar (attnlab.masks.parse), evaluated on this page's Lq x Lk ------------------------------
  const MASKS = DATA.masks;
  const ARITY = {   // name -> [min args, max args or null]: attnlab.masks' table (the tests check every entry)
    full: [0, 0], dense: [0, 0], none: [0, 0], causal: [0, 1], window: [1, 2], prefix: [1, 1], keys: [1, 1],
    padding: [1, null], document: [1, null], dilated: [1, 1], global: [1, null], random: [2, 3] };
  const ALIGNS = ["bottom_right", "top_left"];
  const HINT = "see attnlab.masks.SPEC_GRAMMAR (e.g. 'causal & window:256')";
  const LARGEST = 2n ** 62n, INT64 = 2n ** 63n, UINT64 = 2n ** 64n;
  const PY_SPACE = new Set([9, 10, 11, 12, 13, 28, 29, 30, 31, 32, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002,
    0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000]);
  const isSpace = (c) => PY_SPACE.has(c.charCodeAt(0));                 // Python's str.isspace
  const NOT_PRINTABLE = /^[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]$/u;
  const hex = (n, w) => n.toString(16).padStart(w, "0");
  function pyRepr(s) {                    // Python's repr() of a str, as attnlab's messages print it
    const quote = s.includes("'") && !s.includes('"') ? '"' : "'";
    let out = quote;
    for (const ch of s) {
      const cp = ch.codePointAt(0);
      if (ch === quote || ch === "\\") out += `\\${ch}`;
      else if (ch === "\t") out += "\\t";
      else if (ch === "\n") out += "\\n";
      else if (ch === "\r") out += "\\r";
      else if (cp < 0x20 || cp === 0x7f) out += `\\x${hex(cp, 2)}`;
      else if (cp > 0x7f && NOT_PRINTABLE.test(ch)) {
        out += cp < 0x100 ? `\\x${hex(cp, 2)}` : cp < 0x10000 ? `\\u${hex(cp, 4)}` : `\\U${hex(cp, 8)}`;
      } else out += ch;
    }
    return out + quote;
  }
  const pyList = (ints) => `[${ints.join(", ")}]`;
  const DECIMAL = /^[0-9]$/;              // masks._spec_int: ASCII digits only
  function specTokens(spec) {             // masks._spec_tokens: words, and & | ~ ( ) one character each
    const out = [], ops = "&|~()";
    let i = 0;
    while (i < spec.length) {
      const c = spec[i];
      if (isSpace(c)) i++;
      else if (ops.includes(c)) { out.push(c); i++; }
      else {
        let j = i;
        while (j < spec.length && !isSpace(spec[j]) && !ops.includes(spec[j])) j++;
        out.push(spec.slice(i, j)); i = j;
      }
    }
    return out;
  }
  class SpecError extends Error {}
  function checkedInt(value, name) {      // attnlab.checks.non_negative_int's upper bound
    if (value > LARGEST) throw new SpecError(`${name} must be at most 2**62, got ${value}`);
    return value;
  }
  function specAtom(spec, tok) {          // masks._spec_atom: one NAME[:ARGS] -> {name, ints, text, batch}
    const colon = tok.indexOf(":");
    const name = (colon < 0 ? tok : tok.slice(0, colon)).toLowerCase(), rest = colon < 0 ? "" : tok.slice(colon + 1);
    if (!Object.prototype.hasOwnProperty.call(ARITY, name)) {
      throw new SpecError(`mask spec ${pyRepr(spec)}: unknown mask ${pyRepr(name)}; expected one of ` +
        Object.keys(ARITY).join(", "));
    }
    const args = rest ? rest.split(",") : [], [lo, hi] = ARITY[name];
    if (args.length < lo || (hi !== null && args.length > hi)) {
      const want = lo === hi ? `${lo}` : hi === null ? `${lo} or more` : `${lo} to ${hi}`;
      throw new SpecError(`mask spec ${pyRepr(spec)}: ${name} takes ${want} argument(s) after ':', ` +
        `got ${args.length}`);
    }
    if (name === "causal") {
      if (args.length && !ALIGNS.includes(args[0])) {
        throw new SpecError(`mask spec ${pyRepr(spec)}: causal's argument must be one of ` +
          `('bottom_right', 'top_left'), got ${pyRepr(args[0])}`);
      }
      const align = args.length ? args[0] : "bottom_right";
      return { name, align, text: align === "bottom_right" ? "causal" : `causal:${align}`, batch: null };
    }
    const ints = args.map((a) => {
      const chars = Array.from(a);
      if (!chars.length || !chars.every((c) => DECIMAL.test(c))) {
        throw new SpecError(`mask spec ${pyRepr(spec)}: ${name} takes non-negative integers, got ${pyRepr(a)}`);
      }
      return BigInt(chars.join(""));
    });
    const text = ints.length ? `${name}:${ints.join(",")}` : name, atom = { name, ints, text, batch: null };
    switch (name) {
      case "full": case "dense": case "none": return { name: "full", ints, text: "full", batch: null };
      case "window":
        checkedInt(ints[0], "left"); checkedInt(ints.length > 1 ? ints[1] : 0n, "right");
        atom.text = ints.length === 1 || ints[1] === 0n ? `window:${ints[0]}` : text;
        return atom;
      case "prefix": case "keys": checkedInt(ints[0], "n"); return atom;
      case "padding":
        if (ints.some((n) => n >= UINT64)) {
          throw new SpecError("lengths must be a non-empty 1-D list of non-negative integers (one per batch row), " +
            `got ${pyList(ints)}`);
        }
        atom.batch = ints.length;
        return atom;
      case "document":
        if (ints.some((n) => n < 1n)) {
          throw new SpecError(`mask spec ${pyRepr(spec)}: document lengths must be >= 1, got ${pyList(ints)}`);
        }
        return atom;
      case "dilated":
        checkedInt(ints[0], "stride");
        if (ints[0] < 1n) throw new SpecError(`stride must be >= 1, got ${ints[0]}`);
        return atom;
      case "global":
        if (ints.some((n) => n >= UINT64)) {
          throw new SpecError(`indices must be integers, got list ${pyList(ints)} (dtype object)`);
        }
        { const big = ints.find((n) => n >= INT64);
          if (big !== undefined) throw new SpecError(`indices must fit in int64, got ${big}`); }
        return atom;
      default:                             // random: BLOCK, N[, SEED]
        checkedInt(ints[0], "block_size"); checkedInt(ints[1], "n_random");
        checkedInt(ints.length > 2 ? ints[2] : 0n, "seed");
        if (ints[0] < 1n) throw new SpecError(`block_size must be >= 1, got ${ints[0]}`);
        return atom;
    }
  }
  function jointBatch(a, b) {
    if (a !== null && b !== null && a !== b) {
      throw new SpecError(`cannot combine masks defined for batch size ${a} and ${b}`);
    }
    return a !== null ? a : b;
  }
  function parseSpec(spec) {              // masks.parse: union := inter ('|' inter)*; inter := unary ('&' unary)*
    const tokens = specTokens(spec);
    if (!tokens.length) throw new SpecError("mask spec is empty; expected e.g. 'causal' or 'causal & window:256'");
    let pos = 0;
    const peek = () => (pos < tokens.length ? tokens[pos] : null);
    function binary(op, sub) {
      let node = sub();
      while (peek() === op) {
        pos++;
        const other = sub();
        node = { op, a: node, b: other, text: `${node.text} ${op} ${other.text}`,
          batch: jointBatch(node.batch, other.batch) };
      }
      return node;
    }
    const union = () => binary("|", inter), inter = () => binary("&", unary);
    function unary() {
      const tok = peek();
      if (tok === null) throw new SpecError(`mask spec ${pyRepr(spec)} ends too early; ${HINT}`);
      if (tok === "~") { pos++; const a = unary(); return { op: "~", a, text: `~${a.text}`, batch: a.batch }; }
      if (tok === "(") {
        pos++;
        const a = union();
        if (peek() !== ")") throw new SpecError(`mask spec ${pyRepr(spec)}: missing ')'`);
        pos++;
        return { op: "()", a, text: `(${a.text})`, batch: a.batch };
      }
      if (tok === "&" || tok === "|" || tok === ")") {
        throw new SpecError(`mask spec ${pyRepr(spec)}: unexpected ${pyRepr(tok)}; ${HINT}`);
      }
      pos++;
      return specAtom(spec, tok);
    }
    const node = union();
    if (pos !== tokens.length) {
      throw new SpecError(`mask spec ${pyRepr(spec)}: unexpected ${pyRepr(tokens[pos])}; ${HINT}`);
    }
    return node;
  }
  function atomsOf(node, out = []) {      // the masks of a parsed spec in reading order
    if (node.op) { atomsOf(node.a, out); if (node.b) atomsOf(node.b, out); } else out.push(node);
    return out;
  }
  const randomKey = (ints) => `random:${ints[0]},${ints[1]},${ints.length > 2 ? ints[2] : 0n}`;
  function atomCells(node, spec) {        // one mask's (Lq*Lk) cells, as the NumPy function evaluates them
    const out = new Uint8Array(Lq * Lk), n = node.ints ? node.ints.map(Number) : [];
    let test;
    switch (node.name) {
      case "full": out.fill(1); return out;
      case "causal": { const o = node.align === "top_left" ? 0 : OFFSET; test = (i, j) => j <= i + o; break; }
      case "window": {
        const l = n[0], r = n.length > 1 ? n[1] : 0;
        test = (i, j) => j >= i + OFFSET - l && j <= i + OFFSET + r;
        break;
      }
      case "prefix": test = (i, j) => j < n[0] || j <= i + OFFSET; break;
      case "keys": test = (i, j) => j < n[0]; break;
      case "padding": { const len = Number(BigInt.asIntN(64, node.ints[0])); test = (i, j) => j < len; break; }
      case "document": {
        const total = n.reduce((a, b) => a + b, 0);
        if (total !== Lk) throw new SpecError(`document mask has ${total} key ids but Lk=${Lk}`);
        if (Lq > Lk) throw new SpecError(`document mask needs q_doc_ids when Lq=${Lq} > Lk=${Lk}`);
        const ids = new Int32Array(Lk);
        let at = 0;
        n.forEach((len, d) => { ids.fill(d, at, at + len); at += len; });
        test = (i, j) => ids[i + OFFSET] === ids[j];
        break;
      }
      case "dilated": test = (i, j) => (i + OFFSET - j) % n[0] === 0; break;
      case "global": { const idx = new Set(n); test = (i, j) => idx.has(i + OFFSET) || idx.has(j); break; }
      default: {                           // random: NumPy's generator, so the cells come from Python
        const key = randomKey(node.ints), have = Object.keys(MASKS.random);
        if (!MASKS.random[key]) {
          throw new SpecError(`mask spec ${pyRepr(spec)}: ${key} is drawn by NumPy's random generator, which this ` +
            `offline page cannot run; it carries ${have.length ? have.join(", ") : "no random masks"} ` +
            "(ship others with ExplorerData(mask_specs=[...]))");
        }
        out.set(bytesOf(MASKS.random[key]));
        return out;
      }
    }
    for (let i = 0; i < Lq; i++) for (let j = 0; j < Lk; j++) out[i * Lk + j] = test(i, j) ? 1 : 0;
    return out;
  }
  function cellsOf(node, spec) {          // left operand first, as NumPy evaluates self.fn before other.fn
    if (!node.op) return atomCells(node, spec);
    const a = cellsOf(node.a, spec);
    if (node.op === "()") return a;
    if (node.op === "~") { for (let k = 0; k < a.length; k++) a[k] ^= 1; return a; }
    const b = cellsOf(node.b, spec);
    for (let k = 0; k < a.length; k++) a[k] = node.op === "&" ? a[k] & b[k] : a[k] | b[k];
    return a;
  }
  function pageMask(spec) {               // attnlab.viz.explorer.page_mask: {spec, allowed} or a thrown SpecError
    const node = parseSpec(spec);
    if (DATA.kind === "cross") {
      const bad = atomsOf(node).find((atom) => !MASKS.key_only.includes(atom.name));
      if (bad) {
        throw new SpecError(`mask spec ${pyRepr(spec)}: ${bad.name} compares query and key positions, but this is ` +
          "cross-attention (queries and keys are two different sequences); use only " +
          `${MASKS.key_only.join(", ")} here`);
      }
    }
    if (node.batch !== null && node.batch !== 1) {
      throw new SpecError(`mask spec ${pyRepr(spec)}: this page shows one sequence, so padding takes one length ` +
        `here, got ${node.batch}`);
    }
    return { spec: node.text, allowed: cellsOf(node, spec) };
  }
  function allowedOf(l, h) {
    const base = baseMaskOf(l, h), extra = state.mask ? state.mask.allowed : null, out = new Uint8Array(Lq * Lk);
    for (let k = 0; k < Lq * Lk; k++) out[k] = (!base || base[k]) && (!extra || extra[k]) ? 1 : 0;
    return out;
  }
  function maskNote(l, h) {               // ExplorerData.mask_note: a what-if on a model's page, else nothing
    if (!state.mask || DATA.kind === null) return "";
    const base = baseMaskOf(l, h), extra = state.mask.allowed;
    for (let k = 0; k < Lq * Lk; k++) {
      if ((!base || base[k]) && !extra[k]) return MASKS.what_if[0] + pyRepr(state.spec) + MASKS.what_if[1];
    }
    return MASKS.same_as_model;
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
    $("layer").addEventListener("change", () => { state.layer = Number($("layer").value); render(); });
    $("head").addEventListener("change", () => {
      state.head = $("head").value === "all" ? "all" : Number($("head").value); render();
    });
    $("grammar-text").textContent = MASKS.grammar;
    if (MASKS.cross) { $("cross-note").textContent = MASKS.cross; $("cross-note").hidden = false; }
    const input = $("mask-spec");
    input.addEventListener("input", () => setSpec(input.value));
    MASKS.presets.forEach((spec) => {
      const b = el("button", { type: "button", class: "preset", "data-testid": "mask-preset", "data-spec": spec },
        spec);
      b.addEventListener("click", () => {
        input.value = composed(input.value, spec, $("mask-join").value);
        setSpec(input.value);
      });
      $("mask-presets").append(b);
    });
    $("mask-clear").addEventListener("click", () => { input.value = ""; setSpec(""); });
    document.addEventListener("keydown", (ev) => {
      if (isAll() || ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        selectRow(Math.min(Lq - 1, Math.max(0, state.row + (ev.key === "ArrowDown" ? 1 : -1))), true);
      }
    });
  }
  function composed(current, preset, join) {   // the typed spec joined with a preset by & | or & ~
    const cur = current.trim(), wrap = (t) => (/[&|]/.test(t) ? `(${t})` : t);
    if (join === "set" || !cur) return join === "andnot" ? `~${wrap(preset)}` : preset;
    if (join === "or") return `${cur} | ${preset}`;
    const left = cur.includes("|") ? `(${cur})` : cur;
    return join === "andnot" ? `${left} & ~${wrap(preset)}` : `${left} & ${wrap(preset)}`;
  }
  function setSpec(text) {
    state.spec = text;
    state.error = "";
    state.mask = null;
    if (text.trim()) {
      try { state.mask = pageMask(text); } catch (err) {
        if (!(err instanceof SpecError)) throw err;
        state.error = err.message;
      }
    }
    maskVersion++; render();
  }
  function maskCode() {
    const base = DATA.base_mask ? " & the model's own mask" : "";
    if (state.mask) return `mask = attnlab.masks.parse(${JSON.stringify(state.mask.spec)})${base}`;
    return DATA.base_mask ? "mask = the model's own mask" : "mask = None";
  }
  function renderMaskStatus() {
    const status = $("mask-status");
    status.classList.toggle("error", !!state.error);
    if (state.error) status.textContent = `not applied: ${state.error}`;
    else if (state.mask) {
      const blocked = state.mask.allowed.reduce((a, b) => a + 1 - b, 0);
      status.textContent = `${state.mask.spec}: blocks ${blocked} of ${Lq * Lk} cells`;
    } else status.textContent = "no mask: type a spec or click a preset";
    const note = maskNote(state.layer, isAll() ? 0 : state.head);
    $("mask-note").textContent = note;
    $("mask-note").hidden = !note;
    $("mask-note").classList.toggle("what-if", note.startsWith("what-if"));
    document.body.dataset.maskState = state.error ? "error" : state.mask ? "ok" : "none";
    document.body.dataset.mask = state.mask ? state.mask.spec : "";
  }

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
    renderMaskStatus();
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
  }

  initHeader();
  initControls();
  initTokens();
  initMatrix();
  render();
  window.attnlabExplorer = {              // for tests: the page's mask evaluator, read only
    maskOf(spec) {
      try { const m = pageMask(spec); return { spec: m.spec, allowed: Array.from(m.allowed) }; } catch (err) {
        if (!(err instanceof SpecError)) throw err;
        return { error: err.message };
      }
    },
    pyRepr,
  };
  document.body.dataset.ready = "true";
})();
