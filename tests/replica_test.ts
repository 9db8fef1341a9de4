import assert from "node:assert/strict";
import {
  blobs,
  dump,
  openTestDb,
  restoredDump,
  tempDir,
  waitFor,
  WrappedClient,
  Writer,
} from "./_helpers.ts";
import { ok, runOracle } from "./_daemon.ts";
import { restore } from "../src/restore.ts";
import { Replica } from "../src/replica.ts";
import { Db } from "../src/db.ts";
import { lz4DecompressStream } from "../src/lz4.ts";
import { type Pos, samePos } from "../src/pos.ts";
import {
  type CallOptions,
  collect,
  readAll,
  type ReplicaClient,
  sortedSnapshots,
  sortedWalSegments,
} from "../src/replica_client.ts";
import { snapshotKey, walSegmentKey } from "../src/layout.ts";
import { dirname } from "../src/internal/fs.ts";

/** Sets an object's mtime back in time, as if it had been written `ageMs` ago. */
async function age(path: string, ageMs: number): Promise<void> {
  const t = new Date(Date.now() - ageMs);
  await Deno.utime(path, t, t);
}

/**
 * Writes rows of blobs, syncing with `sync` after each, until the database's WAL index is
 * `index` (checkpoints move it on; `minCheckpointPageCount` should be small).
 */
async function writeUntilIndex(
  w: Writer,
  db: { pos(): { index: number } | undefined },
  index: number,
  sync: () => Promise<void>,
): Promise<void> {
  for (let i = 0; db.pos()!.index < index; i++) {
    await w.exec(blobs(10));
    await sync();
    assert.ok(i < 50, "checkpoints advanced the index");
  }
}

Deno.test("Replica.sync() starts a generation with the WAL first, then its snapshot", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await fx.sync();
  const gen = fx.db.generation!;
  const [snap] = await sortedSnapshots(fx.client, gen);
  const [seg] = await sortedWalSegments(fx.client, gen);
  assert.equal(snap.index, 0);
  assert.deepEqual([seg.index, seg.offset], [0, 0]);
  assert.ok(seg.createdAt <= snap.createdAt, "the WAL the snapshot depends on was stored first");
});

Deno.test("Replica resumes from the store's last segment after a restart without re-uploading", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('a')");
  await fx.sync();
  const before = await collect(fx.client.walSegments(fx.db.generation!));
  await fx.reopen();
  await fx.sync();
  const after = await collect(fx.client.walSegments(fx.db.generation!));
  assert.equal(after.length, before.length, "nothing new to upload after a restart");
  assert.deepEqual(fx.replica.pos(), fx.db.pos());
  assert.equal((await sortedSnapshots(fx.client, fx.db.generation!)).length, 1);
});

Deno.test("Replica takes a new snapshot when the shadow WAL it needs is gone", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 20 });
  await using w = new Writer(fx.path);
  await fx.sync();
  const gen = fx.db.generation!;
  await fx.replica.close();
  // The replica is stopped while the database goes through several WAL indexes.
  await writeUntilIndex(w, fx.db, 3, () => fx.db.sync());
  const index = fx.db.pos()!.index;
  // A closed replica holds no shadow file back: the Db may have removed it already.
  await Deno.remove(fx.db.shadowWalPath(gen, 0)).catch((err) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
  await fx.reopen();
  await fx.sync();
  assert.equal(fx.db.generation, gen);
  const snaps = await sortedSnapshots(fx.client, gen);
  assert.deepEqual(snaps.map((s) => s.index), [0, index]);
  await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Replica.enforceRetention() deletes expired generations and what precedes the oldest retained snapshot", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 20 }, {
    retentionMs: 60_000,
  });
  await using w = new Writer(fx.path);
  await fx.sync();
  const oldGen = fx.db.generation!;
  // Make the first generation look two minutes old, then start a second generation.
  for (const s of await sortedSnapshots(fx.client, oldGen)) {
    await age(`${fx.replicaPath}/${snapshotKey(s.generation, s.index)}`, 120_000);
  }
  for (const s of await sortedWalSegments(fx.client, oldGen)) {
    await age(`${fx.replicaPath}/${walSegmentKey(s.generation, s.index, s.offset)}`, 120_000);
  }
  fx.db.requestNewGeneration("test");
  await fx.sync();
  const gen = fx.db.generation!;
  assert.notEqual(gen, oldGen);
  // In the current generation: an old snapshot at index 0, then a new one at a later index.
  for (let i = 0; fx.db.pos()!.index < 2; i++) {
    await w.exec(blobs(10));
    await fx.sync();
    assert.ok(i < 50, "checkpoints advanced the index");
  }
  for (const s of await sortedSnapshots(fx.client, gen)) {
    await age(`${fx.replicaPath}/${snapshotKey(s.generation, s.index)}`, 120_000);
  }
  const snap = await fx.replica.snapshot();
  assert.ok(snap.index >= 2);
  await fx.replica.enforceRetention();
  assert.deepEqual(await fx.client.generations(), [gen]);
  const snaps = await sortedSnapshots(fx.client, gen);
  assert.deepEqual(snaps.map((s) => s.index), [snap.index]);
  const segs = await sortedWalSegments(fx.client, gen);
  assert.ok(segs.every((s) => s.index >= snap.index), "WAL before the retained snapshot is gone");
  await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Replica.enforceRetention() uploads nothing for an idle database whose snapshots expired", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, {}, { retentionMs: 60_000 });
  await fx.sync();
  const gen = fx.db.generation!;
  const [s] = await sortedSnapshots(fx.client, gen);
  await age(`${fx.replicaPath}/${snapshotKey(gen, s.index)}`, 120_000);
  await fx.replica.enforceRetention();
  const snaps = await sortedSnapshots(fx.client, gen);
  assert.equal(snaps.length, 1, "the only snapshot is kept, not replaced");
  assert.ok(Date.now() - snaps[0].createdAt.getTime() >= 100_000, "no new snapshot was uploaded");
});

