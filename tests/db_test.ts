import assert from "node:assert/strict";
import {
  blobs,
  dump,
  openTestDb,
  restoredDump,
  sqliteAsync,
  tempDir,
  waitFor,
  Writer,
} from "./_helpers.ts";
import { calcWalSize, decodeWalHeader, WAL_HEADER_SIZE } from "../src/wal.ts";
import { Logger, memorySink } from "../src/log.ts";
import {
  hasUnchecksummedCommittedFrame,
  ROLLBACK_LOAD_SCHEMA,
  RollbackLoad,
} from "./_rollback_load.ts";

async function fileBytes(path: string, start: number, end: number): Promise<Uint8Array> {
  const all = await Deno.readFile(path);
  return all.subarray(start, end);
}

Deno.test("Db.sync() starts a generation whose shadow WAL is a byte copy of the committed WAL", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('a'), ('b')");
  await fx.sync();
  const pos = fx.db.pos()!;
  assert.match(pos.generation, /^[0-9a-f]{16}$/);
  assert.equal(pos.index, 0);
  const shadow = await Deno.readFile(fx.db.shadowWalPath(pos.generation, 0));
  assert.equal(shadow.length, pos.offset);
  assert.deepEqual(shadow, await fileBytes(`${fx.path}-wal`, 0, pos.offset));
  assert.equal(await Deno.readTextFile(`${fx.db.metaPath}/generation`), `${pos.generation}\n`);
});

Deno.test("Db.sync() copies only whole transactions, never an uncommitted one", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await fx.sync();
  const before = fx.db.pos()!.offset;
  // A large transaction spills pages into the WAL before it commits.
  await w.exec(
    "PRAGMA cache_size=1; BEGIN; " + blobs(200, 3000),
  );
  const walSize = (await Deno.stat(`${fx.path}-wal`)).size;
  assert.ok(walSize > before, "the open transaction spilled frames into the WAL");
  await fx.db.sync();
  assert.equal(fx.db.pos()!.offset, before, "uncommitted frames were not copied");
  await w.exec("COMMIT");
  await fx.sync();
  assert.ok(fx.db.pos()!.offset > before);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db resumes the scan of a transaction spilling into the WAL: each frame checksummed about twice, not at every sync", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await fx.sync();
  const before = fx.db.pos()!.offset;
  const scannedBefore = fx.db.metrics.walScannedBytes;
  await w.exec("PRAGMA cache_size=1; BEGIN");
  const steps = 12;
  for (let i = 0; i < steps; i++) {
    await w.exec(blobs(60, 3000));
    // A page spilled earlier changes again: SQLite overwrites its frame in place and, at the
    // commit, rewrites every checksum from there on, so the resumed scan must notice.
    if (i === 8) await w.exec("UPDATE t SET v = 'changed' WHERE id = 2");
    await fx.db.sync();
    assert.equal(fx.db.pos()!.offset, before, `step ${i}: uncommitted frames were not copied`);
  }
  await w.exec("COMMIT");
  await fx.sync();
  const tail = fx.db.pos()!.offset - before;
  assert.ok(tail > steps * 60 * 3000, `the transaction reached the shadow WAL (${tail} bytes)`);
  const scanned = fx.db.metrics.walScannedBytes - scannedBefore;
  // Rescanning from the last commit at every sync would checksum ~steps/2 times the tail.
  assert.ok(scanned <= 3 * tail, `checksummed ${scanned} bytes for a tail of ${tail}`);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db copies a commit written inside the frames of a rolled-back transaction it had scanned", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await fx.sync();
  const gen = fx.db.generation;
  // Wholly rolled back: the next commit overwrites the old tail's first frames, and a scan
  // resumed at the old tail's end would find nothing there (and the commit SQLite counts
  // would look like frames failing their checksums: a needless new generation).
  await w.exec("PRAGMA cache_size=1; BEGIN");
  await w.exec(blobs(200, 3000));
  await fx.db.sync();
  await w.exec("ROLLBACK");
  await w.exec("INSERT INTO t (v) VALUES ('after rollback')");
  await fx.sync();
  assert.equal(await restoredDump(fx.client, `${dir.path}/r1.db`), await dump(fx.path));
  // Rolled back to a savepoint: the commit lands inside the frames scanned before.
  await w.exec("BEGIN");
  await w.exec(blobs(50, 3000));
  await w.exec("SAVEPOINT s");
  await w.exec(blobs(200, 3000));
  await fx.db.sync();
  await w.exec("ROLLBACK TO s");
  await w.exec("INSERT INTO t (v) VALUES ('after savepoint')");
  await w.exec("COMMIT");
  await fx.sync();
  const restored = await restoredDump(fx.client, `${dir.path}/r2.db`);
  assert.match(restored, /after savepoint/);
  assert.equal(restored, await dump(fx.path));
  assert.equal(fx.db.generation, gen, "the same generation throughout");
});

