// Drives a mailgate HTTP service with the npm Mailpit client, as a test suite written
// for Mailpit would.  Usage: node mailpit_api_client.cjs BASE_URL
// Expects the two messages the Python test sent; prints one JSON report on success.
"use strict";

const assert = require("node:assert/strict");
const { MailpitClient } = require("mailpit-api");

async function main() {
  const mailpit = new MailpitClient(process.argv[2]);

  const listing = await mailpit.listMessages();
  assert.equal(listing.total, 2);
  assert.equal(listing.messages.length, 2);
  assert.equal(listing.messages[0].Subject, "Password reset");

  const summary = await mailpit.getMessageSummary(listing.messages[0].ID);
  assert.equal(summary.Subject, "Password reset");
  assert.deepEqual(summary.From, { Name: "App", Address: "app@example.com" });
  assert.match(summary.Text, /code is 424242/);
  assert.equal(summary.Attachments.length, 1);

  const latest = await mailpit.getMessageSummary();
  assert.equal(latest.ID, summary.ID);

  const source = await mailpit.getMessageSource(summary.ID);
  assert.match(source, /^Return-Path: <[^>]*>\r\nReceived: /);
  assert.match(source, /Subject: Password reset/);

  const headers = await mailpit.getMessageHeaders(summary.ID);
  assert.deepEqual(headers.Subject, ["Password reset"]);

  const attachment = await mailpit.getMessageAttachment(summary.ID, summary.Attachments[0].PartID);
  assert.match(attachment.type, /^text\/csv/);
  assert.equal(await attachment.text(), "a,b\n1,2\n");

  // The CSV is no image: Mailpit's blank thumbnail.
  const thumbnail = await mailpit.getAttachmentThumbnail(summary.ID, summary.Attachments[0].PartID);
  assert.equal(thumbnail.type, "image/jpeg");
  const jpeg = Buffer.from(await thumbnail.arrayBuffer());
  assert.deepEqual([...jpeg.subarray(0, 3)], [0xff, 0xd8, 0xff]);
  // A loopback link, refused as Mailpit refuses it without --allow-internal-http-requests.
  assert.deepEqual(await mailpit.linkCheck(summary.ID), {
    Errors: 1,
    Links: [
      { URL: "http://127.0.0.1:9/reset", StatusCode: 451, Status: "Blocked private/reserved address" },
    ],
  });

  const found = await mailpit.searchMessages({ query: 'subject:"password reset"' });
  assert.equal(found.messages_count, 1);
  assert.equal(found.messages[0].ID, summary.ID);
  const waited = await mailpit.waitForMessage({ query: "from:app@example.com" }, { timeout: 5000 });
  assert.equal(waited.ID, summary.ID);

  assert.equal(await mailpit.setReadStatus({ IDs: [summary.ID], Read: false }), "ok");
  assert.equal((await mailpit.listMessages()).unread, 2);

  const info = await mailpit.getInfo();
  assert.equal(info.Messages, 2);

  assert.equal(await mailpit.deleteMessagesBySearch({ query: "welcome" }), "ok");
  assert.equal((await mailpit.listMessages()).total, 1);
  assert.equal(await mailpit.deleteMessages({ IDs: [summary.ID] }), "ok");
  assert.equal((await mailpit.listMessages()).total, 0);

  await assert.rejects(mailpit.sendMessage({ Subject: "x" }), /501/);
  console.log(JSON.stringify({ ok: true }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
