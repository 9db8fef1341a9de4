/**
 * Tests of src/internal/lz4_pool.ts: parallel decoding gives the same bytes as the serial
 * decoder for multi-block frames (stored blocks, odd chunking, CLI frames, linked blocks),
 * rejects corrupt frames with SyntaxError (content checksum included), terminates its
 * Workers however the iteration ends (the test sanitizers would report a leaked one), and
 * restore() takes this path for a large snapshot.
 */
import assert from "node:assert/strict";
import { LZ4_BLOCK_SIZE, lz4Compress, lz4Decompress, xxh32 } from "../src/lz4.ts";
import { lz4DecompressParallel, Lz4Pool } from "../src/internal/lz4_pool.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { restore } from "../src/restore.ts";
import { ReplicaIntegrityError } from "../src/errors.ts";
import { dump, sqliteAsync, tempDir } from "./_helpers.ts";

const MIB = 1 << 20;

/** Deterministic bytes: `random` runs (which LZ4 stores) and text (which it compresses). */
function testBytes(n: number, seed: number, random: (block: number) => boolean): Uint8Array {
  let x = seed >>> 0 || 1;
  const out = new Uint8Array(n);
  const text = new TextEncoder().encode("INSERT INTO t VALUES (42, 'the quick brown fox'); ");
  for (let o = 0; o < n; o++) {
    if (random(Math.floor(o / LZ4_BLOCK_SIZE))) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      out[o] = x & 0xff;
    } else {
      out[o] = text[(o * 7 + (o >>> 12)) % text.length];
    }
  }
  return out;
}

/** Five full blocks (two of them random, so stored) and a partial last block. */
const DATA = testBytes(5 * LZ4_BLOCK_SIZE + 123_457, 7, (b) => b === 1 || b === 3);
const FRAME = lz4Compress(DATA);

function* chunked(data: Uint8Array, size: number): Generator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.slice(i, i + size);
}

async function decodeAll(
  chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  workers?: number,
): Promise<Uint8Array> {
  const source = (async function* () {
    yield* chunks;
  })();
  const parts: Uint8Array[] = [];
  for await (const p of lz4DecompressParallel(source, { workers })) parts.push(p);
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function assertBytes(actual: Uint8Array, expected: Uint8Array): void {
  assert.equal(actual.length, expected.length, "length");
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) assert.fail(`first difference at byte ${i}`);
  }
}

/** Offsets and flags of the blocks of a frame with a 7-byte header. */
function blocks(frame: Uint8Array): { at: number; size: number; stored: boolean }[] {
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const out = [];
  for (let i = 7;;) {
    const word = v.getUint32(i, true);
    if (word === 0) return out;
    const size = word & 0x7fffffff;
    out.push({ at: i + 4, size, stored: (word & 0x80000000) !== 0 });
    i += 4 + size;
  }
}

