// Live status page: follows the task over its websocket (or polls the JSON endpoints)
// and updates the bar, percent, message and ETA in place (or, while the task waits for a
// worker, the jobs ahead of it, read from the JSON). When the status changes it
// swaps in the <main> of a fresh, server-rendered copy of the page, so the result
// appears without a reload. Text goes in with textContent only; the URLs come from
// data- attributes (no inline script, ready for a CSP).
//
// A kind draws the rest itself (its live_script, loaded after this one): every frame is
// dispatched as a "longtask:frame" CustomEvent that bubbles from <main>, its detail the
// frame: the websocket's snapshot, subtasks, progress and status frames (the same shapes
// when polling), and {type: "swapped"} once <main> holds a fresh rendering of the page.
(function () {
  "use strict";

  var main = document.querySelector("main[data-live-url]");
  if (!main || !window.fetch || !window.JSON) {
    return;
  }
  var urls = {
    live: main.getAttribute("data-live-url"),
    json: main.getAttribute("data-json-url"),
    subtasks: main.getAttribute("data-subtasks-url"),
    page: main.getAttribute("data-page-url"),
  };
  var FINAL = { SUCCEEDED: true, FAILED: true, CANCELLED: true };
  var LABELS = {
    QUEUED: "Queued",
    RUNNING: "Running",
    RETRYING: "Retrying",
    SUCCEEDED: "Succeeded",
    FAILED: "Failed",
    CANCELLED: "Cancelled",
  };
  var POLL_MS = 2000;
  // While the task waits for a worker no frame says how many jobs are ahead of it: the
  // page asks the JSON this often (one row and one count of its queue).
  var WAITING_MS = 5000;
  var MAX_SOCKET_FAILURES = 3;

  var state = {
    cursor: parseInt(main.getAttribute("data-cursor"), 10) || 0,
    status: null,
    document: null,
    finished: false,
    socket: null,
    failures: 0, // consecutive sockets that closed before saying anything
    retries: 0,
    polling: false,
    refreshing: false, // a JSON read of the wait is on its way
    swapping: false,
    swapAgain: false,
  };
  var statusLine = main.querySelector(".task-status");
  if (statusLine) {
    state.status = statusLine.getAttribute("data-status");
  }

  function duration(seconds) {
    var s = Math.max(0, Math.round(seconds));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    if (h) {
      return h + " h " + m + " min";
    }
    if (m) {
      return m + " min " + (s % 60) + " s";
    }
    return s + " s";
  }

  // "4,300": written as display.waiting_text writes it on the server.
  function thousands(n) {
    return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function waitingText(waiting) {
    var n = waiting.jobs_ahead;
    if (n === null || n === undefined) {
      return "Waiting for a worker.";
    }
    return "Waiting: " + thousands(n) + (n === 1 ? " job" : " jobs") + " ahead.";
  }

  function setText(element, text) {
    if (element && element.textContent !== text) {
      element.textContent = text;
    }
  }

  function applyProgress(progress, eta) {
    var box = main.querySelector(".progress");
    var bar = box && box.querySelector("progress");
    if (bar) {
      if (progress.total) {
        bar.max = progress.total;
        bar.value = progress.current;
        setText(bar, progress.percent + "%");
        var percent = box.querySelector(".percent");
        if (!percent) {
          percent = document.createElement("span");
          percent.className = "percent";
          box.appendChild(document.createTextNode(" "));
          box.appendChild(percent);
        }
        setText(percent, progress.percent + "%");
      } else {
        bar.removeAttribute("value"); // indeterminate until the total is known
      }
    }
    setText(main.querySelector(".message"), progress.message || "");
    setText(
      main.querySelector(".timing .eta"),
      eta === null || eta === undefined ? "" : "About " + duration(eta) + " left."
    );
  }

  function tickElapsed() {
    var doc = state.document;
    if (!doc || state.finished) {
      return;
    }
    var now = Date.now();
    var text;
    if (doc.waiting) {
      text = waitingText(doc.waiting); // no clock runs while nobody works on it
    } else if (doc.started_at) {
      text = "Running for " + duration((now - Date.parse(doc.started_at)) / 1000) + ".";
    } else {
      var waited = duration((now - Date.parse(doc.created_at)) / 1000);
      text = "Waiting to start (" + waited + " so far).";
    }
    setText(main.querySelector(".timing .elapsed"), text);
  }

  // Hand a frame to the kind's script. A listener that throws is reported by the
  // browser and stops neither the others nor this script.
  function emit(frame) {
    main.dispatchEvent(new CustomEvent("longtask:frame", { detail: frame, bubbles: true }));
  }

  function applySubtasks(cursor) {
    if (typeof cursor === "number" && cursor > state.cursor) {
      state.cursor = cursor;
    }
  }

  function applyDocument(doc) {
    state.document = doc;
    applyProgress(doc.progress, doc.eta_seconds);
    if (doc.status !== state.status) {
      state.status = doc.status;
      var line = main.querySelector(".task-status");
      if (line) {
        line.setAttribute("data-status", doc.status);
        if (line.firstChild && line.firstChild.nodeType === Node.TEXT_NODE) {
          line.firstChild.data = LABELS[doc.status] || doc.status;
        }
      }
      swapMain();
    }
    if (FINAL[doc.status]) {
      finish();
    }
  }

  // Replace <main>'s content with the server's rendering of the page as it is now.
  function swapMain() {
    if (state.swapping) {
      state.swapAgain = true;
      return;
    }
    state.swapping = true;
    fetch(urls.page, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("status page answered " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var freshMain = fresh.querySelector("main");
        if (!freshMain) {
          throw new Error("no <main> in the status page");
        }
        var nodes = [];
        for (var i = 0; i < freshMain.childNodes.length; i++) {
          nodes.push(document.importNode(freshMain.childNodes[i], true));
        }
        main.replaceChildren.apply(main, nodes);
        document.title = fresh.title;
        // Frames that arrived while the page was on its way are not in it: a kind's
        // script applies again what it drew.
        emit({ type: "swapped", status: state.status });
      })
      .catch(function () {
        if (state.finished) {
          window.location.reload(); // last resort: the result must show
        }
      })
      .then(function () {
        state.swapping = false;
        if (state.swapAgain) {
          state.swapAgain = false;
          swapMain();
        }
      });
  }

  function finish() {
    if (state.finished) {
      return;
    }
    state.finished = true;
    if (state.socket) {
      state.socket.onclose = null;
      state.socket.close(1000);
    }
  }

  function onFrame(frame) {
    if (frame.type === "snapshot" || (frame.type === "status" && frame.document)) {
      applyDocument(frame.document);
    } else if (frame.type === "subtasks") {
      applySubtasks(frame.cursor);
    } else if (frame.type === "progress") {
      if (state.document) {
        state.document.progress = frame.progress;
        if (state.document.waiting) {
          refreshWaiting(); // progress: a worker may have taken it up
        }
      }
      applyProgress(frame.progress, frame.eta_seconds);
    }
    emit(frame);
  }

  // Over the websocket, while the task waits for a worker: the JSON says how many jobs
  // are ahead now, and when the wait is over. A new status is left to the socket, which
  // sends it after every subtask event before it.
  function refreshWaiting() {
    var doc = state.document;
    if (state.finished || state.polling || state.refreshing || !doc || !doc.waiting) {
      return;
    }
    state.refreshing = true;
    getJson(urls.json)
      .then(function (fresh) {
        if (fresh.status === state.status && !state.finished) {
          applyDocument(fresh);
          tickElapsed();
        }
      })
      .catch(function () {})
      .then(function () {
        state.refreshing = false;
      });
  }

  function signedOut() {
    state.finished = true; // stop following: no reconnect, no polling
    main.setAttribute("data-live", "signed-out");
    var note = document.createElement("p");
    note.className = "signed-out";
    note.textContent = "Signed out: sign in again and reload this page to follow the task.";
    main.insertBefore(note, main.firstChild);
  }

  function connect() {
    if (state.finished) {
      return;
    }
    if (!window.WebSocket) {
      startPolling();
      return;
    }
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    var url = scheme + window.location.host + urls.live + "?since=" + state.cursor;
    var heard = false;
    var socket;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      startPolling();
      return;
    }
    state.socket = socket;
    socket.onmessage = function (message) {
      if (!heard) {
        main.setAttribute("data-live", "socket"); // how the page follows the task
      }
      heard = true;
      state.failures = 0;
      state.retries = 0;
      var frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      onFrame(frame);
    };
    socket.onclose = function (event) {
      state.socket = null;
      if (state.finished) {
        return;
      }
      if (event.code === 4404) {
        return; // gone or not ours: nothing more will come
      }
      if (event.code === 4403) {
        signedOut(); // the session ended or the permission went: retrying cannot help
        return;
      }
      if (!heard) {
        state.failures += 1;
      }
      if (event.code === 4400 || state.failures >= MAX_SOCKET_FAILURES) {
        startPolling();
        return;
      }
      var delay = Math.min(15000, 500 * Math.pow(2, state.retries)) * (0.5 + Math.random() / 2);
      state.retries += 1;
      window.setTimeout(connect, delay);
    };
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
      function (response) {
        if (!response.ok) {
          throw new Error(url + " answered " + response.status);
        }
        return response.json();
      }
    );
  }

  function pollSubtasks() {
    var sep = urls.subtasks.indexOf("?") < 0 ? "?" : "&";
    return getJson(urls.subtasks + sep + "since=" + state.cursor).then(function (page) {
      onFrame({ type: "subtasks", cursor: page.cursor, events: page.subtasks });
      return page.more ? pollSubtasks() : null;
    });
  }

  // Without websockets: the document first, then the subtasks finished up to now, so a
  // final status is applied only once every subtask before it has been handed on. Each
  // polled document goes to the kind's script as a snapshot frame (the whole document).
  function poll() {
    if (state.finished) {
      return;
    }
    var doc;
    getJson(urls.json)
      .then(function (d) {
        doc = d;
        return urls.subtasks && doc.subtasks ? pollSubtasks() : null;
      })
      .then(function () {
        onFrame({ type: "snapshot", cursor: state.cursor, document: doc });
      })
      .catch(function () {})
      .then(function () {
        if (!state.finished) {
          window.setTimeout(poll, POLL_MS);
        }
      });
  }

  function startPolling() {
    if (!state.polling) {
      state.polling = true;
      main.setAttribute("data-live", "polling");
      poll();
    }
  }

  window.setInterval(tickElapsed, 1000);
  window.setInterval(refreshWaiting, WAITING_MS);
  // After every deferred script (a kind's among them) has run, so none misses a frame.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
})();