Deno.test("Db's monitor copies a commit that lands inside a rolled-back tail it had scanned", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { monitorIntervalMs: 1000 });
  await using w = new Writer(fx.path);
  await waitFor(() => fx.db.pos() !== undefined, 10_000, "the first sync");
  const before = fx.db.pos()!.offset;
  const scanned = fx.db.metrics.walScannedBytes;
  await w.exec("PRAGMA cache_size=1; BEGIN");
  await w.exec(blobs(200, 3000));
  await waitFor(
    () => fx.db.metrics.walScannedBytes > scanned + 100 * 3000,
    10_000,
    "the monitor to scan the uncommitted frames",
  );
  await w.exec("ROLLBACK");
  await w.exec("INSERT INTO t (v) VALUES ('after rollback')");
  await waitFor(() => fx.db.pos()!.offset > before, 10_000, "the commit to be copied");
  await fx.replica.sync();
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db starts a new generation when SQLite commits WAL frames without checksums (ROLLBACK TO after a spill), and restores equal", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("PRAGMA busy_timeout = 5000");
  await w.exec("PRAGMA cache_size = 16");
  await w.exec(ROLLBACK_LOAD_SCHEMA);
  await fx.sync();
  const gen = fx.db.generation;
  const load = new RollbackLoad(w);
  let defect = false;
  for (let i = 0; i < 3000 && !defect; i++) {
    await load.commit();
    defect = await hasUnchecksummedCommittedFrame(fx.path);
    await fx.sync();
  }
  assert.ok(defect, "this sqlite3 committed no frame without checksums: the test proves nothing");
  await w.exec("INSERT INTO log VALUES (2, 1, 'after')");
  await fx.sync();
  assert.notEqual(fx.db.generation, gen, "a new generation started");
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db continues the same generation after a restart while the application keeps its connection", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('before')");
  await fx.sync();
  const gen = fx.db.generation;
  await fx.reopen();
  await w.exec("INSERT INTO t (v) VALUES ('during')");
  await fx.sync();
  assert.equal(fx.db.generation, gen);
  await w.exec("INSERT INTO t (v) VALUES ('after')");
  await fx.sync();
  assert.equal(fx.db.generation, gen);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db keeps the WAL and its generation across a restart when no application is connected", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await sqliteAsync(fx.path, "INSERT INTO t (v) VALUES ('x')");
  await fx.sync();
  const gen = fx.db.generation;
  await fx.reopen();
  await fx.sync();
  assert.equal(fx.db.generation, gen, "closing our connections did not checkpoint the WAL away");
});