Deno.test("Replica.enforceRetention() snapshots a changed database whose snapshots expired", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, {}, { retentionMs: 60_000 });
  await using w = new Writer(fx.path);
  await fx.sync();
  const gen = fx.db.generation!;
  const [s] = await sortedSnapshots(fx.client, gen);
  await age(`${fx.replicaPath}/${snapshotKey(gen, s.index)}`, 120_000);
  await w.exec("INSERT INTO t (v) VALUES ('changed')");
  await fx.sync();
  await fx.replica.enforceRetention();
  const snaps = await sortedSnapshots(fx.client, gen);
  assert.equal(snaps.length, 1);
  assert.ok(Date.now() - snaps[0].createdAt.getTime() < 60_000, "a fresh snapshot replaced it");
  await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("FileReplicaClient removes .tmp files a killed writer left behind", async () => {
  await using dir = await tempDir();
  const { FileReplicaClient } = await import("../src/clients/file.ts");
  const gen = "0123456789abcdef";
  const walDir = `${dir.path}/generations/${gen}/wal`;
  await Deno.mkdir(walDir, { recursive: true });
  await Deno.writeTextFile(`${walDir}/00000000_00009999.wal.lz4.tmp`, "partial");
  // A new process's client: the first write into the directory clears the leftovers.
  const client = new FileReplicaClient(dir.path);
  await client.writeWalSegment({ generation: gen, index: 0, offset: 0 }, new Uint8Array([1, 2, 3]));
  const names = (await Array.fromAsync(Deno.readDir(walDir))).map((e) => e.name);
  assert.deepEqual(names, ["00000000_00000000.wal.lz4"]);
});

