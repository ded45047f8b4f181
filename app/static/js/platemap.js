// The 96-well grid: building it, and colouring each well by its call and QC.

import { $ } from "./dom.js";
import { state } from "./state.js";

const ROWS = "ABCDEFGH".split("");
const COLUMNS = Array.from({ length: 12 }, (_, i) => i + 1);

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

const wellButtons = new Map(); // well name -> its button in the main map

export const qcText = (flags) =>
  (flags.length ? flags.map((f) => QC_NAMES[f] || f).join(", ") : "none");
export const fmtP = (p) => (p === null || p === undefined ? "–" : p.toFixed(3));

/** Rows and columns of well buttons in `container`; a map of well name -> button. */
export function buildPlate(container, onCell, attribute) {
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

/** Builds the main map (wells carry data-well) and shows its current state. */
export function initPlateMap(onWell) {
  wellButtons.clear();
  for (const [name, cell] of buildPlate($("plate"), onWell, "data-well")) {
    wellButtons.set(name, cell);
  }
  renderPlate();
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

function describe(result) {
  if (!result) return "not scanned";
  const qc = result.qc_flags.length ? `; QC: ${qcText(result.qc_flags)}` : "";
  if (result.label) return `${result.label}, P(high) ${fmtP(result.probability)}${qc}`;
  return `${result.status === "failed" ? "acquisition failed" : "excluded"}, no call${qc}`;
}

export function renderWell(name) {
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
    if (scan.model) parts.push(`${scan.model.name} v${scan.model.version}`);
  }
  $("plate-title").textContent = parts.join(" · ");
}

export function renderSummary() {
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
