// The mailgate inbox: a list kept live over /api/v1/events, in pages, and what the page
// shows kept in its address. The open message's part is in message.js, the outbound
// queue's in queue.js; both are loaded first.
// Everything from a message is put in the page as text (textContent), never as markup;
// its HTML is shown only in a sandboxed iframe, from a route whose CSP loads nothing.
"use strict";

const PAGE = 50;
// before: and after: in a search mean midnight where the reader is.
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const $ = (id) => document.getElementById(id);
// Where the inbox is served: "/", or below a path (--webroot /mail/), as the page's <base>
// says. Paths in this code are the inbox's own ("/api/v1/..."); at() places them.
const ROOT = new URL(document.baseURI).pathname;
const at = (path) => ROOT + path.replace(/^\//, "");

const state = {
  query: "",          // the search the list shows
  page: 1,
  messages: [],       // summaries shown, newest first: one page
  tags: [],           // every tag in use
  total: 0,
  unread: 0,
  matching: 0,
  selected: null,     // id of the open message
  tab: "html",        // the tab last chosen
  view: "inbox",      // or "queue"
  relay: false,       // whether the server lets this page release mail (/api/v1/webui)
};

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(at(path), options);
  if (!response.ok) {
    // Mailpit's endpoints answer errors as text, mailgate's own as {"Error": text}.
    let text = (await response.text()).trim();
    try {
      const parsed = JSON.parse(text);
      if (parsed && typeof parsed.Error === "string") text = parsed.Error;
    } catch {
      // plain text
    }
    const error = new Error(text || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  const type = response.headers.get("Content-Type") || "";
  return type.includes("application/json") ? response.json() : response.text();
}

// The error shown, and whether the list's loading said it (a good load then clears it).
let errorOfList = false;
function showError(error, ofList = false) {
  $("error").textContent = error ? String(error.message || error) : "";
  errorOfList = Boolean(error) && ofList;
}

function formatSize(octets) {
  if (octets < 1024) return `${octets} B`;
  if (octets < 1024 * 1024) return `${(octets / 1024).toFixed(1)} kB`;
  return `${(octets / 1024 / 1024).toFixed(1)} MB`;
}

function formatTime(iso) {
  const when = new Date(iso);
  const now = new Date();
  if (when.toDateString() === now.toDateString()) {
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return when.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" });
}

function formatMoment(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  if (when.toDateString() === new Date().toDateString()) {
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  return when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function person(address) {
  if (!address) return "";
  return address.Name ? `${address.Name} <${address.Address}>` : address.Address;
}

function people(list) {
  return (list || []).map(person).join(", ");
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// -- the list --------------------------------------------------------------------------

// The search for a tag: tag:NAME, quoted when the name has a space.
function tagQuery(name) {
  return /^[^\s"]+$/.test(name) ? `tag:${name}` : `tag:"${name}"`;
}

// A tag as a link to the messages that carry it (or to another place).
function tagChip(name, place = { view: "inbox", query: tagQuery(name), page: 1, selected: null }) {
  const chip = element("a", "tag", name);
  chip.href = addressOf(place);
  chip.title = place.query ? `Messages tagged ${name}` : "Every message";
  chip.addEventListener("click", (event) => {
    event.stopPropagation(); // not a click on the row
    if (inPage(event)) navigate(place);
  });
  return chip;
}

function row(summary) {
  const item = element("li", "message");
  item.dataset.id = summary.ID;
  item.classList.toggle("unread", !summary.Read);
  item.classList.toggle("selected", summary.ID === state.selected);
  const from = element("span", "from", person(summary.From) || "(no sender)");
  from.title = person(summary.From);
  const names = (summary.To || []).map((a) => a.Name || a.Address);
  const to = element("span", "to", names.length ? `To: ${names.join(", ")}` : "(no To)");
  to.title = people(summary.To);
  const time = element("span", "time", formatTime(summary.Created));
  time.title = new Date(summary.Created).toLocaleString();
  const subject = element("span", "subject", summary.Subject || "(no subject)");
  const size = element("span", "size", formatSize(summary.Size));
  if (summary.Attachments > 0) {
    size.classList.add("clip");
    size.title = `${summary.Attachments} attachment(s)`;
  }
  const snippet = element("span", "snippet", summary.Snippet || "");
  item.append(from, time, to, size, subject, snippet);
  if ((summary.Tags || []).length) {
    const tags = element("span", "tags");
    tags.append(...summary.Tags.map((tag) => tagChip(tag)));
    item.append(tags);
  }
  item.tabIndex = 0;
  item.addEventListener("click", () => navigate({ selected: summary.ID }));
  item.addEventListener("keydown", (event) => {
    if (event.key === "Enter") navigate({ selected: summary.ID });
  });
  return item;
}

const count = (n) => n.toLocaleString();

function pages() {
  return Math.max(1, Math.ceil(state.matching / PAGE));
}

// Every tag in use, to list the messages of one; the one searched for can be renamed or
// taken off every message.
function renderTagFilter() {
  const active = state.tags.find((tag) => state.query === tagQuery(tag));
  $("tag-filter").hidden = state.tags.length === 0;
  $("tag-list").replaceChildren(...state.tags.map((tag) => {
    if (tag !== active) return tagChip(tag);
    // Chosen: a second click shows every message again.
    const chip = tagChip(tag, { view: "inbox", query: "", page: 1, selected: null });
    chip.setAttribute("aria-current", "true");
    return chip;
  }));
  if (state.selected) renderTagNames();
  $("tag-actions").hidden = active === undefined;
  $("tag-actions").dataset.tag = active || "";
}

async function renameTag() {
  const tag = $("tag-actions").dataset.tag;
  const name = (prompt(`Rename the tag ${tag} to:`, tag) || "").trim();
  if (!tag || !name || name === tag) return;
  try {
    await api("PUT", `/api/v1/tags/${encodeURIComponent(tag)}`, { Name: name });
    retagOpened((tags) => tags.map((t) => (t === tag ? name : t)));
    navigate({ query: tagQuery(name), page: 1 }, { replace: true });
  } catch (error) { showError(error); }
}

async function removeTag() {
  const tag = $("tag-actions").dataset.tag;
  if (!tag || !confirm(`Remove the tag ${tag} from every message? The messages stay.`)) return;
  try {
    await api("DELETE", `/api/v1/tags/${encodeURIComponent(tag)}`);
    retagOpened((tags) => tags.filter((t) => t !== tag));
    navigate({ query: "", page: 1 }, { replace: true });
  } catch (error) { showError(error); }
}

function render() {
  renderTagFilter();
  const list = $("messages");
  list.replaceChildren(...state.messages.map(row));
  const searching = state.query !== "";
  const first = (state.page - 1) * PAGE;
  const range = state.messages.length
    ? `${count(first + 1)}–${count(first + state.messages.length)} of ${count(state.matching)}`
    : `0 of ${count(state.matching)}`;
  $("count").textContent = searching
    ? `${range} matching`
    : `${range}, ${count(state.unread)} unread`;
  $("count-bottom").textContent = range;
  for (const id of ["prev", "prev-bottom"]) $(id).disabled = state.page <= 1;
  for (const id of ["next", "next-bottom"]) $(id).disabled = state.page >= pages();
  $("pager-bottom").hidden = pages() <= 1;
  $("empty").hidden = state.messages.length > 0;
  $("empty").textContent = searching ? "No message matches this search." :
    "No messages. Send mail to the SMTP port and it appears here.";
  document.title = state.unread > 0 ? `(${state.unread}) mailgate inbox` : "mailgate inbox";
}

function turnPage(step) {
  const page = Math.min(Math.max(1, state.page + step), pages());
  if (page === state.page) return;
  navigate({ page });
  $("messages").parentElement.scrollTop = 0;
  window.scrollTo(0, 0);
}

// Live changes seen so far: a page fetched while one arrived may predate it.
let liveChanges = 0;
let loadAsked = 0;

async function load() {
  const asked = ++loadAsked;
  const changesBefore = liveChanges;
  const start = (state.page - 1) * PAGE;
  const path = state.query
    ? `/api/v1/search?query=${encodeURIComponent(state.query)}&start=${start}&limit=${PAGE}` +
      `&tz=${encodeURIComponent(ZONE)}`
    : `/api/v1/messages?start=${start}&limit=${PAGE}`;
  try {
    const page = await api("GET", path);
    if (asked !== loadAsked) return; // another page or search was asked for since
    if (!page.messages.length && page.messages_count > 0 && state.page > 1) {
      // Past the end (mail was deleted): the last page instead.
      navigate({ page: Math.ceil(page.messages_count / PAGE) }, { replace: true });
      return;
    }
    let newer = [];
    if (state.page === 1 && liveChanges !== changesBefore) {
      // Mail arrived live while this page was on its way: keep the rows newer than the
      // page, and ask again for whatever else changed meanwhile.
      const listed = new Set(page.messages.map((m) => m.ID));
      const newest = page.messages.length ? page.messages[0].ID : "";
      newer = state.messages.filter((m) => !listed.has(m.ID) && m.ID > newest);
      reloadSoon();
    }
    state.messages = newer.concat(page.messages).slice(0, PAGE);
    state.tags = page.tags || [];
    state.total = page.total + newer.length;
    state.unread = page.unread + newer.filter((m) => !m.Read).length;
    state.matching = page.messages_count + newer.length;
    if (errorOfList) showError(null);
  } catch (error) {
    if (asked !== loadAsked) return;
    showError(error, true);
  }
  render();
}

function setRead(ids, read) {
  for (const summary of state.messages) {
    if (ids.length === 0 || ids.includes(summary.ID)) summary.Read = read;
  }
}

// -- live updates ----------------------------------------------------------------------

let reloadTimer = null;
function reloadSoon() {
  clearTimeout(reloadTimer);
  reloadTimer = setTimeout(() => load(), 100);
}

function connect() {
  const source = new EventSource(at("/api/v1/events"));
  source.addEventListener("ready", () => {
    $("live").classList.add("on");
    reloadSoon(); // whatever changed while not connected
    queueChanged([]);
  });
  source.addEventListener("queue", (event) => queueChanged(JSON.parse(event.data).ids || []));
  source.addEventListener("stored", (event) => {
    liveChanges += 1;
    if (state.view === "queue") queueSoon(); // new mail may be on its way out
    const data = JSON.parse(event.data);
    if (state.query || state.page > 1) {
      reloadSoon(); // the server decides what matches, and what a later page holds
      return;
    }
    const known = new Set(state.messages.map((m) => m.ID));
    const fresh = (data.messages || []).filter((m) => !known.has(m.ID));
    fresh.sort((a, b) => (a.ID < b.ID ? 1 : -1));
    state.messages = fresh.concat(state.messages).slice(0, PAGE);
    state.total += fresh.length;
    state.matching += fresh.length;
    state.unread += fresh.filter((m) => !m.Read).length;
    render();
  });
  for (const kind of ["read", "unread"]) {
    source.addEventListener(kind, (event) => {
      liveChanges += 1;
      const ids = JSON.parse(event.data).ids;
      setRead(ids, kind === "read");
      if (state.selected && (ids.length === 0 || ids.includes(state.selected))) {
        markOpened(kind === "read");
      }
      render();
      reloadSoon(); // for the totals
    });
  }
  source.addEventListener("deleted", (event) => {
    liveChanges += 1;
    const ids = JSON.parse(event.data).ids;
    state.messages = ids.length === 0 ? [] : state.messages.filter((m) => !ids.includes(m.ID));
    if (state.selected && (ids.length === 0 || ids.includes(state.selected))) {
      closeMessage();
      rewriteAddress();
    }
    render();
    reloadSoon();
    if (state.view === "queue") queueSoon();
  });
  source.addEventListener("overflow", () => {
    reloadSoon();
    queueChanged([]);
  });
  source.onerror = () => $("live").classList.remove("on");
}

// -- the address -----------------------------------------------------------------------
// What the page shows is in its address, so Back and Forward step through it and a link
// shows it again: /view/ID for an open message (/ for none), ?q= the search, ?page= the
// page of the list; /#queue the queue. Old /#ID links open their message too.

function decoded(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function addressOf(place) {
  if (place.view === "queue") return at("/#queue");
  const params = new URLSearchParams();
  if (place.query) params.set("q", place.query);
  if (place.page > 1) params.set("page", String(place.page));
  const path = at(place.selected ? `/view/${encodeURIComponent(place.selected)}` : "/");
  const search = params.toString();
  return search ? `${path}?${search}` : path;
}

function readAddress() {
  const params = new URLSearchParams(location.search);
  const viewed = /^\/view\/([^/]+)$/.exec("/" + location.pathname.slice(ROOT.length));
  const hash = decoded(location.hash.slice(1));
  const page = Number.parseInt(params.get("page") || "1", 10);
  let selected = viewed ? decoded(viewed[1]) : null;
  if (hash && hash !== "queue") selected = hash;
  return {
    view: hash === "queue" ? "queue" : "inbox",
    query: (params.get("q") || "").trim(),
    page: page > 1 ? page : 1,
    selected,
  };
}

function here() {
  return location.pathname + location.search + location.hash;
}

function currentPlace() {
  return { view: state.view, query: state.query, page: state.page, selected: state.selected };
}

// Show a place, as a new entry in the history (or in place of the current one). An entry
// remembers the address it was reached from, and whether a search being typed made it.
function navigate(changes, { replace = false, typing = false } = {}) {
  showError(null); // about where the page was
  const place = { ...currentPlace(), ...changes };
  const address = addressOf(place);
  if (replace) {
    history.replaceState({ ...history.state, typing }, "", address);
  } else if (address !== here()) {
    history.pushState({ from: here(), typing }, "", address);
  }
  show(place);
}

// The address says what the page shows now, when it was changed without navigate.
function rewriteAddress() {
  if (state.view === "inbox") history.replaceState(history.state, "", addressOf(currentPlace()));
}

function show(place) {
  if (place.view === "queue") {
    if (state.view !== "queue") showView("queue");
    return; // the inbox stays as it was, for coming back to it
  }
  if (state.view !== "inbox") showView("inbox");
  if ($("search").value.trim() !== place.query) $("search").value = place.query;
  if (place.query !== state.query || place.page !== state.page) {
    state.query = place.query;
    state.page = place.page;
    load();
  }
  if (place.selected !== state.selected) {
    if (place.selected) openMessage(place.selected);
    else closeMessage();
  }
}

// Back to the list: a step back when the list is where the message was opened from.
function leaveMessage() {
  const list = addressOf({ ...currentPlace(), selected: null });
  if (history.state && history.state.from === list) history.back();
  else navigate({ selected: null });
}

// A search as it is typed replaces its own history entry; another search gets a new one.
function searchFor(text, typing) {
  const query = text.trim();
  const typed = Boolean(history.state && history.state.typing);
  if (query === state.query) {
    if (typed && !typing) history.replaceState({ ...history.state, typing: false }, "", here());
    return;
  }
  navigate({ query, page: 1 }, { replace: typed, typing });
}

// A plain click on a link of the page moves within it; others open a tab as usual.
function inPage(event) {
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
    return false;
  }
  event.preventDefault();
  return true;
}

// -- wiring ----------------------------------------------------------------------------

function init() {
  let typing = null;
  $("search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => searchFor($("search").value, true), 250);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(typing);
    searchFor($("search").value, false);
  });
  $("rename-tag").addEventListener("click", renameTag);
  $("delete-tag").addEventListener("click", removeTag);
  for (const [id, step] of [["prev", -1], ["next", 1], ["prev-bottom", -1], ["next-bottom", 1]]) {
    $(id).addEventListener("click", () => turnPage(step));
  }
  $("back").addEventListener("click", leaveMessage);
  $("brand").addEventListener("click", (event) => {
    if (inPage(event)) navigate({ view: "inbox", query: "", page: 1, selected: null });
  });
  $("mark-all-read").addEventListener("click", async () => {
    try {
      await api("PUT", "/api/v1/messages", { Read: true });
      setRead([], true);
      load();
    } catch (error) { showError(error); }
  });
  $("delete-all").addEventListener("click", async () => {
    if (!confirm("Delete every message?")) return;
    try {
      await api("DELETE", "/api/v1/messages", {});
      closeMessage();
      rewriteAddress();
      load();
    } catch (error) { showError(error); }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !state.selected || state.view !== "inbox") return;
    if (!event.target.closest("input, select, textarea")) leaveMessage();
  });
  initMessage();
  initQueue();
  window.addEventListener("popstate", () => {
    const place = readAddress();
    if (addressOf(place) !== here()) history.replaceState(history.state, "", addressOf(place));
    show(place);
  });
  // The address the page was opened at says what to show, in the form it is kept in.
  const place = readAddress();
  history.replaceState({ from: null, typing: false }, "", addressOf(place));
  state.query = place.query;
  state.page = place.page;
  $("search").value = place.query;
  load();
  show(place);
  connect();
}

init();
