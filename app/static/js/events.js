// Following a scan live over its server-sent events.
//
// EventSource cannot send headers (the X-API-Key), so the stream is read with fetch() and a
// small ReadableStream parser.

import { API, api } from "./api.js";
import { renderConfirm } from "./confirm.js";
import { loadGroundTruth } from "./evaluation.js";
import { renderScanTools } from "./history.js";
import { renderSummary, renderTitle, renderWell } from "./platemap.js";
import { state } from "./state.js";
import { renderProgress, setStatus, showError } from "./status.js";
import { showPanel } from "./wellpanel.js";

function parseSseBlock(block) {
  let event = "message";
  let id = null;
  const data = [];
  for (const line of block.split(/\r\n|\r|\n/)) {
    if (!line || line.startsWith(":")) continue; // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return data.length ? { event, data: data.join("\n"), id } : null;
}

async function* readSse(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // An event ends at the first blank line.
      for (let m = /\r?\n\r?\n/.exec(buffer); m; m = /\r?\n\r?\n/.exec(buffer)) {
        const parsed = parseSseBlock(buffer.slice(0, m.index));
        buffer = buffer.slice(m.index + m[0].length);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

let onScanEnd = null; // refreshes the scan history and plate list (main.js)

export function setScanEndHandler(handler) {
  onScanEnd = handler;
}

export function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

// The server closes a stream after a few minutes (MSCREEN_EVENTS_MAX_SECONDS) without `end`;
// the page then reconnects with Last-Event-ID and gets only the wells it has not seen. A stream
// that keeps closing without sending anything new is given up after a few tries.
const MAX_QUIET_RECONNECTS = 5;

export async function followScan(scanId) {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  let ended = false;
  let lastEventId = null;
  let quiet = 0;
  try {
    while (!ended && quiet < MAX_QUIET_RECONNECTS) {
      const headers = { Accept: "text/event-stream" };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await api(`${API}/scans/${scanId}/events`, {
        signal: controller.signal,
        headers,
      });
      let received = false;
      for await (const { event, data, id } of readSse(response)) {
        received = true;
        if (id !== null) lastEventId = id;
        const body = JSON.parse(data);
        if (event === "well") {
          if (state.scan && body.scan_id !== state.scan.id) continue;
          state.wells.set(body.well, body);
          renderWell(body.well);
          renderSummary();
          renderConfirm();
          if (body.well === state.selected) showPanel(body.well);
        } else if (event === "progress") {
          state.scan = body;
          renderProgress();
          renderScanTools();
          renderTitle();
          renderSummary(); // with the call policy line: resolved once the scan starts
        } else if (event === "end") {
          ended = true;
          if (state.scan && state.scan.id === body.id) state.scan = { ...state.scan, ...body };
          const ok = body.status === "completed";
          const error = state.scan && state.scan.error ? `: ${state.scan.error}` : "";
          setStatus(`Scan #${body.id} ${body.status}${error}.`, ok ? "ok" : "error");
          if (onScanEnd) onScanEnd();
        }
      }
      quiet = received ? 0 : quiet + 1;
    }
    if (!ended) setStatus(`The event stream of scan #${scanId} keeps closing; load the plate again.`, "error");
  } catch (err) {
    if (err.name !== "AbortError") showError(err);
    return;
  } finally {
    if (state.stream === controller) state.stream = null;
  }
  // Ground truth may already exist (uploaded before the scan): show the agreement at once.
  await loadGroundTruth(state.barcode).catch(showError);
}
