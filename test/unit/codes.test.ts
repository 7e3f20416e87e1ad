import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { DOC, withCodes } from "../../scripts/docs-codes.ts";
import { REJECTIONS } from "../../src/commands/commands.ts";
import { CODES } from "../../src/core/codes.ts";

test("docs/mqtt-api.md lists exactly the registry's wire codes (npm run docs:codes)", () => {
  const doc = readFileSync(DOC, "utf8");
  assert.equal(doc, withCodes(doc));
});

test("every refusal code goes on the wire", () => {
  for (const code of REJECTIONS) assert.equal(CODES[code].wire, true, code);
});
