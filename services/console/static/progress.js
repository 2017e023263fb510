/* Follows an evaluation run on its page (templates/evaluation_run.html): polls the run's
   progress, GET <data-run-progress> (JSON), every second; updates the progress bar, the state
   and the status line; and once the run has ended, loads the page again, which then shows the
   report link or the error. Without script the page has a Refresh link instead. */
(function () {
  "use strict";

  var INTERVAL_MS = 1000;
  var MAX_FAILURES = 10;
  var TONES = { queued: "state-warn", running: "", succeeded: "state-good", failed: "state-bad", cancelled: "state-warn" };

  function follow(panel) {
    var url = panel.getAttribute("data-run-progress");
    var bar = document.getElementById("run-progress-bar");
    var state = document.getElementById("run-state");
    var text = document.getElementById("run-progress-text");
    var failures = 0;

    function update(data) {
      var progress = data.progress || {};
      if (bar) {
        bar.max = Math.max(progress.total || 0, 1);
        bar.value = progress.completed || 0;
        bar.textContent = progress.total ? Math.round((100 * (progress.completed || 0)) / progress.total) + " %" : "0 %";
      }
      if (state && state.textContent !== data.state) {
        state.textContent = data.state;
        state.className = ("state " + (TONES[data.state] || "")).trim();
      }
      if (text && data.text && text.textContent !== data.text) {
        text.textContent = data.text;
      }
    }

    function schedule() {
      window.setTimeout(poll, INTERVAL_MS);
    }

    function poll() {
      if (document.hidden) {
        schedule();
        return;
      }
      window
        .fetch(url, { credentials: "same-origin", cache: "no-store", headers: { accept: "application/json" } })
        .then(function (response) {
          var type = response.headers.get("content-type") || "";
          if (!response.ok || type.indexOf("application/json") !== 0) {
            throw new Error("progress answered " + response.status);
          }
          return response.json();
        })
        .then(function (data) {
          failures = 0;
          update(data);
          if (data.terminal) {
            // The page shows the report link (or the error) once the run has ended.
            window.location.replace(window.location.pathname);
            return;
          }
          schedule();
        })
        .catch(function () {
          failures += 1;
          if (failures < MAX_FAILURES) {
            schedule();
          }
        });
    }

    schedule();
  }

  function start() {
    var panel = document.querySelector("[data-run-progress]");
    if (panel && panel.getAttribute("data-run-terminal") !== "true") {
      follow(panel);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
