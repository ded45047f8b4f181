// mscreen plate map: plain JS as native ES modules, no framework, no build step, nothing
// loaded from elsewhere. This entry module wires the controls to loading and scanning.
//
//   api.js        fetch wrapper (X-API-Key header, error details)
//   events.js     a scan's server-sent events, read over fetch()
//   platemap.js   the plate's grid       wellpanel.js   the well detail panel
//   evaluation.js agreement with FCT, metrics table, ROC curve
//   confirm.js    the wells to confirm by FCT (uncertain, no call, QC excluded)
//   history.js    plate list, scan history picker, cancel, wells CSV
//   uploads.js    FCT and manual-call uploads    compare.js  manual vs model vs FCT
//   status.js     status line, progress  state.js       what the page shows
//
// Module scripts are deferred, so the document is parsed by the time this runs.

import { API, getJson, plateUrl } from "./api.js";
import { initCompare, renderCompare } from "./compare.js";
import { initConfirm, renderConfirm } from "./confirm.js";
import { $ } from "./dom.js";
import {
  ensureAgreementGrid, initAgreement, loadGroundTruth, renderAgreement, setGroundTruthHandler,
} from "./evaluation.js";
import { followScan, setScanEndHandler, stopStream } from "./events.js";
import {
  FINISHED, initHistory, refreshAnalyses, refreshPlates, refreshScans, renderScanTools,
} from "./history.js";
import { ensurePlateGrid, initPlateMap, renderPlate, renderWell } from "./platemap.js";
import { state } from "./state.js";
import { renderProgress, setStatus, showError } from "./status.js";
import { initUploads, renderUploads } from "./uploads.js";
import { clearPanel, showPanel } from "./wellpanel.js";

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
  state.manual = new Map();
  state.evaluation = null;
  clearPanel();
  // The plate's own grid (rows x columns from the API); a rebuilt grid is rendered already.
  ensureAgreementGrid(scan);
  if (!ensurePlateGrid(scan)) renderPlate();
  renderConfirm();
  renderProgress();
  renderAgreement();
  renderScanTools();
  renderUploads();
  renderCompare();
  if (keep && state.wells.has(keep)) selectWell(keep);
}

/** Loads the plate in the barcode field: its latest scan, or `scanId` picked from its
 * history (then the agreement view evaluates that scan too); with `model` ("NAME:VERSION"),
 * that version's re-analysis of the scan instead of its own calls. */
async function loadPlate(scanId = null, model = null) {
  stopStream();
  const barcode = barcodeInput();
  if (barcode !== state.barcode) state.scans = [];
  setStatus(`Loading plate ${barcode}…`);
  const params = new URLSearchParams();
  if (scanId !== null) params.set("scan_id", String(scanId));
  if (model) params.set("model", model);
  const query = params.toString() ? `?${params}` : "";
  let data;
  try {
    data = await getJson(`${plateUrl(barcode)}/wells${query}`);
  } catch (err) {
    resetPlate(barcode, null, []);
    throw err;
  }
  const latest = state.scans.length ? state.scans[0].id : null;
  state.scanPinned = scanId !== null && scanId !== latest;
  state.model = model;
  resetPlate(data.plate_barcode, data.scan, data.wells);
  await Promise.all([loadGroundTruth(data.plate_barcode), refreshScans(), refreshAnalyses()]);
  refreshPlates();
  const scan = data.scan;
  const truth = state.evaluation ? "; FCT ground truth loaded" : "; no FCT ground truth yet";
  const by = data.analysis
    ? ` (re-analysis by ${data.analysis.model.name} v${data.analysis.model.version})` : "";
  setStatus(`Plate ${data.plate_barcode}: scan #${scan.id}${by} ${scan.status}, ` +
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
  state.scanPinned = false;
  state.model = null;
  resetPlate(barcode, scan, []);
  refreshAnalyses();
  setStatus(`Scan #${scan.id} of ${barcode} queued; wells fill in as they are called.`);
  followScan(scan.id);
  refreshScans();
  refreshPlates();
}

/** A plate picked from the plate list: its latest scan. */
async function openPlate(barcode) {
  $("barcode").value = barcode;
  await loadPlate();
}

/** A model version picked for the shown scan (null: the scan's own calls). */
async function openModel(model) {
  await loadPlate(state.scan.id, model);
}

/** A scan picked from the history picker. */
async function openScan(scanId) {
  await loadPlate(scanId);
}

/** The answer to a cancel: the scan as it stopped (its event stream ends with it). */
async function scanCancelled(scan) {
  if (state.scan && state.scan.id === scan.id) state.scan = scan;
  renderProgress();
  renderScanTools();
  refreshPlates();
}

/** After an upload: the ground truth views again, and the plate list's FCT column. */
async function groundTruthUploaded() {
  await loadGroundTruth(state.barcode);
  refreshPlates();
}

function guarded(action) {
  return async (...args) => {
    try {
      await action(...args);
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
  initCompare(selectWell);
  initUploads(guarded(groundTruthUploaded));
  initHistory({
    openPlate: guarded(openPlate),
    openScan: guarded(openScan),
    openModel: guarded(openModel),
    cancelled: guarded(scanCancelled),
  });
  setGroundTruthHandler(renderCompare);
  setScanEndHandler(() => {
    renderScanTools();
    refreshScans();
    refreshPlates();
  });
  key.addEventListener("change", () => refreshPlates());
  refreshPlates();

  $("load").addEventListener("click", guarded(() => loadPlate()));
  $("start-scan").addEventListener("click", guarded(startScan));
  $("barcode").addEventListener("keydown", (e) => {
    if (e.key === "Enter") guarded(() => loadPlate())();
  });
  $("panel-field").addEventListener("change", (e) => {
    state.field = Number(e.target.value);
    if (state.selected) showPanel(state.selected);
  });
}

init();
