/**
 * Tests of src/internal/bytes.ts: concat() and the reusable Scratch buffer.
 *
 * @module
 */
import assert from "node:assert/strict";
import { concat, Scratch } from "../src/internal/bytes.ts";

Deno.test("concat() joins parts in order; one part is returned as is", () => {
  const a = new Uint8Array([1, 2]);
  assert.deepEqual(concat([a, new Uint8Array(0), new Uint8Array([3])]), new Uint8Array([1, 2, 3]));
  assert.equal(concat([a]), a);
});

Deno.test("Scratch hands out views that never overlap until reset, then reuses them", () => {
  const s = new Scratch(1 << 20);
  const a = s.take(1000);
  a.fill(1);
  const b = s.take(70_000); // does not fit what is left: a new buffer, `a` keeps the old one
  b.fill(2);
  const c = s.take(5000);
  c.fill(3);
  assert.ok(a.every((x) => x === 1) && b.every((x) => x === 2) && c.every((x) => x === 3));
  assert.equal(b.buffer, c.buffer);
  assert.notEqual(a.buffer, b.buffer);
  s.reset();
  const d = s.take(100);
  assert.equal(d.buffer, b.buffer, "reset: the same memory again");
  assert.equal(d.byteOffset, 0);
});

Deno.test("Scratch drops a buffer larger than it keeps at reset", () => {
  const s = new Scratch(100_000);
  const big = s.take(200_000);
  s.reset();
  assert.notEqual(s.take(10).buffer, big.buffer);
  const small = s.take(10);
  s.reset();
  assert.equal(s.take(10).buffer, small.buffer);
});