Deno.test("Db starts a new generation when another process truncated the WAL while it was stopped", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('one')");
  await fx.sync();
  const gen = fx.db.generation;
  await fx.stop();
  const [row] = await w.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  assert.match(row, /^0\|/, "the truncate checkpoint ran");
  await w.exec("INSERT INTO t (v) VALUES ('two')");
  await fx.reopen();
  await fx.sync();
  assert.notEqual(fx.db.generation, gen);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db follows a WAL another process truncated and a connection that never restarted one started again", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 1 });
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('one')");
  await fx.sync(); // copies and checkpoints all of it: our read mark is 0 now
  const gen = fx.db.generation;
  const index = fx.db.pos()!.index;
  const before = decodeWalHeader(await readHead(`${fx.path}-wal`));
  // Our mark-0 reader lets a TRUNCATE through (one restart), then a new process, which never
  // restarted a WAL, writes the first frame: SQLite draws fresh salts, no salt-1 + 1.
  assert.match(await sqliteAsync(fx.path, "PRAGMA wal_checkpoint(TRUNCATE);"), /^0\|0\|0/);
  await sqliteAsync(fx.path, "INSERT INTO t (v) VALUES ('two');");
  const after = decodeWalHeader(await readHead(`${fx.path}-wal`));
  assert.equal(after.checkpointSeq, 0, "the premise: a writer that never restarted a WAL");
  assert.notEqual(after.salt1, (before.salt1 + 1) >>> 0, "the premise: fresh salts");
  await fx.sync();
  assert.equal(fx.db.generation, gen, "one restart while our read mark was held: same generation");
  assert.equal(fx.db.pos()!.index, index + 1, "the next WAL index");
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

async function readHead(path: string): Promise<Uint8Array> {
  return (await Deno.readFile(path)).subarray(0, WAL_HEADER_SIZE);
}

Deno.test("Db follows one WAL restart made while it was stopped, copying the old life's tail first", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec(
    blobs(20, 2000),
  );
  await fx.sync();
  const gen = fx.db.generation!;
  const idx = fx.db.pos()!.index;
  await fx.stop();
  // While we are down: a commit into the old life, a checkpoint, and one small commit that
  // restarts the WAL without reaching the frames we copied.
  await w.exec("INSERT INTO t (v) VALUES ('tail of the old life')");
  await w.exec("PRAGMA wal_checkpoint(RESTART)");
  await w.exec("INSERT INTO t (v) VALUES ('first of the new life')");
  await fx.reopen();
  await fx.sync();
  assert.equal(fx.db.generation, gen);
  assert.equal(fx.db.pos()!.index, idx + 1);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db starts a new generation when the WAL restarted twice while it was stopped", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec(
    blobs(20, 2000),
  );
  await fx.sync();
  const gen = fx.db.generation!;
  await fx.stop();
  const before = decodeWalHeader(await fileBytes(`${fx.path}-wal`, 0, WAL_HEADER_SIZE));
  // Two restarts; each new life is far shorter than what we copied, so the last frame we
  // copied is still physically there (v0.3.13 would carry on and miss the middle life).
  await w.exec("PRAGMA wal_checkpoint(RESTART)");
  await w.exec("INSERT INTO t (v) VALUES ('middle life')");
  await w.exec("PRAGMA wal_checkpoint(RESTART)");
  await w.exec("UPDATE t SET v = 'third life' WHERE id = 1");
  const after = decodeWalHeader(await fileBytes(`${fx.path}-wal`, 0, WAL_HEADER_SIZE));
  assert.equal(after.checkpointSeq, before.checkpointSeq + 2);
  await fx.reopen();
  await fx.sync();
  assert.notEqual(fx.db.generation, gen);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db checkpoints past min-checkpoint-page-count, keeps the WAL bounded and restores equal", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, {
    minCheckpointPageCount: 50,
    maxCheckpointPageCount: 400,
  });
  await using w = new Writer(fx.path);
  let maxWal = 0;
  for (let i = 0; i < 40; i++) {
    await w.exec(
      blobs(20, 1500),
    );
    await fx.sync();
    maxWal = Math.max(maxWal, (await Deno.stat(`${fx.path}-wal`)).size);
  }
  const pos = fx.db.pos()!;
  assert.ok(pos.index >= 5, `checkpoints advanced the WAL index (index ${pos.index})`);
  // 40 × ~20 pages went through the WAL; with checkpoints at 50 pages it stays small.
  assert.ok(maxWal < 120 * 4120, `WAL stayed bounded (max ${maxWal} bytes)`);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db.sync() reads a WAL file put in place of the one it read last from the new file, not the old descriptor", async () => {
  await using dir = await tempDir();
  const log = memorySink("info");
  await using fx = await openTestDb(dir.path, { logger: new Logger(log) });
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('a')");
  await fx.sync();
  const gen = fx.db.generation;
  // Another process puts a file holding only the WAL's header in the WAL's place; the
  // connections (ours and the application's) keep the replaced file open, which is unchanged.
  const wal = `${fx.path}-wal`;
  const header = (await Deno.readFile(wal)).slice(0, WAL_HEADER_SIZE);
  await Deno.writeFile(`${wal}.new`, header);
  await Deno.rename(`${wal}.new`, wal);
  await fx.db.sync();
  // Read through the old descriptor, the WAL would look as at the last sync.
  assert.notEqual(fx.db.generation, gen, `a new generation:\n${log.lines.join("\n")}`);
});