Deno.test("Replica snapshots after an interrupted start without re-uploading overlapping WAL", async () => {
  await using dir = await tempDir();
  // Unmerged: the segments the restart must not upload again stay as they were.
  await using fx = await openTestDb(dir.path, {}, { mergeWindowMs: 0 });
  await using w = new Writer(fx.path);
  await fx.sync();
  await w.exec("INSERT INTO t (v) VALUES ('second segment')");
  await fx.sync();
  const gen = fx.db.generation!;
  // As if the process stopped after uploading WAL segments but before the snapshot landed.
  for (const s of await sortedSnapshots(fx.client, gen)) {
    await Deno.remove(`${fx.replicaPath}/${snapshotKey(s.generation, s.index)}`);
  }
  const before = await sortedWalSegments(fx.client, gen);
  assert.ok(before.length >= 2);
  await fx.reopen();
  await fx.sync();
  const after = await sortedWalSegments(fx.client, gen);
  assert.deepEqual(
    after.slice(0, before.length).map((s) => [s.index, s.offset, s.size]),
    before.map((s) => [s.index, s.offset, s.size]),
  );
  assert.equal((await sortedSnapshots(fx.client, gen)).length, 1);
  await restore(fx.client, { outputPath: `${dir.path}/r.db` });
  assert.equal(await dump(`${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Replica.validate() restores the replica to the database's position and finds it equal", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 30 });
  await using w = new Writer(fx.path);
  await fx.sync();
  for (let i = 0; i < 6; i++) {
    await w.exec(blobs(8));
    await fx.sync();
  }
  assert.equal(await fx.replica.validate(), "ok");
  // Later commits that the replica holds but the validation point does not are ignored.
  await w.exec(blobs(3));
  await fx.sync();
  assert.equal(await fx.replica.validate(), "ok");
  assert.equal(await fx.replica.validate(), undefined, "nothing new: no restore");
  assert.deepEqual(fx.replica.metrics.validations, { ok: 2, error: 0 });
});

Deno.test("Replica.validate() fails and counts an error when the replica lost WAL the database has", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await fx.sync();
  await w.exec("INSERT INTO t (v) VALUES ('only in the last segment')");
  await fx.sync();
  const [last] = (await sortedWalSegments(fx.client, fx.db.generation!)).slice(-1);
  assert.ok(last.offset > 0);
  await Deno.remove(`${fx.replicaPath}/${walSegmentKey(last.generation, last.index, last.offset)}`);
  await assert.rejects(fx.replica.validate(), /Cannot validate replica "file"/);
  assert.deepEqual(fx.replica.metrics.validations, { ok: 0, error: 1 });
});

Deno.test("Db removes the shadow WAL files every replica has moved past, index after index", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 20 });
  await using w = new Writer(fx.path);
  await fx.sync();
  const gen = fx.db.generation!;
  const shadowFiles = async () => {
    const names: string[] = [];
    for await (const e of Deno.readDir(dirname(fx.db.shadowWalPath(gen, 0)))) names.push(e.name);
    return names.sort();
  };
  // Each round's checkpoints move the index on; the replica ships it; the Db then keeps the
  // replica's file and the one before it, whatever the index (a cleaning that ran once must
  // run again once the replicas move further).
  for (let round = 0; round < 4; round++) {
    await writeUntilIndex(w, fx.db, fx.db.pos()!.index + 2, () => fx.sync());
    // The Db cleans after a sync that copied something, once the replica said where it is.
    await w.exec("INSERT INTO t (v) VALUES ('x')");
    await fx.sync();
    const index = fx.db.pos()!.index;
    assert.equal(fx.replica.pos()!.index, index);
    const kept = await shadowFiles();
    assert.ok(kept.length <= 2, `round ${round}: index ${index}, kept ${kept.join(", ")}`);
    assert.ok(kept.includes(fx.db.shadowWalPath(gen, index).split("/").pop()!));
  }
});

Deno.test("Db removes no shadow WAL file before a replica said where it stands: a store ending two WAL restarts back continues without a gap", async () => {
  await using dir = await tempDir();
  await using w = new Writer(`${dir.path}/app.db`);
  let fx = await openTestDb(dir.path);
  await w.exec(blobs(20, 2000));
  await fx.sync();
  const gen = fx.db.generation!;
  assert.equal(fx.replica.pos()!.index, 0);
  await fx.stop();
  // Twice: while nothing runs, the WAL restarts once (each new life shorter than the one
  // before, so the last frame copied is still there); then the Db alone, as the daemon's
  // first sync before its replicas start, follows it to the next index.
  for (const life of [blobs(5, 2000), "INSERT INTO t (v) VALUES ('third life')"]) {
    await w.exec("PRAGMA wal_checkpoint(RESTART)");
    await w.exec(life);
    const db = new Db(fx.path, { monitorIntervalMs: 0 });
    await db.open();
    await db.sync();
    await db.close();
  }
  fx = await openTestDb(dir.path);
  await using _fx = fx;
  assert.equal(fx.db.generation, gen);
  assert.equal(fx.db.pos()!.index, 2);
  // The store ends in index 0: its shadow file is still there to continue from.
  await Deno.stat(fx.db.shadowWalPath(gen, 0));
  await fx.sync();
  // Continued from the WAL, index by index, without a new snapshot.
  assert.deepEqual((await sortedSnapshots(fx.client, gen)).map((s) => s.index), [0]);
  const indexes = new Set((await sortedWalSegments(fx.client, gen)).map((s) => s.index));
  assert.deepEqual([...indexes].sort(), [0, 1, 2]);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

// ---------------------------------------------------------------------------------------
// Merging runs of segments

/** What the real v0.3.13 restores from the file replica at `replica` (dumped). */
async function oracleDump(replica: string, out: string): Promise<string> {
  ok(await runOracle(["restore", "-o", out, `file://${replica}`]), "v0.3.13 restore");
  return await dump(out);
}

/**
 * The stored segments of one WAL index, as [offset, decoded length] pairs (listed again when
 * a running merge deletes one between the listing and its read).
 */
async function indexSegments(
  client: ReplicaClient,
  gen: string,
  index: number,
): Promise<[number, number][]> {
  for (;;) {
    try {
      const out: [number, number][] = [];
      for (const s of await sortedWalSegments(client, gen)) {
        if (s.index !== index) continue;
        const bytes = await readAll(
          (await client.openWalSegment(s)).pipeThrough(lz4DecompressStream()),
        );
        out.push([s.offset, bytes.length]);
      }
      return out;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
}

/** A client whose `deleteWalSegments` fails while `failDeletes` is set. */
class FailingDeletes extends WrappedClient {
  failDeletes = false;
  override deleteWalSegments(p: Pos[], o?: CallOptions) {
    if (this.failDeletes) return Promise.reject(new Error("injected: delete failed"));
    return super.deleteWalSegments(p, o);
  }
}

Deno.test("Replica merges a run of segments into one when it closes; both tools restore it", async () => {
  await using dir = await tempDir();
  // A window no test outlasts: the run is merged by close() only.
  await using fx = await openTestDb(dir.path, {}, { mergeWindowMs: 600_000 });
  await using w = new Writer(fx.path);
  await fx.sync();
  for (let i = 0; i < 6; i++) {
    await w.exec(blobs(2, 700));
    await fx.sync();
  }
  const gen = fx.db.generation!;
  const index = fx.db.pos()!.index;
  const before = await indexSegments(fx.client, gen, index);
  assert.ok(before.length >= 7, `one segment per sync before the merge: ${before.length}`);
  const end = before.at(-1)![0] + before.at(-1)![1];
  const source = await dump(fx.path);
  await fx.stop();
  assert.deepEqual(await indexSegments(fx.client, gen, index), [[0, end]]);
  await restore(fx.client, { outputPath: `${dir.path}/ours.db` });
  assert.equal(await dump(`${dir.path}/ours.db`), source);
  assert.equal(await oracleDump(fx.replicaPath, `${dir.path}/oracle.db`), source);
});

Deno.test("Replica merges a run once its window is over, with no commit after it", async () => {
  await using dir = await tempDir();
  // The window only has to outlast the six uploads below (a loaded machine takes its time).
  await using fx = await openTestDb(dir.path, {}, { mergeWindowMs: 3000 });
  await using w = new Writer(fx.path);
  fx.replica.open();
  await fx.db.sync();
  for (let i = 0; i < 5; i++) {
    await waitFor(() => samePos(fx.replica.pos(), fx.db.pos()), 10_000, "upload");
    await w.exec(blobs(1, 500));
    await fx.db.sync(); // the replica's loop uploads each
  }
  await waitFor(() => samePos(fx.replica.pos(), fx.db.pos()), 10_000, "upload");
  const gen = fx.db.generation!;
  const { index, offset: end } = fx.db.pos()!;
  await waitFor(
    async () => (await indexSegments(fx.client, gen, index)).length === 1,
    10_000,
    "the segments merged",
  );
  assert.deepEqual(await indexSegments(fx.client, gen, index), [[0, end]]);
  await restore(fx.client, { outputPath: `${dir.path}/ours.db` });
  assert.equal(await dump(`${dir.path}/ours.db`), await dump(fx.path));
});

Deno.test("A merge stopped before its deletions: both tools restore, the next run finishes it first", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  const client = new FailingDeletes(fx.client);
  const open = () => new Replica(fx.db, client, { retentionMs: 0, mergeWindowMs: 600_000 });
  let rep = open();
  const sync = async () => {
    await fx.db.sync();
    await rep.sync();
  };
  await sync();
  for (let i = 0; i < 5; i++) {
    await w.exec(blobs(2, 700));
    await sync();
  }
  const gen = fx.db.generation!;
  const index = fx.db.pos()!.index;
  const end = fx.db.pos()!.offset;
  client.failDeletes = true;
  await assert.rejects(rep.close(), /injected/);
  // The merged segment covers the ones it was to replace.
  const left = await indexSegments(client, gen, index);
  assert.deepEqual(left[0], [0, end]);
  assert.ok(left.length > 2, `covered segments left: ${left.length}`);
  const source = await dump(fx.path);
  await restore(client, { outputPath: `${dir.path}/ours1.db` });
  assert.equal(await dump(`${dir.path}/ours1.db`), source);
  assert.equal(await oracleDump(fx.replicaPath, `${dir.path}/oracle1.db`), source);

  // A new replicator finishes the merge before it uploads anything after it: v0.3.13 would
  // otherwise restore only up to the covered segments (SQLite ends the WAL there).
  client.failDeletes = false;
  rep = open();
  await w.exec(blobs(2, 700));
  await sync();
  const after = await indexSegments(client, gen, index);
  assert.deepEqual(after.map(([o]) => o), [0, end]);
  const latest = await dump(fx.path);
  await rep.close();
  await restore(client, { outputPath: `${dir.path}/ours2.db` });
  assert.equal(await dump(`${dir.path}/ours2.db`), latest);
  assert.equal(await oracleDump(fx.replicaPath, `${dir.path}/oracle2.db`), latest);
});
