// Agreement with flow cytometry (FCT): the per-well verdict map, the metrics table and the
// ROC curve, from the plate's evaluation.

import { ApiError, getJson, plateUrl } from "./api.js";
import { $, svg } from "./dom.js";
import { DEFAULT_COLUMNS, DEFAULT_ROWS, buildPlate, isCall } from "./platemap.js";
import { state } from "./state.js";
import { showPanel } from "./wellpanel.js";

const METRICS = [
  ["auc", "AUC"],
  ["f1", "F1"],
  ["accuracy", "Accuracy"],
  ["sensitivity", "Sensitivity"],
  ["specificity", "Specificity"],
  ["ppv", "PPV"],
  ["npv", "NPV"],
];

const agreementCells = new Map(); // well name -> its cell in the agreement map

let onAgreementWell = null; // the agreement map's click handler, kept for rebuilding it

/** Builds the agreement map (cells carry data-agreement-well), `rows` x `columns` wells. */
export function initAgreement(onWell, rows = DEFAULT_ROWS, columns = DEFAULT_COLUMNS) {
  onAgreementWell = onWell;
  agreementCells.clear();
  const container = $("agreement-plate");
  for (const [name, cell] of buildPlate(container, onWell, "data-agreement-well", rows, columns)) {
    agreementCells.set(name, cell);
  }
}

/** The agreement map with the grid of the plate `scan` is of; rebuilt only when it changes. */
export function ensureAgreementGrid(scan) {
  const rows = scan && scan.plate_rows ? scan.plate_rows : DEFAULT_ROWS;
  const columns = scan && scan.plate_columns ? scan.plate_columns : DEFAULT_COLUMNS;
  const container = $("agreement-plate");
  if (container.dataset.rows === String(rows) && container.dataset.columns === String(columns)) {
    return;
  }
  initAgreement(onAgreementWell, rows, columns);
}

/** The plate's evaluation, FCT rows and manual calls: the agreement view, the comparison
 * table and the ground-truth uploads read them. A scan picked from the history is evaluated
 * itself (?scan_id=); otherwise the service picks the latest completed scan. */
export async function loadGroundTruth(barcode) {
  if (!barcode) return;
  let evaluation = null;
  const params = new URLSearchParams();
  if ((state.scanPinned || state.model) && state.scan) {
    params.set("scan_id", String(state.scan.id));
  }
  if (state.model) params.set("model", state.model);
  const query = params.toString() ? `?${params}` : "";
  try {
    evaluation = await getJson(`${plateUrl(barcode)}/evaluation${query}`);
  } catch (err) {
    // 404: no FCT yet; 409: the picked scan cannot be evaluated (not completed, no calls).
    if (!(err instanceof ApiError && (err.status === 404 || err.status === 409))) throw err;
  }
  const [fct, manual] = await Promise.all([
    getJson(`${plateUrl(barcode)}/fct`).catch(notFoundAsEmpty),
    getJson(`${plateUrl(barcode)}/manual-calls`).catch(notFoundAsEmpty),
  ]);
  if (barcode !== state.barcode) return;
  state.evaluation = evaluation;
  state.fct = new Map(fct.map((row) => [row.well, row]));
  state.manual = new Map();
  for (const call of manual) {
    if (!state.manual.has(call.well)) state.manual.set(call.well, []);
    state.manual.get(call.well).push(call);
  }
  renderAgreement();
  if (onGroundTruth) onGroundTruth();
  if (state.selected) showPanel(state.selected);
}

function notFoundAsEmpty(err) {
  if (err instanceof ApiError && err.status === 404) return []; // a plate not stored yet
  throw err;
}

let onGroundTruth = null; // re-renders the comparison table (main.js)

export function setGroundTruthHandler(handler) {
  onGroundTruth = handler;
}

// A disagreeing well says which way: the model called high where FCT says low (a false
// high, a well passed that should not be) or the reverse (a false low, a good well dropped).
export const DIRECTIONS = {
  "false-high": { mark: "↑", text: "model high, FCT low" },
  "false-low": { mark: "↓", text: "model low, FCT high" },
};

export function disagreement(modelLabel, fctLabel) {
  if (modelLabel === fctLabel) return null;
  return modelLabel === "high" ? "false-high" : "false-low";
}

export function renderAgreement() {
  const evaluation = state.evaluation;
  $("agreement").hidden = !evaluation;
  if (!evaluation) return;
  let agree = 0;
  const directions = { "false-high": 0, "false-low": 0 };
  let noCall = 0;
  for (const [name, cell] of agreementCells) {
    const fct = state.fct.get(name);
    const result = state.wells.get(name);
    let verdict = "none";
    let text = "no FCT";
    cell.textContent = "";
    delete cell.dataset.direction;
    if (fct && result && isCall(result.label)) { // uncertain / no call: not a call
      const direction = disagreement(result.label, fct.label);
      verdict = direction ? "disagree" : "agree";
      if (direction) {
        cell.dataset.direction = direction;
        cell.textContent = DIRECTIONS[direction].mark;
        text = `disagrees: ${DIRECTIONS[direction].text}`;
        directions[direction] += 1;
      } else {
        cell.textContent = "✓";
        text = `model ${result.label}, FCT ${fct.label}: agrees`;
        agree += 1;
      }
    } else if (fct) {
      verdict = "nocall";
      text = `FCT ${fct.label}, no model call` +
        (result && result.label ? ` (${result.label})` : "");
      noCall += 1;
    }
    cell.dataset.agreement = verdict;
    cell.setAttribute("aria-label", `${name}: ${text}`);
    cell.title = `${name}: ${text}`;
    cell.classList.toggle("selected", name === state.selected);
  }
  const disagree = directions["false-high"] + directions["false-low"];
  const compared = agree + disagree;
  const pct = compared ? ` (${((100 * agree) / compared).toFixed(1)} %)` : "";
  $("agreement-summary").textContent =
    `The model agrees with FCT on ${agree} of ${compared} called wells${pct}; ` +
    `${disagree} disagree (${directions["false-high"]} model high, FCT low · ` +
    `${directions["false-low"]} model low, FCT high), ${noCall} with FCT have no call.`;

  const model = evaluation.model;
  renderMetrics(evaluation.scan_id, model);
  drawRoc(model);
}

function renderMetrics(scanId, model) {
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
    ? `Scan #${scanId} vs FCT, n = ${model.metrics.n} wells ` +
      `(TP ${model.metrics.tp}, TN ${model.metrics.tn}, FP ${model.metrics.fp}, ` +
      `FN ${model.metrics.fn}), threshold ${model.threshold}`
    : "No completed scan with calls to compare yet";
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
