// The webmail's small behaviours: select all, confirmations, and the compose form's
// attachment list with its size check. A static file, because the Content-Security-
// Policy forbids inline scripts; every form works without it too.
(function () {
  "use strict";

  function sizeText(bytes) {
    var units = ["bytes", "KiB", "MiB", "GiB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
  }

  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=uid][form=bulk]").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }

  // Buttons that destroy ask first (plain forms; htmx forms use hx-confirm).
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  var compose = document.getElementById("compose");
  if (!compose) return;
  var input = document.getElementById("attach");
  var chosen = document.getElementById("chosen");
  var limit = parseInt(compose.dataset.maxBytes, 10);
  var maxFiles = parseInt(compose.dataset.maxFiles, 10);

  function total() {
    var sum = 0;
    for (var i = 0; i < input.files.length; i++) sum += input.files[i].size;
    return sum;
  }

  input.addEventListener("change", function () {
    chosen.replaceChildren();
    for (var i = 0; i < input.files.length; i++) {
      var li = document.createElement("li");
      li.textContent = input.files[i].name + " (" + sizeText(input.files[i].size) + ")";
      chosen.append(li);
    }
  });

  compose.addEventListener("submit", function (event) {
    // Base64 makes attachments a third larger in the message itself.
    var encoded = Math.ceil(total() * 4 / 3);
    if (encoded > limit) {
      event.preventDefault();
      window.agora.showFlash("The attachments come to " + sizeText(encoded) + " once encoded; a message may be at most " +
                             sizeText(limit) + ". Remove some files or send them in several messages.");
    } else if (input.files.length > maxFiles) {
      event.preventDefault();
      window.agora.showFlash("At most " + maxFiles + " files can be attached to one message.");
    } else {
      document.getElementById("send").disabled = true;  // one click, one message
    }
  });
})();
