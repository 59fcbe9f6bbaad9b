// Small behaviours for the server-rendered pages. A static file, because the
// Content-Security-Policy forbids inline scripts.
(function () {
  "use strict";

  function showFlash(text) {
    var area = document.getElementById("flash");
    if (!area) return;
    var p = document.createElement("p");
    p.className = "flash error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    area.replaceChildren(p);
  }
  // Shared with the pages' own scripts (files/browser.js), which load after this one.
  window.agora = { showFlash: showFlash };

  // The server answers a failed htmx request with a message and HX-Retarget: #flash.
  // htmx does not swap 4xx/5xx answers by default; these it should.
  document.addEventListener("htmx:beforeSwap", function (event) {
    var xhr = event.detail.xhr;
    if (xhr.status >= 400 && xhr.getResponseHeader("HX-Retarget")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.addEventListener("htmx:responseError", function (event) {
    showFlash("The request failed (HTTP " + event.detail.xhr.status + "). Reload the page and try again.");
  });

  document.addEventListener("htmx:sendError", function () {
    showFlash("The server could not be reached. Check your connection and try again.");
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var area = document.getElementById("flash");
    // A successful action clears an earlier error message.
    if (area && event.detail.successful && !event.detail.xhr.getResponseHeader("HX-Retarget")) {
      area.replaceChildren();
    }
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (button) {
      var field = document.querySelector(button.getAttribute("data-copy"));
      if (!field) return;
      field.select();
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(done, function () {
          button.textContent = "Press Ctrl+C";
        });
      } else {
        // Without the clipboard API the text is selected, ready for Ctrl+C.
        button.textContent = "Selected: press Ctrl+C";
      }
      return;
    }
    var input = event.target.closest("[data-select-all]");
    if (input) input.select();
  });
})();
