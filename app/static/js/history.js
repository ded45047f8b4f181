// Finding a plate without knowing its barcode, and its scans: the plate list (each with its
// latest scan), the scan history picker, cancelling a running scan and the wells' CSV.

import { API, ApiError, api, getJson, plateUrl, scanUrl } from "./api.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

export const FINISHED = new Set(["completed", "failed", "cancelled"]);
const PAGE = 50; // plates and scans listed (the API's default page)

let handlers = { openPlate: null, openScan: null, openModel: null, cancelled: null };

export function initHistory(callbacks) {
  handlers = callbacks;
  $("plates-refresh").addEventListener("click", () => refreshPlates());
  $("scan-picker").addEventListener("change", (e) => {
    if (handlers.openScan) handlers.openScan(Number(e.target.value));
  });
  $("model-picker").addEventListener("change", (e) => {
    if (handlers.openModel) handlers.openModel(e.target.value || null);
  });
  $("cancel-scan").addEventListener("click", () => cancelScan());
  $("wells-csv").addEventListener("click", () => downloadWellsCsv());
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

function note(text, kind = "info") {
  const el = $("scan-tools-note");
  el.textContent = text;
  el.dataset.kind = kind;
}

/** The plate list, newest plate first; a plate's barcode button loads it. */
export async function refreshPlates() {
  const tbody = $("plate-list").tBodies[0];
  if (!$("api-key").value.trim()) {
    $("plates-note").textContent = "Enter an API key to list the plates.";
    return;
  }
  let page;
  try {
    page = await getJson(`${API}/plates?limit=${PAGE}`);
  } catch (err) {
    $("plates-note").textContent = `Could not list the plates: ${err.toString()}`;
    return;
  }
  tbody.replaceChildren();
  for (const plate of page.items) {
    const row = tbody.insertRow();
    row.dataset.plate = plate.barcode;
    row.classList.toggle("current", plate.barcode === state.barcode);
    const head = document.createElement("th");
    head.scope = "row";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "plate-open";
    button.textContent = plate.barcode;
    button.setAttribute("aria-label", `Load plate ${plate.barcode}`);
    button.addEventListener("click", () => handlers.openPlate && handlers.openPlate(plate.barcode));
    head.appendChild(button);
    row.appendChild(head);
    const scan = plate.latest_scan;
    const latest = row.insertCell();
    latest.dataset.column = "latest";
    latest.textContent = scan ? `#${scan.id} ${scan.status}` : "no scan yet";
    if (scan) latest.dataset.status = scan.status;
    row.insertCell().textContent = scan ? when(scan.finished_at) : "–";
    row.insertCell().textContent = plate.has_fct ? "yes" : "no";
  }
  const shown = page.items.length;
  $("plates-note").textContent = page.total > shown
    ? `The newest ${shown} of ${page.total} plates.`
    : `${page.total} plate${page.total === 1 ? "" : "s"}.`;
}

/** The picker of the loaded plate's scans (newest first), the shown scan selected. */
export async function refreshScans() {
  const picker = $("scan-picker");
  if (!state.barcode) {
    picker.replaceChildren();
    renderScanTools();
    return;
  }
  const barcode = state.barcode;
  let page;
  try {
    page = await getJson(`${API}/scans?plate=${encodeURIComponent(barcode)}&limit=${PAGE}`);
  } catch (err) {
    note(`Could not list the scans: ${err.toString()}`, "error");
    return;
  }
  if (barcode !== state.barcode) return;
  state.scans = page.items;
  renderScanTools();
}

function scanText(scan) {
  const model = scan.model ? ` · ${scan.model.name} v${scan.model.version}` : "";
  return `#${scan.id} · ${scan.status} · ${scan.objective} · ` +
    `${scan.wells_done}/${scan.wells_total} wells${model} · ${when(scan.requested_at)}`;
}

/** The picker, cancel and CSV buttons for the scan shown (state.scan). */
export function renderScanTools() {
  const picker = $("scan-picker");
  const scans = [...state.scans];
  // The scan shown may be newer than the list (just queued): it is listed too.
  if (state.scan && !scans.some((s) => s.id === state.scan.id)) scans.unshift(state.scan);
  picker.replaceChildren(...scans.map((scan) => {
    const shown = state.scan && scan.id === state.scan.id ? state.scan : scan;
    return new Option(scanText(shown), String(scan.id));
  }));
  if (state.scan) picker.value = String(state.scan.id);
  picker.disabled = scans.length < 2;
  const running = Boolean(state.scan) && !FINISHED.has(state.scan.status);
  $("cancel-scan").disabled = !running;
  $("cancel-scan").textContent = state.scan ? `Cancel scan #${state.scan.id}` : "Cancel scan";
  $("wells-csv").disabled = !state.scan;
  $("wells-csv").dataset.href = state.scan ? wellsCsvUrl() : "";
}

/** The shown scan's re-analyses by other model versions (POST /scans/{id}/analyses): the
 * model-version picker offers the completed ones. A service without them hides nothing but
 * leaves the picker at the scan's own model. */
export async function refreshAnalyses() {
  const scan = state.scan;
  state.analyses = [];
  if (scan && FINISHED.has(scan.status)) {
    try {
      state.analyses = await getJson(`${scanUrl(scan.id)}/analyses`);
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) {
        note(`Could not list the re-analyses: ${err.toString()}`, "error");
      }
    }
  }
  if (scan !== state.scan) return;
  renderModelPicker();
}

