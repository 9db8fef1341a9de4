/**
 * Tests of src/lz4.ts: round trips, interop with the `lz4` CLI (liblz4 1.9.4) in both
 * directions, streaming with tiny chunks, strict rejection of malformed frames, and xxHash32
 * checked against the content checksums liblz4 writes.
 */
import assert from "node:assert/strict";
import {
  blockDecodedSize,
  joinLz4Frames,
  LZ4_BLOCK_SIZE,
  LZ4_FRAME_MAGIC,
  lz4Compress,
  lz4CompressReader,
  lz4Decompress,
  lz4DecompressStream,
  Lz4FrameDecoder,
  Lz4FrameEncoder,
  Lz4FrameReader,
  Xxh32,
  xxh32,
} from "../src/lz4.ts";
import { oracleSample } from "./_oracle.ts";

const MIB = 1 << 20;

// ---------------------------------------------------------------------------------------
// Helpers

/** Deterministic xorshift32 generator, so failures reproduce. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(n);
  const words = new Uint32Array(out.buffer, 0, n >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length * 4; i < n; i++) out[i] = next() & 0xff;
  return out;
}

/**
 * Database-like data: runs of random bytes, text, zeros, short repeats and copies of
 * earlier random runs (back references, also across 64 KiB block boundaries).
 */
function mixedBytes(n: number, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(n);
  const text = new TextEncoder().encode(
    "INSERT INTO t VALUES (42, 'the quick brown fox jumps over the lazy dog'); ",
  );
  let o = 0;
  while (o < n) {
    const len = Math.min(n - o, 1 + (next() % 40_000));
    const kind = next() % 5;
    if (kind === 0) {
      out.set(randomBytes(len, next()), o);
    } else if (kind === 1) {
      for (let i = 0; i < len; i++) out[o + i] = text[(o + i) % text.length];
    } else if (kind === 2) {
      // zeros: already there
    } else if (kind === 3) {
      const period = 1 + (next() % 13);
      for (let i = 0; i < len; i++) out[o + i] = i < period ? next() & 0xff : out[o + i - period];
    } else {
      const back = Math.min(o, 1 + (next() % 65_535));
      for (let i = 0; i < len; i++) out[o + i] = back > 0 ? out[o + i - back] : 0;
    }
    o += len;
  }
  return out;
}

function concatBytes(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Asserts byte equality without deepEqual's cost on multi-MiB arrays. */
function assertBytes(actual: Uint8Array, expected: Uint8Array, what = "bytes"): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(`${what}: first difference at byte ${i}: ${actual[i]} !== ${expected[i]}`);
    }
  }
}

