// The status line and the scan's progress bar.

import { ApiError } from "./api.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

export function setStatus(text, kind = "info") {
  const el = $("status");
  el.textContent = text;
  el.dataset.kind = kind;
}

export function showError(err) {
  setStatus(err instanceof ApiError ? `Error ${err}` : `Error: ${err.message || err}`, "error");
}

export function renderProgress() {
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
