// The SQL console: Ctrl+Enter runs, and statements run are kept in localStorage
// (per database, newest first); clicking one puts it back in the editor.
(function () {
  "use strict";
  const MAX = 100;
  document.querySelectorAll("button[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.dataset.confirm)) { event.preventDefault(); }
    });
  });
  const section = document.querySelector("section.sql[data-db]");
  const form = document.getElementById("console");
  const editor = document.getElementById("sql");
  const list = document.getElementById("history");
  if (!section || !form || !editor || !list) { return; }
  const key = "agora.sql.history." + section.dataset.db;
  function load() {
    try { return JSON.parse(window.localStorage.getItem(key) || "[]"); } catch (e) { return []; }
  }
  function show() {
    list.textContent = "";
    load().forEach(function (text) {
      const item = document.createElement("li");
      item.textContent = text;
      item.tabIndex = 0;
      item.addEventListener("click", function () { editor.value = text; editor.focus(); });
      list.appendChild(item);
    });
  }
  form.addEventListener("submit", function () {
    const text = editor.value.trim();
    if (!text) { return; }
    const items = load().filter(function (old) { return old !== text; });
    items.unshift(text);
    try { window.localStorage.setItem(key, JSON.stringify(items.slice(0, MAX))); } catch (e) { /* full or off */ }
  });
  editor.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  show();
})();
