"use strict";
(function () {
const T0 = performance.now();
const body = document.body, $ = (id) => document.getElementById(id);
function fail(msg) {
  body.dataset.error = (body.dataset.error ? body.dataset.error + " | " : "") + msg;
  const box = $("err"); box.style.display = "block"; box.textContent = "Report script error: " + body.dataset.error;
}
window.addEventListener("error", (ev) => fail("error: " + ev.message + " (line " + ev.lineno + ")"));
window.addEventListener("unhandledrejection", (ev) => fail("unhandled rejection: " + (ev.reason && ev.reason.stack || ev.reason)));
const consoleError = console.error.bind(console);
console.error = (...a) => { fail("console.error: " + a.join(" ")); consoleError(...a); };

const M = JSON.parse($("parity-meta").textContent);
const num = (v) => v === null || v === undefined ? null : Number(v);
const NC = M.cands.length, KINDS = Object.keys(M.kinds);
let A = null;  // name -> typed array
const S = {cand: 0, kind: KINDS[0] || "generated", sel: null, bin: 1, W: 0, rowPx: 8, PW: 0, sort: "index", order: [], rowOf: []};

function h(tag, attrs, ...kids) {  // DOM builder; text goes through textContent, never innerHTML
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v; else if (k === "style") el.style.cssText = v; else el.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) el.append(k instanceof Node ? k : String(k));
  return el;
}
function fmt(x, d) {
  d = d || 4;
  if (x === null || x === undefined) return "n/a";
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(d - 1);
  return x.toFixed(d);
}
function text(id) {
  if (id < 0) return null;
  const t = M.texts[String(id)];
  return t === undefined ? null : t;
}
function tokLabel(id) {
  if (id < 0) return "-";
  const t = text(id);
  return t === null ? "#" + id : JSON.stringify(t) + " (" + id + ")";
}

async function unpack() {
  const b64 = $("parity-data").textContent.trim();
  const bin = atob(b64), z = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) z[i] = bin.charCodeAt(i);
  if (typeof DecompressionStream === "undefined")
    throw new Error("this browser lacks DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+ have it)");
  const raw = new Uint8Array(await new Response(new Blob([z]).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer());
  if (raw.length !== M.rawBytes) throw new Error("position data: " + raw.length + " bytes, expected " + M.rawBytes);
  const out = {}, TYPES = {f4: [Float32Array, 4], i4: [Int32Array, 4], u1: [Uint8Array, 1]};
  for (const a of M.arrays) {
    const [T, size] = TYPES[a.dtype], n = a.n, src = raw.subarray(a.offset, a.offset + n * size);
    let bytes = src;
    if (size > 1) {  // undo the byte shuffle
      bytes = new Uint8Array(n * size);
      for (let b = 0; b < size; b++) { const o = b * n; for (let i = 0; i < n; i++) bytes[i * size + b] = src[o + i]; }
    } else bytes = src.slice();
    out[a.name] = new T(bytes.buffer, 0, n);
  }
  return out;
}

// Reversed magma: pale for agreement, dark for drift.
const ANCHORS = ["#fcfdbf", "#fec287", "#fb8761", "#e55064", "#b5367a", "#812581", "#4f127b", "#1c1044", "#000004"];
const NAN_RGB = [0, 184, 212], INF_RGB = [0, 200, 83], MISSING_RGB = [215, 218, 222];
const LUT = (() => {
  const rgb = ANCHORS.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16))), lut = [];
  for (let i = 0; i < 256; i++) {
    const t = i / 255 * (rgb.length - 1), k = Math.min(Math.floor(t), rgb.length - 2), f = t - k;
    lut.push(rgb[k].map((v, c) => Math.round(v + (rgb[k + 1][c] - v) * f)));
  }
  return lut;
})();
const LO = M.scale.lo, HI = M.scale.hi;
function tOf(kl) { return kl <= 0 ? 0 : Math.min(1, Math.max(0, (Math.log10(kl) - LO) / (HI - LO))); }
function rgbOf(kl) {
  if (Number.isNaN(kl)) return NAN_RGB;
  if (kl === Infinity) return INF_RGB;
  return LUT[Math.round(tOf(kl) * 255)];
}
const css = (c) => "rgb(" + c.join(",") + ")";

