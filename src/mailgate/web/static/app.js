// The mailgate inbox: a list kept live over /api/v1/events, and a message view; the
// outbound queue's part is in queue.js, which is loaded first.
// Everything from a message is put in the page as text (textContent), never as markup;
// its HTML is shown only in a sandboxed iframe, from a route whose CSP loads nothing.
"use strict";

const PAGE = 50;
// before: and after: in a search mean midnight where the reader is.
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
// Something in the HTML that a remote image or style would load.
const REMOTE = /(?:src|background)\s*=\s*["']?\s*(?:https?:)?\/\/|url\(\s*["']?\s*(?:https?:)?\/\//i;
const $ = (id) => document.getElementById(id);

const state = {
  query: "",
  messages: [],       // summaries shown, newest first
  total: 0,
  unread: 0,
  matching: 0,
  selected: null,     // id of the open message
  tab: "html",
  view: "inbox",      // or "queue"
  relay: false,       // whether the server lets this page release mail (/api/v1/webui)
};

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
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

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
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

function row(summary) {
  const item = element("li", "message");
  item.dataset.id = summary.ID;
  item.classList.toggle("unread", !summary.Read);
  item.classList.toggle("selected", summary.ID === state.selected);
  const from = element("span", "from", person(summary.From) || "(no sender)");
  from.title = person(summary.From);
  const time = element("span", "time", formatTime(summary.Created));
  time.title = new Date(summary.Created).toLocaleString();
  const subject = element("span", "subject", summary.Subject || "(no subject)");
  const size = element("span", "size", formatSize(summary.Size));
  if (summary.Attachments > 0) {
    size.classList.add("clip");
    size.title = `${summary.Attachments} attachment(s)`;
  }
  const snippet = element("span", "snippet", summary.Snippet || "");
  item.append(from, time, subject, size, snippet);
  item.addEventListener("click", () => openMessage(summary.ID));
  return item;
}

function render() {
  const list = $("messages");
  list.replaceChildren(...state.messages.map(row));
  const searching = state.query !== "";
  $("count").textContent = searching
    ? `${state.matching} matching of ${state.total}`
    : `${state.total} messages, ${state.unread} unread`;
  $("empty").hidden = state.messages.length > 0;
  $("empty").textContent = searching ? "No message matches this search." :
    "No messages. Send mail to the SMTP port and it appears here.";
  $("more").hidden = state.messages.length >= state.matching;
  document.title = state.unread > 0 ? `(${state.unread}) mailgate inbox` : "mailgate inbox";
}

// Live changes seen so far: a page fetched while one arrived may predate it.
let liveChanges = 0;

async function load(append = false) {
  const changesBefore = liveChanges;
  const start = append ? state.messages.length : 0;
  const limit = append ? PAGE : Math.max(PAGE, state.messages.length);
  const path = state.query
    ? `/api/v1/search?query=${encodeURIComponent(state.query)}&start=${start}&limit=${limit}` +
      `&tz=${encodeURIComponent(ZONE)}`
    : `/api/v1/messages?start=${start}&limit=${limit}`;
  try {
    const page = await api("GET", path);
    let newer = [];
    if (!append && liveChanges !== changesBefore) {
      // Mail arrived live while this page was on its way: keep the rows newer than the
      // page, and ask again for whatever else changed meanwhile.
      const listed = new Set(page.messages.map((m) => m.ID));
      const newest = page.messages.length ? page.messages[0].ID : "";
      newer = state.messages.filter((m) => !listed.has(m.ID) && m.ID > newest);
      reloadSoon();
    }
    state.messages = append ? state.messages.concat(page.messages) : newer.concat(page.messages);
    state.total = page.total + newer.length;
    state.unread = page.unread + newer.filter((m) => !m.Read).length;
    state.matching = page.messages_count + newer.length;
    showError(null);
  } catch (error) {
    showError(error);
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
  const source = new EventSource("/api/v1/events");
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
    if (state.query) {
      reloadSoon(); // the server decides what matches
      return;
    }
    const known = new Set(state.messages.map((m) => m.ID));
    const fresh = (data.messages || []).filter((m) => !known.has(m.ID));
    fresh.sort((a, b) => (a.ID < b.ID ? 1 : -1));
    state.messages = fresh.concat(state.messages);
    state.total += fresh.length;
    state.matching += fresh.length;
    state.unread += fresh.filter((m) => !m.Read).length;
    render();
  });
  for (const kind of ["read", "unread"]) {
    source.addEventListener(kind, (event) => {
      liveChanges += 1;
      setRead(JSON.parse(event.data).ids, kind === "read");
      render();
      reloadSoon(); // for the totals
    });
  }
  source.addEventListener("deleted", (event) => {
    liveChanges += 1;
    const ids = JSON.parse(event.data).ids;
    state.messages = ids.length === 0 ? [] : state.messages.filter((m) => !ids.includes(m.ID));
    if (state.selected && (ids.length === 0 || ids.includes(state.selected))) closeMessage();
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

// -- one message -----------------------------------------------------------------------

function selectTab(name) {
  state.tab = name;
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll(".tab")) {
    panel.hidden = panel.dataset.panel !== name;
  }
}

function closeMessage() {
  const id = state.selected;
  state.selected = null;
  $("view").hidden = true;
  $("layout").classList.remove("viewing");
  $("html-frame").src = "about:blank";
  if (id && location.hash === `#${id}`) history.replaceState(null, "", location.pathname);
  render();
}

async function openMessage(id) {
  state.selected = id;
  let message;
  try {
    message = await api("GET", `/api/v1/message/${encodeURIComponent(id)}`);
  } catch (error) {
    showError(error);
    closeMessage();
    return;
  }
  if (state.selected !== id) return;
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  setRead([id], true);
  render();
  $("view").hidden = false;
  $("layout").classList.add("viewing");
  $("view-subject").textContent = message.Subject || "(no subject)";
  $("view-from").textContent = person(message.From);
  $("view-to").textContent = people(message.To);
  $("view-cc").textContent = people(message.Cc);
  for (const node of document.querySelectorAll(".cc")) node.hidden = !(message.Cc || []).length;
  $("view-bcc").textContent = people(message.Bcc);
  for (const node of document.querySelectorAll(".bcc")) node.hidden = !(message.Bcc || []).length;
  $("view-date").textContent = new Date(message.Date).toLocaleString();
  $("toggle-read").textContent = "Mark unread";
  $("download").href = `/api/v1/message/${encodeURIComponent(id)}/raw?dl=1`;
  closeReleaseForm();
  $("release-status").hidden = true;
  $("delivery").hidden = true;
  loadDelivery(id);

  const hasHtml = Boolean(message.HTML);
  $("html-frame").hidden = !hasHtml;
  $("remote-bar").hidden = !hasHtml || !REMOTE.test(message.HTML);
  $("no-html").hidden = hasHtml;
  $("html-frame").src = hasHtml ? `/view/${encodeURIComponent(id)}.html` : "about:blank";
  $("text-body").textContent = message.Text || "(no text part)";

  const parts = (message.Attachments || []).concat(message.Inline || []);
  $("attachment-count").textContent = parts.length ? `(${parts.length})` : "";
  const list = $("attachments");
  list.replaceChildren();
  for (const part of parts) {
    const item = element("li");
    const link = element("a", "", part.FileName || part.ContentID || `part ${part.PartID}`);
    link.href = `/api/v1/message/${encodeURIComponent(id)}/part/${encodeURIComponent(part.PartID)}`;
    link.setAttribute("download", part.FileName || "");
    item.append(link, element("span", "info", `${part.ContentType}, ${formatSize(part.Size)}`));
    list.append(item);
  }
  if (!parts.length) list.append(element("li", "none", "No attachments."));
  selectTab(!hasHtml && state.tab === "html" ? "text" : state.tab);

  const [headers, raw] = await Promise.all([
    api("GET", `/api/v1/message/${encodeURIComponent(id)}/headers`).catch(() => ({})),
    api("GET", `/api/v1/message/${encodeURIComponent(id)}/raw`).catch(() => ""),
  ]);
  if (state.selected !== id) return;
  const body = $("headers-body");
  body.replaceChildren();
  for (const [name, values] of Object.entries(headers)) {
    for (const value of values) {
      const tr = element("tr");
      tr.append(element("th", "", name), element("td", "", value));
      body.append(tr);
    }
  }
  $("raw-body").textContent = raw;
}

// -- wiring ----------------------------------------------------------------------------

function init() {
  let typing = null;
  $("search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.query = $("search").value.trim();
      load();
    }, 250);
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = $("search").value.trim();
    load();
  });
  $("more").addEventListener("click", () => load(true));
  $("back").addEventListener("click", closeMessage);
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
      load();
    } catch (error) { showError(error); }
  });
  $("delete-one").addEventListener("click", async () => {
    const id = state.selected;
    if (!id) return;
    try {
      await api("DELETE", "/api/v1/messages", { IDs: [id] });
      state.messages = state.messages.filter((m) => m.ID !== id);
      closeMessage();
      load();
    } catch (error) { showError(error); }
  });
  $("toggle-read").addEventListener("click", async () => {
    const id = state.selected;
    const summary = state.messages.find((m) => m.ID === id);
    const read = summary ? !summary.Read : false;
    try {
      await api("PUT", "/api/v1/messages", { IDs: [id], Read: read });
      setRead([id], read);
      $("toggle-read").textContent = read ? "Mark unread" : "Mark read";
      render();
    } catch (error) { showError(error); }
  });
  $("load-remote").addEventListener("click", () => {
    if (state.selected) {
      $("html-frame").src = `/view/${encodeURIComponent(state.selected)}.html?remote=1`;
      $("remote-bar").hidden = true;
    }
  });
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.selected && state.view === "inbox") closeMessage();
  });
  initQueue();
  // The address says what to show: #queue, a message's #id, or the list.
  const follow = () => {
    const id = location.hash.slice(1);
    if (id === "queue") {
      if (state.view !== "queue") showView("queue");
    } else {
      if (state.view !== "inbox") showView("inbox");
      if (id && id !== state.selected) openMessage(id);
    }
  };
  window.addEventListener("hashchange", follow);
  load().then(follow);
  connect();
}

init();
