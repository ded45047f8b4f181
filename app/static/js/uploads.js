// Ground-truth uploads from files the user picks: FCT (PUT .../fct) and one operator's manual
// calls (PUT .../manual-calls?operator=). The service validates a file whole; its 422 lists
// the problems as {row, field, message} (row 0: the file as a whole), shown here one per row.

import { ApiError, api, plateUrl } from "./api.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

let afterUpload = null; // reloads the ground truth views (main.js)

export function initUploads(onUploaded) {
  afterUpload = onUploaded;
  $("fct-form").addEventListener("submit", (e) => {
    e.preventDefault();
    upload("fct", "fct", () => `${plateUrl(state.barcode)}/fct`, "FCT rows");
  });
  $("manual-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const operator = $("manual-operator").value.trim();
    if (!operator) {
      showResult("manual", "Enter the operator whose calls these are.", "error");
      return;
    }
    const query = new URLSearchParams({ operator });
    upload("manual", "manual", () => `${plateUrl(state.barcode)}/manual-calls?${query}`,
      `manual calls by ${operator}`);
  });
}

export function renderUploads() {
  $("ground-truth").hidden = !state.barcode;
}

function showResult(prefix, text, kind) {
  const el = $(`${prefix}-result`);
  el.textContent = text;
  el.dataset.kind = kind;
}

function showErrors(prefix, problems) {
  const list = $(`${prefix}-errors`);
  list.replaceChildren();
  for (const problem of problems) {
    const item = document.createElement("li");
    item.dataset.row = String(problem.row);
    item.dataset.field = problem.field || "";
    const where = document.createElement("span");
    where.className = "upload-where";
    where.textContent = problem.row ? `Row ${problem.row}, ${problem.field}` : `File (${problem.field})`;
    const what = document.createElement("span");
    what.textContent = problem.message;
    item.append(where, what);
    list.appendChild(item);
  }
}

async function upload(prefix, kind, url, what) {
  showErrors(prefix, []);
  const file = $(`${prefix}-file`).files[0];
  if (!state.barcode) {
    showResult(prefix, "Load a plate first.", "error");
    return;
  }
  if (!file) {
    showResult(prefix, "Choose a file first.", "error");
    return;
  }
  showResult(prefix, `Uploading ${file.name}…`, "info");
  try {
    const response = await api(url(), {
      method: "PUT",
      body: await file.text(),
      headers: { "Content-Type": "text/csv" },
    });
    const receipt = await response.json();
    const removed = receipt.removed ? `, ${receipt.removed} earlier rows removed` : "";
    showResult(prefix, `${file.name}: ${receipt.rows} ${what} stored for ` +
      `${receipt.plate_barcode}${removed}.`, "ok");
    if (afterUpload) await afterUpload(kind);
  } catch (err) {
    const problem = err instanceof ApiError && err.body && Array.isArray(err.body.errors)
      ? err.body : null;
    if (problem) {
      const more = problem.error_count > problem.errors.length
        ? ` (the first ${problem.errors.length} shown)` : "";
      showResult(prefix, `${file.name} was not stored: ${problem.error_count} ` +
        `problem${problem.error_count === 1 ? "" : "s"}${more}; nothing was written.`, "error");
      showErrors(prefix, problem.errors.length ? problem.errors
        : [{ row: 0, field: "file", message: problem.message }]);
    } else {
      showResult(prefix, `${file.name} was not stored: ` +
        `${err instanceof ApiError ? err.toString() : err.message}`, "error");
    }
  }
}
