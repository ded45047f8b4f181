// The well detail panel: its call, QC and FCT numbers, and the field image with the model's
// overlay. Images need the X-API-Key header too, so they are fetched and shown through object
// URLs rather than loaded by <img src>.

import { ApiError, api, plateUrl } from "./api.js";
import { $ } from "./dom.js";
import { NO_CALL, UNCERTAIN, fmtP, isCall, qcText } from "./platemap.js";
import { state } from "./state.js";

function releaseObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

async function loadImage(kind, name, field, token, img, caption, captionText) {
  img.removeAttribute("src");
  img.alt = "";
  caption.textContent = `${captionText} (loading…)`;
  caption.classList.remove("error");
  const query = new URLSearchParams({ field: String(field) });
  if (state.scan) query.set("scan_id", String(state.scan.id));
  try {
    const response = await api(
      `${plateUrl(state.barcode)}/wells/${encodeURIComponent(name)}/${kind}?${query}`,
    );
    const blob = await response.blob();
    if (token !== state.panelToken) return;
    const url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    img.src = url;
    img.alt = `${captionText} of well ${name}, field ${field}`;
    caption.textContent = captionText;
  } catch (err) {
    if (token !== state.panelToken) return;
    caption.textContent = `${captionText}: ${err instanceof ApiError ? err.toString() : err.message}`;
    caption.classList.add("error");
  }
}

export function showPanel(name) {
  const result = state.wells.get(name);
  $("panel-title").textContent = `Well ${name}`;
  $("panel-empty").hidden = Boolean(result);
  $("panel-body").hidden = !result;
  if (!result) {
    $("panel-empty").textContent = `${name} has no result in this scan yet.`;
    return;
  }
  const badge = $("panel-call");
  badge.dataset.label = result.label || "none";
  $("panel-probability").textContent = fmtP(result.probability);
  $("panel-label").textContent = result.label || `none (${result.status})`;
  renderCall(result, badge);
  $("panel-confluence").textContent =
    result.confluence_pct === null ? "–" : `${result.confluence_pct.toFixed(1)} %`;
  $("panel-qc").textContent = qcText(result.qc_flags) + (result.error ? ` (${result.error})` : "");
  const perWell = state.scan ? state.scan.fields_per_well : result.fields_used;
  $("panel-fields").textContent = `${result.fields_used} of ${perWell}`;
  $("panel-model").textContent = result.model ? `${result.model.name} v${result.model.version}` : "–";
  $("panel-scan").textContent = `#${result.scan_id}`;
  const fct = state.fct.get(name);
  $("panel-fct").textContent = fct
    ? `${fct.label} (CD73 ${fct.cd73_pct.toFixed(1)} %, CD90 ${fct.cd90_pct.toFixed(1)} %)` +
      (isCall(result.label) ? (fct.label === result.label ? " · agrees" : " · disagrees") : "")
    : "not uploaded";

  const fields = Math.max(1, perWell);
  const select = $("panel-field");
  if (select.options.length !== fields) {
    select.replaceChildren(
      ...Array.from({ length: fields }, (_, i) => new Option(`${i + 1} of ${fields}`, String(i))),
    );
  }
  if (state.field >= fields) state.field = 0;
  select.value = String(state.field);
  $("panel-field-select").hidden = fields < 2;

  releaseObjectUrls();
  state.panelToken += 1;
  const token = state.panelToken;
  loadImage("image", name, state.field, token, $("panel-image"), $("panel-image-caption"),
    "Field image");
  loadImage("overlay", name, state.field, token, $("panel-overlay"), $("panel-overlay-caption"),
    "Model overlay (green high, red low)");
}

const fmtNumber = (v, digits) => (v === null || v === undefined ? "–" : v.toFixed(digits));

/** The call badge and what stands behind the call: leaning, confidence, why, OOD score. */
function renderCall(result, badge) {
  if (result.label === UNCERTAIN) {
    badge.textContent = "Uncertain: confirm by FCT";
  } else if (result.label === NO_CALL) {
    badge.textContent = "No call: out of distribution";
  } else if (result.label) {
    badge.textContent = `${result.label === "high" ? "High" : "Low"} functionality`;
  } else {
    badge.textContent = `No call (${result.status})`;
  }
  $("panel-leaning").textContent = result.leaning
    ? result.leaning + (isCall(result.label) ? "" : " (not a call)")
    : "–";
  const spread = result.field_spread ? ` (fields' spread ${result.field_spread.toFixed(3)})` : "";
  $("panel-confidence").textContent = fmtNumber(result.confidence, 3) +
    (result.confidence === null || result.confidence === undefined ? "" : spread);
  $("panel-reason").textContent = result.call_reason || "–";
  $("panel-ood").textContent = fmtNumber(result.ood_score, 1);
}

export function clearPanel() {
  state.selected = null;
  state.panelToken += 1;
  releaseObjectUrls();
  $("panel-title").textContent = "Well details";
  $("panel-empty").textContent = "Click a well to see its image, overlay and call.";
  $("panel-empty").hidden = false;
  $("panel-body").hidden = true;
}
