// AFRA: live parts of the pages. Everything works without this script; it only keeps the
// dashboard, the wizard's "seen from the PACS" list and the setup window state up to date.
"use strict";
(function () {
  var POLL_MS = 5000;

  function get(obj, path) {
    return path.split(".").reduce(function (o, k) { return o == null ? o : o[k]; }, obj);
  }

  function age(s) {
    if (!s || s <= 0) { return "—"; }
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"; }
    return Math.floor(s / 86400) + " d";
  }

  function bytes(n) {
    var units = ["B", "KB", "MB", "GB", "TB"], v = n || 0, i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return i === 0 ? v + " B" : v.toFixed(1) + " " + units[i];
  }

  function clock(t) {
    // In the page's language (a Persian page gets its calendar and digits), not the phone's.
    return t ? new Date(t * 1000).toLocaleString(document.documentElement.lang || undefined) : "";
  }

  // A value apart from the words around it: an AE title, an address, a time (app.css).
  function span(cls, value) {
    var el = document.createElement("span");
    el.className = cls;
    el.textContent = value;
    return el;
  }

  function text(el, value) { if (el.textContent !== value) { el.textContent = value; } }

  function render(data) {
    document.querySelectorAll("[data-bind]").forEach(function (el) {
      var value = get(data, el.getAttribute("data-bind"));
      var fmt = el.getAttribute("data-format");
      if (fmt === "age") { value = age(value); }
      else if (fmt === "bytes") { value = bytes(value); }
      else if (fmt === "reach") {
        value = value === true ? el.dataset.yes : value === false ? el.dataset.no : el.dataset.unknown;
      }
      if (value !== undefined && value !== null) { text(el, String(value)); }
    });
    if (typeof data.time === "number") { offset = data.time - Date.now() / 1000; }
    document.querySelectorAll("[data-leds]").forEach(function (panel) {
      (data.leds || []).forEach(function (led, i) {
        var el = panel.querySelectorAll(".led")[i];
        if (!el) { return; }
        el.setAttribute("data-steps", led.steps.join(","));
        el.setAttribute("data-origin", String(led.origin));
        var word = el.querySelector("[data-pattern]");
        if (word && led.label) { text(word, led.label); }
      });
    });
    document.querySelectorAll("[data-state]").forEach(function (el) {
      var state = (data.health || {}).state;
      if (state) { el.className = "state state-" + state; text(el, data.health.label || state); }
    });
    document.querySelectorAll("[data-bind-list]").forEach(function (list) {
      var items = get(data, list.getAttribute("data-bind-list")) || [];
      list.textContent = "";
      items.forEach(function (item) {
        var li = document.createElement("li");
        li.textContent = item;
        list.appendChild(li);
      });
    });
    document.querySelectorAll("[data-sightings]").forEach(function (list) {
      var seen = data.sightings || [];
      if (!seen.length) { return; }
      // Nothing new: the page's own list stays (its times and counts as the box writes them).
      var keys = seen.map(function (s) {
        return [s.ae_title, s.address, Math.floor(s.last_echo_at || 0), s.stores || 0].join("|");
      });
      var shown = Array.prototype.map.call(list.children, function (li) { return li.dataset.seen; });
      if (keys.join("\n") === shown.join("\n")) { return; }
      list.textContent = "";
      seen.forEach(function (s, i) {
        var li = document.createElement("li");
        li.dataset.seen = keys[i];
        li.appendChild(span("code", s.ae_title));
        li.appendChild(document.createTextNode(" "));
        li.appendChild(span("ltr", "(" + s.address + ")"));
        li.appendChild(document.createTextNode(":"));
        if (s.last_echo_at) {
          li.appendChild(document.createTextNode(" " + list.dataset.echo + " "));
          li.appendChild(span("time", clock(s.last_echo_at)));
        }
        if (s.stores) {
          var count = Number(s.stores).toLocaleString(document.documentElement.lang || undefined);
          li.appendChild(document.createTextNode(" " + count + " " + list.dataset.stores + ", "));
          li.appendChild(span("time", clock(s.last_store_at)));
        }
        list.appendChild(li);
      });
    });
    document.querySelectorAll("[data-window]").forEach(function (el) {
      var w = data.setup_window || {};
      el.className = w.open ? "ok" : "muted";
      text(el, w.open ? el.dataset.openText : el.dataset.closedText);
    });
  }

  // The box's clock minus ours: LED patterns start at box times.
  var offset = 0;

  function lit(steps, elapsed) {
    var total = steps.reduce(function (a, b) { return a + b; }, 0);
    if (total <= 0) { return false; }
    var t = ((elapsed % total) + total) % total;
    for (var i = 0; i < steps.length; i++) {
      if (t < steps[i]) { return i % 2 === 0; }
      t -= steps[i];
    }
    return false;
  }

  function blink() {
    var now = Date.now() / 1000 + offset;
    document.querySelectorAll(".led[data-steps]").forEach(function (el) {
      var steps = el.getAttribute("data-steps").split(",").map(Number);
      var on = lit(steps, now - Number(el.getAttribute("data-origin") || 0));
      el.classList.toggle("lit", on);
    });
  }

  function poll(url) {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); }  // signed out: show the sign-in page
        return r.ok ? r.json() : null;
      })
      .then(function (data) { if (data) { render(data); } })
      .catch(function () { /* the box may be restarting; try again next time */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var body = document.body;
    if (body.hasAttribute("data-time")) { offset = Number(body.getAttribute("data-time")) - Date.now() / 1000; }
    if (document.querySelector(".led[data-steps]")) { window.setInterval(blink, 50); }
    var source = document.querySelector("[data-poll]");
    var url = source ? source.getAttribute("data-poll") : null;
    if (!url && document.querySelector("[data-sightings]")) { url = "/api/status"; }
    if (!url && document.querySelector("[data-window]")) { url = "/api/setup-window"; }
    if (!url) { return; }
    window.setInterval(function () { if (!document.hidden) { poll(url); } }, POLL_MS);
  });
})();
