/**
 * One replicator per database: a second `Db` on the same file, in this process or another,
 * is refused at open with one line naming the database, and the first keeps replicating.
 */
import assert from "node:assert/strict";
import { Db } from "../src/db.ts";
import { ReplicatorLockedError } from "../src/internal/replicator_lock.ts";
import {
  cli,
  createDb,
  dump,
  openTestDb,
  restoredDump,
  tempDir,
  waitFor,
  Writer,
} from "./_helpers.ts";
import { Daemon } from "./_daemon.ts";

Deno.test("a second Db on the same database is refused and the first goes on", async () => {
  await using dir = await tempDir();
  await using fx = await openTestDb(dir.path);
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO t (v) VALUES ('before')");
  await fx.sync();
  const second = new Db(fx.path, { monitorIntervalMs: 0 });
  await assert.rejects(() => second.open(), (err: unknown) => {
    assert.ok(err instanceof ReplicatorLockedError, String(err));
    assert.match(err.message, new RegExp(`"${fx.path}"`));
    assert.match(err.message, /another replicator/);
    return true;
  });
  await second.close();
  await w.exec("INSERT INTO t (v) VALUES ('after')");
  await fx.sync();
  assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
  // Once the first closes, the database is free again.
  await fx.db.close();
  const third = new Db(fx.path, { monitorIntervalMs: 0 });
  await third.open();
  await third.close();
});

Deno.test("a second replicate on the same database exits 1 naming it; the first is unharmed", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`;
  await createDb(db);
  const first = Daemon.ours(["replicate", db, `file://${dir.path}/replica1`]);
  try {
    await waitFor(() => /initialized db/.test(first.log), 15_000, "the first replicator");
    const out = await cli(["replicate", db, `file://${dir.path}/replica2`]).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 1, stderr);
    const last = stderr.trimEnd().split("\n").at(-1)!;
    assert.match(last, /another replicator is running/);
    assert.ok(last.includes(db), last);
    await using w = new Writer(db);
    await w.exec("INSERT INTO t (v) VALUES ('still replicated')");
  } finally {
    await first.stopCleanly("SIGTERM");
  }
  const restored = `${dir.path}/r.db`;
  const r = await cli(["restore", "-o", restored, `file://${dir.path}/replica1`]).output();
  assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
  assert.equal(await dump(restored), await dump(db));
});

Deno.test("the lock dies with a killed replicator: the next one starts", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`;
  await createDb(db);
  const first = Daemon.ours(["replicate", db, `file://${dir.path}/replica`]);
  try {
    await waitFor(() => /initialized db/.test(first.log), 15_000, "the first replicator");
    assert.equal((await first.stop("SIGKILL")).signal, "SIGKILL");
  } finally {
    await first[Symbol.asyncDispose]();
  }
  const second = Daemon.ours(["replicate", db, `file://${dir.path}/replica`]);
  try {
    await waitFor(() => /initialized db/.test(second.log), 15_000, "the second replicator");
  } finally {
    await second.stopCleanly("SIGTERM");
  }
});
