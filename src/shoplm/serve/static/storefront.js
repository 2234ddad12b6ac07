// The storefront: search with facets and spelling suggestions, product pages with similar
// and bought-together items, a personal home feed and a cart. Views are chosen by the URL
// hash (#/, #/search?q=..., #/item/ID, #/cart), so links, reloads and the back button work.
// Clicks and carts are posted to /events as the chosen shopper, and the feed follows them.

import {
  addToCart,
  fill,
  apiKey,
  ApiError,
  cart,
  clearCart,
  currentUser,
  formatNumber,
  formatPrice,
  getJSON,
  h,
  knownUsers,
  newGuestId,
  postJSON,
  settingsDialog,
  switchUser,
  toast,
} from "./api.js";

const PAGE_SIZE = 12;
const RELATED = 8;
const FILTERS = ["category", "brand", "price_min", "price_max"];
const FACET_NAMES = { category: "Category", brand: "Brand", price: "Price" };

const main = document.getElementById("main");
const session = sessionStorage.getItem("shoplm.session") || newGuestId().replace("guest", "visit");
sessionStorage.setItem("shoplm.session", session);
let renderCount = 0;

// ---------------------------------------------------------------- events
/** Record what the shopper did; says why when it cannot (no key, refused). */
async function track(event, itemId, extra = {}) {
  if (!apiKey()) {
    toast("Not recorded: set an API key in Settings to send clicks and carts", "warn");
    return false;
  }
  try {
    await postJSON("/events", {
      user_id: currentUser(),
      item_id: itemId,
      event,
      session_id: session,
      ...extra,
    });
    return true;
  } catch (error) {
    toast(`Not recorded: ${error.message}`, "error");
    return false;
  }
}

// ---------------------------------------------------------------- shared pieces
function searchHref(params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  return `#/search?${query}`;
}

function itemHref(id) {
  return `#/item/${encodeURIComponent(id)}`;
}

/** Product details by id (the search answers ids and titles only); {} when unavailable. */
async function details(ids) {
  if (!ids.length) return {};
  try {
    const found = await getJSON("/console/api/items", { ids });
    return Object.fromEntries(found.items.map((item) => [item.id, item]));
  } catch {
    return {};
  }
}

function card(item, info = {}, { query, reason } = {}) {
  const extra = query ? { query } : {};
  return h(
    "li",
    { class: "card" },
    h(
      "a",
      {
        href: itemHref(item.id),
        class: "card-title",
        onclick: () => track("click", item.id, extra),
      },
      item.title || item.id,
    ),
    info.category ? h("p", { class: "muted small" }, info.category) : null,
    h(
      "p",
      { class: "card-meta" },
      info.price !== undefined && info.price !== null
        ? h("span", { class: "price" }, formatPrice(info.price))
        : null,
      h("span", { class: "score", title: "ranking score" }, `score ${formatNumber(item.score)}`),
    ),
    reason ? h("p", { class: "reason" }, reason) : null,
  );
}

function cards(items, info, options = {}, label = "Products") {
  return h(
    "ul",
    { class: "grid", "aria-label": label },
    items.map((item) => card(item, info[item.id], { ...options, reason: item.reason })),
  );
}

function show(title, ...content) {
  document.title = `${title} · shoplm`;
  fill(main, ...content);
  main.removeAttribute("aria-busy");
}

function failure(error) {
  const message =
    error instanceof ApiError ? error.message : `the service did not answer (${error})`;
  return h("p", { class: "error", role: "alert" }, `Could not load this page: ${message}`);
}

function updateCartCount() {
  document.getElementById("cart-count").textContent = String(cart().length);
}

// ---------------------------------------------------------------- views
async function home(token) {
  const user = currentUser();
  const feed = await getJSON(`/users/${encodeURIComponent(user)}/recommendations`, {
    k: PAGE_SIZE,
  });
  const info = await details(feed.items.map((i) => i.id));
  if (token !== renderCount) return;
  show(
    "For you",
    h("h1", { tabindex: "-1" }, "Recommended for you"),
    h(
      "p",
      { class: "muted" },
      `Shopper ${user}. Each item says why it is here; open or add items to change the list.`,
    ),
    feed.items.length
      ? cards(feed.items, info, {}, "Your recommendations")
      : h("p", {}, "No recommendations yet."),
  );
}

