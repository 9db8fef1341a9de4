import assert from "node:assert/strict";
import { blobs, dump, integrity, openTestDb, tempDir, WrappedClient, Writer } from "./_helpers.ts";
import { calcRestoreTarget, restore } from "../src/restore.ts";
import { NoBackupError, ReplicaIntegrityError } from "../src/errors.ts";
import {
  type CallOptions,
  readAll,
  type ReplicaClient,
  sortedWalSegments,
  type WalSegmentInfo,
} from "../src/replica_client.ts";
import { lz4Compress, lz4DecompressStream } from "../src/lz4.ts";
import { concat } from "../src/internal/bytes.ts";
import type { Pos } from "../src/pos.ts";
import { walSegmentKey } from "../src/layout.ts";

/** A replica with three WAL indexes (checkpoints at 30 pages) and several segments each. */
async function threeIndexes(dir: string) {
  // Several segments per index (unmerged), as v0.3.13 leaves them.
  const fx = await openTestDb(dir, { minCheckpointPageCount: 30 }, { mergeWindowMs: 0 });
  const w = new Writer(fx.path);
  const dumps: string[] = [];
  for (let i = 0; fx.db.pos()!.index < 2 || i < 6; i++) {
    await w.exec(blobs(8));
    await fx.sync();
    dumps.push(await dump(fx.path));
    if (i > 50) throw new Error("no checkpoint happened");
  }
  return { fx, w, dumps };
}

