/**
 * Tests of src/pos.ts: positions format the way the real Litestream v0.3.13 logs them
 * (tests/_oracle.ts), hex8 behaves like Go's %08x, and positions order by index then offset.
 */
import assert from "node:assert/strict";
import { comparePos, formatPos, hex8, MAX_INDEX, type Pos } from "../src/pos.ts";
import { oracleSample } from "./_oracle.ts";

const POSITION_REGEXP = /position=([0-9a-f]{16})\/([0-9a-f]{8,}):(\d+)/g;

Deno.test("formatPos() writes positions exactly as Litestream v0.3.13 logs them", async () => {
  const { log } = await oracleSample();
  const logged = [...log.matchAll(POSITION_REGEXP)];
  assert.ok(logged.length >= 4, `too few positions in the log:\n${log}`);
  const offsets = new Set<number>();
  for (const [text, generation, index, offset] of logged) {
    const pos = { generation, index: parseInt(index, 16), offset: Number(offset) };
    assert.equal(`position=${formatPos(pos)}`, text);
    offsets.add(pos.offset);
  }
  assert.ok(offsets.size >= 3, "the log has several distinct offsets");
});

Deno.test("formatPos() pads the index to 8 hex digits and writes the offset in decimal", () => {
  const generation = "0123456789abcdef";
  assert.equal(formatPos({ generation, index: 0, offset: 0 }), `${generation}/00000000:0`);
  assert.equal(formatPos({ generation, index: 0x1a, offset: 4152 }), `${generation}/0000001a:4152`);
  assert.equal(
    formatPos({ generation, index: MAX_INDEX, offset: 2 ** 33 }),
    `${generation}/7fffffff:8589934592`,
  );
});

Deno.test("hex8() zero-pads to at least 8 digits and grows past them like Go's %08x", () => {
  assert.equal(hex8(0), "00000000");
  assert.equal(hex8(0xabc), "00000abc");
  assert.equal(hex8(0xffffffff), "ffffffff");
  assert.equal(hex8(2 ** 32), "100000000");
  assert.equal(hex8(2 ** 40 + 1), "10000000001");
  assert.equal(parseInt(hex8(Number.MAX_SAFE_INTEGER), 16), Number.MAX_SAFE_INTEGER);
});

Deno.test("comparePos() orders positions by index, then offset", () => {
  const g = "0123456789abcdef";
  const p = (index: number, offset: number): Pos => ({ generation: g, index, offset });
  const sorted = [p(0, 0), p(0, 32), p(0, 2 ** 32 + 5), p(1, 0), p(1, 4152), p(MAX_INDEX, 0)];
  const shuffled = [sorted[3], sorted[5], sorted[0], sorted[4], sorted[2], sorted[1]];
  assert.deepEqual(shuffled.sort(comparePos), sorted);
  assert.equal(comparePos(p(2, 10), p(2, 10)), 0);
  assert.ok(comparePos(p(1, 2 ** 40), p(2, 0)) < 0);
  assert.ok(comparePos(p(2, 0), p(1, 2 ** 40)) > 0);
});
