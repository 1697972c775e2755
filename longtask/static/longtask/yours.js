// Your tasks: keeps the unfinished rows of the page up to date with ONE poll for all of
// them (GET data-rows-url?ids=a,b,...), every data-interval seconds while the tab is
// visible, and stops once every row has finished (longtask/web/yours.py says why a
// poll and not a socket per row). Text goes in with textContent only; no inline script.
(function () {
  "use strict";

  var table = document.querySelector("table.tasks[data-rows-url]");
  if (!table || !window.fetch || !window.JSON) {
    return;
  }
  var url = table.getAttribute("data-rows-url");
  var interval = (parseFloat(table.getAttribute("data-interval")) || 2) * 1000;
  var MAX_DELAY_MS = 60000;
  var FINAL = { SUCCEEDED: true, FAILED: true, CANCELLED: true };
  var delay = interval;
  var timer = null;
  var busy = false;

  function setText(element, text) {
    if (element && element.textContent !== text) {
      element.textContent = text;
    }
  }

  // Rows still worth asking about: not finished, and not left out by the last answer
  // (no longer yours, e.g. after signing out in another tab).
  function liveRows() {
    return Array.prototype.filter.call(
      table.querySelectorAll("tbody tr[data-task-id]"),
      function (row) {
        return !FINAL[row.getAttribute("data-status")] && !row.hasAttribute("data-gone");
      }
    );
  }

  function apply(row, data) {
    row.setAttribute("data-status", data.status);
    setText(row.querySelector(".status"), data.status_label);
    var bar = row.querySelector("progress");
    if (bar) {
      if (data.percent === null || data.percent === undefined) {
        if (data.final) {
          bar.value = 0;
        } else {
          bar.removeAttribute("value"); // indeterminate until a total is known
        }
        setText(bar, "");
      } else {
        bar.value = data.percent;
        setText(bar, data.percent + "%");
      }
    }
    setText(
      row.querySelector(".percent"),
      data.percent === null || data.percent === undefined ? "" : data.percent + "%"
    );
    setText(row.querySelector(".message"), data.message || "");
    setText(row.querySelector(".timing"), data.timing || "");
    if (data.final) {
      row.classList.add("final");
    }
  }

  function schedule() {
    if (timer === null && !busy) {
      timer = window.setTimeout(poll, delay);
    }
  }

  function poll() {
    timer = null;
    var rows = liveRows();
    if (!rows.length) {
      table.setAttribute("data-live", "done");
      return;
    }
    if (document.hidden) {
      return; // visibilitychange starts again
    }
    var ids = rows.map(function (row) {
      return row.getAttribute("data-task-id");
    });
    busy = true;
    window
      .fetch(url + "?ids=" + encodeURIComponent(ids.join(",")), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        var byId = {};
        (data.tasks || []).forEach(function (task) {
          byId[task.id] = task;
        });
        rows.forEach(function (row) {
          var task = byId[row.getAttribute("data-task-id")];
          if (task) {
            apply(row, task);
          } else {
            row.setAttribute("data-gone", "");
          }
        });
        delay = interval;
        table.setAttribute("data-live", "polling");
      })
      .catch(function () {
        delay = Math.min(delay * 2, MAX_DELAY_MS); // the server is away: back off
        table.setAttribute("data-live", "retrying");
      })
      .then(function () {
        busy = false;
        schedule();
      });
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      schedule();
    }
  });
  table.setAttribute("data-live", "polling");
  schedule();
})();
