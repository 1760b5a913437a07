// Viewer: OpenSeadragon on /iiif/3/{id}/info.json, our own labelled controls, the image's facts
// (size, levels, format, how much of it the cache holds) and its IIIF links.
"use strict";

(() => {
  const { api, el, bytes, copyRow, encodePath, iiifId, showError } = Tessera;
  const raw = location.pathname.replace(/^\/view\//, "");
  const path = `/${decodeURIComponent(raw).replace(/^\/+/, "")}`;
  const id = iiifId(path);
  const status = document.getElementById("status");
  const facts = document.getElementById("facts");
  const name = path.split("/").pop();
  document.getElementById("title").textContent = name;
  document.title = `${name} · Tessera`;

  function fact(term, value, key) {
    let dd = key ? facts.querySelector(`dd[data-key="${key}"]`) : null;
    if (!dd) {
      dd = el("dd", { "data-key": key });
      facts.append(el("dt", { text: term }), dd);
    }
    dd.textContent = value;
  }

  async function showCached() {
    try {
      const cached = await api(`/api/v1/cached${encodePath(path)}`);
      const share = cached.size ? cached.cached / cached.size : 0;
      fact("Cached", `${(100 * share).toFixed(1)} % (${bytes(cached.cached)} of ${bytes(cached.size)})`, "cached");
    } catch (error) {
      fact("Cached", `unknown (${error.message})`, "cached");
    }
  }

  function showFacts(info) {
    const tiles = (info.tiles || [])[0];
    const levels = tiles ? tiles.scaleFactors.length : (info.sizes || []).length + 1;
    const extension = (name.match(/\.([^.]+)$/) || [, "?"])[1].toUpperCase();
    fact("Size", `${info.width} × ${info.height} px`);
    fact("Levels", String(levels));
    if (tiles) fact("Tiles", `${tiles.width} × ${tiles.height || tiles.width} px`);
    fact("Format", extension);
    fact("Path", path);
    showCached();
    setInterval(showCached, 5000);
    const links = document.getElementById("links");
    const base = info.id || `${location.origin}/iiif/3/${id}`;
    links.append(
      copyRow("Image API", base),
      copyRow("info.json", `${base}/info.json`, `${base}/info.json`),
      copyRow("Full image", `${base}/full/max/0/default.jpg`, `${base}/full/max/0/default.jpg`),
      copyRow("Original", `${location.origin}/api/v1/files${encodePath(path)}`,
        `/api/v1/files${encodePath(path)}`));
  }

  function controls(viewer) {
    const on = (buttonId, action) => document.getElementById(buttonId).addEventListener("click", action);
    const zoom = (factor) => { viewer.viewport.zoomBy(factor); viewer.viewport.applyConstraints(); };
    on("zoom-in", () => zoom(1.5));
    on("zoom-out", () => zoom(1 / 1.5));
    on("home", () => viewer.viewport.goHome());
    on("rotate-left", () => viewer.viewport.setRotation(viewer.viewport.getRotation() - 90));
    on("rotate-right", () => viewer.viewport.setRotation(viewer.viewport.getRotation() + 90));
    const full = document.getElementById("full");
    full.addEventListener("click", () => viewer.setFullScreen(!viewer.isFullPage()));
    viewer.addHandler("full-screen", (event) => full.setAttribute("aria-pressed", String(event.fullScreen)));
  }

  async function open() {
    let info;
    try {
      info = await api(`/iiif/3/${id}/info.json`);
    } catch (error) {
      status.textContent = "";
      showError(`Cannot show ${path}: ${error.message}`);
      return;
    }
    status.textContent = "Loading tiles…";
    const viewer = OpenSeadragon({
      element: document.getElementById("osd"),
      tileSources: info,
      drawer: "canvas",
      showNavigationControl: false,
      showNavigator: false,
      crossOriginPolicy: "Anonymous",
      loadTilesWithAjax: true,
      ajaxHeaders: Tessera.authHeaders(),
      maxZoomPixelRatio: 2,
      visibilityRatio: 0.5,
      gestureSettingsMouse: { clickToZoom: false },
    });
    viewer.addHandler("open-failed", (event) => showError(`Cannot open ${path}: ${event.message}`));
    viewer.addHandler("tile-load-failed", (event) => {
      showError(`A tile failed to load: ${event.message || "error"}`);
    });
    viewer.world.addHandler("add-item", (event) => {
      event.item.addOnceHandler("fully-loaded-change", () => { status.textContent = "Tiles loaded."; });
    });
    controls(viewer);
    showFacts(info);
  }

  document.addEventListener("tessera:token", () => location.reload());
  open();
})();
