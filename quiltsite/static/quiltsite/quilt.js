// The quilt's live renderer (Quilt.live_script): colours the squares of the status page's
// quilt as their subtasks finish. It listens for the "longtask:frame" events that
// longtask's status.js dispatches from <main>, one per frame it receives over the
// websocket (or by polling). Colours go in as SVG fill attributes, never styles: the
// page's Content-Security-Policy allows no inline style.
(function () {
  "use strict";

  var COLOR = /^#[0-9a-f]{6}$/;
  var painted = {}; // index -> subtask event, painted again after status.js swaps <main>

  function grid() {
    return document.querySelector("main .quilt-live svg.quilt");
  }

  function paint(quilt, event) {
    var index = event.index;
    var result = event.result;
    var cols = parseInt(quilt.getAttribute("data-cols"), 10);
    if (result && typeof result.row === "number" && typeof result.col === "number" && cols) {
      index = result.row * cols + result.col;
    }
    var square = quilt.children[index]; // the squares come first, in index order
    if (!square || square.tagName.toLowerCase() !== "rect") {
      return;
    }
    if (event.status === "SUCCEEDED" && result && COLOR.test(String(result.color))) {
      square.setAttribute("fill", result.color);
      square.classList.remove("failed");
    } else if (event.status === "FAILED") {
      square.classList.add("failed");
    }
  }

  function count(quilt) {
    var done = document.querySelector("main .quilt-live .quilt-count .done");
    if (done) {
      var text = String(quilt.querySelectorAll(":scope > rect[fill]").length);
      if (done.textContent !== text) {
        done.textContent = text;
      }
    }
  }

  document.addEventListener("longtask:frame", function (event) {
    var frame = event.detail;
    var quilt = grid();
    if (frame.type === "subtasks") {
      for (var i = 0; i < frame.events.length; i++) {
        painted[frame.events[i].index] = frame.events[i];
        if (quilt) {
          paint(quilt, frame.events[i]);
        }
      }
    } else if (frame.type === "swapped" && quilt) {
      // The fresh page lacks what arrived while it was on its way: paint it again.
      for (var index in painted) {
        paint(quilt, painted[index]);
      }
    } else {
      return;
    }
    if (quilt) {
      count(quilt);
    }
  });
})();
