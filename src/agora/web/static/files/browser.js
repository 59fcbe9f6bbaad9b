// The file browser's uploads: drag and drop, a progress bar per file. A static file,
// because the Content-Security-Policy forbids inline scripts. Without JavaScript the
// same form posts multipart and the server answers with the refreshed folder.
(function () {
  "use strict";

  var form = document.getElementById("upload-form");
  if (!form) return;
  var zone = document.getElementById("dropzone");
  var input = form.querySelector("input[type=file]");
  var list = document.getElementById("uploads");
  var queue = [];
  var busy = false;

  function showError(text) {
    window.agora.showFlash(text);  // static/agora.js, loaded first by the layout
  }

  function sizeText(bytes) {
    var units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    var i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i ? bytes.toFixed(1) : bytes) + " " + units[i];
  }

  function refreshListing() {
    var listing = document.getElementById("listing");
    if (listing && window.htmx) window.htmx.trigger(listing, "refresh");
  }

  function item(file) {
    var li = document.createElement("li");
    var name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name + " (" + sizeText(file.size) + ")";
    var bar = document.createElement("progress");
    bar.max = file.size || 1;
    bar.value = 0;
    var state = document.createElement("span");
    state.className = "state";
    state.textContent = "waiting";
    li.append(name, bar, state);
    list.append(li);
    return { li: li, bar: bar, state: state };
  }

  function next() {
    if (busy) return;
    var job = queue.shift();
    if (!job) {
      refreshListing();
      return;
    }
    busy = true;
    var url = "/files/upload?dir=" + encodeURIComponent(form.dataset.dir) +
              "&name=" + encodeURIComponent(job.file.name);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("X-CSRF-Token", form.dataset.csrf);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", function (event) {
      if (event.lengthComputable) {
        job.ui.bar.max = event.total || 1;
        job.ui.bar.value = event.loaded;
        job.ui.state.textContent = Math.floor(event.loaded * 100 / (event.total || 1)) + "%";
      }
    });
    xhr.addEventListener("load", function () {
      if (xhr.status === 201) {
        job.ui.bar.value = job.ui.bar.max;
        job.ui.state.textContent = "done";
        job.ui.li.className = "done";
      } else {
        var detail = "HTTP " + xhr.status;
        try { detail = JSON.parse(xhr.responseText).detail || detail; } catch (e) { /* not JSON */ }
        job.ui.state.textContent = "failed";
        job.ui.li.className = "failed";
        showError("Upload of " + job.file.name + " failed: " + detail);
      }
    });
    xhr.addEventListener("error", function () {
      job.ui.state.textContent = "failed";
      job.ui.li.className = "failed";
      showError("Upload of " + job.file.name + " failed: the server could not be reached.");
    });
    xhr.addEventListener("loadend", function () {
      busy = false;
      next();
    });
    job.ui.state.textContent = "0%";
    xhr.send(job.file);
  }

  function add(files) {
    for (var i = 0; i < files.length; i++) {
      queue.push({ file: files[i], ui: item(files[i]) });
    }
    next();
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!input.files.length) {
      showError("Choose at least one file to upload.");
      return;
    }
    add(input.files);
    input.value = "";
  });

  input.addEventListener("change", function () {
    if (input.files.length) {
      add(input.files);
      input.value = "";
    }
  });

  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.add("over");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function (event) {
      event.preventDefault();
      zone.classList.remove("over");
    });
  });
  zone.addEventListener("drop", function (event) {
    if (event.dataTransfer && event.dataTransfer.files.length) add(event.dataTransfer.files);
  });
  zone.addEventListener("keydown", function (event) {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
})();
