/**
 * `litestream verify` as users run it: `main.ts` in a subprocess against real databases
 * written by the `sqlite3` CLI, real replicas, and a real `replicate` process. Checks the
 * one result line, the exit code, and that verify wrote nothing (its temporary directory
 * goes under a `TMPDIR` inside the test directory, which must be empty afterwards).
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  blobs,
  cli,
  createDb,
  openTestDb,
  sqliteAsync,
  tempDir,
  type TestDb,
  Writer,
} from "./_helpers.ts";
import { lz4Compress, lz4Decompress } from "../src/lz4.ts";
import { formatPos } from "../src/pos.ts";

const dec = new TextDecoder();
const enc = new TextEncoder();

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `main.ts <args>` in `dir` with `TMPDIR=dir/tmp`. */
async function run(dir: string, ...args: string[]): Promise<Result> {
  await Deno.mkdir(`${dir}/tmp`, { recursive: true });
  const out = await cli(args, { cwd: dir, env: { TMPDIR: `${dir}/tmp`, NO_COLOR: "1" } })
    .output();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Asserts verify's temporary directory is gone. */
async function assertTmpEmpty(dir: string): Promise<void> {
  assert.deepEqual(await Array.fromAsync(Deno.readDir(`${dir}/tmp`)), [], "left files in TMPDIR");
}

/** Writes `dir/c.yml` naming the test database and its file replica. */
async function writeConfig(fx: TestDb): Promise<string> {
  await Deno.writeTextFile(
    `${fx.dir}/c.yml`,
    `dbs:\n  - path: ${fx.path}\n    replicas:\n      - url: file://${fx.replicaPath}\n`,
  );
  return `${fx.dir}/c.yml`;
}

/** Every file under `root` but SQLite's `-shm` (each reader writes its read mark there). */
async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(`${root}/${rel}`)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) await walk(path);
      else if (!e.name.endsWith("-shm")) {
        const digest = await crypto.subtle.digest(
          "SHA-256",
          await Deno.readFile(`${root}/${path}`),
        );
        out[path] = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0"))
          .join("");
      }
    }
  };
  await walk("");
  return out;
}

/**
 * A database with a replica holding a snapshot and a few WAL indexes, the replicator
 * stopped and the WAL kept (the writer closed first, as an application that stops before
 * its replicator). Its table `keep` holds 'precious' on a page only the snapshot has.
 */
async function replicated(dir: string): Promise<{ fx: TestDb; pos: string }> {
  await createDb(`${dir}/app.db`);
  await sqliteAsync(
    `${dir}/app.db`,
    "CREATE TABLE keep (x); INSERT INTO keep VALUES ('precious');",
  );
  const fx = await openTestDb(dir, { minCheckpointPageCount: 20 });
  {
    await using w = new Writer(fx.path);
    await fx.sync();
    for (let i = 0; fx.db.pos()!.index < 2; i++) {
      await w.exec(blobs(10));
      await fx.sync();
      assert.ok(i < 100, "checkpoints advanced the WAL index");
    }
    await w.exec("CREATE TABLE u (x); INSERT INTO u VALUES (1)");
    await fx.sync();
  }
  const pos = formatPos(fx.db.pos()!);
  await fx.stop();
  return { fx, pos };
}

Deno.test("verify DB_PATH prints ok and exits 0 when the replica equals the database at its position", async () => {
  await using tmp = await tempDir();
  const { fx, pos } = await replicated(tmp.path);
  await using _ = fx;
  const config = await writeConfig(fx);
  await Deno.mkdir(`${tmp.path}/tmp`);
  const before = await tree(tmp.path);
  const r = await run(tmp.path, "verify", "-config", config, "app.db");
  assert.equal(r.stderr, "");
  assert.equal(r.stdout, `ok: ${fx.path} matches ${fx.replicaPath} at ${pos}\n`);
  assert.equal(r.code, 0);
  await assertTmpEmpty(tmp.path);
  assert.deepEqual(await tree(tmp.path), before, "verify wrote or changed files");
});