async function search(token, params) {
  const q = params.get("q") || "";
  document.getElementById("q").value = q;
  if (!q)
    return show(
      "Search",
      h("h1", { tabindex: "-1" }, "Search"),
      h("p", {}, "Type what you are looking for."),
    );
  const page = Math.max(1, Number(params.get("page")) || 1);
  const filters = Object.fromEntries(FILTERS.map((f) => [f, params.get(f) || ""]));
  const found = await getJSON("/search", {
    q,
    k: PAGE_SIZE,
    page,
    ...filters,
    user: currentUser(),
  });
  const info = await details(found.items.map((i) => i.id));
  if (token !== renderCount) return;

  const here = { q, ...filters };
  const pages = Math.max(1, Math.ceil(found.total / PAGE_SIZE));
  show(
    `${q} – search`,
    h("h1", { tabindex: "-1" }, `Results for “${q}”`),
    h(
      "p",
      { class: "muted", id: "result-count" },
      `${found.total} product${found.total === 1 ? "" : "s"}`,
    ),
    found.suggestion
      ? h(
          "p",
          { class: "suggestion" },
          "Did you mean ",
          h("a", { href: searchHref({ ...here, q: found.suggestion }) }, found.suggestion),
          "?",
        )
      : null,
    appliedFilters(here, found.applied),
    h(
      "div",
      { class: "with-sidebar" },
      facetPanel(found.facets, here),
      h(
        "section",
        { "aria-label": "Results" },
        found.items.length
          ? h(
              "ol",
              { class: "grid", start: String((page - 1) * PAGE_SIZE + 1), "aria-label": "Results" },
              found.items.map((item) => card(item, info[item.id], { query: q })),
            )
          : h("p", {}, "No product matches. Try other words or remove a filter."),
        pagination(here, page, pages),
      ),
    ),
  );
}

/** Filters in effect: the shopper's own can be removed; those read from the text cannot. */
function appliedFilters(here, applied) {
  const chips = Object.entries(applied || {}).map(([name, value]) =>
    here[name] !== undefined && here[name] !== ""
      ? h(
          "li",
          {},
          h(
            "a",
            {
              class: "chip",
              href: searchHref({ ...here, [name]: "" }),
              "aria-label": `Remove filter ${name} ${value}`,
            },
            `${name.replace("_", " ")}: ${value} ✕`,
          ),
        )
      : h(
          "li",
          {},
          h(
            "span",
            { class: "chip fixed", title: "read from the search text" },
            `${name.replace("_", " ")}: ${value}`,
          ),
        ),
  );
  return chips.length
    ? h("ul", { class: "chips", "aria-label": "Filters in effect" }, chips)
    : null;
}

/** The price bounds of a facet band: "under 12", "12-25" or "25 and over". */
function bandBounds(label) {
  let match = label.match(/^under (\S+)$/);
  if (match) return { price_min: "", price_max: match[1] };
  match = label.match(/^(\S+) and over$/);
  if (match) return { price_min: match[1], price_max: "" };
  match = label.match(/^([\d.e+]+)-([\d.e+]+)$/);
  if (match) return { price_min: match[1], price_max: match[2] };
  return null;
}

function facetPanel(facets, here) {
  const groups = Object.entries(facets || {}).filter(([, counts]) => Object.keys(counts).length);
  if (!groups.length) return h("aside", { class: "facets" });
  return h(
    "aside",
    { class: "facets", "aria-label": "Refine results" },
    h("h2", { class: "small-heading" }, "Refine"),
    groups.map(([name, counts]) =>
      h(
        "section",
        { class: "facet", dataset: { facet: name } },
        h("h3", {}, FACET_NAMES[name] || name),
        h(
          "ul",
          {},
          Object.entries(counts).map(([label, count]) => {
            const change = name === "price" ? bandBounds(label) : { [name]: label };
            if (!change) return h("li", {}, `${label} (${count})`);
            const active = Object.entries(change).every(([k, v]) => (here[k] || "") === v);
            const target = active
              ? Object.fromEntries(Object.keys(change).map((k) => [k, ""]))
              : change;
            return h(
              "li",
              {},
              h(
                "a",
                {
                  href: searchHref({ ...here, ...target }),
                  class: active ? "facet-option active" : "facet-option",
                  "aria-current": active ? "true" : null,
                },
                h("span", {}, label),
                h("span", { class: "count" }, String(count)),
              ),
            );
          }),
        ),
      ),
    ),
  );
}

function pagination(here, page, pages) {
  if (pages <= 1) return null;
  return h(
    "nav",
    { class: "pages", "aria-label": "Result pages" },
    page > 1
      ? h("a", { href: searchHref({ ...here, page: page - 1 }), rel: "prev" }, "← Previous")
      : h("span"),
    h("span", { "aria-current": "page" }, `Page ${page} of ${pages}`),
    page < pages
      ? h("a", { href: searchHref({ ...here, page: page + 1 }), rel: "next" }, "Next →")
      : h("span"),
  );
}

