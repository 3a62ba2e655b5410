// The outbound queue in the inbox page: the Queue view, where the open message goes
// (its Delivery section), and releasing it to other recipients.
// Loaded before app.js, whose helpers ($, api, element, state) it uses once the page runs.
"use strict";

const queue = {
  all: false,         // delivered and bounced recipients shown too
  rows: [],           // as GET /api/v1/queue lists them, oldest message first
  subjects: new Map(), // message id -> subject, "" when unknown
};

// -- where the open message goes -------------------------------------------------------

function stateBadge(name) {
  const badge = element("span", `state state-${name}`, name);
  badge.dataset.state = name;
  return badge;
}

let deliveryAsked = 0;
async function loadDelivery(id) {
  const asked = ++deliveryAsked;
  let rows = [];
  try {
    rows = (await api("GET", `/api/v1/queue/${encodeURIComponent(id)}`)).Recipients;
  } catch (error) {
    // 404: never queued; 501: this store keeps no queue. Neither is worth a word.
    if (error.status !== 404 && error.status !== 501) showError(error);
  }
  if (asked !== deliveryAsked || state.selected !== id) return;
  $("delivery").hidden = rows.length === 0;
  $("delivery-list").replaceChildren(...rows.map((r) => {
    const item = element("li");
    item.dataset.recipient = r.Recipient;
    item.append(stateBadge(r.State), element("span", "recipient", r.Recipient));
    if (r.LastReply) item.append(element("span", "reply", r.LastReply));
    return item;
  }));
}

let deliveryTimer = null;
function deliverySoon() {
  clearTimeout(deliveryTimer);
  deliveryTimer = setTimeout(() => {
    if (state.selected) loadDelivery(state.selected);
  }, 150);
}

function closeReleaseForm() {
  $("release-form").hidden = true;
  $("release-error").textContent = "";
}

async function release(event) {
  event.preventDefault();
  const id = state.selected;
  const to = $("release-to").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!id) return;
  if (!to.length) {
    $("release-error").textContent = "Name one recipient or more, separated by commas.";
    return;
  }
  $("release-send").disabled = true;
  try {
    await api("POST", `/api/v1/message/${encodeURIComponent(id)}/release`, { To: to });
    if (state.selected !== id) return;
    $("release-to").value = "";
    closeReleaseForm();
    $("release-status").textContent = `Queued for delivery to ${to.join(", ")}.`;
    $("release-status").hidden = false;
    loadDelivery(id);
  } catch (error) {
    $("release-error").textContent = String(error.message || error);
  } finally {
    $("release-send").disabled = false;
  }
}

// -- the queue -------------------------------------------------------------------------

function showView(name) {
  state.view = name;
  const queueShown = name === "queue";
  $("layout").hidden = queueShown;
  $("queue-pane").hidden = !queueShown;
  $("search-form").hidden = queueShown;
  $("mark-all-read").hidden = queueShown;
  $("delete-all").hidden = queueShown;
  $(queueShown ? "show-queue" : "show-inbox").setAttribute("aria-current", "page");
  $(queueShown ? "show-inbox" : "show-queue").removeAttribute("aria-current");
  if (queueShown) loadQueue();
}

function queueChanged(ids) {
  if (state.view === "queue") queueSoon();
  if (state.selected && (ids.length === 0 || ids.includes(state.selected))) deliverySoon();
}

let queueTimer = null;
function queueSoon() {
  clearTimeout(queueTimer);
  queueTimer = setTimeout(loadQueue, 150);
}

// Subjects come from the listing when it has the message, otherwise from its headers
// (which, unlike the message itself, are read without marking it read).
async function learnSubjects(rows) {
  const ids = new Set(rows.map((r) => r.MessageID));
  for (const id of queue.subjects.keys()) {
    if (!ids.has(id)) queue.subjects.delete(id); // gone from the queue: forget it
  }
  const missing = [...ids].filter((id) => !queue.subjects.has(id));
  await Promise.all(missing.map(async (id) => {
    const listed = state.messages.find((m) => m.ID === id);
    if (listed) {
      queue.subjects.set(id, listed.Subject || "");
      return;
    }
    try {
      const headers = await api("GET", `/api/v1/message/${encodeURIComponent(id)}/headers`);
      queue.subjects.set(id, (headers.Subject || [""])[0]);
    } catch {
      queue.subjects.set(id, "");
    }
  }));
}

let queueAsked = 0;
async function loadQueue() {
  const asked = ++queueAsked;
  let listing;
  try {
    listing = await api("GET", queue.all ? "/api/v1/queue?all=true" : "/api/v1/queue");
    await learnSubjects(listing.Recipients);
  } catch (error) {
    if (asked === queueAsked) $("queue-error").textContent = String(error.message || error);
    return;
  }
  if (asked !== queueAsked) return; // a later answer is on its way
  $("queue-error").textContent = "";
  queue.rows = listing.Recipients;
  renderQueue();
}

const WAITING = new Set(["queued", "deferred"]);

