// mscreen plate map: plain JS, no framework, no build step, nothing loaded from elsewhere.
//
// Every API call sends the X-API-Key header. EventSource cannot send headers, so the scan's
// server-sent events are read with fetch() and a small ReadableStream parser; images are
// fetched the same way and shown through object URLs.
"use strict";

const API = "api/v1"; // relative, so the page also works behind a path prefix
const ROWS = "ABCDEFGH".split("");
const COLUMNS = Array.from({ length: 12 }, (_, i) => i + 1);
const FINISHED = new Set(["completed", "failed", "cancelled"]);
const KEY_STORAGE = "mscreen.apiKey";
const BARCODE_STORAGE = "mscreen.barcode";

// QC flags the pipeline and worker set, with the symbol shown in the well.
const QC_SYMBOLS = {
  acquisition_failed: "✕",
  overexposed: "☀",
  underexposed: "◐",
  out_of_focus: "≈",
};
const QC_NAMES = {
  acquisition_failed: "acquisition failed",
  overexposed: "overexposed",
  underexposed: "underexposed",
  out_of_focus: "out of focus",
};
const METRICS = [
  ["auc", "AUC"],
  ["f1", "F1"],
  ["accuracy", "Accuracy"],
  ["sensitivity", "Sensitivity"],
  ["specificity", "Specificity"],
  ["ppv", "PPV"],
  ["npv", "NPV"],
];
const HTTP_REASONS = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
  409: "Conflict", 422: "Unprocessable Content", 500: "Internal Server Error",
  503: "Service Unavailable",
};

const state = {
  barcode: null,
  scan: null, // ScanPublic of the scan shown
  wells: new Map(), // well name -> WellResultPublic
  fct: new Map(), // well name -> {cd73_pct, cd90_pct, label, event_count}
  evaluation: null,
  selected: null,
  field: 0,
  stream: null, // AbortController of the event stream being read
  panelToken: 0, // guards against late image responses for a previously selected well
  objectUrls: [],
};

const $ = (id) => document.getElementById(id);
const wellButtons = new Map();
const agreementCells = new Map();

// -- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }

  toString() {
    if (!this.status) return this.detail;
    const reason = HTTP_REASONS[this.status] ? ` ${HTTP_REASONS[this.status]}` : "";
    return `${this.status}${reason}: ${this.detail}`;
  }
}

function formatDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc: ["body", "wells", 0], msg: "..."}]
    return detail
      .map((e) => {
        if (!e || typeof e !== "object" || !e.msg) return JSON.stringify(e);
        const where = (e.loc || []).filter((part) => part !== "body").join(".");
        return where ? `${where}: ${e.msg}` : e.msg;
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") {
    // Upload errors: {message, errors: [{row, field, message}]}
    if (detail.message) return detail.message;
    return JSON.stringify(detail);
  }
  return String(detail);
}

async function errorDetail(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    return formatDetail(body && "detail" in body ? body.detail : body);
  } catch {
    return text || response.statusText || "request failed";
  }
}

async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const sent = { ...headers };
  const key = $("api-key").value.trim();
  if (key) sent["X-API-Key"] = key;
  let payload = body;
  if (body !== undefined && typeof body !== "string") {
    sent["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body: payload, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the service did not answer (${err.message})`);
  }
  if (!response.ok) throw new ApiError(response.status, await errorDetail(response));
  return response;
}

const getJson = async (path, options) => (await api(path, options)).json();
const plateUrl = (barcode) => `${API}/plates/${encodeURIComponent(barcode)}`;

// -- Server-sent events over fetch ------------------------------------------------------------

function parseSseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(":")) continue; // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}

