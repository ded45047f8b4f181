// mscreen plate map: plain JS as native ES modules, no framework, no build step, nothing
// loaded from elsewhere. This entry module wires the controls to loading and scanning.
//
//   api.js        fetch wrapper (X-API-Key header, error details)
//   events.js     a scan's server-sent events, read over fetch()
//   platemap.js   the plate's grid       wellpanel.js   the well detail panel
//   evaluation.js agreement with FCT, metrics table, ROC curve
//   confirm.js    the wells to confirm by FCT (uncertain, no call, QC excluded)
//   status.js     status line, progress  state.js       what the page shows
//
// Module scripts are deferred, so the document is parsed by the time this runs.

import { API, getJson, plateUrl } from "./api.js";
import { initConfirm, renderConfirm } from "./confirm.js";
import { $ } from "./dom.js";
import {
  ensureAgreementGrid, initAgreement, loadGroundTruth, renderAgreement,
} from "./evaluation.js";
import { followScan, stopStream } from "./events.js";
import { ensurePlateGrid, initPlateMap, renderPlate, renderWell } from "./platemap.js";
import { state } from "./state.js";
import { renderProgress, setStatus, showError } from "./status.js";
import { clearPanel, showPanel } from "./wellpanel.js";

const FINISHED = new Set(["completed", "failed", "cancelled"]);
const KEY_STORAGE = "mscreen.apiKey";
const BARCODE_STORAGE = "mscreen.barcode";

function selectWell(name) {
  const previous = state.selected;
  state.selected = name;
  if (previous) renderWell(previous);
  renderWell(name);
  renderAgreement();
  showPanel(name);
}

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
  // The plate's own grid (rows x columns from the API); a rebuilt grid is rendered already.
  ensureAgreementGrid(scan);
  if (!ensurePlateGrid(scan)) renderPlate();
  renderConfirm();
  renderProgress();
  renderAgreement();
  if (keep && state.wells.has(keep)) selectWell(keep);
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

/** The call policy fields of a scan request: only those filled in (the service's otherwise). */
function policyInput(body) {
  const policy = $("threshold-policy").value.trim();
  if (policy) body.threshold_policy = policy;
  const alpha = $("alpha").value.trim();
  if (alpha) {
    const value = Number(alpha);
    // Sent as typed when not a number: the service's 422 then names the field.
    body.alpha = Number.isFinite(value) ? value : alpha;
  }
  return body;
}

async function startScan() {
  const barcode = barcodeInput();
  const body = policyInput({
    plate_barcode: barcode, objective: $("objective").value, wells: wellsInput(),
  });
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

function init() {
  const key = $("api-key");
  key.value = localStorage.getItem(KEY_STORAGE) || "";
  key.addEventListener("input", () => localStorage.setItem(KEY_STORAGE, key.value.trim()));
  $("barcode").value = localStorage.getItem(BARCODE_STORAGE) || "";

  initPlateMap(selectWell);
  initAgreement(selectWell);
  initConfirm(selectWell);

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

init();