Deno.test("verify REPLICA_URL without a local database checks integrity only and exits 0", async () => {
  await using tmp = await tempDir();
  const { fx, pos } = await replicated(tmp.path);
  await using _ = fx;
  const r = await run(tmp.path, "verify", `file://${fx.replicaPath}`);
  assert.equal(r.stderr, "");
  assert.equal(r.stdout, `ok: ${fx.replicaPath} restores at ${pos} and passes integrity_check\n`);
  assert.equal(r.code, 0);
  await assertTmpEmpty(tmp.path);
});

Deno.test("verify prints mismatch and exits 1 when the replica restores cleanly to other rows", async () => {
  await using tmp = await tempDir();
  const { fx, pos } = await replicated(tmp.path);
  await using _ = fx;
  // The snapshot holds 'precious' on a page no WAL frame rewrites: change it there, keeping
  // the LZ4 framing and the page valid, so only a comparison can tell.
  const gen = pos.split("/")[0];
  const path = `${fx.replicaPath}/generations/${gen}/snapshots/00000000.snapshot.lz4`;
  const raw = lz4Decompress(await Deno.readFile(path)).slice();
  const at = dec.decode(raw).indexOf("precious");
  assert.ok(at > 0, "the snapshot holds the row");
  raw.set(enc.encode("PRECIOUS"), at);
  await Deno.writeFile(path, lz4Compress(raw));
  const r = await run(tmp.path, "verify", "-config", await writeConfig(fx), fx.path);
  assert.equal(r.stderr, "");
  assert.match(
    r.stdout,
    new RegExp(`^mismatch: ${fx.path} differs from ${fx.replicaPath} at ${pos} \\(.*\\)\n$`),
  );
  assert.equal(r.code, 1);
  // The same replica on its own restores and passes integrity_check: only the live
  // comparison finds it.
  const alone = await run(tmp.path, "verify", `file://${fx.replicaPath}`);
  assert.match(alone.stdout, /^ok: /);
  assert.equal(alone.code, 0);
  await assertTmpEmpty(tmp.path);
});

Deno.test("verify compares a database without a WAL with the replica's latest position", async () => {
  await using tmp = await tempDir();
  const { fx, pos } = await replicated(tmp.path);
  await using _ = fx;
  const config = await writeConfig(fx);
  // The last connection to close checkpoints the WAL into the database file and deletes it.
  await sqliteAsync(fx.path, "SELECT count(*) FROM u;");
  await assert.rejects(Deno.stat(`${fx.path}-wal`), Deno.errors.NotFound);
  const note = "(the database has no WAL: compared at the replica's latest position)";
  const same = await run(tmp.path, "verify", "-config", config, "app.db");
  assert.equal(same.stdout, `ok: ${fx.path} matches ${fx.replicaPath} at ${pos} ${note}\n`);
  assert.equal(same.code, 0);
  await sqliteAsync(fx.path, "INSERT INTO u VALUES (3);");
  const changed = await run(tmp.path, "verify", "-config", config, "app.db");
  assert.ok(
    changed.stdout.startsWith(
      `mismatch: ${fx.path} differs from ${fx.replicaPath} at ${pos} ${note}`,
    ),
    changed.stdout,
  );
  assert.equal(changed.code, 1);
  await assert.rejects(Deno.stat(`${fx.path}-wal`), Deno.errors.NotFound, "verify created a WAL");
  await assertTmpEmpty(tmp.path);
});

Deno.test("verify exits 1 with one error line naming the object when the replica is damaged", async () => {
  await using tmp = await tempDir();
  const { fx, pos } = await replicated(tmp.path);
  await using _ = fx;
  const gen = pos.split("/")[0];
  const seg = `${fx.replicaPath}/generations/${gen}/wal/00000001_00000000.wal.lz4`;
  const bytes = await Deno.readFile(seg);
  await Deno.writeFile(seg, bytes.subarray(0, bytes.length >> 1));
  const r = await run(tmp.path, "verify", "-config", await writeConfig(fx), fx.path);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /^litestream: [^\n]+\n$/, "one line");
  assert.ok(r.stderr.includes(`${gen}/00000001_00000000.wal.lz4`), r.stderr);
  assert.ok(r.stderr.includes(fx.replicaPath), r.stderr);
  assert.equal(r.code, 1);
  const url = await run(tmp.path, "verify", `file://${fx.replicaPath}`);
  assert.equal(url.stdout, "");
  assert.match(url.stderr, /^litestream: [^\n]+00000001_00000000\.wal\.lz4 is corrupt[^\n]*\n$/);
  assert.equal(url.code, 1);
  await assertTmpEmpty(tmp.path);
});

