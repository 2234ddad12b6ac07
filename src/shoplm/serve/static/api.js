// Shared by the storefront and the dashboard: calls to the service, the settings kept in
// this browser, and a small DOM builder. Everything here talks only to the page's own
// origin, and every piece of text from the server reaches the page as text, never as HTML.

const STORE = {
  write: "shoplm.apiKey",
  admin: "shoplm.adminKey",
  user: "shoplm.user",
  users: "shoplm.users",
  cart: "shoplm.cart",
};

/** An answer other than 2xx; `message` is the server's own explanation. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The stored key of a kind: "write" (events; reads when protected) or "admin" (rollback). */
export function apiKey(kind = "write") {
  return localStorage.getItem(STORE[kind]) || "";
}

export function setApiKey(kind, key) {
  if (key) localStorage.setItem(STORE[kind], key);
  else localStorage.removeItem(STORE[kind]);
}

function headers(kind, extra = {}) {
  const key = apiKey(kind);
  return key ? { "X-API-Key": key, ...extra } : extra;
}

/** The server's error text: FastAPI answers a string or a list of problems. */
function explain(status, body) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((p) => p.message || JSON.stringify(p)).join("; ");
  return `HTTP ${status}`;
}

async function answer(response) {
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, explain(response.status, body));
  return body;
}

/** GET `path` with query parameters; empty values are left out, arrays repeat the name. */
export async function getJSON(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const one of Array.isArray(value) ? value : [value]) {
      if (one !== undefined && one !== null && one !== "") query.append(name, String(one));
    }
  }
  const url = query.size ? `${path}?${query}` : path;
  return answer(await fetch(url, { headers: headers("write", { Accept: "application/json" }) }));
}

export async function getText(path) {
  return answer(await fetch(path, { headers: headers("write") }));
}

/**
 * POST a JSON body with the stored key of `kind`; `keepalive` lets it finish while the
 * page changes.
 */
export async function postJSON(path, body, kind = "write") {
  const response = await fetch(path, {
    method: "POST",
    headers: headers(kind, { "Content-Type": "application/json", Accept: "application/json" }),
    body: JSON.stringify(body),
    keepalive: true,
  });
  return answer(response);
}

// ---------------------------------------------------------------- the shopper
export function currentUser() {
  let user = localStorage.getItem(STORE.user);
  if (!user) {
    user = newGuestId();
    switchUser(user);
  }
  return user;
}

export function newGuestId() {
  const bytes = crypto.getRandomValues(new Uint8Array(4));
  return "guest-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Make `user` the shopper; the last few are remembered for the switcher. */
export function switchUser(user) {
  localStorage.setItem(STORE.user, user);
  const known = knownUsers().filter((u) => u !== user);
  localStorage.setItem(STORE.users, JSON.stringify([user, ...known].slice(0, 8)));
}

export function knownUsers() {
  try {
    const users = JSON.parse(localStorage.getItem(STORE.users) || "[]");
    return Array.isArray(users) ? users.filter((u) => typeof u === "string") : [];
  } catch {
    return [];
  }
}

export function cart() {
  try {
    const items = JSON.parse(localStorage.getItem(STORE.cart) || "[]");
    return Array.isArray(items) ? items : [];
  } catch {
    return [];
  }
}

export function addToCart(itemId) {
  localStorage.setItem(STORE.cart, JSON.stringify([...cart(), itemId]));
}

export function clearCart() {
  localStorage.removeItem(STORE.cart);
}

// ---------------------------------------------------------------- DOM and formats
/**
 * Build an element: `h("a", {href: "#/", class: "x", onclick: f}, "text", child)`.
 * Strings become text nodes; null, undefined and false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "rect", "line", "polyline", "circle", "text", "title", "g"].includes(tag);
  const node = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Replace a node's content; null, undefined and false are skipped, arrays flattened. */
export function fill(node, ...children) {
  node.replaceChildren(
    ...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false),
  );
  return node;
}

const PRICE = new Intl.NumberFormat(undefined, {
  minimumFractionDigits: 2,
  maximumFractionDigits: 2,
});
const NUMBER = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });

export function formatPrice(price) {
  return price === null || price === undefined ? "" : PRICE.format(price);
}

export function formatNumber(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "–" : String(value);
  return NUMBER.format(value);
}

export function formatDate(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** A short message at the bottom of the page, read out by screen readers. */
export function toast(message, kind = "info") {
  const box = document.getElementById("toast");
  if (!box) return;
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    box.hidden = true;
  }, 4000);
}

/** Wire the settings dialog: one key of `kind`, kept in this browser. */
export function settingsDialog(kind, onSaved = () => {}) {
  const dialog = document.getElementById("settings");
  const field = document.getElementById("api-key");
  document.getElementById("open-settings").addEventListener("click", () => {
    field.value = apiKey(kind);
    dialog.showModal();
    field.focus();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "save") {
      setApiKey(kind, field.value.trim());
      toast(field.value.trim() ? "Key saved in this browser" : "Key removed");
      onSaved();
    }
  });
}
