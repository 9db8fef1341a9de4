import assert from "node:assert/strict";
import { createDb, sqliteAsync, tempDir, waitFor } from "./_helpers.ts";
import { WalWatcher, WatchSlots } from "../src/wal_watcher.ts";
import { Db } from "../src/db.ts";
import { silentLogger } from "../src/log.ts";

async function walFile(dir: string, name: string): Promise<string> {
  const path = `${dir}/${name}-wal`;
  await Deno.writeFile(path, new Uint8Array(32));
  return path;
}

Deno.test("WalWatcher.arm() calls onChange once for the first write, then frees its slot", async () => {
  await using dir = await tempDir();
  const path = await walFile(dir.path, "a");
  const slots = new WatchSlots({ max: 1 });
  let changes = 0;
  const w = new WalWatcher(path, () => changes++, silentLogger, { slots });
  const abort = new AbortController();
  try {
    w.arm(abort.signal);
    assert.ok(w.armed);
    assert.equal(slots.size, 1);
    await Deno.writeFile(path, new Uint8Array(8), { append: true });
    await waitFor(() => changes === 1, 5_000, "the watch to fire");
    await waitFor(() => !w.armed, 5_000, "the watch to end");
    assert.equal(slots.size, 0);
    await Deno.writeFile(path, new Uint8Array(8), { append: true });
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(changes, 1, "a one-shot watch fires once");
  } finally {
    abort.abort();
  }
});

Deno.test("WatchSlots.acquire() refuses a watch beyond the cap while the armed ones are young", async () => {
  await using dir = await tempDir();
  const slots = new WatchSlots({ max: 2, minAgeMs: 60_000 });
  const abort = new AbortController();
  try {
    const ws = await Promise.all(
      ["a", "b", "c"].map(async (n) =>
        new WalWatcher(await walFile(dir.path, n), () => {}, silentLogger, { slots })
      ),
    );
    for (const w of ws) w.arm(abort.signal);
    assert.deepEqual(ws.map((w) => w.armed), [true, true, false]);
    assert.equal(slots.size, 2);
  } finally {
    abort.abort();
  }
  assert.equal(slots.size, 0, "aborting ends every watch and frees its slot");
});

Deno.test("WatchSlots.acquire() ends the watch armed longest ago once it is old enough", async () => {
  await using dir = await tempDir();
  const slots = new WatchSlots({ max: 2, minAgeMs: 0 });
  const abort = new AbortController();
  try {
    let changes = 0;
    const ws = await Promise.all(
      ["a", "b", "c"].map(async (n) =>
        new WalWatcher(await walFile(dir.path, n), () => changes++, silentLogger, { slots })
      ),
    );
    for (const w of ws) w.arm(abort.signal);
    assert.deepEqual(ws.map((w) => w.armed), [false, true, true]);
    assert.equal(slots.size, 2);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(changes, 0, "an ended watch does not report a change");
  } finally {
    abort.abort();
  }
});

Deno.test("Db without a watch notices a commit by its poll and only stats an idle WAL", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/app.db`;
  await createDb(path);
  const db = new Db(path, { watch: false, monitorIntervalMs: 50 });
  try {
    await db.open();
    const start = db.pos()!.offset;
    await sqliteAsync(path, "INSERT INTO t (v) VALUES ('polled')");
    await waitFor(() => db.pos()!.offset > start, 5_000, "the poll to copy the commit");
    // Once the WAL's mtime is a second old when seen, polls stop syncing.
    await new Promise((r) => setTimeout(r, 1_500));
    const syncs = db.metrics.syncCount;
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(db.metrics.syncCount, syncs, "an idle WAL is only stat()ed");
    // A later commit is still noticed, in the same clock tick or not.
    const before = db.pos()!.offset;
    await sqliteAsync(path, "INSERT INTO t (v) VALUES ('again')");
    await waitFor(() => db.pos()!.offset > before, 5_000, "the poll to copy the next commit");
  } finally {
    await db.close();
  }
});