Deno.test("verify prints behind and exits 1 when the database has commits no replicator shipped", async () => {
  await using tmp = await tempDir();
  const { fx, pos } = await replicated(tmp.path);
  await using _ = fx;
  // The replicator is stopped; the application keeps its connection open (so the WAL
  // stays) and commits once more.
  await using w = new Writer(fx.path);
  await w.exec("INSERT INTO u VALUES (2)");
  const r = await run(
    tmp.path,
    "verify",
    "-timeout",
    "0s",
    "-config",
    await writeConfig(fx),
    "app.db",
  );
  assert.equal(r.stderr, "");
  assert.match(
    r.stdout,
    new RegExp(
      `^behind: ${fx.replicaPath} holds ${fx.path} up to ${pos}, the database is at ${
        pos.replace(/:\d+$/, "")
      }:\\d+; waited 0s \\(is replicate running\\?\\)\n$`,
    ),
  );
  assert.equal(r.code, 1);
  await assertTmpEmpty(tmp.path);
});

Deno.test("verify matches the live database while replicate runs and a writer commits", async () => {
  await using tmp = await tempDir();
  const dir = tmp.path;
  await using w = new Writer(`${dir}/app.db`);
  await w.run(".timeout 5000");
  await w.exec("PRAGMA journal_mode = wal");
  await w.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v)");
  // Checkpoints every few pages: the WAL restarts often, so verify must find the live WAL
  // life among many indexes.
  await Deno.writeTextFile(
    `${dir}/c.yml`,
    `dbs:\n  - path: ${dir}/app.db\n    min-checkpoint-page-count: 5\n` +
      `    replicas:\n      - url: file://${dir}/replica\n`,
  );
  const daemon = cli(["replicate", "-config", "c.yml"], { cwd: dir, env: { NO_COLOR: "1" } })
    .spawn();
  let log = "";
  const drained = Promise.all([daemon.stdout, daemon.stderr].map(async (stream) => {
    for await (const s of stream.pipeThrough(new TextDecoderStream())) log += s;
  }));
  try {
    // Wait for the replicator's first snapshot (an event in its log), then commit.
    while (!log.includes("snapshot written")) {
      const exited = await Promise.race([daemon.status, new Promise((r) => setTimeout(r, 20))]);
      assert.ok(!exited, `replicate exited before its first snapshot:\n${log}`);
    }
    for (let i = 0; i < 20; i++) await w.exec(blobs(3));
    // verify waits (up to -timeout) for the replicator to ship what the database holds.
    const indexes: string[] = [];
    for (let round = 0; round < 3; round++) {
      const v = await run(dir, "verify", "-timeout", "30s", "-config", "c.yml", "app.db");
      assert.equal(v.stderr, "");
      assert.match(
        v.stdout,
        new RegExp(`^ok: ${dir}/app.db matches ${dir}/replica at [0-9a-f]{16}/[0-9a-f]{8}:\\d+\n$`),
      );
      assert.equal(v.code, 0);
      indexes.push(v.stdout.split("/").at(-1)!.split(":")[0]);
      await w.exec(blobs(3)); // and again after one more commit
    }
    assert.ok(indexes.some((i) => i !== "00000000"), `the WAL restarted: ${indexes}`);
    await assertTmpEmpty(dir);
    assert.equal(w.stderr, "", "the writer saw no error");
  } finally {
    daemon.kill("SIGTERM");
    const status = await daemon.status;
    await drained;
    assert.equal(status.code, 0, log);
  }
});

Deno.test("verify exits 2 on bad usage, and help verify explains what it compares", async () => {
  await using tmp = await tempDir();
  const none = await run(tmp.path, "verify");
  assert.equal(none.code, 2);
  assert.equal(none.stderr, "litestream: Database path or replica URL required\n");
  const help = await run(tmp.path, "help", "verify");
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^Usage: litestream verify /);
  assert.match(help.stdout, /-timeout DURATION/);
  assert.match(help.stdout, /only reads/);
  const list = await run(tmp.path, "help");
  assert.match(list.stdout, /^\s+verify\s/m);
});