Deno.test("Db trims a torn tail of the shadow WAL on open and keeps its generation", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('a')");
  await fx.sync();
  const pos = fx.db.pos()!;
  await fx.stop();
  // A crash in the middle of an append: half a frame of junk after the last commit.
  const shadow = fx.db.shadowWalPath(pos.generation, pos.index);
  using f = await Deno.open(shadow, { append: true });
  await f.write(crypto.getRandomValues(new Uint8Array(2000)));
  await fx.reopen();
  assert.equal(fx.db.pos()!.offset, pos.offset);
  assert.equal((await Deno.stat(shadow)).size, pos.offset);
  await w.exec("INSERT INTO t (v) VALUES ('b')");
  await fx.sync();
  assert.equal(fx.db.generation, pos.generation);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db.open() rejects a file that is not a SQLite database and writes nothing", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/notes.db`;
  await Deno.writeTextFile(path, "hello, I am not a database\n".repeat(10));
  const { Db } = await import("../src/db.ts");
  const db = new Db(path, { monitorIntervalMs: 0 });
  await assert.rejects(
    db.open(),
    (err: Error) => err instanceof SyntaxError && err.message.includes(path),
  );
  await db.close();
  assert.deepEqual((await Array.fromAsync(Deno.readDir(dir.path))).map((e) => e.name), [
    "notes.db",
  ]);
});

