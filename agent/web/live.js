// edgefleet web, live: update the fleet page's table from the running fleet's /events.
// Names are set with textContent only (they are user data); nothing is loaded from elsewhere.
"use strict";
(function () {
  const status = document.getElementById("live");
  if (!status || !window.EventSource) return;
  const rows = new Map();
  for (const cell of document.querySelectorAll("td.device[data-device]")) {
    rows.set(cell.dataset.device, cell.parentElement);
  }
  function set(row, cls, text) {
    const cell = row.querySelector("td." + cls);
    if (cell && cell.textContent !== text) cell.textContent = text;
  }
  // The server sends one event per connection and closes it: EventSource reports an error and
  // reconnects after the event's retry (1 s). Only a long silence means the run is gone.
  let last = 0;
  const source = new EventSource("/events");
  source.onmessage = function (msg) {
    last = Date.now();
    const snap = JSON.parse(msg.data);
    let shown = 0;
    for (const d of snap.devices) {
      const row = rows.get(d.name);
      if (!row) continue;
      shown += 1;
      set(row, "height", d.height === null ? "-" : String(d.height));
      set(row, "pending", String(d.pending));
      set(row, "lag", String(d.lag));
      if (d.alarms !== null) {
        const cell = row.querySelector("td.alarms");
        const spans = d.alarms.map(function (a) {
          const s = document.createElement("span");
          s.className = "alarm";
          s.textContent = a;
          return s;
        });
        if (spans.length === 0) {
          const s = document.createElement("span");
          s.className = "muted";
          s.textContent = "none";
          spans.push(s);
        }
        cell.replaceChildren.apply(cell, spans);
      }
    }
    status.textContent =
      "live: simulated time " + snap.sim + " UTC; " + shown + " running device(s) updated";
  };
  source.onerror = function () {
    if (Date.now() - last > 3000) {
      status.textContent = "live: no updates (the run has stopped, or the server is gone)";
    }
  };
})();
