import assert from "node:assert/strict";
import { test } from "node:test";
import { Queue } from "../../src/outbox/queue.ts";

test("a queue keeps FIFO order across its compactions", () => {
  const q = new Queue<number>();
  const out: number[] = [];
  for (let i = 0; i < 5000; i++) {
    q.push(i);
    if (i % 3 === 0) out.push(q.shift() ?? -1);
  }
  assert.equal(q.length, 5000 - out.length);
  assert.equal(q.peek(), out.length);
  while (q.length > 0) out.push(q.shift() ?? -1);
  assert.deepEqual(
    out,
    Array.from({ length: 5000 }, (_, i) => i),
  );
  assert.equal(q.shift(), undefined);
});

test("insertBefore puts an item back in order; toArray and clear see only what is queued", () => {
  const q = new Queue<number>();
  for (const n of [1, 2, 4, 6]) q.push(n);
  q.shift();
  q.insertBefore(5, (n) => n > 5);
  q.insertBefore(9, (n) => n > 9);
  assert.deepEqual(q.toArray(), [2, 4, 5, 6, 9]);
  q.clear();
  assert.equal(q.length, 0);
  assert.deepEqual(q.toArray(), []);
});