function queueButton(id, action, label, className) {
  const button = element("button", className || "", label);
  button.type = "button";
  button.dataset.action = action;
  button.addEventListener("click", () => queueAction(id, action));
  return button;
}

function queuedMessage(id, rows) {
  const body = element("tbody", "queued");
  body.dataset.id = id;
  const waiting = rows.some((r) => WAITING.has(r.State));
  const held = rows.some((r) => r.State === "held");
  rows.forEach((r, index) => {
    const tr = element("tr");
    tr.dataset.recipient = r.Recipient;
    tr.append(element("td", "state-cell"), element("td", "recipient", r.Recipient));
    tr.firstChild.append(stateBadge(r.State));
    if (index === 0) {
      const cell = element("td", "message-cell");
      cell.rowSpan = rows.length;
      const link = element("a", "", queue.subjects.get(id) || id);
      link.href = at(`/view/${encodeURIComponent(id)}`);
      link.title = `${id}, from ${r.Sender || "<>"}`;
      link.addEventListener("click", (event) => {
        if (inPage(event)) navigate({ view: "inbox", selected: id });
      });
      cell.append(link);
      tr.append(cell);
    }
    const next = element("td", "next", WAITING.has(r.State) ? formatMoment(r.NextAttempt) : "");
    if (r.NextAttempt) next.title = new Date(r.NextAttempt).toLocaleString();
    const reply = element("td", "reply", r.LastReply || "");
    if (r.LastAttempt) reply.title = `at ${new Date(r.LastAttempt).toLocaleString()}`;
    tr.append(element("td", "attempts", String(r.Attempts)), next, reply,
      element("td", "relay", r.Relay || ""));
    if (index === 0) {
      const cell = element("td", "actions-cell");
      cell.rowSpan = rows.length;
      const actions = element("div", "queue-actions");
      if (waiting) actions.append(queueButton(id, "retry", "Retry"), queueButton(id, "hold", "Hold"));
      if (held) actions.append(queueButton(id, "release", "Release"));
      if (waiting || held) actions.append(queueButton(id, "bounce", "Bounce", "danger"));
      actions.append(queueButton(id, "delete", "Delete", "danger"));
      cell.append(actions);
      tr.append(cell);
    }
    body.append(tr);
  });
  return body;
}

function renderQueue() {
  const groups = new Map();
  for (const r of queue.rows) {
    if (!groups.has(r.MessageID)) groups.set(r.MessageID, []);
    groups.get(r.MessageID).push(r);
  }
  const table = $("queue-table");
  for (const body of [...table.tBodies]) body.remove();
  for (const [id, rows] of groups) table.append(queuedMessage(id, rows));
  const waiting = queue.rows.filter((r) => WAITING.has(r.State) || r.State === "held").length;
  $("queue-count").textContent = `${waiting} recipient${waiting === 1 ? "" : "s"} waiting`;
  table.hidden = queue.rows.length === 0;
  $("queue-empty").hidden = queue.rows.length > 0;
}

const CONFIRM = {
  bounce: "Bounce this message? Its waiting recipients are given up and the sender is told.",
  delete: "Delete this message from the queue? Its recipients are dropped without a word to the sender.",
};

async function queueAction(id, action) {
  if (CONFIRM[action] && !confirm(CONFIRM[action])) return;
  const path = `/api/v1/queue/${encodeURIComponent(id)}`;
  try {
    await (action === "delete" ? api("DELETE", path) : api("POST", `${path}/${action}`));
    $("queue-error").textContent = "";
  } catch (error) {
    $("queue-error").textContent = String(error.message || error);
  }
  queueSoon(); // the queue event will say so too, unless the stream is down
}

// -- wiring ----------------------------------------------------------------------------

function initQueue() {
  $("show-inbox").addEventListener("click", (event) => {
    if (inPage(event)) navigate({ view: "inbox" });
  });
  $("show-queue").addEventListener("click", (event) => {
    if (inPage(event)) navigate({ view: "queue" });
  });
  $("queue-all").addEventListener("change", () => {
    queue.all = $("queue-all").checked;
    loadQueue();
  });
  $("retry-all").addEventListener("click", async () => {
    try {
      await api("POST", "/api/v1/queue/retry");
      $("queue-error").textContent = "";
    } catch (error) {
      // 404: nothing was waiting, which the table already shows
      if (error.status !== 404) $("queue-error").textContent = String(error.message || error);
    }
    queueSoon();
  });
  $("release").addEventListener("click", () => {
    $("release-form").hidden = !$("release-form").hidden;
    $("release-status").hidden = true;
    if (!$("release-form").hidden) $("release-to").focus();
  });
  $("release-form").addEventListener("submit", release);
  $("release-cancel").addEventListener("click", closeReleaseForm);
  api("GET", "/api/v1/webui").then((settings) => {
    state.relay = Boolean(settings.MessageRelay && settings.MessageRelay.Enabled);
    $("release").hidden = !state.relay;
  }).catch(showError);
}
