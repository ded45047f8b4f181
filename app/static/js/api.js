// The service's API: every call sends the X-API-Key header; failures become ApiError.

import { $ } from "./dom.js";

// Relative, so the page also works behind a path prefix (fetch resolves it against the page,
// not against this module's URL).
export const API = "api/v1";

const HTTP_REASONS = {
  400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
  409: "Conflict", 422: "Unprocessable Content", 500: "Internal Server Error",
  503: "Service Unavailable",
};

export class ApiError extends Error {
  /** `detail`: the error in words; `body`: the answer's `detail` as sent (an upload's 422
   * carries {message, errors: [{row, field, message}], error_count}), or null. */
  constructor(status, detail, body = null) {
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.body = body;
  }

  toString() {
    if (!this.status) return this.detail;
    const reason = HTTP_REASONS[this.status] ? ` ${HTTP_REASONS[this.status]}` : "";
    return `${this.status}${reason}: ${this.detail}`;
  }
}

function formatDetail(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc: ["body", "wells", 0], msg: "..."}]
    return detail
      .map((e) => {
        if (!e || typeof e !== "object" || !e.msg) return JSON.stringify(e);
        const where = (e.loc || []).filter((part) => part !== "body").join(".");
        // The value at fault, when it is short enough to read ("Z99"), names what to fix.
        const value = typeof e.input === "string" || typeof e.input === "number" ? JSON.stringify(e.input) : "";
        const got = value && value.length <= 40 ? ` (got ${value})` : "";
        return where ? `${where}: ${e.msg}${got}` : `${e.msg}${got}`;
      })
      .join("; ");
  }
  if (detail && typeof detail === "object") {
    // Upload errors: {message, errors: [{row, field, message}]}
    if (detail.message) return detail.message;
    return JSON.stringify(detail);
  }
  return String(detail);
}

async function apiError(response) {
  const text = await response.text();
  let detail;
  try {
    const body = JSON.parse(text);
    detail = body && "detail" in body ? body.detail : body;
  } catch {
    return new ApiError(response.status, text || response.statusText || "request failed");
  }
  return new ApiError(response.status, formatDetail(detail), detail);
}

export async function api(path, { method = "GET", body, headers = {}, signal } = {}) {
  const sent = { ...headers };
  const key = $("api-key").value.trim();
  if (key) sent["X-API-Key"] = key;
  let payload = body;
  if (body !== undefined && typeof body !== "string") {
    sent["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: sent, body: payload, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `the service did not answer (${err.message})`);
  }
  if (!response.ok) throw await apiError(response);
  return response;
}

export const getJson = async (path, options) => (await api(path, options)).json();
export const scanUrl = (id) => `${API}/scans/${encodeURIComponent(id)}`;
export const plateUrl = (barcode) => `${API}/plates/${encodeURIComponent(barcode)}`;