async function* readSse(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // An event ends at the first blank line.
      for (let m = /\r?\n\r?\n/.exec(buffer); m; m = /\r?\n\r?\n/.exec(buffer)) {
        const parsed = parseSseBlock(buffer.slice(0, m.index));
        buffer = buffer.slice(m.index + m[0].length);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

async function followScan(scanId) {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  let ended = false;
  try {
    const response = await api(`${API}/scans/${scanId}/events`, {
      signal: controller.signal,
      headers: { Accept: "text/event-stream" },
    });
    for await (const { event, data } of readSse(response)) {
      const body = JSON.parse(data);
      if (event === "well") {
        if (state.scan && body.scan_id !== state.scan.id) continue;
        state.wells.set(body.well, body);
        renderWell(body.well);
        renderSummary();
        if (body.well === state.selected) showPanel(body.well);
      } else if (event === "progress") {
        state.scan = body;
        renderProgress();
        renderTitle();
      } else if (event === "end") {
        ended = true;
        const ok = body.status === "completed";
        const error = state.scan && state.scan.error ? `: ${state.scan.error}` : "";
        setStatus(`Scan #${body.id} ${body.status}${error}.`, ok ? "ok" : "error");
      }
    }
    if (!ended) setStatus(`The event stream of scan #${scanId} closed early; load the plate again.`, "error");
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
    return;
  } finally {
    if (state.stream === controller) state.stream = null;
  }
  // Ground truth may already exist (uploaded before the scan): show the agreement at once.
  await loadGroundTruth(state.barcode).catch(showError);
}

// -- Status line and progress ------------------------------------------------------------------

function setStatus(text, kind = "info") {
  const el = $("status");
  el.textContent = text;
  el.dataset.kind = kind;
}

function showError(err) {
  setStatus(err instanceof ApiError ? `Error ${err}` : `Error: ${err.message || err}`, "error");
}

function renderProgress() {
  const scan = state.scan;
  $("progress").hidden = !scan;
  if (!scan) return;
  const pct = Math.round(scan.progress * 100);
  $("progress-fill").style.width = `${pct}%`;
  $("progress-bar").setAttribute("aria-valuenow", String(pct));
  $("progress-bar").dataset.status = scan.status;
  $("progress-text").textContent =
    `Scan #${scan.id} · ${scan.status} · ${scan.wells_done} / ${scan.wells_total} wells (${pct} %)`;
}

// -- Plate grid --------------------------------------------------------------------------------

function buildPlate(container, onCell, attribute) {
  const cells = new Map();
  container.appendChild(document.createElement("span")); // corner
  for (const column of COLUMNS) {
    const head = document.createElement("span");
    head.className = "plate-head";
    head.textContent = column;
    head.setAttribute("aria-hidden", "true");
    container.appendChild(head);
  }
  for (const row of ROWS) {
    const head = document.createElement("span");
    head.className = "plate-head";
    head.textContent = row;
    head.setAttribute("aria-hidden", "true");
    container.appendChild(head);
    for (const column of COLUMNS) {
      const name = `${row}${column}`;
      const cell = document.createElement("button");
      cell.type = "button";
      cell.className = "well";
      cell.setAttribute(attribute, name);
      cell.addEventListener("click", () => onCell(name));
      container.appendChild(cell);
      cells.set(name, cell);
    }
  }
  return cells;
}

// Diverging colour: the call picks the hue (green high, red low), confidence its strength.
const HIGH_RGB = [26, 150, 65];
const LOW_RGB = [215, 48, 39];
const PAPER_RGB = [246, 246, 246];

function callColour(label, probability) {
  const confidence = label === "high" ? probability : 1 - probability; // 0.5 .. 1
  const t = Math.min(1, Math.max(0, (confidence - 0.5) * 2));
  const mix = 0.3 + 0.7 * t;
  const target = label === "high" ? HIGH_RGB : LOW_RGB;
  const rgb = target.map((c, i) => Math.round(PAPER_RGB[i] + (c - PAPER_RGB[i]) * mix));
  const luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255;
  return { fill: `rgb(${rgb.join(",")})`, ink: luminance < 0.55 ? "#fff" : "#1f2328" };
}

function qcSymbol(result) {
  for (const flag of result.qc_flags) if (QC_SYMBOLS[flag]) return QC_SYMBOLS[flag];
  if (result.status === "failed") return QC_SYMBOLS.acquisition_failed;
  if (result.status === "excluded" || result.qc_flags.length) return "⊘";
  return "";
}

const qcText = (flags) => (flags.length ? flags.map((f) => QC_NAMES[f] || f).join(", ") : "none");
const fmtP = (p) => (p === null || p === undefined ? "–" : p.toFixed(3));

function describe(result) {
  if (!result) return "not scanned";
  const qc = result.qc_flags.length ? `; QC: ${qcText(result.qc_flags)}` : "";
  if (result.label) return `${result.label}, P(high) ${fmtP(result.probability)}${qc}`;
  return `${result.status === "failed" ? "acquisition failed" : "excluded"}, no call${qc}`;
}

function renderWell(name) {
  const cell = wellButtons.get(name);
  const result = state.wells.get(name);
  cell.style.removeProperty("--fill");
  cell.style.removeProperty("--ink");
  delete cell.dataset.label;
  cell.classList.remove("qc");
  cell.textContent = "";
  if (!result) {
    cell.dataset.state = "empty";
  } else {
    cell.dataset.state = result.status;
    if (result.label && result.probability !== null) {
      const { fill, ink } = callColour(result.label, result.probability);
      cell.dataset.label = result.label;
      cell.style.setProperty("--fill", fill);
      cell.style.setProperty("--ink", ink);
    }
    if (result.status !== "ok" || result.qc_flags.length) cell.classList.add("qc");
    cell.textContent = qcSymbol(result);
  }
  const label = `${name}: ${describe(result)}`;
  cell.setAttribute("aria-label", label);
  cell.title = label;
  const selected = name === state.selected;
  cell.classList.toggle("selected", selected);
  cell.setAttribute("aria-pressed", String(selected));
}

function renderPlate() {
  for (const name of wellButtons.keys()) renderWell(name);
  renderTitle();
  renderSummary();
}

function renderTitle() {
  const scan = state.scan;
  if (!state.barcode) {
    $("plate-title").textContent = "No plate loaded";
    return;
  }
  const parts = [state.barcode];
  if (scan) {
    parts.push(`scan #${scan.id}`, scan.objective);
    if (scan.model) parts.push(`${scan.model.name} v${scan.model.version}`);
  }
  $("plate-title").textContent = parts.join(" · ");
}

function renderSummary() {
  if (!state.barcode) {
    $("plate-summary").textContent = "";
    return;
  }
  let high = 0;
  let low = 0;
  let noCall = 0;
  for (const result of state.wells.values()) {
    if (result.label === "high") high += 1;
    else if (result.label === "low") low += 1;
    else noCall += 1;
  }
  const total = state.scan ? state.scan.wells_total : 96;
  $("plate-summary").textContent =
    `${high} high · ${low} low · ${noCall} no call · ${total - state.wells.size} not yet scanned`;
}

// -- Well panel --------------------------------------------------------------------------------

function releaseObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

async function loadImage(kind, name, field, token, img, caption, captionText) {
  img.removeAttribute("src");
  img.alt = "";
  caption.textContent = `${captionText} (loading…)`;
  caption.classList.remove("error");
  const query = new URLSearchParams({ field: String(field) });
  if (state.scan) query.set("scan_id", String(state.scan.id));
  try {
    const response = await api(
      `${plateUrl(state.barcode)}/wells/${encodeURIComponent(name)}/${kind}?${query}`,
    );
    const blob = await response.blob();
    if (token !== state.panelToken) return;
    const url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    img.src = url;
    img.alt = `${captionText} of well ${name}, field ${field}`;
    caption.textContent = captionText;
  } catch (err) {
    if (token !== state.panelToken) return;
    caption.textContent = `${captionText}: ${err instanceof ApiError ? err.toString() : err.message}`;
    caption.classList.add("error");
  }
}

function showPanel(name) {
  const result = state.wells.get(name);
  $("panel-title").textContent = `Well ${name}`;
  $("panel-empty").hidden = Boolean(result);
  $("panel-body").hidden = !result;
  if (!result) {
    $("panel-empty").textContent = `${name} has no result in this scan yet.`;
    return;
  }
  const badge = $("panel-call");
  badge.dataset.label = result.label || "none";
  badge.textContent = result.label
    ? `${result.label === "high" ? "High" : "Low"} functionality`
    : `No call (${result.status})`;
  $("panel-probability").textContent = fmtP(result.probability);
  $("panel-label").textContent = result.label || `none (${result.status})`;
  $("panel-confluence").textContent =
    result.confluence_pct === null ? "–" : `${result.confluence_pct.toFixed(1)} %`;
  $("panel-qc").textContent = qcText(result.qc_flags) + (result.error ? ` (${result.error})` : "");
  const perWell = state.scan ? state.scan.fields_per_well : result.fields_used;
  $("panel-fields").textContent = `${result.fields_used} of ${perWell}`;
  $("panel-model").textContent = result.model ? `${result.model.name} v${result.model.version}` : "–";
  $("panel-scan").textContent = `#${result.scan_id}`;
  const fct = state.fct.get(name);
  $("panel-fct").textContent = fct
    ? `${fct.label} (CD73 ${fct.cd73_pct.toFixed(1)} %, CD90 ${fct.cd90_pct.toFixed(1)} %)` +
      (result.label ? (fct.label === result.label ? " · agrees" : " · disagrees") : "")
    : "not uploaded";

  const fields = Math.max(1, perWell);
  const select = $("panel-field");
  if (select.options.length !== fields) {
    select.replaceChildren(
      ...Array.from({ length: fields }, (_, i) => new Option(`${i + 1} of ${fields}`, String(i))),
    );
  }
  if (state.field >= fields) state.field = 0;
  select.value = String(state.field);
  $("panel-field-select").hidden = fields < 2;

  releaseObjectUrls();
  state.panelToken += 1;
  const token = state.panelToken;
  loadImage("image", name, state.field, token, $("panel-image"), $("panel-image-caption"),
    "Field image");
  loadImage("overlay", name, state.field, token, $("panel-overlay"), $("panel-overlay-caption"),
    "Model overlay (green high, red low)");
}

function selectWell(name) {
  const previous = state.selected;
  state.selected = name;
  if (previous) renderWell(previous);
  renderWell(name);
  renderAgreement();
  showPanel(name);
}

function clearPanel() {
  state.selected = null;
  state.panelToken += 1;
  releaseObjectUrls();
  $("panel-title").textContent = "Well details";
  $("panel-empty").textContent = "Click a well to see its image, overlay and call.";
  $("panel-empty").hidden = false;
  $("panel-body").hidden = true;
}

// -- Agreement with FCT ------------------------------------------------------------------------

function renderAgreement() {
  const evaluation = state.evaluation;
  $("agreement").hidden = !evaluation;
  if (!evaluation) return;
  let agree = 0;
  let disagree = 0;
  let noCall = 0;
  for (const [name, cell] of agreementCells) {
    const fct = state.fct.get(name);
    const result = state.wells.get(name);
    let verdict = "none";
    let text = "no FCT";
    cell.textContent = "";
    if (fct && result && result.label) {
      verdict = fct.label === result.label ? "agree" : "disagree";
      cell.textContent = verdict === "agree" ? "✓" : "✗";
      text = `model ${result.label}, FCT ${fct.label}: ${verdict === "agree" ? "agrees" : "disagrees"}`;
      if (verdict === "agree") agree += 1;
      else disagree += 1;
    } else if (fct) {
      verdict = "nocall";
      text = `FCT ${fct.label}, no model call`;
      noCall += 1;
    }
    cell.dataset.agreement = verdict;
    cell.setAttribute("aria-label", `${name}: ${text}`);
    cell.title = `${name}: ${text}`;
    cell.classList.toggle("selected", name === state.selected);
  }
  const compared = agree + disagree;
  const pct = compared ? ` (${((100 * agree) / compared).toFixed(1)} %)` : "";
  $("agreement-summary").textContent =
    `The model agrees with FCT on ${agree} of ${compared} called wells${pct}; ` +
    `${disagree} disagree, ${noCall} with FCT have no call.`;

  const model = evaluation.model;
  const tbody = $("metrics-table").tBodies[0];
  tbody.replaceChildren();
  const fmt = (v) => (v === null || v === undefined || Number.isNaN(v) ? "–" : v.toFixed(3));
  for (const [key, title] of METRICS) {
    const row = tbody.insertRow();
    row.dataset.metric = key;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = title;
    row.appendChild(th);
    row.insertCell().textContent = model ? fmt(model.metrics[key]) : "–";
    const ci = model && model.ci95 ? model.ci95[key] : null;
    row.insertCell().textContent = ci ? `${fmt(ci[0])} – ${fmt(ci[1])}` : "–";
  }
  $("metrics-caption").textContent = model
    ? `Scan #${evaluation.scan_id} vs FCT, n = ${model.metrics.n} wells ` +
      `(TP ${model.metrics.tp}, TN ${model.metrics.tn}, FP ${model.metrics.fp}, ` +
      `FN ${model.metrics.fn}), threshold ${model.threshold}`
    : "No completed scan with calls to compare yet";
  drawRoc(model);
}

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawRoc(model) {
  const root = $("roc-curve");
  root.replaceChildren();
  const left = 48;
  const top = 12;
  const size = 240;
  const x = (fpr) => left + fpr * size;
  const y = (tpr) => top + (1 - tpr) * size;
  const axes = svg("g", { class: "roc-axes" });
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    axes.append(
      svg("line", { x1: x(tick), y1: y(0), x2: x(tick), y2: y(1), class: "roc-grid" }),
      svg("line", { x1: x(0), y1: y(tick), x2: x(1), y2: y(tick), class: "roc-grid" }),
      svg("text", { x: x(tick), y: y(0) + 16, "text-anchor": "middle" }, String(tick)),
      svg("text", { x: x(0) - 6, y: y(tick) + 4, "text-anchor": "end" }, String(tick)),
    );
  }
  axes.append(
    svg("rect", { x: x(0), y: y(1), width: size, height: size, class: "roc-frame" }),
    svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "roc-chance" }),
    svg("text", { x: x(0.5), y: y(0) + 34, "text-anchor": "middle" }, "false positive rate"),
    svg("text", {
      x: 0, y: 0, "text-anchor": "middle",
      transform: `translate(${left - 34}, ${y(0.5)}) rotate(-90)`,
    }, "true positive rate"),
  );
  root.append(axes);
  if (!model || !model.roc || !model.roc.length) {
    $("roc-caption").textContent = "ROC curve: no scores to plot yet";
    return;
  }
  const points = model.roc
    .filter((p) => p.fpr !== null && p.tpr !== null)
    .map((p) => `${x(p.fpr).toFixed(1)},${y(p.tpr).toFixed(1)}`);
  root.append(svg("polyline", { points: points.join(" "), class: "roc-line" }));
  const m = model.metrics;
  if (m.sensitivity !== null && m.specificity !== null) {
    const cx = x(1 - m.specificity);
    const cy = y(m.sensitivity);
    root.append(
      svg("circle", { cx, cy, r: 4.5, class: "roc-point" }),
      svg("text", { x: cx + 8, y: cy + 14, class: "roc-point-label" }, `P ≥ ${model.threshold}`),
    );
  }
  const auc = m.auc === null ? "–" : m.auc.toFixed(3);
  root.append(svg("text", { x: x(1) - 8, y: y(0) - 10, "text-anchor": "end", class: "roc-auc" },
    `AUC ${auc}`));
  root.setAttribute("aria-label", `ROC curve of the model against FCT, AUC ${auc}`);
  $("roc-caption").textContent =
    `ROC curve over ${model.roc.length} thresholds; the dot is the operating point.`;
}

