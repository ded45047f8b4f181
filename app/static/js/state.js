// What the page shows, shared by the modules that render it (the one piece of shared state).

export const state = {
  barcode: null,
  scan: null, // ScanPublic of the scan shown
  wells: new Map(), // well name -> WellResultPublic
  fct: new Map(), // well name -> {cd73_pct, cd90_pct, label, event_count}
  evaluation: null,
  selected: null,
  field: 0,
  stream: null, // AbortController of the event stream being read
  panelToken: 0, // guards against late image responses for a previously selected well
  objectUrls: [],
};