export const modelKey = (model) => `${model.name}:${model.version}`;

function renderModelPicker() {
  const picker = $("model-picker");
  const own = state.scan && state.scan.model
    ? `${state.scan.model.name} v${state.scan.model.version} (the scan's own calls)`
    : "the scan's own calls";
  const options = [new Option(own, "")];
  for (const analysis of state.analyses) {
    const key = modelKey(analysis.model);
    const text = `${analysis.model.name} v${analysis.model.version} (re-analysis #${analysis.id}` +
      (analysis.status === "completed" ? ")" : `, ${analysis.status})`);
    const option = new Option(text, key);
    option.disabled = analysis.status !== "completed";
    options.push(option);
  }
  picker.replaceChildren(...options);
  picker.value = state.model || "";
  picker.disabled = options.length < 2;
}

function wellsCsvUrl() {
  const query = new URLSearchParams({ format: "csv", scan_id: String(state.scan.id) });
  if (state.model) query.set("model", state.model);
  return `${plateUrl(state.barcode)}/wells?${query}`;
}

async function cancelScan() {
  if (!state.scan) return;
  const id = state.scan.id;
  note(`Cancelling scan #${id}…`);
  try {
    const scan = await getJson(`${scanUrl(id)}/cancel`, { method: "POST" });
    note(`Scan #${id} ${scan.status}: ${scan.wells_done} of ${scan.wells_total} wells kept.`, "ok");
    if (handlers.cancelled) await handlers.cancelled(scan);
  } catch (err) {
    note(`Cancel failed: ${err instanceof ApiError ? err.toString() : err.message}`, "error");
  }
}

/** The shown scan's calls as CSV: fetched with the key (a plain link could not send it), then
 * saved through an object URL; the link keeps the API address it came from (data-source). */
async function downloadWellsCsv() {
  if (!state.scan) return;
  const source = wellsCsvUrl();
  try {
    const blob = await (await api(source)).blob();
    const url = URL.createObjectURL(blob);
    const link = $("wells-csv-link") || document.createElement("a");
    link.id = "wells-csv-link";
    link.hidden = true;
    link.href = url;
    link.dataset.source = source;
    link.download = `${state.barcode}-scan${state.scan.id}-wells.csv`;
    link.textContent = link.download;
    if (!link.isConnected) document.body.appendChild(link);
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    note(`Saved ${link.download}.`, "ok");
  } catch (err) {
    note(`Download failed: ${err instanceof ApiError ? err.toString() : err.message}`, "error");
  }
}