async function product(token, id) {
  const [info, similar, together] = await Promise.allSettled([
    details([id]),
    getJSON(`/items/${encodeURIComponent(id)}/similar`, { k: RELATED, user: currentUser() }),
    getJSON(`/items/${encodeURIComponent(id)}/bought-together`, { k: RELATED }),
  ]);
  const item = info.status === "fulfilled" ? info.value[id] : undefined;
  if (token !== renderCount) return;
  if (!item) {
    return show(
      "Not found",
      h("h1", { tabindex: "-1" }, "Product not found"),
      h("p", {}, `No product ${id} in the catalogue.`),
    );
  }
  const related = [...(similar.value?.items || []), ...(together.value?.items || [])];
  const relatedInfo = await details([...new Set(related.map((i) => i.id))]);
  if (token !== renderCount) return;

  const addButton = h(
    "button",
    { type: "button", id: "add-to-cart", class: "primary" },
    "Add to cart",
  );
  addButton.addEventListener("click", async () => {
    addButton.disabled = true;
    addToCart(id);
    updateCartCount();
    const recorded = await track("add_to_cart", id, { value: 1 });
    if (recorded) toast(`Added “${item.title}” to your cart`);
    addButton.disabled = false;
  });
  const section = (title, result, empty, name) =>
    h(
      "section",
      { class: "related", id: name, "aria-labelledby": `${name}-title` },
      h("h2", { id: `${name}-title` }, title),
      result.status === "rejected"
        ? failure(result.reason)
        : result.value.items.length
          ? cards(result.value.items, relatedInfo, {}, title)
          : h("p", { class: "muted" }, empty),
    );
  show(
    item.title,
    h(
      "article",
      { class: "product" },
      h("h1", { tabindex: "-1" }, item.title),
      item.price !== null ? h("p", { class: "price big" }, formatPrice(item.price)) : null,
      h(
        "dl",
        { class: "facts" },
        item.category ? [h("dt", {}, "Category"), h("dd", {}, item.category)] : null,
        item.brand ? [h("dt", {}, "Brand"), h("dd", {}, item.brand)] : null,
        h("dt", {}, "Item id"),
        h("dd", {}, h("code", {}, item.id)),
      ),
      item.description ? h("p", { class: "description" }, item.description) : null,
      addButton,
    ),
    section("Bought together", together, "No purchase with this product yet.", "bought-together"),
    section("Similar items", similar, "Nothing similar found.", "similar"),
  );
}

async function cartView(token) {
  const ids = cart();
  const counts = ids.reduce((acc, id) => acc.set(id, (acc.get(id) || 0) + 1), new Map());
  const info = await details([...counts.keys()]);
  if (token !== renderCount) return;
  const checkout = h("button", { type: "button", class: "primary" }, "Place order");
  checkout.addEventListener("click", async () => {
    if (!apiKey()) return toast("Set an API key in Settings to place an order", "warn");
    checkout.disabled = true;
    try {
      await postJSON(
        "/events",
        [...counts].map(([id, n]) => ({
          user_id: currentUser(),
          item_id: id,
          event: "purchase",
          value: n,
          session_id: session,
        })),
      );
      clearCart();
      updateCartCount();
      toast("Order placed: the purchases are in the event log");
      route();
    } catch (error) {
      toast(`Order not placed: ${error.message}`, "error");
      checkout.disabled = false;
    }
  });
  show(
    "Cart",
    h("h1", { tabindex: "-1" }, "Your cart"),
    counts.size
      ? [
          h(
            "ul",
            { class: "cart-lines" },
            [...counts].map(([id, n]) =>
              h(
                "li",
                {},
                h("a", { href: itemHref(id) }, info[id]?.title || id),
                h("span", { class: "muted" }, ` × ${n}`),
                info[id]?.price != null
                  ? h("span", { class: "price" }, formatPrice(info[id].price * n))
                  : null,
              ),
            ),
          ),
          checkout,
        ]
      : h("p", {}, "Your cart is empty."),
  );
}

// ---------------------------------------------------------------- routing and header
async function route({ focus = false } = {}) {
  const token = ++renderCount;
  main.setAttribute("aria-busy", "true");
  const [path, query = ""] = (location.hash.slice(1) || "/").split("?");
  try {
    if (path === "/") await home(token);
    else if (path === "/search") await search(token, new URLSearchParams(query));
    else if (path.startsWith("/item/")) await product(token, decodeURIComponent(path.slice(6)));
    else if (path === "/cart") await cartView(token);
    else
      show(
        "Not found",
        h("h1", { tabindex: "-1" }, "Page not found"),
        h("p", {}, h("a", { href: "#/" }, "Back to the shop")),
      );
  } catch (error) {
    if (token === renderCount)
      show("Error", h("h1", { tabindex: "-1" }, "Something went wrong"), failure(error));
  }
  if (focus && token === renderCount) main.querySelector("h1")?.focus();
}

function userSwitcher() {
  const field = document.getElementById("user-id");
  const list = document.getElementById("known-users");
  const refresh = () => {
    field.value = currentUser();
    fill(list, ...knownUsers().map((u) => h("option", { value: u })));
  };
  field.addEventListener("change", () => {
    const user = field.value.trim();
    if (!user) return refresh();
    switchUser(user);
    refresh();
    toast(`Shopping as ${user}`);
    route();
  });
  document.getElementById("new-guest").addEventListener("click", () => {
    switchUser(newGuestId());
    refresh();
    toast(`Shopping as ${currentUser()}, a new guest`);
    location.hash = "#/";
    route();
  });
  refresh();
}

document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const q = document.getElementById("q").value.trim();
  if (!q) return;
  const target = searchHref({ q });
  if (location.hash === target) route({ focus: true });
  else location.hash = target;
});
window.addEventListener("hashchange", () => route({ focus: true }));
settingsDialog("write", () => route());
userSwitcher();
updateCartCount();
route();