async function lz4Cli(args: string[], input: Uint8Array): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir({ prefix: "lz4_pool_test_" });
  try {
    await Deno.writeFile(`${dir}/in`, input);
    const out = await new Deno.Command("lz4", {
      args: ["-q", "-c", ...args, `${dir}/in`],
      stdout: "piped",
    }).output();
    assert.ok(out.success, `lz4 ${args.join(" ")} failed`);
    return out.stdout;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("the test frame has stored and compressed full blocks and a short last block", () => {
  const b = blocks(FRAME);
  assert.equal(b.length, 6);
  assert.deepEqual(b.map((x) => x.stored), [false, true, false, true, false, false]);
});

for (const workers of [1, 2, 3]) {
  for (const size of [FRAME.length, 1 * MIB, 100_003, 4096]) {
    Deno.test(`lz4DecompressParallel() with ${workers} workers decodes ${size}-byte chunks`, async () => {
      assertBytes(await decodeAll(chunked(FRAME, size), workers), DATA);
    });
  }
}

Deno.test("lz4DecompressParallel() decodes a frame whose last block is full", async () => {
  const data = DATA.subarray(0, 3 * LZ4_BLOCK_SIZE);
  assertBytes(await decodeAll([lz4Compress(data)]), data);
});

Deno.test("lz4DecompressParallel() decodes an empty frame and a one-block frame", async () => {
  assertBytes(await decodeAll([lz4Compress(new Uint8Array(0))]), new Uint8Array(0));
  const small = DATA.subarray(0, 5000);
  assertBytes(await decodeAll(chunked(lz4Compress(small), 3)), small);
});

for (const args of [["-B4", "--content-size"], ["-B5", "-BX"], ["-B4", "-BD"], ["-B7", "-BD"]]) {
  Deno.test(`lz4DecompressParallel() decodes frames the lz4 CLI writes with ${args.join(" ")}`, async () => {
    const data = DATA.subarray(0, 9 * MIB);
    assertBytes(await decodeAll(chunked(await lz4Cli(args, data), 65_536), 2), data);
  });
}

async function rejects(frame: Uint8Array, pattern: RegExp, chunk = 1 * MIB): Promise<void> {
  await assert.rejects(decodeAll(chunked(frame, chunk), 2), (err: unknown) => {
    assert.ok(err instanceof SyntaxError, `want SyntaxError, got ${err}`);
    assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("lz4DecompressParallel() rejects an undecodable block with SyntaxError", async () => {
  const frame = FRAME.slice();
  const b = blocks(frame)[2];
  frame.fill(0xff, b.at, b.at + b.size); // a literal length running past the block's end
  await rejects(frame, /Cannot decode LZ4 block/);
});

Deno.test("lz4DecompressParallel() rejects a block decoding to more than the maximum", async () => {
  // Text compresses to far less than 64 KiB a block: claim 64 KiB blocks in the header.
  const frame = lz4Compress(DATA.subarray(0, LZ4_BLOCK_SIZE + 1000));
  assert.ok(blocks(frame).every((b) => b.size < 65536));
  frame[5] = 0x40;
  frame[6] = (xxh32(frame.subarray(4, 6)) >>> 8) & 0xff;
  await rejects(frame, /Cannot decode LZ4 block: decodes to \d+ bytes, max is 65536/);
});

Deno.test("lz4DecompressParallel() rejects a flipped byte in a compressed block", async () => {
  const frame = FRAME.slice();
  const b = blocks(frame)[4];
  frame[b.at + (b.size >> 1)] ^= 0x20;
  await rejects(frame, /Cannot decode LZ4 (block|frame: content checksum mismatch)/);
});

Deno.test("lz4DecompressParallel() rejects a flipped byte in a stored block", async () => {
  const frame = FRAME.slice();
  const b = blocks(frame)[1];
  frame[b.at + 1000] ^= 1;
  await rejects(frame, /content checksum mismatch/);
});

Deno.test("lz4DecompressParallel() rejects a wrong content checksum", async () => {
  const frame = FRAME.slice();
  frame[frame.length - 1] ^= 0x80;
  await rejects(frame, /content checksum mismatch/);
});

Deno.test("lz4DecompressParallel() rejects truncation, trailing data and a bad magic", async () => {
  await rejects(FRAME.subarray(0, FRAME.length - 3), /unexpected end of data/);
  await rejects(FRAME.subarray(0, blocks(FRAME)[3].at + 10), /unexpected end of data/);
  const trailing = new Uint8Array(FRAME.length + 1);
  trailing.set(FRAME);
  await rejects(trailing, /data after frame end/);
  await rejects(new Uint8Array(10), /bad magic/);
});

Deno.test("lz4DecompressParallel() terminates its workers when the consumer stops early", async () => {
  for await (const block of lz4DecompressParallel(chunked(FRAME, MIB))) {
    assert.equal(block.length, LZ4_BLOCK_SIZE);
    break;
  }
});

Deno.test("lz4DecompressParallel() terminates its workers when the source fails", async () => {
  async function* failing() {
    yield FRAME.slice(0, 3 * MIB);
    throw new Error("network down");
  }
  await assert.rejects(decodeAll(failing()), /network down/);
});

Deno.test("Lz4Pool decodes blocks concurrently and rejects work once terminated", async () => {
  using pool = new Lz4Pool(2);
  assert.equal(pool.size, 2);
  const b = blocks(FRAME).filter((x) => !x.stored);
  const framed = (x: { at: number; size: number }) => {
    const f = new Uint8Array(x.size + 4);
    f.set(FRAME.subarray(x.at, x.at + x.size), 4);
    return f;
  };
  const outs = await Promise.all(b.map((x) => pool.decode(framed(x), LZ4_BLOCK_SIZE)));
  assert.deepEqual(outs.map((o) => o.length), [
    LZ4_BLOCK_SIZE,
    LZ4_BLOCK_SIZE,
    LZ4_BLOCK_SIZE,
    123_457,
  ]);
  // A wrong size hint only costs a second attempt.
  const last = await pool.decode(framed(b[3]), LZ4_BLOCK_SIZE, LZ4_BLOCK_SIZE);
  assertBytes(last, DATA.subarray(5 * LZ4_BLOCK_SIZE));
  pool.terminate();
  await assert.rejects(pool.decode(framed(b[0]), LZ4_BLOCK_SIZE), /terminated/);
});

/** A database of about 14 MiB whose snapshot stays above 4 MiB compressed. */
async function bigReplica(dir: string): Promise<{ client: FileReplicaClient; db: string }> {
  const db = `${dir}/src.db`;
  await sqliteAsync(
    db,
    "CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) SELECT " +
      "CASE WHEN x % 2 = 0 THEN randomblob(1500) ELSE printf('%.1500c', 'x') END FROM " +
      "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 9000) " +
      "SELECT x FROM c);",
  );
  const client = new FileReplicaClient(`${dir}/replica`);
  const frame = lz4Compress(await Deno.readFile(db));
  assert.ok(frame.length > 4 * MIB, `snapshot is ${frame.length} bytes`);
  await client.writeSnapshot({ generation: "0123456789abcdef", index: 0 }, frame);
  return { client, db };
}

Deno.test("restore() decodes a large snapshot in parallel to the same database", async () => {
  await using dir = await tempDir();
  const { client, db } = await bigReplica(dir.path);
  await restore(client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await dump(`${dir.path}/r.db`), await dump(db));
  assertBytes(await Deno.readFile(`${dir.path}/r.db`), await Deno.readFile(db));
});

Deno.test("restore() names a large corrupt snapshot and leaves nothing behind", async () => {
  await using dir = await tempDir();
  const { client } = await bigReplica(dir.path);
  const path = `${dir.path}/replica/generations/0123456789abcdef/snapshots/00000000.snapshot.lz4`;
  const frame = await Deno.readFile(path);
  const good = lz4Decompress(frame);
  assert.ok(good.length > 8 * MIB);
  frame[frame.length - 2] ^= 1; // content checksum
  await Deno.writeFile(path, frame);
  await assert.rejects(
    restore(client, { outputPath: `${dir.path}/r.db` }),
    (err: unknown) => {
      assert.ok(err instanceof ReplicaIntegrityError, String(err));
      assert.match(err.message, /Snapshot 0123456789abcdef\/00000000 snapshot is corrupt/);
      assert.ok(err.cause instanceof SyntaxError);
      assert.match(err.cause.message, /content checksum mismatch/);
      return true;
    },
  );
  const left = [...Deno.readDirSync(dir.path)].map((e) => e.name).sort();
  assert.deepEqual(left, ["replica", "src.db"]);
});