Deno.test("restore() rebuilds the latest state and passes integrity_check", async () => {
  await using dir = await tempDir();
  const { fx, w } = await threeIndexes(dir.path);
  await using _fx = fx;
  await using _w = w;
  const res = await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(res.index, fx.db.pos()!.index);
  assert.equal(await integrity(`${dir.path}/r.db`), "ok");
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("restore() with an index stops after that WAL index", async () => {
  await using dir = await tempDir();
  const { fx, w } = await threeIndexes(dir.path);
  await using _fx = fx;
  await using _w = w;
  const segs = await sortedWalSegments(fx.client, fx.db.generation!);
  const res = await restore(fx.client, { outputPath: `${dir.path}/r.db`, index: 1 });
  assert.equal(res.index, 1);
  assert.ok(res.segments.every((s) => s.index <= 1));
  assert.ok(segs.some((s) => s.index === 2), "index 2 exists but was not applied");
  assert.equal(await integrity(`${dir.path}/r.db`), "ok");
  assert.notEqual(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("restore() to a timestamp restores the state of the segments written by then", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('early')");
  await fx.sync();
  const early = await dump(fx.path);
  await new Promise((r) => setTimeout(r, 30));
  const t = new Date();
  await new Promise((r) => setTimeout(r, 30));
  await w.exec("INSERT INTO t (v) VALUES ('late')");
  await fx.sync();
  await restore(fx.client, { outputPath: `${dir.path}/pit.db`, timestamp: t });
  assert.equal(await dump(`${dir.path}/pit.db`), early);
  await restore(fx.client, { outputPath: `${dir.path}/latest.db` });
  assert.equal(await dump(`${dir.path}/latest.db`), await dump(fx.path));
});

Deno.test("restore() refuses an index past the end instead of restoring the latest state", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await fx.sync();
  await assert.rejects(
    restore(fx.client, { outputPath: `${dir.path}/r.db`, index: 0x50 }),
    (err: Error) => err instanceof NoBackupError && /00000050/.test(err.message),
  );
  await assert.rejects(Deno.stat(`${dir.path}/r.db`), Deno.errors.NotFound);
});

Deno.test("restore() refuses a generation that does not exist", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await fx.sync();
  await assert.rejects(
    restore(fx.client, { outputPath: `${dir.path}/r.db`, generation: "0123456789abcdef" }),
    (err: Error) => err instanceof NoBackupError && err.message.includes("0123456789abcdef"),
  );
});

Deno.test("restore() names a missing WAL segment in the middle of an index", async () => {
  await using dir = await tempDir();
  const { fx, w } = await threeIndexes(dir.path);
  await using _fx = fx;
  await using _w = w;
  const segs = await sortedWalSegments(fx.client, fx.db.generation!);
  const middle = segs.find((s, i) => s.offset > 0 && segs[i + 1]?.index === s.index)!;
  assert.ok(middle, "found a segment with a successor in the same index");
  await Deno.remove(
    `${fx.replicaPath}/${walSegmentKey(middle.generation, middle.index, middle.offset)}`,
  );
  await assert.rejects(
    restore(fx.client, { outputPath: `${dir.path}/r.db` }),
    (err: Error) => err instanceof ReplicaIntegrityError && /missing WAL bytes/.test(err.message),
  );
  await assert.rejects(Deno.stat(`${dir.path}/r.db`), Deno.errors.NotFound);
  assert.deepEqual(
    (await Array.fromAsync(Deno.readDir(dir.path))).map((e) => e.name).filter((n) =>
      n.startsWith("r.db")
    ),
    [],
    "no temporary file left behind",
  );
});

Deno.test("restore() names a missing WAL index", async () => {
  await using dir = await tempDir();
  const { fx, w } = await threeIndexes(dir.path);
  await using _fx = fx;
  await using _w = w;
  const segs = await sortedWalSegments(fx.client, fx.db.generation!);
  for (const s of segs.filter((s) => s.index === 1)) {
    await Deno.remove(`${fx.replicaPath}/${walSegmentKey(s.generation, s.index, s.offset)}`);
  }
  await assert.rejects(
    calcRestoreTarget(fx.client),
    (err: Error) =>
      err instanceof ReplicaIntegrityError && /missing WAL index 00000001/.test(err.message),
  );
});

Deno.test("restore() rejects a corrupt WAL segment", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec(blobs(5));
  await fx.sync();
  const [seg] = (await sortedWalSegments(fx.client, fx.db.generation!)).slice(-1);
  const path = `${fx.replicaPath}/${walSegmentKey(seg.generation, seg.index, seg.offset)}`;
  const bytes = await Deno.readFile(path);
  bytes[Math.floor(bytes.length / 2)] ^= 0xff;
  await Deno.writeFile(path, bytes);
  await assert.rejects(
    restore(fx.client, { outputPath: `${dir.path}/r.db` }),
    (err: Error) => err instanceof ReplicaIntegrityError && err.message.includes(seg.generation),
  );
});

Deno.test("restore() fails with one error when several segments downloaded ahead fail", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  for (let i = 0; i < 6; i++) {
    await w.exec(`INSERT INTO t (v) VALUES ('row ${i}')`);
    await fx.sync();
  }
  // Every WAL download fails (as a dropped connection would): the ones fetched ahead and
  // never awaited must not end the process as unhandled rejections.
  const failing = new Proxy(fx.client, {
    get(target, key) {
      if (key === "openWalSegment") {
        return (pos: { offset: number }) => Promise.reject(new Error(`injected at ${pos.offset}`));
      }
      const value = Reflect.get(target, key);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  await assert.rejects(
    restore(failing, { outputPath: `${dir.path}/r.db`, parallelism: 8 }),
    /injected at 0/,
  );
  assert.deepEqual(
    (await Array.fromAsync(Deno.readDir(dir.path))).map((e) => e.name).filter((n) =>
      n.startsWith("r.db") || n.startsWith(".r.db")
    ),
    [],
  );
});

Deno.test("restore() never overwrites an existing file", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await fx.sync();
  const out = `${dir.path}/existing.db`;
  await Deno.writeTextFile(out, "precious");
  await assert.rejects(
    restore(fx.client, { outputPath: out }),
    Deno.errors.AlreadyExists,
  );
  assert.equal(await Deno.readTextFile(out), "precious");
});

Deno.test("restore() reports an empty replica as having no backups", async () => {
  await using dir = await tempDir();
  const { FileReplicaClient } = await import("../src/clients/file.ts");
  await assert.rejects(
    restore(new FileReplicaClient(`${dir.path}/nothing`), { outputPath: `${dir.path}/r.db` }),
    NoBackupError,
  );
});

Deno.test("restore() streams a WAL index larger than the prefetch limit straight into the file", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 100_000 });
  await using w = new Writer(fx.path);
  await fx.sync();
  // One ~40 MiB transaction of incompressible pages, then rewrites of some of them: a
  // segment too large to prefetch, applied in pieces, the newest image of each page winning.
  await w.exec(blobs(10_000, 3900));
  await w.exec("UPDATE t SET v = 'rewritten' WHERE id % 7 = 0");
  await fx.sync();
  const segs = await sortedWalSegments(fx.client, fx.db.generation!);
  assert.ok(segs.some((s) => s.size > 8 << 20), "a segment is larger than the prefetch limit");
  await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await integrity(`${dir.path}/r.db`), "ok");
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
  const left = (await Array.fromAsync(Deno.readDir(dir.path))).map((e) => e.name);
  assert.deepEqual(left.filter((n) => n.includes("restore") || n.endsWith(".tmp")), []);
});

