// Manual vs model vs FCT: one row per well that has any of the three, so a lab sees where
// its operators, the model and flow cytometry part ways (and which way).

import { $ } from "./dom.js";
import { DIRECTIONS, disagreement } from "./evaluation.js";
import { fmtP, isCall, rowName } from "./platemap.js";
import { state } from "./state.js";

let onCompareWell = null; // selects a well (main.js)

export function initCompare(onWell) {
  onCompareWell = onWell;
  $("compare-differ").addEventListener("change", renderCompare);
}

function modelText(result) {
  if (!result) return "not scanned";
  if (isCall(result.label)) return `${result.label} (P ${fmtP(result.probability)})`;
  return result.label || `none (${result.status})`;
}

/** What the three say about one well, in words, and whether any two called it differently. */
function verdict(result, manual, fct) {
  const parts = [];
  const model = result && isCall(result.label) ? result.label : null;
  if (model && fct) {
    const direction = disagreement(model, fct.label);
    parts.push(direction ? `model vs FCT: ${DIRECTIONS[direction].text}` : "model agrees with FCT");
  }
  for (const call of manual) {
    if (fct && call.label !== fct.label) {
      parts.push(`${call.operator} vs FCT: manual ${call.label}, FCT ${fct.label}`);
    }
    if (model && call.label !== model) {
      parts.push(`${call.operator} vs model: manual ${call.label}, model ${model}`);
    }
  }
  const labels = new Set([model, fct && fct.label, ...manual.map((c) => c.label)]);
  labels.delete(null);
  labels.delete(undefined);
  return { text: parts.length ? parts.join("; ") : "–", differ: labels.size > 1 };
}

/** Wells in plate order: row letters by their index in the grid, then column. */
function plateOrder(names) {
  const rows = state.scan && state.scan.plate_rows ? state.scan.plate_rows : 8;
  const index = new Map(Array.from({ length: rows }, (_, i) => [rowName(i), i]));
  const key = (name) => {
    const m = /^([A-Z]+)(\d+)$/.exec(name);
    return m ? [index.get(m[1]) ?? 99, Number(m[2])] : [99, 0];
  };
  return [...names].sort((a, b) => {
    const [ra, ca] = key(a);
    const [rb, cb] = key(b);
    return ra - rb || ca - cb;
  });
}

export function renderCompare() {
  const section = $("compare");
  const hasTruth = state.fct.size > 0 || state.manual.size > 0;
  section.hidden = !state.barcode || !hasTruth;
  const tbody = $("compare-table").tBodies[0];
  tbody.replaceChildren();
  if (section.hidden) return;
  const onlyDiffer = $("compare-differ").checked;
  const names = new Set([...state.fct.keys(), ...state.manual.keys()]);
  let differing = 0;
  let shown = 0;
  for (const name of plateOrder(names)) {
    const result = state.wells.get(name);
    const manual = state.manual.get(name) || [];
    const fct = state.fct.get(name);
    const { text, differ } = verdict(result, manual, fct);
    if (differ) differing += 1;
    if (onlyDiffer && !differ) continue;
    shown += 1;
    const row = tbody.insertRow();
    row.dataset.compareWell = name;
    row.dataset.differ = String(differ);
    const head = document.createElement("th");
    head.scope = "row";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "confirm-well";
    button.textContent = name;
    button.addEventListener("click", () => onCompareWell && onCompareWell(name));
    head.appendChild(button);
    row.appendChild(head);
    const cells = [
      ["model", modelText(result)],
      ["manual", manual.length ? manual.map((c) => `${c.operator}: ${c.label}`).join(", ") : "–"],
      ["fct", fct ? fct.label : "–"],
      ["verdict", text],
    ];
    for (const [column, value] of cells) {
      const cell = row.insertCell();
      cell.dataset.column = column;
      cell.textContent = value;
    }
  }
  const operators = new Set();
  for (const calls of state.manual.values()) for (const c of calls) operators.add(c.operator);
  $("compare-summary").textContent =
    `${names.size} wells with FCT or manual calls (${state.fct.size} FCT, ` +
    `${operators.size} operator${operators.size === 1 ? "" : "s"}); ` +
    `${differing} where the calls differ` + (onlyDiffer ? `, ${shown} shown.` : ".");
}
