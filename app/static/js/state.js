// What the page shows, shared by the modules that render it (the one piece of shared state).

export const state = {
  barcode: null,
  scan: null, // ScanPublic of the scan shown
  wells: new Map(), // well name -> WellResultPublic
  fct: new Map(), // well name -> {cd73_pct, cd90_pct, label, event_count}
  manual: new Map(), // well name -> [{operator, label, seconds_spent, recorded_at}]
  evaluation: null,
  scanPinned: false, // a scan picked from the history (else: the plate's latest scan)
  model: null, // "NAME:VERSION" of a re-analysis shown (?model=); null: the scan's own calls
  analyses: [], // the shown scan's re-analyses (the model-version picker)
  scans: [], // the plate's scans, newest first (the history picker)
  selected: null,
  field: 0,
  stream: null, // AbortController of the event stream being read
  panelToken: 0, // guards against late image responses for a previously selected well
  objectUrls: [],
};
