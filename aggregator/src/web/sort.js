// Sorting by a column for tables marked "sortable": a click (or Enter) on a header sorts by it,
// a second click reverses. The pages read and print the same without this script.
"use strict";
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, column) {
    th.tabIndex = 0;
    th.setAttribute("aria-sort", "none");
    var sort = function () {
      var body = table.tBodies[0];
      if (!body) return;
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      var key = function (row) {
        var cell = row.cells[column];
        if (!cell) return "";
        var value = cell.getAttribute("data-value");
        var text = value !== null ? value : cell.textContent.trim();
        var number = parseFloat(text);
        return isNaN(number) || String(number) !== text ? text : number;
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), "zh");
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
      heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    };
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (event) { if (event.key === "Enter") sort(); });
  });
});