Deno.test("restore() rejects a streamed WAL segment that is corrupt, truncated or claims an oversized block", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 100_000 });
  await using w = new Writer(fx.path);
  await fx.sync();
  await w.exec(blobs(3_000, 3900)); // ~12 MiB of incompressible pages: a streamed segment
  await fx.sync();
  const segs = await sortedWalSegments(fx.client, fx.db.generation!);
  const big = segs.find((s) => s.size > 4 << 20)!;
  assert.ok(big, "a segment is larger than the prefetch limit");
  const path = `${fx.replicaPath}/${walSegmentKey(big.generation, big.index, big.offset)}`;
  const good = await Deno.readFile(path);
  // Offsets of the frame's parts: 7-byte header, then size word + block, ..., end mark.
  const firstBlock = new DataView(good.buffer).getUint32(7, true) & 0x7fffffff;
  const secondWord = 7 + 4 + firstBlock;
  const damages: [string, (b: Uint8Array) => Uint8Array][] = [
    ["a flipped byte in a block", (b) => {
      b[secondWord + 100] ^= 0xff;
      return b;
    }],
    ["cut inside a block", (b) => b.subarray(0, secondWord + 1000)],
    ["cut right after a size word", (b) => b.subarray(0, secondWord + 4)],
    ["cut inside the header", (b) => b.subarray(0, 5)],
    ["a size word past any block", (b) => {
      new DataView(b.buffer).setUint32(secondWord, 0x7ffffff0, true);
      return b;
    }],
    ["bytes after the frame", (b) => {
      const out = new Uint8Array(b.length + 3);
      out.set(b);
      return out;
    }],
  ];
  for (const [what, damage] of damages) {
    await Deno.writeFile(path, damage(good.slice()));
    await assert.rejects(
      restore(fx.client, { outputPath: `${dir.path}/r.db` }),
      (err: Error) => err instanceof ReplicaIntegrityError && err.message.includes(big.generation),
      what,
    );
    const left = (await Array.fromAsync(Deno.readDir(dir.path))).map((e) => e.name);
    assert.deepEqual(left.filter((n) => n.startsWith("r.db") || n.startsWith(".r.db")), [], what);
  }
  await Deno.writeFile(path, good);
  await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

/**
 * Merges one WAL index's segments the way a replicator does: the merged segment replaces the
 * first, then the others are deleted.
 */
async function mergeIndex(client: ReplicaClient, segs: WalSegmentInfo[]): Promise<void> {
  const parts: Uint8Array[] = [];
  for (const s of segs) {
    parts.push(await readAll((await client.openWalSegment(s)).pipeThrough(lz4DecompressStream())));
  }
  await client.writeWalSegment(segs[0], lz4Compress(concat(parts)));
  await client.deleteWalSegments(segs.slice(1));
}

/**
 * Merges WAL index `index` when a restore opens one of its segments (`at`: the first, or the
 * second after having read the first whole, as it was), and counts the listings.
 */
class MergesDuringRestore extends WrappedClient {
  listings = 0;
  #segs: WalSegmentInfo[] = [];
  #merged?: Promise<void>;
  constructor(inner: ReplicaClient, readonly index: number, readonly at: "first" | "second") {
    super(inner);
  }
  override async *walSegments(g: string, o?: CallOptions): AsyncGenerator<WalSegmentInfo> {
    this.listings++;
    const segs = await Array.fromAsync(super.walSegments(g, o));
    this.#segs = segs.filter((s) => s.index === this.index).sort((a, b) => a.offset - b.offset);
    yield* segs;
  }
  override async openWalSegment(p: Pos, o?: CallOptions) {
    const i = this.#segs.findIndex((s) => s.index === p.index && s.offset === p.offset);
    if (i >= 0 && !this.#merged) {
      if (this.at === "second" && i === 0) {
        // Read it whole now, as it is: the merge below replaces it.
        const bytes = await readAll(await super.openWalSegment(p, o));
        return new ReadableStream<Uint8Array>({
          start(c) {
            c.enqueue(bytes);
            c.close();
          },
        });
      }
      if (i === (this.at === "first" ? 0 : 1)) this.#merged = mergeIndex(this.inner, this.#segs);
    }
    // Later segments of the index are opened once the merge is over (restore asks for them
    // ahead, in order).
    if (i >= 0 && this.#merged) await this.#merged;
    return super.openWalSegment(p, o);
  }
}

for (const at of ["first", "second"] as const) {
  Deno.test(`restore() races a merge of segments (at the ${at} segment) and restores the source`, async () => {
    await using dir = await tempDir();
    const { fx, w } = await threeIndexes(dir.path);
    await using _fx = fx;
    await using _w = w;
    const gen = fx.db.generation!;
    const segs = await sortedWalSegments(fx.client, gen);
    const count = (i: number) => segs.filter((s) => s.index === i).length;
    const index = [0, 1, 2].reduce((a, b) => count(b) > count(a) ? b : a);
    assert.ok(count(index) >= 3, `an index has several segments: ${count(index)}`);
    const client = new MergesDuringRestore(fx.client, index, at);
    await restore(client, { outputPath: `${dir.path}/r.db` });
    assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
    // Merged at the first segment: the restore reads the merged one and skips the deleted
    // ones it covers. At the second: the first was read as it was, the second is gone, and
    // the restore lists the replica again.
    assert.equal(client.listings, at === "first" ? 1 : 2);
    assert.equal((await sortedWalSegments(fx.client, gen)).length, segs.length - count(index) + 1);
  });
}
