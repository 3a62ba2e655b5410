// The open message in the inbox page: who it is from and to, its envelope, its tags, and
// its bodies in tabs. Loaded before app.js, whose helpers ($, api, element, state) it uses
// once the page runs.
// Everything from a message is put in the page as text (textContent), never as markup;
// its HTML is shown only in a sandboxed iframe, from a route whose CSP loads nothing.
"use strict";

// Something in the HTML that a remote image or style would load.
const REMOTE = /(?:src|background)\s*=\s*["']?\s*(?:https?:)?\/\/|url\(\s*["']?\s*(?:https?:)?\/\//i;

const opened = {
  read: true,        // whether the open message is read (opening it reads it)
  hasHtml: false,
  tags: [],
};

// Tabs there is something to show in, for the open message.
function tabShown(name) {
  return opened.hasHtml || (name !== "html" && name !== "source");
}

// The tab last chosen, or Text when the open message has nothing for it.
function showTab() {
  const name = tabShown(state.tab) ? state.tab : "text";
  for (const button of document.querySelectorAll(".tabs button")) {
    button.hidden = !tabShown(button.dataset.tab);
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll(".tab")) {
    panel.hidden = panel.dataset.panel !== name;
  }
}

function selectTab(name) {
  state.tab = name;
  showTab();
}

// A new frame for each HTML body: navigating the old one would add an entry to the
// page's history, and Back would then step through frames instead of the inbox.
function showHtml(path) {
  const old = $("html-frame");
  const frame = element("iframe");
  for (const name of ["id", "title", "sandbox", "referrerpolicy"]) {
    frame.setAttribute(name, old.getAttribute(name));
  }
  if (path) frame.src = path;
  frame.hidden = !path;
  old.replaceWith(frame);
}

// A line of the message's details, left out when it has nothing to say.
function detail(name, text) {
  $(`view-${name}`).textContent = text;
  for (const node of document.querySelectorAll(`.meta .${name}`)) node.hidden = !text;
}

function markOpened(read) {
  opened.read = read;
  $("toggle-read").textContent = read ? "Mark unread" : "Mark read";
}

// -- its tags --------------------------------------------------------------------------

function renderTags() {
  $("view-tags").replaceChildren(...opened.tags.map((tag) => {
    const chip = element("span", "tag-chip");
    const remove = element("button", "untag", "×");
    remove.type = "button";
    remove.title = `Remove the tag ${tag} from this message`;
    remove.setAttribute("aria-label", remove.title);
    remove.addEventListener("click", () => setTags(opened.tags.filter((t) => t !== tag)));
    chip.append(tagChip(tag), remove);
    return chip;
  }));
  renderTagNames();
}

// Tags in use elsewhere, offered as the reader types.
function renderTagNames() {
  $("tag-names").replaceChildren(...state.tags.filter((t) => !opened.tags.includes(t))
    .map((t) => {
      const option = element("option");
      option.value = t;
      return option;
    }));
}

// A tag renamed or removed on every message: the open one's too.
function retagOpened(change) {
  if (!state.selected) return;
  opened.tags = [...new Set(change(opened.tags))].sort();
  renderTags();
}

// The open message's tags become these (PUT /api/v1/tags replaces them all).
async function setTags(tags) {
  const id = state.selected;
  const wanted = [...new Set(tags)].sort();
  try {
    await api("PUT", "/api/v1/tags", { IDs: [id], Tags: wanted });
  } catch (error) {
    showError(error);
    return;
  }
  const summary = state.messages.find((m) => m.ID === id);
  if (summary) summary.Tags = wanted;
  if (state.selected === id) {
    opened.tags = wanted;
    renderTags();
  }
  render();
  reloadSoon(); // the tags in use, and a search by tag, may have changed
}

function addTags(event) {
  event.preventDefault();
  const names = $("tag-input").value.split(",").map((name) => name.trim()).filter(Boolean);
  $("tag-input").value = "";
  if (names.length) setTags(opened.tags.concat(names));
}

function closeMessage() {
  state.selected = null;
  $("view").hidden = true;
  $("layout").classList.remove("viewing");
  showHtml(null);
  render();
}

async function openMessage(id) {
  state.selected = id;
  let message;
  try {
    message = await api("GET", `/api/v1/message/${encodeURIComponent(id)}`);
  } catch (error) {
    if (state.selected !== id) return;
    showError(error.status === 404 ? new Error("That message is not here (deleted?).") : error);
    closeMessage();
    rewriteAddress();
    return;
  }
  if (state.selected !== id) return;
  if (message.ID !== id) {
    // /view/latest: the address names the message itself from now on.
    state.selected = message.ID;
    id = message.ID;
    rewriteAddress();
  }
  setRead([id], true);
  render();
  $("view").hidden = false;
  $("layout").classList.add("viewing");
  $("view-subject").textContent = message.Subject || "(no subject)";
  detail("from", person(message.From) || "(no sender)");
  detail("to", people(message.To));
  detail("cc", people(message.Cc));
  detail("bcc", people(message.Bcc));
  detail("reply-to", people(message.ReplyTo));
  // The envelope's sender; <> is the null sender of a bounce or a report.
  detail("return-path", message.ReturnPath || "<>");
  detail("date", new Date(message.Date).toLocaleString());
  markOpened(true);
  opened.tags = message.Tags || [];
  renderTags();
  $("download").href = at(`/api/v1/message/${encodeURIComponent(id)}/raw?dl=1`);
  closeReleaseForm();
  $("release-status").hidden = true;
  $("delivery").hidden = true;
  loadDelivery(id);

  opened.hasHtml = Boolean(message.HTML);
  $("remote-bar").hidden = !opened.hasHtml || !REMOTE.test(message.HTML);
  showHtml(opened.hasHtml ? at(`/view/${encodeURIComponent(id)}.html`) : null);
  $("html-source").textContent = message.HTML || "";
  $("text-body").textContent = message.Text || "(no text part)";

  const parts = (message.Attachments || []).concat(message.Inline || []);
  $("attachment-count").textContent = parts.length ? `(${parts.length})` : "";
  const list = $("attachments");
  list.replaceChildren();
  for (const part of parts) {
    const item = element("li");
    const link = element("a", "", part.FileName || part.ContentID || `part ${part.PartID}`);
    link.href = at(`/api/v1/message/${encodeURIComponent(id)}/part/${encodeURIComponent(part.PartID)}`);
    link.setAttribute("download", part.FileName || "");
    item.append(link, element("span", "info", `${part.ContentType}, ${formatSize(part.Size)}`));
    list.append(item);
  }
  if (!parts.length) list.append(element("li", "none", "No attachments."));
  showTab();

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

function initMessage() {
  $("delete-one").addEventListener("click", async () => {
    const id = state.selected;
    if (!id) return;
    try {
      await api("DELETE", "/api/v1/messages", { IDs: [id] });
      state.messages = state.messages.filter((m) => m.ID !== id);
      if (state.selected === id) {
        closeMessage();
        rewriteAddress();
      }
      load();
    } catch (error) { showError(error); }
  });
  $("toggle-read").addEventListener("click", async () => {
    const id = state.selected;
    const read = !opened.read;
    try {
      await api("PUT", "/api/v1/messages", { IDs: [id], Read: read });
      if (state.selected !== id) return;
      markOpened(read);
      setRead([id], read);
      render();
    } catch (error) { showError(error); }
  });
  $("tag-form").addEventListener("submit", addTags);
  $("load-remote").addEventListener("click", () => {
    if (state.selected) {
      showHtml(at(`/view/${encodeURIComponent(state.selected)}.html?remote=1`));
      $("remote-bar").hidden = true;
    }
  });
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
  }
}
