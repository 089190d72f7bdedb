// Shardline dashboard: live updates and log search. Shardline's own code (Apache-2.0), served
// from the binary; no inline script anywhere (the Content-Security-Policy forbids it).
"use strict";
(function () {
  // One Server-Sent Events stream per page, named by the body's data-events.
  function follow(url) {
    var source = new EventSource(url);
    source.addEventListener("update", function (e) {
      var live = document.getElementById("live");
      if (!live) return;
      // Replacing the live part must not move the reader: keep the page's scroll position and
      // that of each scrolled box inside it (the DAG scrolls on its own).
      var x = window.scrollX, y = window.scrollY;
      var boxes = Array.prototype.map.call(live.querySelectorAll(".dag-wrap"), function (b) {
        return [b.scrollLeft, b.scrollTop];
      });
      live.innerHTML = e.data;
      Array.prototype.forEach.call(live.querySelectorAll(".dag-wrap"), function (b, i) {
        if (boxes[i]) { b.scrollLeft = boxes[i][0]; b.scrollTop = boxes[i][1]; }
      });
      window.scrollTo(x, y);
    });
    source.addEventListener("append", function (e) {
      var rows = document.getElementById("log-lines");
      if (!rows) return;
      var root = document.scrollingElement || document.documentElement;
      var atEnd = root.scrollTop + root.clientHeight >= root.scrollHeight - 4;
      rows.insertAdjacentHTML("beforeend", e.data);
      // Follow the tail only when the reader was at the end already.
      if (atEnd) root.scrollTop = root.scrollHeight;
      search.refresh();
    });
    source.addEventListener("end", function () {
      source.close();
      document.body.classList.add("ended");
    });
  }

  // Search: Enter jumps to the next match (Shift+Enter the previous), keeping the lines around it.
  var search = {
    matches: [],
    at: -1,
    refresh: function () {
      var input = document.getElementById("search");
      if (!input) return;
      var term = input.value.toLowerCase();
      var lines = document.querySelectorAll(".line");
      this.matches = [];
      for (var i = 0; i < lines.length; i++) {
        var hit = term !== "" && lines[i].textContent.toLowerCase().indexOf(term) >= 0;
        lines[i].classList.toggle("match", hit);
        lines[i].classList.remove("current");
        if (hit) this.matches.push(lines[i]);
      }
      var count = document.getElementById("search-count");
      if (count) count.textContent = term === "" ? "" : this.matches.length + " matches";
      if (this.at >= this.matches.length) this.at = -1;
    },
    jump: function (step) {
      if (this.matches.length === 0) return;
      if (this.at >= 0) this.matches[this.at].classList.remove("current");
      this.at = (this.at + step + this.matches.length) % this.matches.length;
      var line = this.matches[this.at];
      line.classList.add("current");
      line.scrollIntoView({ block: "center" });
    }
  };

  document.addEventListener("DOMContentLoaded", function () {
    var input = document.getElementById("search");
    if (input) {
      input.addEventListener("input", function () { search.at = -1; search.refresh(); });
      input.addEventListener("keydown", function (e) {
        if (e.key === "Enter") { e.preventDefault(); search.jump(e.shiftKey ? -1 : 1); }
      });
    }
    var url = document.body.getAttribute("data-events");
    if (url && window.EventSource) follow(url);
    document.body.classList.add("scripted");
  });
})();