// -- Loading and scanning ----------------------------------------------------------------------

function barcodeInput() {
  const barcode = $("barcode").value.trim();
  if (!barcode) throw new Error("enter a plate barcode first");
  localStorage.setItem(BARCODE_STORAGE, barcode);
  return barcode;
}

function resetPlate(barcode, scan, wells) {
  // Reloading the same plate keeps the selected well (if the scan has it).
  const keep = barcode === state.barcode ? state.selected : null;
  state.barcode = barcode;
  state.scan = scan;
  state.wells = new Map(wells.map((w) => [w.well, w]));
  state.fct = new Map();
  state.evaluation = null;
  clearPanel();
  renderPlate();
  renderProgress();
  renderAgreement();
  if (keep && state.wells.has(keep)) selectWell(keep);
}

async function loadGroundTruth(barcode) {
  if (!barcode) return;
  let evaluation = null;
  try {
    evaluation = await getJson(`${plateUrl(barcode)}/evaluation`);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) throw err; // 404: no FCT yet
  }
  const fct = evaluation ? await getJson(`${plateUrl(barcode)}/fct`) : [];
  if (barcode !== state.barcode) return;
  state.evaluation = evaluation;
  state.fct = new Map(fct.map((row) => [row.well, row]));
  renderAgreement();
  if (state.selected) showPanel(state.selected);
}

