// Issue 24: the restructuring changes nothing users see. test/fixtures/contract/contract.json was captured from
// the commit before it (3afca9f) with test/helpers/contract.ts; the same capture of this checkout must match:
// the config file's JSON Schema, an unchanged file's hash (a mixed fleet publishes it), `config print` and
// `--sources`, the topic list, the exit codes and the JSON Schemas in docs/mqtt-api.md.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { it } from "node:test";
import { ROOT } from "../helpers/agent-process.ts";
import { captureContract } from "../helpers/contract.ts";

it("what users see is what it was (a change meant to be seen regenerates the fixture: see the helper)", async () => {
  const expected: unknown = JSON.parse(
    readFileSync(join(ROOT, "test", "fixtures", "contract", "contract.json"), "utf8"),
  );
  assert.deepEqual(await captureContract(ROOT), expected);
});
