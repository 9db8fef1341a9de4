/**
 * Our `replicate` daemon as a process under real load: a `sqlite3` process writes while it
 * runs, and it is killed, signalled and left idle.
 *
 * @module
 */
import assert from "node:assert/strict";
import { dump, integrity, sqliteAsync, tempDir, waitFor, Writer } from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  prepareWriter,
  replicaFiles,
  rowCount,
  settled,
  waitForReplica,
  walSegmentNames,
  writeConfig,
  writeLoad,
} from "./_daemon.ts";
import { restore } from "../src/restore.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { calcWalSize } from "../src/wal.ts";

/** Restores the replica with our library into `out`; returns the dump after an integrity check. */
async function restoredDump(replica: string, out: string): Promise<string> {
  await restore(new FileReplicaClient(replica), { outputPath: out });
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/**
 * Restores the replica into a new file under `prefix` (while the daemon may still write
 * it) and returns the `v` column of `t`, or "" if the replica cannot be restored yet.
 */
async function restoredRows(replica: string, prefix: string): Promise<string> {
  const out = `${prefix}-${crypto.randomUUID()}.db`;
  try {
    await restore(new FileReplicaClient(replica), { outputPath: out, skipIntegrityCheck: true });
  } catch {
    return "";
  }
  return await sqliteAsync(out, "SELECT v FROM t");
}

/** A database with an open writer and a config file; `replica` is the replica directory. */
async function setup(
  dir: string,
  keys: Parameters<typeof writeConfig>[3] = {},
): Promise<{ db: string; replica: string; config: string; w: Writer }> {
  const db = `${dir}/app.db`, replica = `${dir}/replica`;
  const w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir}/litestream.yml`, db, replica, keys);
  return { db, replica, config, w };
}

Deno.test("our replicate survives kill -9 mid-stream while the application keeps writing", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path, {
    db: { "min-checkpoint-page-count": 50 },
  });
  await using _w = w;
  const first = Daemon.ours(["replicate", "-config", config]);
  try {
    await waitForReplica(replica, 1, 15_000, first);
    const load = writeLoad(w, { txns: 60, pauseMs: 10, tag: "a" });
    await waitFor(async () => (await walSegmentNames(replica)).length >= 6, 10_000, "uploads");
    const killed = await first.stop("SIGKILL");
    assert.equal(killed.signal, "SIGKILL");
    await load;
  } finally {
    await first[Symbol.asyncDispose]();
  }
  // Written while no replicator runs.
  await writeLoad(w, { txns: 10, pauseMs: 0, tag: "b" });
  const second = Daemon.ours(["replicate", "-config", config]);
  try {
    await waitFor(() => /initialized db/.test(second.log), 15_000, "restart");
    await writeLoad(w, { txns: 30, pauseMs: 10, tag: "c" });
  } finally {
    await second.stopCleanly("SIGTERM");
  }
  assert.equal(await rowCount(w), 1 + 100 * 5 - 34);
  assert.equal(await restoredDump(replica, `${dir.path}/r.db`), await dump(db));
});

Deno.test("the WAL stays bounded while big transactions push far past the checkpoint thresholds", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path, {
    db: { "min-checkpoint-page-count": 100, "max-checkpoint-page-count": 1000 },
  });
  await using _w = w;
  // The application leaves checkpointing to the replicator, as Litestream recommends.
  await w.exec("PRAGMA wal_autocheckpoint = 0");
  const txns = 128, rowsPerTxn = 150;
  await using daemon = Daemon.ours(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, daemon);
  // The WAL file only grows within a life and never shrinks (no TRUNCATE here): its size
  // after each commit catches every peak.
  let maxWal = 0;
  for (let i = 0; i < txns; i++) {
    // Each row is one 3000-byte blob: one leaf page, so a transaction writes > 150 pages.
    await writeLoad(w, { txns: 1, rows: rowsPerTxn, blob: 3000, pauseMs: 10, tag: `big${i}` });
    maxWal = Math.max(maxWal, (await Deno.stat(`${db}-wal`)).size);
  }
  await daemon.stopCleanly("SIGTERM");
  const written = txns * rowsPerTxn * 4096;
  // Bounded, not growing with the load: max-checkpoint-page-count plus the transactions
  // committed while a forced checkpoint backfills without the lock. How many those are
  // depends on the disk (its fsyncs) and the machine's load: here ~2 to 20 of these
  // transactions, on a CI machine once ~14. Eight times max-checkpoint-page-count covers
  // that, and the load is more than twice larger still.
  const bound = calcWalSize(4096, 8 * 1000);
  assert.ok(written > 2 * bound, "the load is far larger than the bound");
  assert.ok(maxWal <= bound, `WAL grew to ${maxWal} bytes (bound ${bound})`);
  // deno-lint-ignore no-console
  console.log(`  WAL peak ${maxWal} bytes (bound ${bound})`);
  const segments = await walSegmentNames(replica);
  assert.ok(new Set(segments.map((s) => s.index)).size > 10, "the WAL restarted many times");
  assert.equal(
    new Set(segments.map((s) => s.generation)).size,
    1,
    `every restart was followed without a new generation; log:\n${daemon.log}`,
  );
  assert.equal(await restoredDump(replica, `${dir.path}/r.db`), await dump(db));
});

Deno.test("a commit reaches the file replica through the WAL watcher when the poll interval is an hour", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path, { db: { "monitor-interval": "1h" } });
  await using _w = w;
  await using daemon = Daemon.ours(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, daemon);
  await sqliteAsync(db, "INSERT INTO t (v) VALUES ('watched')");
  // Only the watch can bring it there before the poll, an hour away, or the final sync.
  await waitFor(
    async () => /watched/.test(await restoredRows(replica, `${dir.path}/probe`)),
    10_000,
    "the commit restorable from the replica while the daemon runs",
  );
  await daemon.stopCleanly("SIGTERM");
  const restored = await restoredDump(replica, `${dir.path}/r.db`);
  assert.match(restored, /'watched'/);
  assert.equal(restored, await dump(db));
});

Deno.test("the commits at the end of a burst reach the file replica when the poll interval is an hour", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path, { db: { "monitor-interval": "1h" } });
  await using _w = w;
  await using daemon = Daemon.ours(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, daemon);
  // Within a burst the monitor syncs every 20 ms without a watch; the burst's last commit,
  // and a lone one after it, need the watch armed again: the poll is an hour away.
  for (let round = 0; round < 3; round++) {
    await w.exec(
      Array.from({ length: 300 }, (_, i) => `INSERT INTO t (v) VALUES ('burst-${round}-${i}');`)
        .join("\n"),
    );
    await waitFor(
      async () =>
        new RegExp(`burst-${round}-299`).test(await restoredRows(replica, `${dir.path}/p${round}`)),
      10_000,
      `the last commit of burst ${round} restorable while the daemon runs`,
    );
    await sqliteAsync(db, `INSERT INTO t (v) VALUES ('alone-${round}')`);
    await waitFor(
      async () =>
        new RegExp(`alone-${round}`).test(await restoredRows(replica, `${dir.path}/q${round}`)),
      10_000,
      `the lone commit after burst ${round} restorable while the daemon runs`,
    );
  }
  await daemon.stopCleanly("SIGTERM");
  assert.equal(await restoredDump(replica, `${dir.path}/r.db`), await dump(db));
});

Deno.test("an idle database uploads nothing and its WAL is left untouched through its checkpoint-interval checkpoint", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path, {
    db: { "monitor-interval": "100ms", "checkpoint-interval": "1s" },
  });
  await using _w = w;
  await Deno.writeTextFile(config, "logging:\n  level: debug\n", { append: true });
  await using daemon = Daemon.ours(["replicate", "-config", config]);
  const checkpoints = () => daemon.log.match(/msg=checkpoint .*complete=true/g)?.length ?? 0;
  await waitForReplica(replica, 1, 15_000, daemon);
  // The checkpoint of the start-up state: from here on none is due until a commit.
  await waitFor(() => checkpoints() > 0, 10_000, "the first checkpoint-interval checkpoint");
  const done = checkpoints();
  // Several pages: a checkpoint-interval checkpoint skips a WAL life of one frame.
  await w.exec("INSERT INTO t (v, b) VALUES ('last', randomblob(20000))");
  const wal = await Deno.stat(`${db}-wal`);
  await waitFor(
    async () => /last/.test(await restoredRows(replica, `${dir.path}/probe`)),
    10_000,
    "the last commit on the replica",
  );
  const files = await replicaFiles(replica);
  // Idle from here: polls of an unchanged WAL (every 100 ms) until the commit's checkpoint
  // falls due a second later.
  await waitFor(() => checkpoints() > done, 10_000, "the checkpoint of the last commit");
  assert.ok(daemon.running);
  await daemon.stopCleanly("SIGTERM"); // its final sync has nothing to upload either
  assert.deepEqual(await replicaFiles(replica), files, "no file appeared or changed");
  const after = await Deno.stat(`${db}-wal`);
  assert.equal(after.size, wal.size);
  assert.equal(after.mtime?.getTime(), wal.mtime?.getTime());
  assert.equal(await restoredDump(replica, `${dir.path}/r.db`), await dump(db));
});

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.test(`${signal} makes our replicate exit 0 after a final sync of the last commit`, async () => {
    await using dir = await tempDir();
    // An hour between uploads: the last commit can only reach the replica in the final sync.
    const { db, replica, config, w } = await setup(dir.path, {
      replica: { "sync-interval": "1h" },
    });
    await using _w = w;
    const daemon = Daemon.ours(["replicate", "-config", config]);
    try {
      await waitForReplica(replica, 1, 15_000, daemon);
      await settled(replica);
      await w.exec(`INSERT INTO t (v) VALUES ('last before ${signal}')`);
    } finally {
      await daemon.stopCleanly(signal);
    }
    const restored = await restoredDump(replica, `${dir.path}/r.db`);
    assert.match(restored, new RegExp(`'last before ${signal}'`));
    assert.equal(restored, await dump(db));
  });
}

Deno.test("SIGTERM while our replicate is still starting up exits 0 after a final sync", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path);
  await using _w = w;
  // A large WAL makes the first sync (copying it into the shadow WAL) take a while.
  await w.exec("PRAGMA wal_autocheckpoint = 0");
  await writeLoad(w, { txns: 4, rows: 1000, blob: 3000, pauseMs: 0, tag: "big" });
  const daemon = Daemon.ours(["replicate", "-config", config]);
  try {
    await waitFor(() => /initialized db/.test(daemon.log), 15_000, "startup");
  } finally {
    await daemon.stopCleanly("SIGTERM");
  }
  assert.equal(await restoredDump(replica, `${dir.path}/r.db`), await dump(db));
});

Deno.test("two application processes restarting the WAL in turn keep one generation", async () => {
  await using dir = await tempDir();
  const { db, replica, config, w } = await setup(dir.path, {
    db: { "min-checkpoint-page-count": 50 },
  });
  await using _w = w;
  // SQLite writes the restarting connection's own checkpoint counter into the WAL header,
  // so restarts by two connections do not count up by one.
  await using w2 = new Writer(db);
  await prepareWriter(w2);
  await using daemon = Daemon.ours(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, daemon);
  const lives = async () =>
    new Set((await walSegmentNames(replica)).map((s) => `${s.generation}/${s.index}`)).size;
  // Alternate until the replica shows that the WAL restarted several times.
  for (let i = 0; i < 16 || await lives() < 4; i++) {
    assert.ok(i < 64, `the WAL restarted ${await lives()} times in ${i} loads; ${daemon.log}`);
    await writeLoad(i % 2 ? w2 : w, { txns: 4, pauseMs: 10, tag: `w${i % 2}-${i}` });
  }
  await daemon.stopCleanly("SIGTERM");
  const segments = await walSegmentNames(replica);
  assert.equal(
    new Set(segments.map((s) => s.generation)).size,
    1,
    `one generation; log:\n${daemon.log}`,
  );
  assert.equal(await restoredDump(replica, `${dir.path}/r.db`), await dump(db));
});
