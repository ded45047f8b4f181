// "Confirm by FCT": the wells the model did not call, listed beside the plate with why, and
// their count. Built from the wells the page holds, so it fills in live during a scan; the
// same list (the server's, with counts) downloads as CSV from GET .../confirm?format=csv.

import { api, plateUrl } from "./api.js";
import { $ } from "./dom.js";
import { NO_CALL, UNCERTAIN, fmtP, isCall, qcText } from "./platemap.js";
import { state } from "./state.js";

let onConfirmWell = null; // selects a well (main.js)

export function initConfirm(onWell) {
  onConfirmWell = onWell;
  $("confirm-download").addEventListener("click", () => {
    downloadCsv().catch((err) => {
      $("confirm-note").textContent = `Download failed: ${err.toString()}`;
    });
  });
}

/** Why a well needs confirming (as the service's confirm list says it), or null for a call. */
export function confirmReason(result) {
  if (isCall(result.label)) return null;
  if (result.label === UNCERTAIN || result.label === NO_CALL) {
    return result.call_reason || result.label;
  }
  if (result.status === "failed") {
    return result.error ? `acquisition failed: ${result.error}` : "acquisition failed";
  }
  const flags = result.qc_flags.length ? qcText(result.qc_flags) : "no field passed QC";
  return `excluded by QC (${flags}): re-image the well or confirm by FCT`;
}

const KIND_TEXT = { [UNCERTAIN]: "uncertain", [NO_CALL]: "no call" };

export function renderConfirm() {
  const section = $("confirm");
  section.hidden = !state.barcode || !state.scan;
  const list = $("confirm-list");
  list.replaceChildren();
  if (section.hidden) return;
  const rows = [];
  for (const result of state.wells.values()) {
    const reason = confirmReason(result);
    if (reason !== null) rows.push([result, reason]);
  }
  // Plate order: the order the wells came in is not it during a live scan.
  rows.sort(([a], [b]) => a.row - b.row || a.column - b.column);
  for (const [result, reason] of rows) {
    const item = document.createElement("li");
    item.dataset.confirmWell = result.well;
    item.dataset.kind = result.label || result.status;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "confirm-well";
    button.textContent = result.well;
    button.addEventListener("click", () => onConfirmWell && onConfirmWell(result.well));
    const kind = document.createElement("span");
    kind.className = "confirm-kind";
    kind.textContent = KIND_TEXT[result.label] || result.status;
    const lean = result.leaning ? ` · leaning ${result.leaning}` : "";
    const p = result.probability === null ? "" : ` · P(high) ${fmtP(result.probability)}`;
    const text = document.createElement("span");
    text.className = "confirm-reason";
    text.textContent = `${reason}${p}${lean}`;
    item.append(button, kind, text);
    list.appendChild(item);
  }
  $("confirm-count").textContent = String(rows.length);
  $("confirm-download").disabled = rows.length === 0;
  $("confirm-note").textContent = rows.length
    ? "Wells the model did not call: send them to flow cytometry (or re-image those QC excluded)."
    : "Every scanned well is called.";
}

async function downloadCsv() {
  const query = new URLSearchParams({ format: "csv" });
  if (state.scan) query.set("scan_id", String(state.scan.id));
  if (state.model) query.set("model", state.model);
  const response = await api(`${plateUrl(state.barcode)}/confirm?${query}`);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = `${state.barcode}-scan${state.scan ? state.scan.id : ""}-confirm.csv`;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