Deno.test("Db keeps its generation through its own TRUNCATE checkpoint and shrinks the WAL", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, {
    truncatePageCount: 60,
    minCheckpointPageCount: 1000,
  });
  await using w = new Writer(fx.path);
  await fx.sync();
  const gen = fx.db.generation;
  await w.exec(
    blobs(80, 3000),
  );
  const big = (await Deno.stat(`${fx.path}-wal`)).size;
  await fx.sync(); // copies, then truncates
  await fx.sync(); // follows the next WAL life
  assert.equal(fx.db.generation, gen);
  assert.equal(fx.db.pos()!.index, 1);
  const small = (await Deno.stat(`${fx.path}-wal`)).size;
  assert.ok(small < big / 10, `WAL shrank from ${big} to ${small} bytes`);
  await w.exec("INSERT INTO t (v) VALUES ('after truncate')");
  await fx.sync();
  assert.equal(fx.db.generation, gen);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db follows a WAL restarted by a write larger than the life it checkpointed", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path, { minCheckpointPageCount: 10 });
  await using w = new Writer(fx.path);
  await w.exec(
    blobs(12, 2000),
  );
  await fx.sync(); // copies and checkpoints the whole life
  const gen = fx.db.generation;
  // One transaction restarts the WAL and writes far past where the old life ended,
  // overwriting every frame we had copied, before we sync again.
  await w.exec(
    blobs(60, 3000),
  );
  await fx.sync();
  assert.equal(fx.db.generation, gen, "no new generation: the old life was complete");
  assert.equal(fx.db.pos()!.index, 1);
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db's forced checkpoint keeps the WAL bounded while a writer commits back to back", async () => {
  // The lock-free PASSIVE checkpoint backfills behind the writer but cannot restart the WAL
  // while it keeps committing; at max-checkpoint-page-count the forced checkpoint takes the
  // write lock for the tail, so the writer's next commit restarts the WAL.
  await using dir = await tempDir();
  const MIN = 100, MAX = 400;
  await using fx = await openTestDb(dir.path, {
    monitorIntervalMs: 1000,
    minCheckpointPageCount: MIN,
    maxCheckpointPageCount: MAX,
    checkpointIntervalMs: 0,
  });
  const gen = fx.db.generation;
  const pageSize = fx.db.pageSize;
  await using w = new Writer(fx.path);
  await w.exec("PRAGMA busy_timeout = 10000");
  // A life ends past MAX by the commits made while our sync reacts and the write lock is
  // awaited (here ~1.1-2.1 x MAX in all; 11 and 17 x MAX with a CPU hog beside the whole
  // suite on 2 cores); a commit is one frame, and the file never shrinks (no TRUNCATE). The
  // bound leaves room for a starved event loop, and the writer goes on until three times
  // more went through the WAL: without forced checkpoints it would end that large.
  const bound = calcWalSize(pageSize, 32 * MAX);
  const CHUNK = 500;
  let commits = 0, maxWal = 0;
  const restarts = () => fx.db.metrics.checkpointCount.RESTART ?? 0;
  // Commit back to back until several forced checkpoints ran and the WAL restarted as
  // often, and far more frames went through the WAL than the bound.
  while (restarts() < 3 || fx.db.pos()!.index < 3 || commits < 3 * (bound / pageSize)) {
    assert.ok(commits < 200 * MAX, `forced checkpoints ran (${JSON.stringify(fx.db.metrics)})`);
    await w.exec(
      Array.from({ length: CHUNK }, (_, i) => `INSERT INTO t (v) VALUES ('c-${commits + i}');`)
        .join("\n"),
    );
    commits += CHUNK;
    maxWal = Math.max(maxWal, (await Deno.stat(`${fx.path}-wal`)).size);
  }
  assert.ok(maxWal <= bound, `the WAL stayed below ${bound} bytes (max ${maxWal})`);
  assert.equal(fx.db.generation, gen, "no new generation");
  const [rows] = await w.exec("SELECT count(*) FROM t WHERE v LIKE 'c-%'");
  assert.equal(Number(rows), commits);
  await fx.sync();
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});

Deno.test("Db polls an idle WAL with a stat only, yet runs a checkpoint that falls due", async () => {
  await using dir = await tempDir();
  const POLL_MS = 50, INTERVAL_MS = 1500;
  await using fx = await openTestDb(dir.path, {
    monitorIntervalMs: POLL_MS,
    checkpointIntervalMs: INTERVAL_MS,
  });
  const before = fx.db.pos()!.offset;
  await sqliteAsync(fx.path, "INSERT INTO t (v) VALUES ('one');");
  await waitFor(() => fx.db.pos()!.offset > before, 15_000, "the commit to be copied");
  const syncs = fx.db.metrics.syncCount, t0 = performance.now();
  // The checkpoint-interval checkpoint can only be noticed by a poll of the unchanged WAL,
  // which happens every 50 ms until then (~30 polls): polls that synced would show here.
  await waitFor(
    () => (fx.db.metrics.checkpointCount.PASSIVE ?? 0) > 0,
    10_000,
    "the checkpoint-interval checkpoint",
  );
  const polls = Math.floor((performance.now() - t0) / POLL_MS);
  const extra = fx.db.metrics.syncCount - syncs;
  // The sync that ran the checkpoint, the one that ends the commit's burst, and perhaps one
  // or two woken by the commit's last writes on a slow machine (3 seen in a CI run); a sync
  // per poll would be ~30.
  assert.ok(extra <= 5, `${extra} syncs during about ${polls} polls of an unchanged WAL`);
  await fx.sync();
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
});