function G() { return M.kinds[S.kind]; }
function arr(prefix) { return A[prefix + "/" + S.cand + "/" + S.kind]; }
function count(s) { return G().counts[S.cand][s]; }
// Row order: by sequence index, by where the argmax first differs (drift
// start as a staircase), or by the row's largest KL.
function sortRows() {
  const g = G(), n = g.seqs.length, idx = Array.from({length: n}, (_, i) => i);
  if (S.sort === "drift" && S.kind === "generated") {
    const f = M.cands[S.cand].seq.firstTop1, key = (s) => f[s] === null ? Infinity : f[s];
    idx.sort((a, b) => key(a) - key(b) || a - b);
  } else if (S.sort === "klmax") {
    const kl = arr("kl"), worst = idx.map((s) => {
      let m = -Infinity;
      for (let j = 0; j < count(s); j++) { const v = kl[g.off[s] + j]; if (Number.isNaN(v)) return Infinity; if (v > m) m = v; }
      return m;
    });
    idx.sort((a, b) => (worst[b] - worst[a]) || a - b);
  }
  S.order = idx; S.rowOf = new Array(n);
  idx.forEach((s, row) => { S.rowOf[s] = row; });
}

// -- heatmap ----------------------------------------------------------------
const ML = 44, MR = 18, MT = 6, MB = 30;
function draw() {
  const g = G(), n = g.seqs.length, kl = arr("kl");
  const cols = g.len.reduce((m, v) => Math.max(m, v), 1);
  const wrap = $("heat-wrap"), avail = Math.max(200, wrap.clientWidth || 960);
  S.PW = avail - ML - MR;
  S.bin = Math.max(1, Math.ceil(cols / Math.min(S.PW, 1600)));
  S.W = Math.ceil(cols / S.bin);
  // Thousands of sequences get one pixel a row: canvases stop at ~32k pixels.
  S.rowPx = Math.max(n > 1000 ? 1 : 2, Math.min(40, Math.floor(640 / Math.max(n, 1))));
  const PH = n * S.rowPx;
  const heat = $("heat"), ctx = heat.getContext("2d");
  heat.width = S.W; heat.height = Math.max(n, 1);
  heat.style.left = ML + "px"; heat.style.top = MT + "px"; heat.style.width = S.PW + "px"; heat.style.height = PH + "px";
  const img = ctx.createImageData(S.W, Math.max(n, 1)), px = img.data;
  sortRows();
  for (let row = 0; row < n; row++) {
    const s = S.order[row], off = g.off[s], have = count(s), len = g.len[s];
    for (let x = 0; x < S.W; x++) {
      const a = x * S.bin, b = Math.min(a + S.bin, len);
      let c = MISSING_RGB, best = -1;
      for (let j = a; j < b && j < have; j++) {  // a bin shows its worst cell: NaN, then inf, then the largest KL
        const v = kl[off + j], r = Number.isNaN(v) ? 3 : v === Infinity ? 2 : 1 + tOf(v) * 0.999;
        if (r > best) { best = r; c = rgbOf(v); }
      }
      const p = (row * S.W + x) * 4;
      px[p] = c[0]; px[p + 1] = c[1]; px[p + 2] = c[2]; px[p + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
  const over = $("heat-over"), dpr = window.devicePixelRatio || 1;
  const OW = ML + S.PW + MR, OH = MT + PH + MB;
  wrap.style.height = OH + "px";
  over.width = Math.round(OW * dpr); over.height = Math.round(OH * dpr);
  over.style.width = OW + "px"; over.style.height = OH + "px";
  drawOver();
}
function xOf(j) { return ML + (j / S.bin) * (S.PW / S.W); }
function cellW() { return S.PW / S.W; }
function drawOver() {
  const g = G(), n = g.seqs.length, over = $("heat-over"), dpr = window.devicePixelRatio || 1;
  const c = over.getContext("2d");
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.clearRect(0, 0, over.width, over.height);
  c.font = "11px system-ui, sans-serif"; c.fillStyle = "#444"; c.strokeStyle = "#999";
  const PH = n * S.rowPx, cols = g.len.reduce((m, v) => Math.max(m, v), 1);
  c.strokeRect(ML - 0.5, MT - 0.5, S.PW + 1, PH + 1);
  // y: sequence numbers
  const every = niceStep(n, Math.max(1, Math.floor(PH / 16)));
  c.textAlign = "right"; c.textBaseline = "middle";
  for (let row = 0; row < n; row += every) c.fillText(String(g.seqs[S.order[row]]), ML - 4, MT + (row + 0.5) * S.rowPx);
  // x: position ticks
  c.textAlign = "center"; c.textBaseline = "top";
  const step = niceStep(cols, Math.max(2, Math.floor(S.PW / 70)));
  for (let j = 0; j <= cols; j += step) {
    const x = xOf(j) + (S.bin === 1 ? cellW() / 2 : 0);
    if (x > ML + S.PW + 1) break;
    c.fillRect(x, MT + PH, 1, 4); c.fillText(String(j), x, MT + PH + 5);
  }
  c.fillText(S.kind === "generated" ? "generated token index" : "prompt position", ML + S.PW / 2, MT + PH + 17);
  // where drift starts, per sequence
  if (S.kind === "generated") {
    const q = M.cands[S.cand].seq, h = S.rowPx;
    for (let s = 0; s < n; s++) {
      const y = MT + S.rowOf[s] * h, d = q.firstDiv[s], t = q.firstTop1[s];
      if (d !== null) markBox(c, d, y, h);
      if (t !== null) mark(c, t, y, h, "#1f6feb", null);
    }
  }
  if (S.sel && S.sel.kind === S.kind) {
    const x = xOf(Math.floor(S.sel.j / S.bin) * S.bin), y = MT + S.rowOf[S.sel.s] * S.rowPx;
    c.lineWidth = 2; c.strokeStyle = "#00e5ff"; c.strokeRect(x - 1, y - 1, Math.max(cellW(), 2) + 2, S.rowPx + 2);
    c.lineWidth = 1; c.strokeStyle = "#000"; c.strokeRect(x - 2.5, y - 2.5, Math.max(cellW(), 2) + 5, S.rowPx + 5);
  }
}
// The first divergent token: a white frame in a black one around the cell
// (the argmax tick can sit inside it); a framed tick where cells are too small.
function markBox(c, j, y, h) {
  const w = cellW();
  if (w < 5 || h < 5) { mark(c, j, y, h, "#fff", "#000"); return; }
  const x = xOf(Math.floor(j / S.bin) * S.bin);
  c.lineWidth = 1; c.strokeStyle = "#000"; c.strokeRect(x + 0.5, y + 0.5, w - 1, h - 1);
  c.strokeStyle = "#fff"; c.strokeRect(x + 1.5, y + 1.5, w - 3, h - 3);
}
function mark(c, j, y, h, fill, edge) {
  const x = xOf(Math.floor(j / S.bin) * S.bin) + Math.min(cellW(), 6) / 2, w = 2;
  if (edge) { c.fillStyle = edge; c.fillRect(x - w / 2 - 1, y, w + 2, h); }
  c.fillStyle = fill; c.fillRect(x - w / 2, y + (edge && h > 2 ? 1 : 0), w, edge && h > 2 ? h - 2 : h);
}
function niceStep(span, ticks) {
  const raw = span / ticks, p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return Math.max(1, m * p);
  return Math.max(1, 10 * p);
}
function legend() {
  const el = $("legend"); el.textContent = "";
  const bar = h("canvas", {width: 260, height: 12, style: "border:1px solid #999;vertical-align:middle"});
  const c = bar.getContext("2d");
  for (let x = 0; x < 260; x++) { c.fillStyle = css(LUT[Math.round(x / 259 * 255)]); c.fillRect(x, 0, 1, 12); }
  if (M.scale.maxKl) {
    const x = (Math.log10(M.scale.maxKl) - LO) / (HI - LO) * 259;
    c.fillStyle = "#cf222e"; c.fillRect(Math.round(x) - 1, 0, 2, 12);
  }
  el.append(h("span", {}, "KL ≤ 1e" + LO + " ", bar, " ≥ 1e" + HI + (M.scale.maxKl ? " (red: --max-kl " + M.scale.maxKl + ")" : "")));
  const sw = (rgb, label) => h("span", {}, h("span", {class: "sw", style: "background:" + css(rgb)}), label);
  el.append(sw(NAN_RGB, "NaN"), sw(INF_RGB, "+inf"), sw(MISSING_RGB, "not compared"));
  el.append(h("span", {}, h("span", {class: "sw", style: "background:#1f6feb"}), "first argmax disagreement"));
  el.append(h("span", {}, h("span", {class: "sw", style: "background:transparent;border:2px solid #000;outline:1px solid #fff;outline-offset:-3px"}), "first divergent token"));
  if (S.bin > 1) el.append(h("span", {class: "mute"}, "each column: " + S.bin + " positions (their worst)"));
}

// -- hit testing, tooltip, selection ----------------------------------------
function hit(ev) {
  const r = $("heat-over").getBoundingClientRect(), x = ev.clientX - r.left - ML, y = ev.clientY - r.top - MT;
  const g = G(), n = g.seqs.length;
  if (x < 0 || y < 0 || x >= S.PW || y >= n * S.rowPx) return null;
  const s = S.order[Math.floor(y / S.rowPx)], col = Math.floor(x / cellW());
  const a = col * S.bin, b = Math.min(a + S.bin, count(s));
  if (a >= b) return {s, j: a, missing: true};
  let j = a, best = -1; const kl = arr("kl"), off = g.off[s];
  for (let k = a; k < b; k++) {
    const v = kl[off + k], r2 = Number.isNaN(v) ? 3 : v === Infinity ? 2 : 1 + tOf(v) * 0.999;
    if (r2 > best) { best = r2; j = k; }
  }
  return {s, j, missing: false};
}
function posOf(s, j) { return G().base[s] + j; }
function tip(ev) {
  const t = $("tip"), p = hit(ev);
  if (!p) { t.style.display = "none"; return; }
  const g = G(), seq = g.seqs[p.s];
  let lines;
  if (p.missing) lines = ["sequence " + seq + ", index " + p.j + ": not compared by this candidate"];
  else {
    const cell = g.off[p.s] + p.j, kl = arr("kl")[cell], agree = arr("top1")[cell];
    const tok = A["tok/" + S.kind][cell];
    lines = ["sequence " + seq + " · position " + posOf(p.s, p.j) + (S.kind === "generated" ? " (generated index " + p.j + ")" : ""),
             "token " + tokLabel(tok), "KL " + fmt(kl) + " · argmax " + (agree ? "agrees" : "DIFFERS")];
    const d = detailRow(p.s, p.j);
    if (d !== null) {
      const ids = A["dids/" + S.cand + "/" + S.kind], lp = A["dlp/" + S.cand + "/" + S.kind];
      lines.push("ref top: " + tokLabel(ids[d * 10]) + " p=" + fmt(Math.exp(lp[d * 10]), 3)
                 + "\ncand top: " + tokLabel(ids[d * 10 + 5]) + " p=" + fmt(Math.exp(lp[d * 10 + 5]), 3));
    }
    if (S.bin > 1) lines.push("(worst of positions " + (posOf(p.s, Math.floor(p.j / S.bin) * S.bin)) + "–" + (posOf(p.s, Math.min((Math.floor(p.j / S.bin) + 1) * S.bin, g.len[p.s]) - 1)) + ")");
    lines.push("click for top-5");
  }
  t.textContent = lines.join("\n"); t.style.display = "block";
  const w = t.offsetWidth, hgt = t.offsetHeight;
  t.style.left = Math.min(ev.clientX + 14, window.innerWidth - w - 4) + "px";
  t.style.top = Math.min(ev.clientY + 14, window.innerHeight - hgt - 4) + "px";
}
// The detail row of candidate position (s, j): details follow the
// candidate's own position order; with a cap, a sorted list says which are in.
function detailRow(s, j) {
  const d = M.cands[S.cand].details[S.kind];
  if (!d || j >= count(s)) return null;
  const counts = G().counts[S.cand];
  let i = j; for (let k = 0; k < s; k++) i += counts[k];
  if (!d.sel) return i;
  const sel = A["dsel/" + S.cand + "/" + S.kind];
  let lo = 0, hi = sel.length - 1;
  while (lo <= hi) { const m = (lo + hi) >> 1; if (sel[m] === i) return m; if (sel[m] < i) lo = m + 1; else hi = m - 1; }
  return null;
}

function select(s, j, scroll) {
  const g = G();
  if (s < 0 || s >= g.seqs.length) return false;
  j = Math.max(0, Math.min(j, Math.max(count(s), 1) - 1));
  S.sel = {s, j, kind: S.kind};
  drawOver(); panel();
  if (scroll) $("panel").scrollIntoView({block: "nearest"});
  return true;
}
function panel() {
  const P = $("panel"), g = G(), {s, j} = S.sel, seq = g.seqs[s], cell = g.off[s] + j;
  P.textContent = "";
  const label = NC > 1 ? M.labels[S.cand] + " · " : "";
  if (j >= count(s)) { P.append(h("p", {}, label + "sequence " + seq + ": no compared positions for this candidate")); return; }
  const kl = arr("kl")[cell], agree = arr("top1")[cell], toks = A["tok/" + S.kind], tok = toks[cell];
  P.append(h("h3", {}, label + "sequence " + seq + ", " + S.kind + " position " + posOf(s, j)
             + (S.kind === "generated" ? " (generated index " + j + ")" : "")));
  P.append(h("p", {}, "KL(ref ‖ cand) ", h("b", {"data-role": "kl"}, fmt(kl)), " nats · argmax ",
             h("b", {class: agree ? "pass" : "fail"}, agree ? "agrees" : "differs"), " · token ", h("code", {}, tokLabel(tok))));
  // context: the tokens before this one, then the token itself; tokens
  // alternate in shade so their boundaries show
  const ctx = h("div", {class: "ctx"}), from = Math.max(0, j - 24);
  const shown = (id) => { const t = text(id); return t === null ? "[" + id + "]" : t.replace(/\n/g, "↵\n"); };
  for (let k = from; k < j; k++) {
    const id = toks[g.off[s] + k];
    ctx.append(h("span", {class: (k - j) % 2 ? "t1" : "t0", title: "#" + id}, shown(id)));
  }
  ctx.append(h("mark", {title: "#" + tok}, shown(tok)));
  P.append(h("div", {class: "small mute"}, "context (the reference's tokens; this row predicts the marked one):"), ctx);
  const d = detailRow(s, j);
  if (d === null) {
    const det = M.cands[S.cand].details[S.kind];
    P.append(h("p", {class: "mute", "data-role": "no-detail"}, det
      ? "Top-5 not embedded for this position: the page keeps " + det.n.toLocaleString() + " of " + det.of.toLocaleString() + " (the largest KL and where drift starts)."
      : "No top-5 lists in this report (made without details=True)."));
  } else {
    const ids = A["dids/" + S.cand + "/" + S.kind], lp = A["dlp/" + S.cand + "/" + S.kind];
    const refIds = Array.from(ids.subarray(d * 10, d * 10 + 5)), candIds = Array.from(ids.subarray(d * 10 + 5, d * 10 + 10));
    const tb = h("tbody");
    for (let k = 0; k < 5; k++) {
      const ri = ids[d * 10 + k], rl = lp[d * 10 + k], ci = ids[d * 10 + 5 + k], cl = lp[d * 10 + 5 + k];
      const rin = candIds.indexOf(ri), cin = refIds.indexOf(ci);
      const cell2 = (id, l, other) => [h("td", {class: "id"}, id < 0 ? "-" : String(id)),
        h("td", {class: "l"}, id < 0 ? "" : (text(id) === null ? "" : JSON.stringify(text(id)))),
        h("td", {}, id < 0 ? "" : fmt(l)), h("td", {}, id < 0 ? "" : fmt(Math.exp(l))),
        h("td", {class: "mute"}, id < 0 ? "" : other < 0 ? "–" : "#" + (other + 1))];
      tb.append(h("tr", {class: ri !== ci ? "diff" : ""}, h("td", {}, String(k + 1)), ...cell2(ri, rl, rin), ...cell2(ci, cl, cin)));
    }
    const th = (...c) => h("tr", {}, ...c.map((x) => h("th", {class: x.endsWith("text") ? "l" : ""}, x)));
    P.append(h("table", {class: "top5", "data-role": "top5"}, h("thead", {},
      th("rank", "ref id", "ref text", "ref logprob", "ref p", "in cand", "cand id", "cand text", "cand logprob", "cand p", "in ref")), tb));
  }
  profile(s, j);
  P.dataset.filled = [seq, posOf(s, j), d === null ? "nodetail" : "detail"].join(",");
}
// The selected sequence's KL along its positions; click it to move.
function profile(s, j) {
  const P = $("panel"), g = G(), have = count(s), kl = arr("kl"), off = g.off[s];
  const W = Math.max(300, P.clientWidth - 32), H = 130, L = 48, B = 18, T = 8;
  const cv = h("canvas", {id: "profile", width: Math.round(W * (window.devicePixelRatio || 1)), height: Math.round(H * (window.devicePixelRatio || 1)),
                          style: "width:" + W + "px;height:" + H + "px"});
  const c = cv.getContext("2d"), dpr = window.devicePixelRatio || 1;
  c.setTransform(dpr, 0, 0, dpr, 0, 0);
  c.font = "10px system-ui, sans-serif"; c.fillStyle = "#fafbfc"; c.fillRect(L, T, W - L - 4, H - T - B);
  const X = (k) => L + (W - L - 4) * (have > 1 ? k / (have - 1) : 0.5);
  const Y = (v) => T + (H - T - B) * (1 - tOf(v));
  c.fillStyle = "#666"; c.textAlign = "right"; c.textBaseline = "middle";
  for (let e = LO; e <= HI; e += Math.max(1, Math.round((HI - LO) / 4))) {
    const y = T + (H - T - B) * (1 - (e - LO) / (HI - LO));
    c.fillText("1e" + e, L - 4, y); c.fillStyle = "#e6e9ec"; c.fillRect(L, y, W - L - 4, 1); c.fillStyle = "#666";
  }
  if (M.scale.maxKl) { c.fillStyle = "#cf222e"; c.fillRect(L, Y(M.scale.maxKl), W - L - 4, 1); }
  const q = M.cands[S.cand].seq;
  if (S.kind === "generated") {
    if (q.firstTop1[s] !== null) { c.fillStyle = "#1f6feb"; c.fillRect(X(q.firstTop1[s]) - 1, T, 2, H - T - B); }
    if (q.firstDiv[s] !== null) { c.fillStyle = "#000"; c.fillRect(X(q.firstDiv[s]) - 1, T, 2, H - T - B); }
  }
  c.strokeStyle = "#8250df"; c.lineWidth = 1.2; c.beginPath();
  let pen = false;
  for (let k = 0; k < have; k++) {
    const v = kl[off + k];
    if (!Number.isFinite(v)) { pen = false; c.fillStyle = Number.isNaN(v) ? css(NAN_RGB) : css(INF_RGB); c.fillRect(X(k) - 2, T, 4, 4); continue; }
    if (pen) c.lineTo(X(k), Y(v)); else c.moveTo(X(k), Y(v));
    pen = true;
  }
  c.stroke();
  c.fillStyle = "#00a3b8"; c.fillRect(X(j) - 1, T, 2, H - T - B);
  c.fillStyle = "#666"; c.textAlign = "left"; c.textBaseline = "top"; c.fillText("0", L, H - B + 4);
  c.textAlign = "right"; c.fillText(String(have - 1), W - 4, H - B + 4);
  c.textAlign = "center"; c.fillText("KL along sequence " + g.seqs[s] + " (click to move)", (L + W) / 2, H - B + 4);
  cv.addEventListener("click", (ev) => {
    const r = cv.getBoundingClientRect(), f = (ev.clientX - r.left - L) / (W - L - 4);
    select(s, Math.round(f * Math.max(have - 1, 0)), false);
  });
  P.append(cv);
}

// -- tabs, hash, keys -----------------------------------------------------------
function tabs() {
  const ct = $("cand-tabs"), kt = $("kind-tabs");
  ct.textContent = ""; kt.textContent = "";
  if (NC > 1) {
    ct.append(h("span", {class: "lbl"}, "candidate:"));
    M.labels.forEach((l, i) => {
      const b = h("button", {"aria-pressed": String(i === S.cand), title: M.verdicts[i]}, l + (M.verdicts[i] === "fail" ? " ✗" : M.verdicts[i] === "pass" ? " ✓" : ""));
      b.addEventListener("click", () => setCand(i));
      ct.append(b);
    });
  }
  if (KINDS.length > 1) {
    kt.append(h("span", {class: "lbl"}, "positions:"));
    for (const k of KINDS) {
      const b = h("button", {"aria-pressed": String(k === S.kind)}, k);
      b.addEventListener("click", () => { S.kind = k; S.sel = null; tabs(); draw(); legend(); });
      kt.append(b);
    }
  }
  const st = $("sort-tabs"); st.textContent = "";
  if (G() && G().seqs.length > 2) {
    st.append(h("span", {class: "lbl"}, "rows:"));
    const opts = [["index", "by sequence"], ["drift", "by first argmax disagreement"], ["klmax", "by largest KL"]];
    for (const [k, label] of opts) {
      if (k === "drift" && S.kind !== "generated") continue;
      const b = h("button", {"aria-pressed": String(k === S.sort)}, label);
      b.addEventListener("click", () => { S.sort = k; tabs(); draw(); });
      st.append(b);
    }
  }
  document.querySelectorAll("section.cand-only").forEach((el) => el.classList.toggle("active", Number(el.dataset.cand) === S.cand));
}
function setCand(i) {
  S.cand = i; tabs(); draw(); legend();
  if (S.sel && S.sel.kind === S.kind) panel();
}
function fromHash() {
  const m = /select=(\d+),(\d+)/.exec(location.hash);
  if (!m) return false;
  const p = new URLSearchParams(location.hash.slice(1));
  const cand = Math.max(1, Math.min(NC, Number(p.get("cand") || 1))) - 1, kind = p.get("kind") || "generated";
  if (!M.kinds[kind]) { body.dataset.selected = "error: no " + kind + " positions"; return false; }
  const sort = p.get("rows") || S.sort;
  if (kind !== S.kind || cand !== S.cand || sort !== S.sort) { S.kind = kind; S.cand = cand; S.sort = sort; tabs(); draw(); legend(); }
  const g = G(), s = g.seqs.indexOf(Number(m[1]));
  if (s < 0) { body.dataset.selected = "error: no sequence " + m[1]; return false; }
  const j = Number(m[2]) - g.base[s];
  if (j < 0 || j >= count(s)) { body.dataset.selected = "error: position " + m[2] + " not compared"; return false; }
  select(s, j, !(p.has("probe") || p.has("tip")));
  const P = $("panel"), rows = P.querySelectorAll("table[data-role=top5] tbody tr").length;
  const ok = P.querySelector("[data-role=kl]") && (rows === 5 || P.querySelector("[data-role=no-detail]"));
  body.dataset.selected = ok ? "ok:" + P.dataset.filled : "error: the panel was not filled";
  if (p.has("probe")) probe(s, j);
  if (p.has("tip")) $("heat-over").dispatchEvent(new MouseEvent("mousemove", cellPoint(s, j)));
  return true;
}
function cellPoint(s, j) {
  const r = $("heat-over").getBoundingClientRect();
  return {clientX: r.left + xOf(Math.floor(j / S.bin) * S.bin) + cellW() / 2, clientY: r.top + MT + (S.rowOf[s] + 0.5) * S.rowPx, bubbles: true};
}
// For the browser test (#select=...&probe): the real mouse and key handlers
// on the selected cell, with their outcome written into the DOM.
function probe(s, j) {
  const over = $("heat-over"), at = cellPoint(s, j);
  over.dispatchEvent(new MouseEvent("mousemove", at));
  const t = $("tip"), seq = G().seqs[s];
  const hovered = t.style.display === "block" && t.textContent.startsWith("sequence " + seq + " · position " + posOf(s, j)) && t.textContent.includes("KL ");
  S.sel = null;
  over.dispatchEvent(new MouseEvent("click", at));
  const clicked = S.sel && S.sel.s === s && S.sel.j === j;
  over.dispatchEvent(new KeyboardEvent("keydown", {key: j + 1 < count(s) ? "ArrowRight" : "ArrowLeft", bubbles: true}));
  const moved = S.sel && S.sel.s === s && Math.abs(S.sel.j - j) === 1;
  over.dispatchEvent(new MouseEvent("mouseleave", at));
  body.dataset.probe = hovered && clicked && moved && t.style.display === "none" ? "ok"
    : "error: hover " + hovered + ", click " + clicked + ", key " + moved + ": " + t.textContent.split("\n")[0];
}
function keys(ev) {
  if (!S.sel || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const d = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]}[ev.key];
  if (!d || S.sel.kind !== S.kind) return;
  ev.preventDefault();
  const row = Math.max(0, Math.min(G().seqs.length - 1, S.rowOf[S.sel.s] + d[0]));
  select(S.order[row], S.sel.j + d[1], false);
}

async function main() {
  A = await unpack();
  if (!KINDS.length) { $("panel").textContent = "No positions were compared."; body.dataset.rendered = "ok"; return; }
  // Candidate sections become tabs only once the page works: a page whose
  // script fails still shows every section.
  document.documentElement.classList.add("js");
  tabs(); draw(); legend();
  const over = $("heat-over");
  over.addEventListener("mousemove", tip);
  over.addEventListener("mouseleave", () => { $("tip").style.display = "none"; });
  over.addEventListener("click", (ev) => {
    const p = hit(ev);
    if (p && !p.missing) { select(p.s, p.j, false); over.focus({preventScroll: true}); }
  });
  // Arrow keys move the selection while the heatmap has the focus; elsewhere they scroll.
  over.addEventListener("keydown", keys);
  window.addEventListener("hashchange", fromHash);
  let pending = 0;
  window.addEventListener("resize", () => { clearTimeout(pending); pending = setTimeout(() => { draw(); }, 150); });
  body.dataset.renderMs = String(Math.round(performance.now() - T0));
  body.dataset.rendered = "ok";
  fromHash();
}
main().catch((e) => fail("render failed: " + (e && e.stack || e)));
})();