/** Runs the `lz4` CLI on `input` (passed as a file, so it knows the size) and returns stdout. */
async function lz4Cli(args: string[], input: Uint8Array): Promise<Uint8Array> {
  const dir = await Deno.makeTempDir({ prefix: "lz4_test_" });
  try {
    await Deno.writeFile(`${dir}/in`, input);
    const out = await new Deno.Command("lz4", {
      args: ["-q", "-c", ...args, `${dir}/in`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      const stderr = new TextDecoder().decode(out.stderr).trim();
      throw new Error(`lz4 ${args.join(" ")} failed with exit ${out.code}: ${stderr}`);
    }
    return out.stdout;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Decodes `frame` with the reference decoder, `lz4 -d`. */
function lz4CliDecode(frame: Uint8Array): Promise<Uint8Array> {
  return lz4Cli(["-d"], frame);
}

/** A stream delivering `bytes` in chunks of `size` bytes. */
function chunked(bytes: Uint8Array, size: number): ReadableStream<Uint8Array> {
  let o = 0;
  return new ReadableStream({
    pull(ctl) {
      if (o >= bytes.length) return ctl.close();
      // Enqueue many chunks per pull to keep tiny-chunk tests fast.
      for (let k = 0; k < 1024 && o < bytes.length; k++, o += size) {
        ctl.enqueue(bytes.slice(o, o + size));
      }
    },
  });
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of stream) parts.push(chunk);
  return concatBytes(...parts);
}

interface FrameInfo {
  flg: number;
  bd: number;
  blocks: { stored: boolean; size: number; data: Uint8Array }[];
  contentChecksum: number | undefined;
}

/** Walks a frame's structure, independently of the decoder under test. */
function parseFrame(frame: Uint8Array): FrameInfo {
  const v = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  assert.equal(v.getUint32(0, true), LZ4_FRAME_MAGIC);
  const flg = frame[4];
  let o = 7 + (flg & 0x08 ? 8 : 0) + (flg & 0x01 ? 4 : 0);
  const blocks: FrameInfo["blocks"] = [];
  for (;;) {
    const word = v.getUint32(o, true);
    o += 4;
    if (word === 0) break;
    const size = word & 0x7fffffff;
    blocks.push({ stored: (word & 0x80000000) !== 0, size, data: frame.subarray(o, o + size) });
    o += size + (flg & 0x10 ? 4 : 0);
  }
  const contentChecksum = flg & 0x04 ? v.getUint32(o, true) : undefined;
  o += flg & 0x04 ? 4 : 0;
  assert.equal(o, frame.length, "frame has trailing bytes");
  return { flg, bd: frame[5], blocks, contentChecksum };
}

// ---------------------------------------------------------------------------------------
// Round trips, checked by our decoder and by liblz4

const ROUND_TRIPS: [string, () => Uint8Array, number][] = [
  ["an empty input", () => new Uint8Array(0), 0],
  ["a 1-byte input", () => new Uint8Array([0x2a]), 1],
  ["exactly 4 MiB", () => mixedBytes(4 * MIB, 1), 1],
  ["4 MiB + 1 byte", () => mixedBytes(4 * MIB + 1, 2), 2],
  ["10 MiB of mixed data", () => mixedBytes(10 * MIB, 3), 3],
];

for (const [name, make, blocks] of ROUND_TRIPS) {
  Deno.test(`lz4Compress() round trips ${name} through lz4Decompress() and lz4 -d`, async () => {
    const data = make();
    const frame = lz4Compress(data);
    const info = parseFrame(frame);
    // The descriptor v0.3.13 writes (research §3.3; checked against its frames below).
    assert.equal(info.flg, 0x64);
    assert.equal(info.bd, 0x70);
    assert.equal(info.blocks.length, blocks);
    for (const b of info.blocks) assert.ok(b.size <= LZ4_BLOCK_SIZE);
    assertBytes(lz4Decompress(frame), data, "lz4Decompress");
    assertBytes(await lz4CliDecode(frame), data, "lz4 -d");
  });
}

Deno.test("joinLz4Frames() makes one frame of the parts' contents, read by lz4 -d too", async () => {
  // Compressible, incompressible (a stored block), empty, and a part of two blocks.
  const parts = [
    mixedBytes(5000, 7),
    randomBytes(3000, 8),
    new Uint8Array(0),
    mixedBytes(4 * MIB + 100, 9),
    new Uint8Array(20000),
  ];
  const whole = concatBytes(...parts);
  const joined = joinLz4Frames(parts.map((p) => lz4Compress(p)), xxh32(whole));
  const info = parseFrame(joined);
  assert.equal(info.flg, 0x64);
  assert.equal(info.bd, 0x70);
  assert.equal(info.blocks.length, 5); // the empty part has no block
  assertBytes(lz4Decompress(joined), whole, "lz4Decompress");
  assertBytes(await lz4CliDecode(joined), whole, "lz4 -d");
  // The checksum is the caller's: a wrong one makes a frame that fails to decode.
  const bad = joinLz4Frames(parts.map((p) => lz4Compress(p)), xxh32(whole) ^ 1);
  assert.throws(() => lz4Decompress(bad), SyntaxError);
  const frame = lz4Compress(parts[0]);
  assert.throws(() => joinLz4Frames([frame.subarray(0, frame.length - 4)], 0), SyntaxError);
  assert.throws(() => joinLz4Frames([frame.subarray(1)], 0), SyntaxError);
});

Deno.test("lz4Compress() ends an empty frame like the lz4 CLI: end mark, xxh32 of nothing", async () => {
  const ours = lz4Compress(new Uint8Array(0));
  const cli = await lz4Cli(["-B7", "-BI"], new Uint8Array(0));
  // Both: descriptor, end mark, xxh32("") = 0x02cc5d05; only FLG/BD/HC may differ.
  assertBytes(ours.subarray(7), cli.subarray(cli.length - 8), "end mark and checksum");
  assert.equal(new DataView(ours.buffer).getUint32(ours.length - 4, true), 0x02cc5d05);
});

Deno.test("lz4Compress() stores incompressible blocks uncompressed", async () => {
  const data = randomBytes(LZ4_BLOCK_SIZE + 5000, 7);
  const frame = lz4Compress(data);
  const info = parseFrame(frame);
  assert.deepEqual(info.blocks.map((b) => [b.stored, b.size]), [
    [true, LZ4_BLOCK_SIZE],
    [true, 5000],
  ]);
  assertBytes(info.blocks[1].data, data.subarray(LZ4_BLOCK_SIZE), "stored block");
  assertBytes(lz4Decompress(frame), data, "lz4Decompress");
  assertBytes(await lz4CliDecode(frame), data, "lz4 -d");
});

// ---------------------------------------------------------------------------------------
// Frames written by Litestream v0.3.13

/** The `.lz4` files of the replica the real v0.3.13 wrote. */
async function oracleFrames(): Promise<{ name: string; frame: Uint8Array }[]> {
  const { replicaPath } = await oracleSample();
  const out = [];
  for await (const gen of Deno.readDir(`${replicaPath}/generations`)) {
    for (const sub of ["snapshots", "wal"]) {
      const dir = `${replicaPath}/generations/${gen.name}/${sub}`;
      for await (const e of Deno.readDir(dir)) {
        out.push({ name: `${sub}/${e.name}`, frame: await Deno.readFile(`${dir}/${e.name}`) });
      }
    }
  }
  return out.sort((a, b) => a.name < b.name ? -1 : 1);
}

Deno.test("lz4Decompress() decodes the snapshot and WAL segments Litestream v0.3.13 wrote", async () => {
  const frames = await oracleFrames();
  assert.ok(frames.length >= 4);
  for (const { name, frame } of frames) {
    const data = lz4Decompress(frame);
    assertBytes(data, await lz4CliDecode(frame), name);
    assertBytes(
      await collect(chunked(frame, 3).pipeThrough(lz4DecompressStream())),
      data,
      `${name} streamed`,
    );
    if (name.startsWith("snapshots/")) {
      assert.equal(new TextDecoder().decode(data.subarray(0, 16)), "SQLite format 3\0");
    }
  }
});

Deno.test("lz4Compress() writes the frame header Litestream v0.3.13 writes", async () => {
  const ours = lz4Compress(mixedBytes(20_000, 8));
  for (const { name, frame } of await oracleFrames()) {
    assertBytes(ours.subarray(0, 7), frame.subarray(0, 7), name);
  }
});

// ---------------------------------------------------------------------------------------
// Frames written by the lz4 CLI

// With the input size known, liblz4 lowers the block size to fit (700 kB: 1 MiB blocks) and
// writes a single block as independent, so linked 1 MiB and 4 MiB blocks need larger inputs.
const CLI_VARIANTS: [string[], (flg: number, bd: number) => boolean, number?][] = [
  [[], (flg) => (flg & 0x20) !== 0], // defaults: independent blocks
  [["-B7", "-BD"], (flg, bd) => (flg & 0x20) === 0 && bd === 0x70, 4 * MIB + 300_000],
  [["-B4"], (_flg, bd) => bd === 0x40],
  [["-B4", "-BD"], (flg, bd) => (flg & 0x20) === 0 && bd === 0x40],
  [["-B5", "-BD", "-9"], (flg, bd) => (flg & 0x20) === 0 && bd === 0x50],
  [["-B6", "-BX"], (flg, bd) => (flg & 0x10) !== 0 && bd === 0x60],
  [["-B4", "-BD", "-BX"], (flg) => (flg & 0x30) === 0x10],
  [["--content-size"], (flg) => (flg & 0x08) !== 0],
  [["--no-frame-crc"], (flg) => (flg & 0x04) === 0],
  [["-B4", "-BD", "--content-size", "--no-frame-crc", "-BX"], (flg) => flg === 0x58],
  [["-B6", "-BD", "-9"], (flg, bd) => (flg & 0x20) === 0 && bd === 0x60, 2_500_000],
];

for (const [args, flagsOk, size = 700_000] of CLI_VARIANTS) {
  const label = args.length ? args.join(" ") : "default options";
  Deno.test(`lz4Decompress() decodes frames the lz4 CLI writes with ${label}`, async () => {
    const data = mixedBytes(size, 11);
    const frame = await lz4Cli(args, data);
    const info = parseFrame(frame);
    assert.ok(flagsOk(info.flg, info.bd), `lz4 ${label} wrote FLG ${info.flg} BD ${info.bd}`);
    assertBytes(lz4Decompress(frame), data, label);
    assertBytes(await collect(chunked(frame, 7_001).pipeThrough(lz4DecompressStream())), data);
  });
}

Deno.test("lz4Decompress() decodes linked blocks that refer back into a stored block", async () => {
  // Block 1 (64 KiB) is random, so liblz4 stores it; block 2 repeats most of it, so liblz4
  // compresses block 2 with matches reaching back into the stored block.
  const r = randomBytes(64 * 1024, 5);
  const data = concatBytes(r, r.subarray(1000), mixedBytes(50_000, 6));
  const frame = await lz4Cli(["-B4", "-BD"], data);
  const info = parseFrame(frame);
  assert.equal(info.blocks[0].stored, true);
  assert.equal(info.blocks[1].stored, false);
  assert.ok(info.blocks[1].size < 1000, "block 2 was not compressed against block 1");
  assertBytes(lz4Decompress(frame), data);
});

Deno.test("lz4Decompress() decodes long matches overlapping their own output, every period", async () => {
  // Runs repeating a pattern of 1 to 70 bytes, 32 to 5000 bytes long: liblz4 encodes them
  // as matches whose offset is shorter than their length (copied by fill or by doubling).
  const next = prng(31);
  const parts: Uint8Array[] = [];
  for (let period = 1; period <= 70; period++) {
    for (const len of [32, 33, period * 2 + 1, 257, 4099 + period]) {
      const pattern = randomBytes(period, next());
      const run = new Uint8Array(len);
      for (let i = 0; i < len; i++) run[i] = pattern[i % period];
      parts.push(randomBytes(1 + (next() % 9), next()), run);
    }
  }
  const data = concatBytes(...parts);
  const frame = await lz4Cli(["-B4", "-BD"], data);
  assert.ok(frame.length < data.length / 4, "the runs were not compressed as matches");
  assertBytes(lz4Decompress(frame), data);
});

for (const args of [["-B4", "-BX", "--content-size"], ["-B5"]]) {
  Deno.test(`Lz4FrameReader.needed cuts a frame at its parts (lz4 ${args.join(" ")})`, async () => {
    const data = mixedBytes(600_000, 41);
    const frame = await lz4Cli(args, data);
    const reader = new Lz4FrameReader();
    let at = 0, blocks = 0, decoded = 0;
    for (let n = reader.needed; n > 0; n = reader.needed) {
      const piece = frame.slice(at, at + n);
      assert.equal(piece.length, n, `the frame holds the ${n} bytes needed at ${at}`);
      at += n;
      for (const b of reader.push(piece)) {
        // A block fed as one piece is handed out as a view of it, not a copy.
        assert.equal(b.data.buffer, piece.buffer);
        blocks++;
        decoded += b.stored ? b.data.length : blockDecodedSize(b.data);
      }
    }
    assert.equal(at, frame.length, "needed is 0 exactly at the frame's end");
    assert.equal(decoded, data.length);
    assert.ok(blocks >= 3, `${blocks} blocks`);
    reader.verify(xxh32(data), data.length);
  });
}

Deno.test("lz4Decompress() accepts an empty stored block, as liblz4 does", async () => {
  const empty = lz4Compress(new Uint8Array(0));
  // Header, a stored block of 0 bytes (0x80000000), end mark, content checksum.
  const frame = concatBytes(
    empty.subarray(0, 7),
    new Uint8Array([0, 0, 0, 0x80]),
    empty.subarray(7),
  );
  assert.equal((await lz4CliDecode(frame)).length, 0);
  assert.equal(lz4Decompress(frame).length, 0);
  // Split right after the empty block: the decoder must wait for more input.
  const dec = new Lz4FrameDecoder();
  const out = [...dec.push(frame.subarray(0, 11)), ...dec.push(frame.subarray(11))];
  dec.finish();
  assert.equal(concatBytes(...out).length, 0);
});

Deno.test("blockDecodedSize() gives the decoded size of every block the lz4 CLI compressed", async () => {
  const data = mixedBytes(500_000, 12);
  const info = parseFrame(await lz4Cli(["-B4", "-BI"], data));
  let total = 0;
  for (const [i, b] of info.blocks.entries()) {
    const want = Math.min(64 * 1024, data.length - total);
    if (!b.stored) assert.equal(blockDecodedSize(b.data), want, `block ${i}`);
    total += want;
  }
  assert.equal(total, data.length);
});

// ---------------------------------------------------------------------------------------
// Streaming

for (const size of [1, 7]) {
  Deno.test(`Lz4FrameEncoder writes the one-shot frame from ${size}-byte pushes`, async () => {
    const data = mixedBytes(size === 1 ? 30_000 : 200_000, 20 + size);
    const enc = new Lz4FrameEncoder();
    const parts: Uint8Array[] = [];
    for (let o = 0; o < data.length; o += size) parts.push(...enc.push(data.slice(o, o + size)));
    const frame = concatBytes(...parts, ...enc.finish());
    assertBytes(frame, lz4Compress(data), "frame");
    assertBytes(await lz4CliDecode(frame), data, "lz4 -d");
  });

  Deno.test(`lz4DecompressStream() decodes CLI frames fed in ${size}-byte chunks`, async () => {
    const data = mixedBytes(size === 1 ? 150_000 : 400_000, 30 + size);
    for (const args of [["-B4", "-BD", "-BX", "--content-size"], ["-B7"]]) {
      const frame = await lz4Cli(args, data);
      const got = await collect(chunked(frame, size).pipeThrough(lz4DecompressStream()));
      assertBytes(got, data, args.join(" "));
    }
  });
}

/** A reader over `data` for lz4CompressReader(), recording the buffers it was given. */
function readerOf(data: Uint8Array, seen: Uint8Array[] = []): (buf: Uint8Array) => number {
  let o = 0;
  return (buf) => {
    seen.push(buf);
    const n = Math.min(buf.length, data.length - o);
    buf.set(data.subarray(o, o + n));
    o += n;
    return n;
  };
}

for (const [name, size] of [["empty", 0], ["9 MiB + 3 bytes", 9 * MIB + 3]] as const) {
  Deno.test(`lz4CompressReader() writes the one-shot frame of ${name}, one buffer`, async () => {
    const data = mixedBytes(size, 50);
    const seen: Uint8Array[] = [];
    const frame = await collect(lz4CompressReader(readerOf(data, seen)));
    assertBytes(frame, lz4Compress(data), "frame");
    assertBytes(await lz4CliDecode(frame), data, "lz4 -d");
    // Every block was read into the same block-sized buffer, until the reader returned 0.
    assert.equal(seen.length, Math.ceil(size / LZ4_BLOCK_SIZE) + 1);
    assert.ok(seen.every((b) => b === seen[0] && b.length === LZ4_BLOCK_SIZE));
  });
}

Deno.test("lz4CompressReader() errors the stream when the reader throws", async () => {
  let calls = 0;
  const stream = lz4CompressReader((buf) => {
    if (++calls === 2) throw new Error("disk gone");
    buf.fill(7);
    return buf.length;
  });
  await assert.rejects(collect(stream), /disk gone/);
});

Deno.test("lz4DecompressStream() errors with SyntaxError on a truncated frame", async () => {
  const frame = lz4Compress(mixedBytes(100_000, 40));
  const stream = chunked(frame.subarray(0, frame.length - 3), 999).pipeThrough(
    lz4DecompressStream(),
  );
  await assert.rejects(collect(stream), SyntaxError);
});

Deno.test("lz4DecompressStream() errors with SyntaxError on data after the frame", async () => {
  const frame = lz4Compress(mixedBytes(10_000, 41));
  const stream = chunked(concatBytes(frame, frame), 1000).pipeThrough(lz4DecompressStream());
  await assert.rejects(collect(stream), SyntaxError);
});

// ---------------------------------------------------------------------------------------
// Strict rejection

/** Asserts that both the one-shot and a chunked streaming decode throw SyntaxError. */
async function assertRejected(bytes: Uint8Array, what: string): Promise<void> {
  assert.throws(() => lz4Decompress(bytes), SyntaxError, `lz4Decompress: ${what}`);
  await assert.rejects(
    collect(chunked(bytes, 5).pipeThrough(lz4DecompressStream())),
    SyntaxError,
    `lz4DecompressStream: ${what}`,
  );
}

Deno.test("lz4Decompress() throws SyntaxError for a bad magic", async () => {
  const frame = lz4Compress(mixedBytes(1000, 50));
  const bad = frame.slice();
  bad[0] ^= 0x01;
  await assertRejected(bad, "bad magic");
  await assertRejected(new Uint8Array(0), "no data");
  // The legacy format (`lz4 -l`) has another magic and is not what Litestream writes.
  await assertRejected(await lz4Cli(["-l"], mixedBytes(1000, 50)), "legacy frame");
});

Deno.test("lz4Decompress() throws SyntaxError for a bad header checksum", async () => {
  for (const args of [["-B7"], ["--content-size"]]) {
    const frame = await lz4Cli(args, mixedBytes(1000, 51));
    const hc = 6 + (frame[4] & 0x08 ? 8 : 0);
    const bad = frame.slice();
    bad[hc] ^= 0x01;
    await assertRejected(bad, `header checksum of lz4 ${args.join(" ")}`);
    const badSize = frame.slice();
    badSize[5] ^= 0x10; // another block size, same stored checksum
    await assertRejected(badSize, "changed BD");
  }
});

Deno.test("lz4Decompress() throws SyntaxError for reserved bits and an unknown version", async () => {
  const frame = lz4Compress(mixedBytes(1000, 52));
  const fix = (b: Uint8Array) => {
    b[6] = (xxh32(b.subarray(4, 6)) >>> 8) & 0xff; // keep the header checksum valid
    return b;
  };
  const reserved = [[4, 0x02, "FLG bit 1"], [5, 0x80, "BD bit 7"], [5, 0x01, "BD bit 0"]] as const;
  for (const [at, mask, what] of reserved) {
    const bad = frame.slice();
    bad[at] ^= mask;
    await assertRejected(fix(bad), what);
  }
  const v2 = frame.slice();
  v2[4] = (v2[4] & 0x3f) | 0x80;
  await assertRejected(fix(v2), "version 2");
  const smallBlocks = frame.slice();
  smallBlocks[5] = 0x30; // block size index 3 is invalid
  await assertRejected(fix(smallBlocks), "block size index 3");
});

Deno.test("lz4Decompress() throws SyntaxError for a frame truncated anywhere", async () => {
  const frames = [
    lz4Compress(mixedBytes(3000, 53)),
    await lz4Cli(["-B4", "-BD", "-BX", "--content-size"], mixedBytes(3000, 53)),
    lz4Compress(new Uint8Array(0)),
  ];
  for (const frame of frames) {
    for (let cut = 0; cut < frame.length; cut++) {
      assert.throws(() => lz4Decompress(frame.subarray(0, cut)), SyntaxError, `cut at ${cut}`);
    }
  }
  await assertRejected(frames[1].subarray(0, frames[1].length - 1), "last byte missing");
});

Deno.test("lz4Decompress() throws SyntaxError for a flipped content checksum byte", async () => {
  for (const frame of [lz4Compress(mixedBytes(5000, 54)), await lz4Cli([], mixedBytes(5000, 54))]) {
    for (let k = 1; k <= 4; k++) {
      const bad = frame.slice();
      bad[bad.length - k] ^= 0x80;
      await assertRejected(bad, `content checksum byte -${k}`);
    }
  }
});

Deno.test("lz4Decompress() throws SyntaxError for a flipped block checksum or data byte", async () => {
  const data = mixedBytes(200_000, 55);
  const frame = await lz4Cli(["-B4", "-BX"], data);
  const info = parseFrame(frame);
  const first = info.blocks[0];
  const checksumAt = first.data.byteOffset - frame.byteOffset + first.size;
  const badChecksum = frame.slice();
  badChecksum[checksumAt] ^= 0x01;
  await assertRejected(badChecksum, "block checksum");
  // Without block checksums, a changed literal is caught by the content checksum.
  const plain = lz4Compress(data);
  const badData = plain.slice();
  badData[plain.length - 20] ^= 0x01;
  await assertRejected(badData, "block data");
});

Deno.test("lz4Decompress() throws SyntaxError for two concatenated frames", async () => {
  const a = await lz4Cli([], mixedBytes(2000, 56));
  const b = lz4Compress(mixedBytes(2000, 57));
  // liblz4 reads both, but Litestream v0.3.13 stops after the first: accepting it would hide a
  // truncated snapshot (research §3.3).
  assert.equal((await lz4CliDecode(concatBytes(a, b))).length, 4000);
  await assertRejected(concatBytes(a, b), "two frames");
  await assertRejected(concatBytes(b, b), "the same frame twice");
});

Deno.test("lz4Decompress() throws SyntaxError for trailing garbage", async () => {
  const frame = lz4Compress(mixedBytes(2000, 58));
  await assertRejected(concatBytes(frame, new Uint8Array([0])), "one zero byte");
  await assertRejected(concatBytes(frame, new TextEncoder().encode("garbage")), "text");
  // Also when the garbage arrives in a later push.
  const dec = new Lz4FrameDecoder();
  dec.push(frame);
  assert.throws(() => dec.push(new Uint8Array([1])), SyntaxError);
});

/** Builds a frame of stored blocks by hand: FLG 0x64 (0x6c with a content size), BD `bd`. */
function storedFrame(bd: number, blocks: Uint8Array[], contentSize?: number): Uint8Array {
  const flg = 0x64 | (contentSize === undefined ? 0 : 0x08);
  const header = new Uint8Array(contentSize === undefined ? 7 : 15);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, LZ4_FRAME_MAGIC, true);
  header[4] = flg;
  header[5] = bd;
  if (contentSize !== undefined) hv.setBigUint64(6, BigInt(contentSize), true);
  header[header.length - 1] = (xxh32(header.subarray(4, header.length - 1)) >>> 8) & 0xff;
  const parts: Uint8Array[] = [header];
  for (const b of blocks) {
    const size = new Uint8Array(4);
    new DataView(size.buffer).setUint32(0, (0x80000000 | b.length) >>> 0, true);
    parts.push(size, b);
  }
  const tail = new Uint8Array(8);
  new DataView(tail.buffer).setUint32(4, xxh32(concatBytes(...blocks)), true);
  parts.push(tail);
  return concatBytes(...parts);
}

Deno.test("lz4Decompress() throws SyntaxError for a block larger than the frame's maximum", async () => {
  const data = randomBytes(64 * 1024 + 1, 59);
  const fits = storedFrame(0x40, [data.subarray(0, 64 * 1024), data.subarray(64 * 1024)]);
  assertBytes(await lz4CliDecode(fits), data, "hand-made frame");
  assertBytes(lz4Decompress(fits), data, "hand-made frame");
  // The same bytes in one 64 KiB + 1 block: liblz4 rejects it, and so must we.
  const tooBig = storedFrame(0x40, [data]);
  await assert.rejects(lz4CliDecode(tooBig));
  await assertRejected(tooBig, "oversized stored block");
});

Deno.test("lz4Decompress() throws SyntaxError when the content size field is wrong", async () => {
  const data = mixedBytes(3000, 64);
  const right = storedFrame(0x40, [data], data.length);
  assertBytes(await lz4CliDecode(right), data, "hand-made frame");
  assertBytes(lz4Decompress(right), data, "hand-made frame");
  // (A content size of 0 is left out: liblz4 reads it as "unknown" and skips the check.)
  for (const size of [data.length - 1, data.length + 1]) {
    const wrong = storedFrame(0x40, [data], size);
    await assert.rejects(lz4CliDecode(wrong), `lz4 -d with content size ${size}`);
    await assertRejected(wrong, `content size ${size}`);
  }
});

// ---------------------------------------------------------------------------------------
// xxHash32

Deno.test("xxh32() of no data is 0x02cc5d05", () => {
  assert.equal(xxh32(new Uint8Array(0)), 0x02cc5d05);
  assert.equal(new Xxh32().digest(), 0x02cc5d05);
});

Deno.test("xxh32() matches the content checksums liblz4 writes", async () => {
  for (const n of [1, 3, 4, 15, 16, 17, 31, 32, 33, 1000, 65_537]) {
    const data = randomBytes(n, 60 + n);
    const info = parseFrame(await lz4Cli([], data));
    assert.equal(xxh32(data), info.contentChecksum, `${n} bytes`);
  }
});

Deno.test("Xxh32 gives the one-shot hash for input split at random points", () => {
  const next = prng(61);
  for (const n of [0, 1, 5, 15, 16, 17, 33, 64, 100, 1000, 4099]) {
    const data = randomBytes(n, 62 + n);
    const want = xxh32(data);
    for (let trial = 0; trial < 20; trial++) {
      const h = new Xxh32();
      let o = 0;
      while (o < n) {
        const take = next() % 4 === 0 ? 0 : 1 + (next() % Math.max(1, Math.min(40, n - o)));
        h.update(data.subarray(o, o + take));
        o += take;
      }
      assert.equal(h.digest(), want, `${n} bytes, trial ${trial}`);
      // digest() does not reset the state.
      assert.equal(h.digest(), want);
    }
  }
});

Deno.test("Xxh32 hashes unaligned views like the copied bytes", () => {
  const data = randomBytes(1001, 63);
  for (const shift of [1, 2, 3]) {
    const view = data.subarray(shift);
    assert.equal(xxh32(view), xxh32(view.slice()), `shift ${shift}`);
  }
});
