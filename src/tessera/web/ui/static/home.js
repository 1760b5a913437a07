// Home: the mounts, then a folder's listing a page at a time (the list API's `next` cursor), with
// thumbnails of images and a search by name prefix. The folder is in the URL (?path=/files/maps/).
"use strict";

(() => {
  const { api, el, bytes, encodePath, iiifId, showError } = Tessera;
  const IMAGE = /\.(jpe?g|png|tiff?|jp2|j2k|jpx|webp)$/i;
  const PAGE = 100;
  const params = new URLSearchParams(location.search);
  const folder = normalise(params.get("path") || "/");
  const query = params.get("q") || "";
  const status = document.getElementById("status");
  const rows = document.getElementById("rows");
  const more = document.getElementById("more");
  let cursor = null;

  function normalise(path) {
    let p = path.startsWith("/") ? path : `/${path}`;
    if (!p.endsWith("/")) p += "/";
    return p.replace(/\/{2,}/g, "/");
  }

  function nameOf(path) {
    const parts = path.replace(/\/$/, "").split("/");
    return parts[parts.length - 1];
  }

  function folderHref(path) {
    return `/?path=${encodeURIComponent(path)}`;
  }

  function crumbs() {
    const nav = document.getElementById("crumbs");
    nav.append(el("a", { href: "/", text: "Mounts" }));
    let path = "/";
    const parts = folder.split("/").filter(Boolean);
    parts.forEach((part, i) => {
      path += `${part}/`;
      nav.append(" / ");
      nav.append(i === parts.length - 1
        ? el("span", { "aria-current": "page", text: part })
        : el("a", { href: folderHref(path), text: part }));
    });
  }

  // Thumbnails: when a row comes into view, ask /thumbs for its sizes and take the smallest >= 96 px.
  const thumbs = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      thumbs.unobserve(entry.target);
      loadThumb(entry.target);
    }
  }, { rootMargin: "200px" });

  async function loadThumb(img) {
    const id = iiifId(img.dataset.path);
    try {
      const info = await api(`/thumbs/${id}/info.json`);
      const sizes = (info.sizes || []).slice().sort((a, b) => a.width - b.width);
      const size = sizes.find((s) => Math.max(s.width, s.height) >= 96) || sizes[sizes.length - 1];
      if (size) img.src = `/thumbs/${id}/full/${size.width},${size.height}/0/default.jpg`;
    } catch (error) {
      img.replaceWith(el("span", { class: "muted", title: error.message, text: "–" }));
    }
  }

  function folderRow(prefix) {
    const name = `${nameOf(prefix)}/`;
    return el("tr", {},
      el("td", { class: "thumb" }, el("span", { class: "folder-icon", "aria-hidden": "true" })),
      el("td", {}, el("a", { href: folderHref(prefix), text: name })),
      el("td", { class: "num", text: "folder" }),
      el("td", { class: "wide" }));
  }

  function fileRow(item) {
    const name = nameOf(item.path);
    const image = IMAGE.test(name);
    const href = image ? `/view/${iiifId(item.path)}` : `/api/v1/files${encodePath(item.path)}`;
    let preview = null;
    if (image) {
      preview = el("img", { alt: "", "data-path": item.path, width: "48", height: "48" });
      thumbs.observe(preview);
    }
    return el("tr", {},
      el("td", { class: "thumb" }, preview),
      el("td", {}, el("a", { href, text: name })),
      el("td", { class: "num", text: bytes(item.size) }),
      el("td", { class: "wide" }, el("time", { datetime: item.modified, text: item.modified.slice(0, 16).replace("T", " ") })));
  }

  async function loadPage() {
    more.disabled = true;
    status.textContent = "Loading…";
    const url = new URL(`/api/v1/list${encodePath(folder + query)}`, location.origin);
    url.searchParams.set("delimiter", "/");
    url.searchParams.set("limit", String(PAGE));
    if (cursor) url.searchParams.set("cursor", cursor);
    try {
      const page = await api(url.pathname + url.search);
      page.prefixes.forEach((prefix) => rows.append(folderRow(prefix)));
      page.items.forEach((item) => rows.append(fileRow(item)));
      cursor = page.next;
      const shown = rows.children.length;
      const entries = shown === 1 ? "1 entry" : `${shown} entries`;
      status.textContent = shown ? `${entries}${cursor ? " so far" : ""}.` : "Nothing here.";
      document.getElementById("listing").hidden = shown === 0;
      more.hidden = !cursor;
    } catch (error) {
      status.textContent = "";
      const hint = error.status === 401 ? " (this mount is private: set a token, at the top)" : "";
      showError(`Could not list ${folder + query}: ${error.message}${hint}`);
    } finally {
      more.disabled = false;
    }
  }

  async function loadMounts() {
    try {
      const page = await api("/api/v1/list/?delimiter=/");
      const list = document.getElementById("mounts");
      for (const mount of page.prefixes) {
        list.append(el("li", {}, el("a", { href: folderHref(mount), text: nameOf(mount) })));
      }
      list.hidden = false;
      status.textContent = `${page.prefixes.length} mounts.`;
    } catch (error) {
      showError(`Could not list the mounts: ${error.message}`);
    }
  }

  document.addEventListener("tessera:token", () => location.reload());
  if (folder === "/") {
    document.getElementById("title").textContent = "Mounts";
    loadMounts();
    return;
  }
  document.getElementById("title").textContent = nameOf(folder);
  document.title = `${nameOf(folder)} · Tessera`;
  crumbs();
  const search = document.getElementById("search");
  const input = document.getElementById("search-input");
  search.hidden = false;
  input.value = query;
  search.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams({ path: folder });
    if (input.value) next.set("q", input.value);
    location.search = next.toString();
  });
  more.addEventListener("click", loadPage);
  loadPage();
})();
