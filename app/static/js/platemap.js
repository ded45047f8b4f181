// The plate's grid (rows x columns from the API: 8 x 12 for a 96-well plate, 16 x 24 for a
// 384-well one): building it, and colouring each well by its call and QC; uncertain and
// no-call wells are hatched and marked (? and ∅).

import { $ } from "./dom.js";
import { state } from "./state.js";

// The 96-well plate: the grid before any plate is loaded.
export const DEFAULT_ROWS = 8;
export const DEFAULT_COLUMNS = 12;

/** Row name of zero-based row `index`: A..Z, then AA, AB, ... (as the API names wells). */
export function rowName(index) {
  let name = "";
  for (let i = index; i >= 0; i = Math.floor(i / 26) - 1) {
    name = String.fromCharCode(65 + (i % 26)) + name;
  }
  return name;
}

// QC flags the pipeline and worker set, with the symbol shown in the well.
const QC_SYMBOLS = {
  acquisition_failed: "✕",
  overexposed: "☀",
  underexposed: "◐",
  out_of_focus: "≈",
  focus_failed: "◎",
};
const QC_NAMES = {
  acquisition_failed: "acquisition failed",
  overexposed: "overexposed",
  underexposed: "underexposed",
  out_of_focus: "out of focus",
  focus_failed: "autofocus failed",
  out_of_distribution: "some fields out of distribution",
};

// Wells the model did not call (models.decision): the glyph shown in the well. A call-state
// glyph wins over a QC symbol: it is what the lab acts on (QC still shows as the border).
export const UNCERTAIN = "uncertain";
export const NO_CALL = "no call";
const CALL_SYMBOLS = { [UNCERTAIN]: "?", [NO_CALL]: "∅" };
/** High or low: a call the lab can act on (uncertain and no call are not calls). */
export const isCall = (label) => label === "high" || label === "low";

const wellButtons = new Map(); // well name -> its button in the main map

export const qcText = (flags) =>
  (flags.length ? flags.map((f) => QC_NAMES[f] || f).join(", ") : "none");
export const fmtP = (p) => (p === null || p === undefined ? "–" : p.toFixed(3));

/** `rows` x `columns` well buttons in `container` (replacing what it held); a map of well
 * name -> button. Plates wider than 12 columns get smaller wells, to stay on the screen. */
