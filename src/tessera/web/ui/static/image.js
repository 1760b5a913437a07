// A hosted image's page (/v/{link}): the image at a width that fits (srcset over its derivative
// widths, WebP where the browser takes it), share links, and delete for its owner (the delete token
// the upload page kept in localStorage, or a token set in this tab).
"use strict";

(() => {
  const { api, el, bytes, copyRow, showError, token } = Tessera;
  const link = decodeURIComponent(location.pathname.replace(/^\/v\//, "")).replace(/\/$/, "");
  const status = document.getElementById("status");
  const DELETE_KEY = `tessera.delete.${link}`;

  /** {format: [[pixel width, url], …]} from the derivative URLs (…/{width}.{jpg|webp|avif}); a
   * width wider than the image is served at the image's own width (never upscaled). */
  function byFormat(derivatives, imageWidth) {
    const formats = {};
    for (const url of derivatives) {
      const m = url.match(/\/(\d+)\.(jpg|webp|avif)$/);
      if (!m) continue;
      const list = (formats[m[2]] = formats[m[2]] || []);
      const width = Math.min(Number(m[1]), imageWidth);
      if (!list.some(([w]) => w === width)) list.push([width, `/i/${link}/${m[1]}.${m[2]}`]);
    }
    for (const list of Object.values(formats)) list.sort((a, b) => a[0] - b[0]);
    return formats;
  }

  function srcset(list) {
    return list.map(([width, url]) => `${url} ${width}w`).join(", ");
  }

  function show(image) {
    const formats = byFormat(image.derivatives, image.width);
    const jpeg = formats.jpg || [];
    const widest = jpeg.length ? jpeg[jpeg.length - 1][0] : image.width;
    const sizes = `(max-width: ${widest}px) 100vw, ${widest}px`;
    const picture = document.getElementById("picture");
    for (const [format, type] of [["avif", "image/avif"], ["webp", "image/webp"]]) {
      if (formats[format]) picture.append(el("source", { type, srcset: srcset(formats[format]), sizes }));
    }
    const img = el("img", {
      src: jpeg.length ? jpeg[jpeg.length - 1][1] : `/i/${link}`,
      srcset: jpeg.length ? srcset(jpeg) : null,
      sizes: jpeg.length ? sizes : null,
      alt: `Image ${link}`,
      width: String(image.width),
      height: String(image.height),
    });
    img.addEventListener("error", () => showError(`The image ${link} could not be loaded.`));
    picture.append(img);
    document.getElementById("caption").textContent =
      `${image.width} × ${image.height} px, ${image.type.toUpperCase()}, ${bytes(image.bytes)} uploaded`;
    document.getElementById("figure").hidden = false;
    const page = `${location.origin}/v/${link}`;
    document.getElementById("links").append(
      copyRow("Page", page, `/v/${link}`),
      copyRow("Image", image.url, `/i/${link}`),
      copyRow("Original", `${image.url}/original`, `/i/${link}/original`),
      copyRow("HTML", `<img src="${image.url}" alt="">`),
      copyRow("Markdown", `![](${image.url})`));
    document.getElementById("share").hidden = false;
    document.getElementById("owner").hidden = !(localStorage.getItem(DELETE_KEY) || token());
    status.textContent = image.status === "processing" ? "Some sizes are still being made." : "";
  }

  async function remove() {
    if (!window.confirm("Delete this image for everyone? The link will stop working.")) return;
    const headers = {};
    const deleteToken = localStorage.getItem(DELETE_KEY);
    if (deleteToken) headers["X-Delete-Token"] = deleteToken;
    try {
      await api(`/api/v1/images/${encodeURIComponent(link)}`, { method: "DELETE", headers });
      localStorage.removeItem(DELETE_KEY);
      document.getElementById("figure").hidden = true;
      document.getElementById("share").hidden = true;
      document.getElementById("owner").hidden = true;
      status.textContent = "Deleted.";
    } catch (error) {
      showError(`Could not delete: ${error.message}`);
    }
  }

  document.getElementById("title").textContent = `Image ${link}`;
  document.getElementById("delete").addEventListener("click", remove);
  document.addEventListener("tessera:token", () => {
    document.getElementById("owner").hidden = !(localStorage.getItem(DELETE_KEY) || token());
  });
  api(`/api/v1/images/${encodeURIComponent(link)}`).then(show, (error) => {
    showError(error.status === 410 ? `Image ${link} was deleted.` : `Cannot show image ${link}: ${error.message}`);
  });
})();
