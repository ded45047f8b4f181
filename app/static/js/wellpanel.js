// The well detail panel: its call, QC and FCT numbers, and the field image with the model's
// overlay. Images need the X-API-Key header too, so they are fetched and shown through object
// URLs rather than loaded by <img src>. The field image carries a scale bar (from the field's
// pixel size) and its objective, and a field QC excluded says so over the image: an
// overexposed field would otherwise be a blank white box.

import { ApiError, api, plateUrl } from "./api.js";
import { $ } from "./dom.js";
import { NO_CALL, UNCERTAIN, fmtP, isCall, qcText } from "./platemap.js";
import { DIRECTIONS, disagreement } from "./evaluation.js";
import { state } from "./state.js";

function releaseObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

async function loadImage(kind, name, field, token, img, caption, captionText, onLoaded) {
  img.removeAttribute("src");
  if (onLoaded) $("panel-scale").hidden = true;
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
    if (onLoaded) img.addEventListener("load", () => onLoaded(img), { once: true });
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
      (isCall(result.label) ? agreementText(result.label, fct.label) : "")
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
  const image = (result.images || []).find((i) => i.field === state.field) || null;
  const scale = renderFieldFacts(result, image, fields);
  loadImage("image", name, state.field, token, $("panel-image"), $("panel-image-caption"),
    "Field image", (img) => token === state.panelToken && drawScaleBar(img, scale));
  loadImage("overlay", name, state.field, token, $("panel-overlay"), $("panel-overlay-caption"),
    "Model overlay (green high, red low)");
}

function agreementText(model, fct) {
  const direction = disagreement(model, fct);
  return direction ? ` · disagrees: ${DIRECTIONS[direction].text}` : " · agrees";
}

// The simulator's camera (hardware.sim: SimulationConfig.camera_pixel_um over
// OBJECTIVE_MAGNIFICATION): the pixel size of a simulated scan's fields when the API does not
// report the field's own.
const SIM_CAMERA_PIXEL_UM = 6.5;
const SIM_MAGNIFICATION = { "40x": 4, "100x": 10 };

/** The field's pixel size in um and where it comes from; null when nothing tells. */
function pixelSize(image, scan) {
  if (image && typeof image.pixel_size_um === "number" && image.pixel_size_um > 0) {
    return { um: image.pixel_size_um, source: "as acquired" };
  }
  const objective = image && image.objective ? image.objective : scan && scan.objective;
  if (scan && scan.microscope === "simulated" && SIM_MAGNIFICATION[objective]) {
    return { um: SIM_CAMERA_PIXEL_UM / SIM_MAGNIFICATION[objective], source: "simulated camera" };
  }
  return null;
}

/** A round length (1, 2 or 5 times a power of ten) of about a fifth of the field's width. */
function niceLength(widthUm) {
  const target = widthUm / 5;
  const power = 10 ** Math.floor(Math.log10(target));
  for (const step of [5, 2, 1]) if (step * power <= target) return step * power;
  return power;
}

/** The field's QC: its own flags when the API reports them, else what the well's tell. */
function fieldQc(result, image, fields) {
  if (image && Array.isArray(image.qc_flags)) {
    const excluded = typeof image.qc_excluded === "boolean"
      ? image.qc_excluded : image.qc_flags.length > 0;
    return image.qc_flags.length || excluded ? { flags: image.qc_flags, excluded, known: true } : null;
  }
  if (result.status === "excluded") return { flags: result.qc_flags, excluded: true, known: true };
  if (!result.qc_flags.length) return null;
  if (fields === 1) return { flags: result.qc_flags, excluded: result.fields_used === 0, known: true };
  return { flags: result.qc_flags, excluded: false, known: false };
}

/** Objective, pixel size and QC of the field shown; the scale bar's length (or null). */
function renderFieldFacts(result, image, fields) {
  const scan = state.scan;
  const objective = (image && image.objective) || (scan && scan.objective) || null;
  const size = pixelSize(image, scan);
  const parts = [objective ? `${objective} objective` : "objective not reported"];
  let scale = null;
  if (size) {
    const widthPx = image && image.width ? image.width : null;
    parts.push(`${size.um.toFixed(3)} µm/pixel (${size.source})`);
    scale = { pixelUm: size.um, widthPx };
    if (widthPx) parts.push(`field ${(widthPx * size.um).toFixed(0)} µm wide`);
  } else {
    parts.push("pixel size not reported: no scale bar");
  }
  $("panel-image-meta").textContent = parts.join(" · ");

  const qc = fieldQc(result, image, fields);
  const frame = $("panel-image-frame");
  const veil = $("panel-qc-veil");
  const line = $("panel-field-qc");
  frame.dataset.qc = qc ? (qc.excluded ? "excluded" : "flagged") : "ok";
  veil.hidden = !(qc && qc.excluded);
  line.hidden = !qc;
  if (qc) {
    const flags = qc.flags.length ? qcText(qc.flags) : "no usable signal";
    const text = qc.excluded
      ? `${flags} — excluded by QC`
      : qc.known ? `${flags} — flagged by QC, still used`
        : `QC flags of this well's fields: ${flags} (which field is not reported)`;
    line.textContent = text;
    $("panel-qc-veil-text").textContent = text;
  }
  return scale;
}

/** The scale bar over the loaded image: its share of the image's width, as displayed. */
function drawScaleBar(img, scale) {
  const bar = $("panel-scale");
  if (!scale || !img.naturalWidth) {
    bar.hidden = true;
    return;
  }
  // The image fills its frame at its own aspect, so a share of its width is one on screen.
  img.style.aspectRatio = `${img.naturalWidth} / ${img.naturalHeight}`;
  const fieldPx = scale.widthPx || img.naturalWidth; // a multi-channel frame shows side by side
  const lengthUm = niceLength(fieldPx * scale.pixelUm);
  const share = lengthUm / scale.pixelUm / img.naturalWidth;
  $("panel-scale-line").style.width = `${(share * 100).toFixed(2)}%`;
  bar.style.setProperty("--bar", `${(share * 100).toFixed(2)}%`);
  $("panel-scale-label").textContent = `${lengthUm} µm`;
  bar.dataset.lengthUm = String(lengthUm);
  bar.setAttribute("aria-label", `Scale bar: ${lengthUm} µm`);
  bar.hidden = false;
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
