/**
 * Tests of src/internal/bytes.ts: concat(), the reusable Scratch buffer, and handed-off
 * chunks freed by their consumer.
 *
 * @module
 */
import assert from "node:assert/strict";
import { concat, handOff, releaseHandedOff, Scratch } from "../src/internal/bytes.ts";
import { writeBody } from "../src/internal/fs.ts";
import { lz4CompressReader, lz4Decompress } from "../src/lz4.ts";
import { tempDir } from "./_helpers.ts";

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

Deno.test("writeBody() frees the chunks lz4CompressReader handed off, and only those", async () => {
  await using dir = await tempDir();
  const data = new Uint8Array(9 << 20); // three LZ4 blocks
  for (let i = 0; i < data.length; i += 7) data[i] = i & 0xff;
  const seen: Uint8Array[] = [];
  let at = 0;
  const compressed = lz4CompressReader((buf) => {
    const n = Math.min(buf.length, data.length - at);
    buf.set(data.subarray(at, at + n));
    at += n;
    return n;
  }).pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, ctl) {
        seen.push(chunk);
        ctl.enqueue(chunk);
      },
    }),
  );
  using file = await Deno.open(`${dir.path}/seg.lz4`, { write: true, create: true });
  await writeBody(file, compressed);
  // The blocks were freed once written; the 7-byte header was never handed off.
  const blocks = seen.filter((c) => c.buffer.byteLength === 0);
  assert.ok(blocks.length >= 3, `${blocks.length} of ${seen.length} chunks freed`);
  assert.equal(seen[0].length, 7);
  assert.deepEqual(lz4Decompress(await Deno.readFile(`${dir.path}/seg.lz4`)), data);

  // A caller's own chunks stay untouched, whole buffers included.
  const mine = [new Uint8Array([1, 2, 3]), new Uint8Array(4096).fill(9)];
  using other = await Deno.open(`${dir.path}/mine`, { write: true, create: true });
  await writeBody(other, ReadableStream.from(mine));
  assert.deepEqual(mine.map((c) => c.length), [3, 4096]);
  assert.deepEqual(await Deno.readFile(`${dir.path}/mine`), concat(mine));
});

Deno.test("releaseHandedOff() frees a handed-off buffer once; handOff() skips shared views", () => {
  const whole = handOff(new Uint8Array(16));
  releaseHandedOff(whole);
  assert.equal(whole.buffer.byteLength, 0);
  releaseHandedOff(whole); // a second release is a no-op
  const big = new Uint8Array(32);
  const view = handOff(big.subarray(8, 16)); // shares its buffer: never freed
  releaseHandedOff(view);
  assert.equal(big.buffer.byteLength, 32);
});