export function buildPlate(
  container, onCell, attribute, rows = DEFAULT_ROWS, columns = DEFAULT_COLUMNS,
) {
  const cells = new Map();
  container.replaceChildren();
  container.style.gridTemplateColumns = `18px repeat(${columns}, var(--well))`;
  if (columns > DEFAULT_COLUMNS) container.style.setProperty("--well", "18px");
  else container.style.removeProperty("--well");
  container.dataset.rows = String(rows);
  container.dataset.columns = String(columns);
  container.appendChild(document.createElement("span")); // corner
  const columnNumbers = Array.from({ length: columns }, (_, i) => i + 1);
  for (const column of columnNumbers) {
    const head = document.createElement("span");
    head.className = "plate-head";
    head.textContent = column;
    head.setAttribute("aria-hidden", "true");
    container.appendChild(head);
  }
  for (let r = 0; r < rows; r += 1) {
    const row = rowName(r);
    const head = document.createElement("span");
    head.className = "plate-head";
    head.textContent = row;
    head.setAttribute("aria-hidden", "true");
    container.appendChild(head);
    for (const column of columnNumbers) {
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

let onMainWell = null; // the main map's click handler, kept for rebuilding the grid

/** Builds the main map (wells carry data-well) and shows its current state. */
export function initPlateMap(onWell, rows = DEFAULT_ROWS, columns = DEFAULT_COLUMNS) {
  onMainWell = onWell;
  wellButtons.clear();
  for (const [name, cell] of buildPlate($("plate"), onWell, "data-well", rows, columns)) {
    wellButtons.set(name, cell);
  }
  renderPlate();
}

/** The main map with the grid of the plate `scan` is of (the 96-well grid without a scan);
 * rebuilt only when the shape changes. True if it was rebuilt. */
export function ensurePlateGrid(scan) {
  const rows = scan && scan.plate_rows ? scan.plate_rows : DEFAULT_ROWS;
  const columns = scan && scan.plate_columns ? scan.plate_columns : DEFAULT_COLUMNS;
  const plate = $("plate");
  if (plate.dataset.rows === String(rows) && plate.dataset.columns === String(columns)) {
    return false;
  }
  initPlateMap(onMainWell, rows, columns);
  return true;
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
  if (CALL_SYMBOLS[result.label]) return CALL_SYMBOLS[result.label];
  for (const flag of result.qc_flags) if (QC_SYMBOLS[flag]) return QC_SYMBOLS[flag];
  if (result.status === "failed") return QC_SYMBOLS.acquisition_failed;
  if (result.status === "excluded" || result.qc_flags.length) return "⊘";
  return "";
}

function describe(result) {
  if (!result) return "not scanned";
  const qc = result.qc_flags.length ? `; QC: ${qcText(result.qc_flags)}` : "";
  if (result.label === UNCERTAIN) {
    const lean = result.leaning ? `, leaning ${result.leaning}` : "";
    return `uncertain, confirm by FCT${lean}, P(high) ${fmtP(result.probability)}${qc}`;
  }
  if (result.label === NO_CALL) return `no call, out of distribution${qc}`;
  if (result.label) return `${result.label}, P(high) ${fmtP(result.probability)}${qc}`;
  return `${result.status === "failed" ? "acquisition failed" : "excluded"}, no call${qc}`;
}

export function renderWell(name) {
  const cell = wellButtons.get(name);
  if (!cell) return; // not a well of the grid shown (a result of another plate type)
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
    if (isCall(result.label) && result.probability !== null) {
      const { fill, ink } = callColour(result.label, result.probability);
      cell.dataset.label = result.label;
      cell.style.setProperty("--fill", fill);
      cell.style.setProperty("--ink", ink);
    } else if (result.label) {
      cell.dataset.label = result.label; // uncertain / no call: hatched (style.css)
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

export function renderPlate() {
  for (const name of wellButtons.keys()) renderWell(name);
  renderTitle();
  renderSummary();
}

export function renderTitle() {
  const scan = state.scan;
  if (!state.barcode) {
    $("plate-title").textContent = "No plate loaded";
    return;
  }
  const parts = [state.barcode];
  if (scan) {
    parts.push(`scan #${scan.id}`, scan.objective);
    if (state.model) {
      const [name, version] = state.model.split(":");
      parts.push(`${name} v${version} (re-analysis)`);
    } else if (scan.model) {
      parts.push(`${scan.model.name} v${scan.model.version}`);
    }
  }
  $("plate-title").textContent = parts.join(" · ");
}

export function renderSummary() {
  if (!state.barcode) {
    $("plate-summary").textContent = "";
    return;
  }
  const counts = { high: 0, low: 0, [UNCERTAIN]: 0, [NO_CALL]: 0, excluded: 0 };
  for (const result of state.wells.values()) {
    if (result.label) counts[result.label] += 1;
    else counts.excluded += 1; // no field passed QC, or the acquisition failed
  }
  const total = state.scan ? state.scan.wells_total : 96;
  $("plate-summary").textContent =
    `${counts.high} high · ${counts.low} low · ${counts[UNCERTAIN]} uncertain · ` +
    `${counts[NO_CALL]} no call · ${counts.excluded} excluded · ` +
    `${total - state.wells.size} not yet scanned`;
  renderPolicy();
}

const fmtRate = (v) => (v === null || v === undefined ? null : String(v));

/** The scan's call policy in a line: threshold, selective calls, OOD guard. */
export function renderPolicy() {
  const el = $("plate-policy");
  const policy = state.scan ? state.scan.decision_policy : null;
  if (!policy) {
    el.textContent = state.scan ? "Calls: the model's default threshold." : "";
    return;
  }
  if (policy.threshold === undefined) { // asked for, not yet resolved (the scan is queued)
    const alpha = fmtRate(policy.alpha);
    el.textContent = `Calls: threshold policy ${policy.threshold_policy}` +
      (alpha ? `, selective at alpha ${alpha} (delta ${policy.delta})` : ", no selective calls") +
      "; resolved when the scan starts.";
    return;
  }
  const parts = [`threshold ${Number(policy.threshold).toFixed(3)} (${policy.threshold_policy})`];
  if (policy.selective && policy.selective.threshold > 1) {
    parts.push(`no confidence certifies error ≤ ${policy.alpha}: every in-distribution well uncertain`);
  } else if (policy.selective) {
    parts.push(`confidence ≥ ${Number(policy.selective.threshold).toFixed(3)} to call ` +
      `(error ≤ ${policy.alpha}, delta ${policy.delta})`);
  } else {
    parts.push("no selective calls");
  }
  parts.push(policy.ood_threshold === null || policy.ood_threshold === undefined
    ? "no out-of-distribution guard"
    : `out of distribution above ${Number(policy.ood_threshold).toFixed(1)}`);
  el.textContent = `Calls: ${parts.join(" · ")}.`;
}
