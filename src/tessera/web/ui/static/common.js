// What every page shares: the token (session storage), API calls that show their errors, building
// elements from text (never from HTML strings), sizes, copy buttons.
"use strict";

const Tessera = (() => {
  const TOKEN_KEY = "tessera.token";

  class ApiError extends Error {
    constructor(status, reason) {
      super(reason);
      this.status = status;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function setToken(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
  }

  function authHeaders(extra = {}) {
    const headers = { ...extra };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    return headers;
  }

  /** The reason an API error body gives ({"error", "detail"} or {"error"}), else the status text. */
  function reasonOf(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && (body.detail || body.error)) return String(body.detail || body.error);
    } catch (_) {
      // not JSON: IIIF errors are plain text
    }
    return text.trim() || `HTTP ${status}`;
  }

  /** fetch + JSON; a non-2xx answer throws ApiError with the API's reason. */
  async function api(url, options = {}) {
    const response = await fetch(url, { ...options, headers: authHeaders(options.headers) });
    const text = await response.text();
    if (!response.ok) throw new ApiError(response.status, reasonOf(response.status, text));
    return text ? JSON.parse(text) : null;
  }

  function showError(message) {
    const box = document.getElementById("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let value = n;
    let unit = 0;
    while (Math.abs(value) >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
  }

  function percent(ratio) {
    return ratio === null || ratio === undefined ? "–" : `${(100 * ratio).toFixed(1)} %`;
  }

  /** A virtual path ("/files/a b.tif") as a URL path, each segment encoded. */
  function encodePath(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }

  /** The IIIF identifier of a virtual path: the path without its leading slash, URL-encoded whole. */
  function iiifId(path) {
    return encodeURIComponent(path.replace(/^\/+/, ""));
  }

  async function copy(text, button) {
    const before = button.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (_) {
      // No clipboard (an insecure origin, or permission refused): select the text to copy by hand.
      const code = button.parentElement.querySelector("code");
      if (code) window.getSelection().selectAllChildren(code);
      button.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { button.textContent = before; }, 2000);
  }

  /** A list item: label, the text in <code>, and a button that copies it. */
  function copyRow(label, text, href) {
    const button = el("button", { type: "button", class: "secondary", "aria-label": `Copy ${label}` });
    button.textContent = "Copy";
    button.addEventListener("click", () => copy(text, button));
    const code = href ? el("code", {}, el("a", { href, text })) : el("code", { text });
    return el("li", {}, el("span", { class: "label", text: label }), code, button);
  }

  function showTokenState() {
    const state = document.getElementById("token-state");
    if (state) state.textContent = token() ? "A token is set for this tab." : "No token: public reads only.";
  }

  function setUpHeader() {
    const page = document.body.dataset.page;
    for (const link of document.querySelectorAll("[data-nav]")) {
      if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
    }
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setToken(input.value.trim());
      input.value = "";
      document.dispatchEvent(new Event("tessera:token"));
    });
    document.getElementById("token-forget").addEventListener("click", () => {
      setToken("");
      document.dispatchEvent(new Event("tessera:token"));
    });
    showTokenState();
  }

  // Never a blank page: whatever goes wrong is said.
  window.addEventListener("error", (event) => showError(`Something went wrong: ${event.message}`));
  window.addEventListener("unhandledrejection", (event) => {
    const reason = event.reason;
    showError(reason instanceof Error ? reason.message : String(reason));
  });
  document.addEventListener("DOMContentLoaded", setUpHeader);

  return { ApiError, api, authHeaders, bytes, copyRow, el, encodePath, iiifId, percent, reasonOf,
    setToken, showError, token };
})();
