// The test kind Framed's live script (tests/test_browser.py): records every frame that
// longtask's status.js hands on, and lists their types in the kind's live area.
(function () {
  "use strict";

  var seen = (window.framed = { types: [], indexes: [], statuses: [] });

  document.addEventListener("longtask:frame", function (event) {
    var frame = event.detail;
    seen.types.push(frame.type);
    if (frame.type === "subtasks") {
      for (var i = 0; i < frame.events.length; i++) {
        seen.indexes.push(frame.events[i].index);
      }
    }
    if (frame.document) {
      seen.statuses.push(frame.document.status);
    }
    var list = document.querySelector("main .live ol.framed");
    if (list) {
      var item = document.createElement("li");
      item.textContent = frame.type;
      list.appendChild(item);
    }
  });
})();
