// Sets the chaos triggers of a mailgate with the npm Mailpit client, as a test suite written
// for Mailpit would.  Usage: node mailpit_chaos.cjs BASE_URL [TRIGGERS_JSON]
// Without TRIGGERS_JSON every trigger is reset (the client's default, {}).  Prints one JSON
// report: whether the web UI says chaos is enabled, the triggers before and after.
"use strict";

const assert = require("node:assert/strict");
const { MailpitClient } = require("mailpit-api");

async function main() {
  const mailpit = new MailpitClient(process.argv[2]);
  const config = await mailpit.getConfiguration();
  const before = await mailpit.getChaosTriggers();
  const after =
    process.argv.length > 3
      ? await mailpit.setChaosTriggers(JSON.parse(process.argv[3]))
      : await mailpit.setChaosTriggers();
  assert.deepEqual(await mailpit.getChaosTriggers(), after);
  process.stdout.write(JSON.stringify({ enabled: config.ChaosEnabled, before, after }));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
