// Upload: drag and drop or the file picker, several files, a progress bar and an outcome each.
// "Share images" posts each file to /api/v1/images (a link, a preview, copy buttons; the delete
// token is kept in localStorage for /v/{link}); "Store files" sends any file, however large, into a
// folder through the tus endpoint (resumable: cut-off uploads go on where they stopped). The token
// is asked for once, when the server says an upload needs one, and kept in sessionStorage.
"use strict";

(() => {
  const { el, bytes, copyRow, reasonOf, authHeaders, setToken, token, encodePath, iiifId } = Tessera;
  const CONCURRENT = 2;
  const CHUNK = 16 * 1024 * 1024;
  const IMAGE = /\.(jpe?g|png|tiff?|jp2|j2k|webp)$/i;
  const queue = document.getElementById("queue");
  const drop = document.getElementById("drop");
  const picker = document.getElementById("files");
  const folderRow = document.getElementById("folder-row");
  const folderInput = document.getElementById("folder");
  const ask = document.getElementById("token-ask");
  const waiting = [];
  const pending = [];
  let running = 0;

  function mode() {
    return document.querySelector("input[name=mode]:checked").value;
  }

  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", () => { folderRow.hidden = mode() !== "store"; });
  }

  function entryFor(file) {
    const progress = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
    const state = el("p", { class: "state", text: "Waiting…" });
    const details = el("div");
    const li = el("li", {}, el("strong", { text: file.name }), ` (${bytes(file.size)})`, progress, state, details);
    queue.append(li);
    return { file, mode: mode(), folder: folderInput.value, progress, state, details };
  }

  function say(entry, text, kind = "") {
    entry.state.textContent = text;
    entry.state.className = `state ${kind}`;
  }

  function add(files) {
    for (const file of files) pending.push(entryFor(file));
    pump();
  }

  function pump() {
    while (running < CONCURRENT && pending.length) {
      const entry = pending.shift();
      running += 1;
      const done = () => { running -= 1; pump(); };
      (entry.mode === "store" ? store(entry) : share(entry)).then(done, done);
    }
  }

  function needToken(entry, reason) {
    say(entry, `Needs a token: ${reason}`, "bad");
    waiting.push(entry);
    document.getElementById("token-ask-why").textContent =
      token() ? `The token was refused: ${reason}` : `Uploads need a token: ${reason}`;
    ask.hidden = false;
    document.getElementById("token-ask-input").focus();
  }

  ask.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token-ask-input");
    setToken(input.value.trim());
    input.value = "";
    ask.hidden = true;
    pending.push(...waiting.splice(0));
    pump();
  });

  // ---------------------------------------------------------------- share: POST /api/v1/images

  function share(entry) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/v1/images");
      for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
      xhr.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) entry.progress.value = Math.round((100 * event.loaded) / event.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status === 401 || xhr.status === 403) {
          needToken(entry, reasonOf(xhr.status, xhr.responseText));
        } else if (xhr.status >= 200 && xhr.status < 300) {
          shared(entry, JSON.parse(xhr.responseText), xhr.status === 200);
        } else {
          entry.progress.value = 0;
          say(entry, `Refused (${xhr.status}): ${reasonOf(xhr.status, xhr.responseText)}`, "bad");
        }
        resolve();
      });
      xhr.addEventListener("error", () => { say(entry, "Refused: the connection failed.", "bad"); resolve(); });
      const form = new FormData();
      form.append("file", entry.file, entry.file.name);
      say(entry, "Uploading…");
      xhr.send(form);
    });
  }

  function smallestJpeg(image) {
    const widths = image.derivatives
      .map((url) => url.match(/\/(\d+)\.jpg$/))
      .filter(Boolean)
      .map((m) => Number(m[1]))
      .sort((a, b) => a - b);
    return widths.length ? `/i/${image.link}/${widths[0]}.jpg` : `/i/${image.link}`;
  }

  function shared(entry, image, again) {
    entry.progress.value = 100;
    if (image.delete_token) localStorage.setItem(`tessera.delete.${image.link}`, image.delete_token);
    say(entry, again ? "Already uploaded: same link as before." : "Uploaded.", "good");
    const page = `${location.origin}/v/${image.link}`;
    entry.details.append(
      el("a", { href: `/v/${image.link}` },
        el("img", { src: smallestJpeg(image), alt: `Preview of ${entry.file.name}` })),
      el("ul", { class: "links" },
        copyRow("Link", image.url, `/i/${image.link}`),
        copyRow("Page", page, `/v/${image.link}`)));
  }

  // ---------------------------------------------------------------- store: tus into a folder

  function target(entry) {
    let folder = entry.folder.trim() || "/";
    if (!folder.startsWith("/")) folder = `/${folder}`;
    if (!folder.endsWith("/")) folder += "/";
    return folder + entry.file.name;
  }

  function store(entry) {
    const path = target(entry);
    return new Promise((resolve) => {
      const upload = new tus.Upload(entry.file, {
        endpoint: "/api/v1/uploads/",
        chunkSize: CHUNK,
        retryDelays: [0, 1000, 3000, 5000, 10000],
        metadata: { path },
        headers: authHeaders(),
        removeFingerprintOnSuccess: true,
        onProgress: (sent, total) => {
          entry.progress.value = total ? Math.round((100 * sent) / total) : 0;
        },
        onError: (error) => {
          const response = error.originalResponse;
          const status = response ? response.getStatus() : 0;
          const reason = response ? reasonOf(status, response.getBody() || "") : error.message;
          if (status === 401 || status === 403) needToken(entry, reason);
          else say(entry, `Refused${status ? ` (${status})` : ""}: ${reason}`, "bad");
          resolve();
        },
        onSuccess: () => {
          entry.progress.value = 100;
          say(entry, `Stored as ${path}.`, "good");
          const links = el("ul", { class: "links" }, copyRow("File", `${location.origin}/api/v1/files${encodePath(path)}`,
            `/api/v1/files${encodePath(path)}`));
          if (IMAGE.test(path)) links.append(copyRow("Viewer", `${location.origin}/view/${iiifId(path)}`, `/view/${iiifId(path)}`));
          entry.details.append(links);
          resolve();
        },
      });
      say(entry, "Uploading (resumable)…");
      upload.findPreviousUploads().then((previous) => {
        if (previous.length) {
          upload.resumeFromPreviousUpload(previous[0]);
          say(entry, "Resuming where the last attempt stopped…");
        }
        upload.start();
      });
    });
  }

  // ---------------------------------------------------------------- picking and dropping

  picker.addEventListener("change", () => {
    add(Array.from(picker.files));
    picker.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    add(Array.from(event.dataTransfer.files));
  });
})();