async function loadPlate() {
  stopStream();
  const barcode = barcodeInput();
  setStatus(`Loading plate ${barcode}…`);
  let data;
  try {
    data = await getJson(`${plateUrl(barcode)}/wells`);
  } catch (err) {
    resetPlate(barcode, null, []);
    throw err;
  }
  resetPlate(data.plate_barcode, data.scan, data.wells);
  await loadGroundTruth(data.plate_barcode);
  const scan = data.scan;
  const truth = state.evaluation ? "; FCT ground truth loaded" : "; no FCT ground truth yet";
  setStatus(`Plate ${data.plate_barcode}: scan #${scan.id} ${scan.status}, ` +
    `${data.wells.length} of ${scan.wells_total} wells${truth}.`, "ok");
  if (!FINISHED.has(scan.status)) {
    setStatus(`Plate ${data.plate_barcode}: following scan #${scan.id} (${scan.status})…`);
    followScan(scan.id);
  }
}

function wellsInput() {
  const text = $("wells").value.trim();
  if (!text) return null;
  return text.split(/[\s,;]+/).filter(Boolean).map((w) => w.toUpperCase());
}

async function startScan() {
  const barcode = barcodeInput();
  const body = { plate_barcode: barcode, objective: $("objective").value, wells: wellsInput() };
  setStatus(`Queuing a scan of ${barcode}…`);
  const scan = await getJson(`${API}/scans`, { method: "POST", body });
  stopStream();
  resetPlate(barcode, scan, []);
  setStatus(`Scan #${scan.id} of ${barcode} queued; wells fill in as they are called.`);
  followScan(scan.id);
}

function guarded(action) {
  return async () => {
    try {
      await action();
    } catch (err) {
      showError(err);
    }
  };
}

// -- Start -------------------------------------------------------------------------------------

function init() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, key.value.trim()));
  $("barcode").value = localStorage.getItem(BARCODE_STORAGE) || "";

  wellButtons.clear();
  for (const [name, cell] of buildPlate($("plate"), selectWell, "data-well")) {
    wellButtons.set(name, cell);
  }
  for (const [name, cell] of buildPlate($("agreement-plate"), selectWell, "data-agreement-well")) {
    agreementCells.set(name, cell);
  }
  renderPlate();

  $("load").addEventListener("click", guarded(loadPlate));
  $("start-scan").addEventListener("click", guarded(startScan));
  $("barcode").addEventListener("keydown", (e) => {
    if (e.key === "Enter") guarded(loadPlate)();
  });
  $("panel-field").addEventListener("change", (e) => {
    state.field = Number(e.target.value);
    if (state.selected) showPanel(state.selected);
  });
}

document.addEventListener("DOMContentLoaded", init);
