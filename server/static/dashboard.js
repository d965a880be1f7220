// call-me dashboard: keeps the live part of the page current. On every event of /v1/events it fetches
// the server-rendered fragment again (already escaped by the server) and swaps it in. Without
// JavaScript the page still shows everything; it just does not update by itself.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !window.EventSource || !window.fetch) { return; }
  var src = live.getAttribute("data-live-src");
  var kinds = ["acquired", "released", "expired", "revoked", "queued", "abandoned", "left",
               "environment_changed", "environment_deleted"];
  var timer = null;
  var pending = false;
  var LIVE = "Live: updates as things happen.";
  var PAUSED = "Live updates paused while a form here has changes; they resume once it is sent or cleared.";

  function say(text) { if (status && status.textContent !== text) { status.textContent = text; } }

  function editing() {
    // Never pull the page from under someone typing in one of its forms, nor wipe what they typed and left
    // (a field changed from its default) before they press its button.
    var el = document.activeElement;
    if (el && live.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName)) { return true; }
    var fields = live.querySelectorAll("input:not([type=hidden]), textarea");
    for (var i = 0; i < fields.length; i++) {
      if (fields[i].value !== fields[i].defaultValue) { return true; }
    }
    return false;
  }

  function refresh() {
    timer = null;
    if (editing()) { pending = true; say(PAUSED); return; }
    pending = false;
    fetch(src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 401) { window.location.assign("/signin"); return null; }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        if (editing()) { pending = true; say(PAUSED); return; }  // they typed while the fragment was on its way
        say(LIVE);
        var open = [];
        live.querySelectorAll("details[open]").forEach(function (d) { open.push(d.id); });
        var focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.id : null;
        live.innerHTML = html;
        open.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
        if (focused) { var f = document.getElementById(focused); if (f) { f.focus(); } }
        live.setAttribute("data-updated", String(Date.now()));
      })
      .catch(function () { say("Live updates paused: the server did not answer. Retrying…"); });
  }

  function soon() { if (timer === null) { timer = window.setTimeout(refresh, 150); } }

  live.addEventListener("focusout", function () { if (pending) { soon(); } });
  live.addEventListener("input", function () { if (pending) { soon(); } });
  live.addEventListener("submit", function () { pending = false; });

  function connect() {
    var events = new EventSource("/v1/events");
    events.onopen = function () { say(LIVE); soon(); };
    events.onerror = function () {
      say("Live updates lost; reconnecting…");
      if (events.readyState === EventSource.CLOSED) {
        // Refused outright (signed out, server restarted): refresh() sends a signed-out viewer to
        // the sign-in page; otherwise try again in a while.
        refresh();
        window.setTimeout(connect, 5000);
      }
    };
    kinds.forEach(function (kind) { events.addEventListener(kind, soon); });
  }
  connect();
  // Relative times ("in 5m") and waits move on even when nothing happens.
  window.setInterval(soon, 30000);
})();
