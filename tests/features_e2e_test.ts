/**
 * Every feature end to end through the real command line (`main.ts replicate -config …`,
 * `main.ts restore …`) with short intervals: `snapshot-interval`, `retention` with
 * `retention-check-interval`, `validation-interval` with a replica damaged on purpose while
 * the daemon runs, several databases each with a file and an S3 replica, `restore` choosing
 * between replicas, `-timestamp` across generations (checked against v0.3.13 both ways),
 * restore to the config's path, `exec:`, page sizes 1024 and 65536, and the metrics server.
 *
 * @module
 */
import assert from "node:assert/strict";
import { dump, integrity, sqliteAsync, tempDir, waitFor, Writer } from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  ok,
  prepareWriter,
  replicaFiles,
  runOracle,
  runOurs,
  snapshotCount,
  waitForReplica,
  walSegmentNames,
  withLogs,
  writeConfig,
  writeLoad,
} from "./_daemon.ts";
import {
  closedPort,
  isCi,
  s3ServerUnavailable,
  type S3TestServer,
  startS3Server,
} from "./_s3_servers.ts";
import { restore } from "../src/restore.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { lz4Compress, lz4Decompress } from "../src/lz4.ts";

// ---------------------------------------------------------------------------------------
// Helpers

type Keys = Record<string, string | number>;

/** One database of {@linkcode writeDbsConfig}: its path, db keys and replicas' keys. */
interface DbSpec {
  path: string;
  keys?: Keys;
  replicas: Keys[];
}

/**
 * Writes a config with any number of databases and replicas ({@linkcode writeConfig} writes
 * one database with one file replica); strings are written as YAML double-quoted scalars.
 */
async function writeDbsConfig(path: string, dbs: DbSpec[], top: Keys = {}): Promise<string> {
  const q = (v: string | number) => typeof v === "number" ? String(v) : JSON.stringify(v);
  const lines = Object.entries(top).map(([k, v]) => `${k}: ${q(v)}`);
  lines.push("dbs:");
  for (const db of dbs) {
    lines.push(`  - path: ${q(db.path)}`);
    for (const [k, v] of Object.entries(db.keys ?? {})) lines.push(`    ${k}: ${q(v)}`);
    lines.push("    replicas:");
    for (const r of db.replicas) {
      Object.entries(r).forEach(([k, v], i) =>
        lines.push(`${i === 0 ? "      - " : "        "}${k}: ${q(v)}`)
      );
    }
  }
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  return path;
}

/** The keys of an S3 replica on `server` under `path`, named `name`. */
function s3Replica(server: S3TestServer, path: string, name = "s3"): Keys {
  return {
    type: "s3",
    name,
    bucket: server.bucket,
    path,
    endpoint: server.endpoint,
    region: "us-east-1",
    "access-key-id": server.accessKeyId,
    "secret-access-key": server.secretAccessKey,
    "sync-interval": "200ms",
  };
}

/** The `v` column of `t`, in row order. */
async function values(db: string): Promise<string[]> {
  const out = await sqliteAsync(db, "SELECT v FROM t ORDER BY id;");
  return out.split("\n").filter((l) => l !== "");
}

/**
 * Restores with our CLI (`restore -o NEW_FILE ...args`); returns the new file after checking
 * its integrity.
 */
async function oursRestore(dir: string, args: string[]): Promise<string> {
  const out = `${dir}/ours-${crypto.randomUUID()}.db`;
  ok(await runOurs(["restore", "-o", out, ...args]), `our restore ${args.join(" ")}`);
  assert.equal(await integrity(out), "ok");
  return out;
}

/** As {@linkcode oursRestore}, with the real Litestream v0.3.13. */
async function oracleRestore(dir: string, args: string[]): Promise<string> {
  const out = `${dir}/oracle-${crypto.randomUUID()}.db`;
  ok(await runOracle(["restore", "-o", out, ...args]), `v0.3.13 restore ${args.join(" ")}`);
  assert.equal(await integrity(out), "ok");
  return out;
}

/**
 * The `v` column the file replica restores to right now (a library restore used as a
 * probe while a daemon writes it), or `[]` if it cannot be restored yet.
 */
async function replicaValues(replica: string, dir: string): Promise<string[]> {
  const out = `${dir}/probe-${crypto.randomUUID()}.db`;
  try {
    await restore(new FileReplicaClient(replica), { outputPath: out, skipIntegrityCheck: true });
    return await values(out);
  } catch {
    return [];
  } finally {
    await Deno.remove(out).catch(() => {});
  }
}

/** Generations holding files in the replica directory. */
async function generationsOf(replica: string): Promise<string[]> {
  const gens = new Set<string>();
  for (const f of await replicaFiles(replica)) {
    const m = /^generations\/([0-9a-f]{16})\//.exec(f.path);
    if (m) gens.add(m[1]);
  }
  return [...gens].sort();
}

/** Starts our daemon on `config`. */
function replicate(config: string): Daemon {
  return Daemon.ours(["replicate", "-config", config]);
}

/** Skips a test that needs moto when it cannot run here, except under CI. */
const motoMissing = isCi() ? undefined : await s3ServerUnavailable("moto");

// ---------------------------------------------------------------------------------------
// Timers: snapshot-interval, retention, validation-interval

Deno.test("snapshot-interval: new snapshot files appear while the database changes", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  // A snapshot is named after its WAL index: low thresholds make the index move on.
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, {
    db: { "min-checkpoint-page-count": 10 },
    replica: { "snapshot-interval": "300ms" },
  });
  const daemon = replicate(config);
  try {
    await withLogs([daemon], async () => {
      await waitForReplica(replica, 1, 15_000, daemon);
      await waitFor(
        async () => {
          await writeLoad(w, { txns: 1, pauseMs: 0 });
          return await snapshotCount(replica) >= 4;
        },
        30_000,
        "4 snapshots",
      );
    });
  } finally {
    await daemon.stopCleanly();
  }
  const listed = ok(await runOurs(["snapshots", "-config", config, db]), "snapshots");
  assert.ok(listed.trim().split("\n").length - 1 >= 4, `snapshots listed:\n${listed}`);
  assert.equal(await dump(await oursRestore(dir.path, ["-config", config, db])), await dump(db));
});

Deno.test("retention with retention-check-interval deletes old generations, snapshots and WAL", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, {
    db: { "min-checkpoint-page-count": 10 },
    replica: { retention: "1s", "retention-check-interval": "250ms" },
  });
  // The first generation: a few WAL indexes.
  const first = replicate(config);
  try {
    await withLogs([first], async () => {
      await waitForReplica(replica, 1, 15_000, first);
      await waitFor(
        async () => {
          await writeLoad(w, { txns: 1, pauseMs: 0, tag: "g1" });
          return new Set((await walSegmentNames(replica)).map((s) => s.index)).size >= 3;
        },
        15_000,
        "3 WAL indexes",
      );
    });
  } finally {
    await first.stopCleanly();
  }
  const [gen1] = await generationsOf(replica);
  // A lost shadow WAL: the next run starts a second generation.
  await Deno.remove(`${dir.path}/.app.db-litestream`, { recursive: true });
  const second = replicate(config);
  try {
    await withLogs([second], async () => {
      await waitFor(
        async () => (await generationsOf(replica)).some((g) => g !== gen1),
        15_000,
        "the second generation",
      );
      const gen2 = (await generationsOf(replica)).find((g) => g !== gen1)!;
      const snapshots = async () =>
        (await replicaFiles(replica)).filter((f) =>
          f.path.startsWith(`generations/${gen2}/snapshots/`)
        ).map((f) => f.path);
      await waitFor(async () => (await snapshots()).length > 0, 15_000, "its first snapshot");
      const [firstSnapshot] = await snapshots();
      // Writes go on until the window has passed over everything old.
      await waitFor(
        async () => {
          await writeLoad(w, { txns: 1, pauseMs: 0, tag: "g2" });
          const snaps = await snapshots();
          const minIndex = Math.min(
            ...snaps.map((p) => parseInt(p.split("/").pop()!.slice(0, 8), 16)),
          );
          const wal = (await walSegmentNames(replica)).filter((s) => s.generation === gen2);
          return !(await generationsOf(replica)).includes(gen1) && snaps.length > 0 &&
            !snaps.includes(firstSnapshot) && wal.length > 0 &&
            wal.every((s) => s.index >= minIndex);
        },
        30_000,
        "the old generation, first snapshot and its WAL deleted",
      );
      // Each is logged just after its files went.
      const logged = new RegExp(`msg="generation deleted".* generation=${gen1}`);
      await waitFor(() => logged.test(second.log), 15_000, "the deletion logged");
      await waitFor(() => /msg="wal segments deleted"/.test(second.log), 15_000, "logged");
    });
  } finally {
    await second.stopCleanly();
  }
  assert.equal(await dump(await oursRestore(dir.path, ["-config", config, db])), await dump(db));
});

Deno.test("validation-interval: validations are counted, and a replica damaged while the daemon runs is logged and counted as an error", async (t) => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  // A table nothing writes after the first snapshot: its page is only in the snapshot. The
  // sqlite3 process checkpoints on exit, so the page is in the database file it copies.
  await sqliteAsync(
    db,
    "PRAGMA journal_mode=wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB);" +
      " CREATE TABLE frozen (v TEXT); INSERT INTO frozen VALUES (replace(hex(zeroblob(400)), '00', 'QZ'));" +
      " INSERT INTO t (v) VALUES ('first');",
  );
  await using w = new Writer(db);
  await prepareWriter(w);
  const port = closedPort();
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, {
    replica: { "validation-interval": "300ms" },
  });
  await Deno.writeTextFile(config, `addr: "127.0.0.1:${port}"\n`, { append: true });
  const metricsUrl = `http://127.0.0.1:${port}/metrics`;
  const validations = async (status: "ok" | "error"): Promise<number> => {
    const text = await (await fetch(metricsUrl)).text();
    const m = new RegExp(
      `^litestream_replica_validation_total\\{[^}]*name="file"[^}]*status="${status}"[^}]*\\} (\\d+)$`,
      "m",
    ).exec(text);
    assert.ok(m, `no validation_total{status="${status}"} in:\n${text}`);
    return Number(m[1]);
  };
  /** Commits a row (validation is skipped while nothing changed), then waits for `status`. */
  const commitAndWaitFor = async (status: "ok" | "error", tag: string) => {
    const before = await validations(status);
    await w.exec(`INSERT INTO t (v) VALUES ('${tag}')`);
    await waitFor(async () => await validations(status) > before, 15_000, `${status} > ${before}`);
  };
  const snapshotPath = async () => {
    const snaps = (await replicaFiles(replica)).filter((f) => f.path.endsWith(".snapshot.lz4"));
    assert.equal(snaps.length, 1);
    return `${replica}/${snaps[0].path}`;
  };
  /**
   * Waits for a line of the daemon's log: the counter a step waits for is updated before the
   * line reaches us through the daemon's stderr.
   */
  const waitForLog = (d: { log: string }, line: RegExp) =>
    waitFor(() => line.test(d.log), 15_000, `a log line matching ${line}`);
  /** Replaces a replica file the way a store would: the new content appears at once. */
  const replaceFile = async (path: string, data: Uint8Array) => {
    const tmp = `${dir.path}/replacement`;
    await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  };

  const daemon = replicate(config);
  try {
    await withLogs([daemon], async () => {
      await waitForReplica(replica, 1, 15_000, daemon);
      await waitFor(() => /msg="serving metrics"/.test(daemon.log), 15_000, "metrics server");

      await t.step(
        "GET /metrics answers 200 with Prometheus text, any other path 404",
        async () => {
          const res = await fetch(metricsUrl);
          assert.equal(res.status, 200);
          assert.match(res.headers.get("content-type") ?? "", /^text\/plain/);
          assert.match(await res.text(), /^# TYPE litestream_replica_validation_total counter$/m);
          for (const path of ["/", "/other", "/metrics/x", "/debug/pprof"]) {
            const other = await fetch(`http://127.0.0.1:${port}${path}`);
            await other.body?.cancel();
            assert.equal(other.status, 404, path);
          }
        },
      );

      await t.step("an intact replica validates ok", async () => {
        await commitAndWaitFor("ok", "v1");
        await waitForLog(daemon, /msg="validation ok".* replica=file/);
      });

      const snapshot = await snapshotPath();
      const original = await Deno.readFile(snapshot);
      await t.step(
        "a snapshot whose content differs is a mismatch, logged naming the replica",
        async () => {
          const bytes = lz4Decompress(original);
          const at = new TextDecoder().decode(bytes).indexOf("QZQZQZQZ");
          assert.ok(at > 0, "the frozen row is in the snapshot");
          bytes[at + 1] = "X".charCodeAt(0); // still a valid database: only a value changed
          await replaceFile(snapshot, lz4Compress(bytes));
          await commitAndWaitFor("error", "v2");
          await waitForLog(
            daemon,
            /level=ERROR msg="validation failed: replica differs from database".* replica=file\b/,
          );
        },
      );

      await t.step("once repaired, it validates ok again", async () => {
        await replaceFile(snapshot, original);
        await commitAndWaitFor("ok", "v3");
      });

      await t.step(
        "a WAL segment that cannot be read is an error, logged naming the replica",
        async () => {
          const [seg] = (await walSegmentNames(replica)).sort((a, b) =>
            a.index - b.index || a.offset - b.offset
          );
          const name = `${seg.index.toString(16).padStart(8, "0")}_${
            seg.offset.toString(16).padStart(8, "0")
          }.wal.lz4`;
          await replaceFile(
            `${replica}/generations/${seg.generation}/wal/${name}`,
            crypto.getRandomValues(new Uint8Array(100)),
          );
          await commitAndWaitFor("error", "v4");
          await waitForLog(
            daemon,
            /^(?=.* level=ERROR )(?=.* replica=file )(?=.*Cannot validate replica \\"file\\").*corrupt/m,
          );
        },
      );
    });
  } finally {
    await daemon.stopCleanly();
  }
});

// ---------------------------------------------------------------------------------------
// Several databases, choosing replicas, restoring to the config's path

Deno.test({
  name:
    "several databases each with a file and an S3 replica: all restorable, restore picks the latest replica or -replica, and restores to the config's path without -o",
  ignore: motoMissing !== undefined,
  async fn(t) {
    await using server = await startS3Server("moto");
    await using dir = await tempDir();
    const a = `${dir.path}/a.db`, b = `${dir.path}/b.db`;
    const file = (i: number): Keys => ({ url: `file://${dir.path}/replica-${i}` });
    // Listed in both orders: the replica with the latest data is second in a.db and first
    // in b.db, so neither "the first listed" nor "the last listed" passes.
    const specs: DbSpec[] = [
      {
        path: a,
        keys: { "min-checkpoint-page-count": 20 },
        replicas: [s3Replica(server, "a"), file(0)],
      },
      {
        path: b,
        keys: { "min-checkpoint-page-count": 20 },
        replicas: [file(1), s3Replica(server, "b")],
      },
    ];
    const config = await writeDbsConfig(`${dir.path}/litestream.yml`, specs);
    await using wa = new Writer(a);
    const wb = new Writer(b);
    let stoppedAt = 0;
    try {
      for (const w of [wa, wb]) {
        await prepareWriter(w);
        await createLoadDb(w);
      }
      const daemon = replicate(config);
      try {
        await withLogs([daemon], async () => {
          await waitForReplica(`${dir.path}/replica-0`, 1, 15_000, daemon);
          await waitForReplica(`${dir.path}/replica-1`, 1, 15_000, daemon);
          await Promise.all([
            writeLoad(wa, { txns: 30, pauseMs: 5, tag: "a" }),
            writeLoad(wb, { txns: 30, pauseMs: 5, tag: "b" }),
          ]);
        });
      } finally {
        await daemon.stopCleanly();
        stoppedAt = Date.now() + 1; // after every replica file's time
      }

      await t.step("every replica of every database restores it", async () => {
        for (const db of [a, b]) {
          const source = await dump(db);
          for (const name of ["s3", "file"]) {
            const out = await oursRestore(dir.path, ["-config", config, "-replica", name, db]);
            assert.equal(await dump(out), source, `${db} from ${name}`);
          }
        }
      });

      await t.step("without -replica, restore takes the replica with the latest data", async () => {
        const before = [await dump(a), await dump(b)];
        // Only a's file replica and b's S3 replica go on. S3 keeps times to the second:
        // b's new objects must fall in a later second than its file replica's last file.
        const later = await writeDbsConfig(`${dir.path}/later.yml`, [
          { path: a, replicas: [specs[0].replicas[1]] },
          { path: b, replicas: [specs[1].replicas[1]] },
        ]);
        await waitFor(
          () => Date.now() >= Math.ceil(stoppedAt / 1000) * 1000,
          2_000,
          "the next second",
        );
        const daemon = replicate(later);
        try {
          await withLogs([daemon], async () => {
            await waitFor(() => /msg="replicating to".* name=s3/.test(daemon.log), 15_000, "start");
            for (const w of [wa, wb]) await w.exec("INSERT INTO t (v) VALUES ('later')");
          });
        } finally {
          await daemon.stopCleanly();
        }
        for (const [i, db] of [a, b].entries()) {
          const latest = await oursRestore(dir.path, ["-config", config, db]);
          assert.ok((await values(latest)).includes("later"), `${db}: the latest data`);
          assert.equal(await dump(latest), await dump(db));
          const [newer, older] = i === 0 ? ["file", "s3"] : ["s3", "file"];
          const fromNewer = await oursRestore(dir.path, ["-config", config, "-replica", newer, db]);
          assert.equal(await dump(fromNewer), await dump(db), `${db} -replica ${newer}`);
          const fromOlder = await oursRestore(dir.path, ["-config", config, "-replica", older, db]);
          assert.equal(await dump(fromOlder), before[i], `${db} -replica ${older}`);
        }
      });
    } finally {
      await wb.close();
    }

    await t.step("restore DB_PATH without -o restores to the config's path", async () => {
      const source = await dump(b);
      for (const suffix of ["", "-wal", "-shm"]) await Deno.remove(`${b}${suffix}`).catch(() => {});
      ok(await runOurs(["restore", "-config", config, b]), "restore to the config's path");
      assert.equal(await integrity(b), "ok");
      assert.equal(await dump(b), source);
      // It never overwrites: the same command now refuses, and -if-db-not-exists skips.
      const again = await runOurs(["restore", "-config", config, b]);
      assert.notEqual(again.code, 0);
      assert.match(again.stderr, /already exists/);
      ok(await runOurs(["restore", "-if-db-not-exists", "-config", config, b]), "skip");
      assert.equal(await dump(b), source);
    });
  },
});

// ---------------------------------------------------------------------------------------
// Point in time

/** A replica with two generations and a time between two commits of each. */
interface TwoGenerations {
  replica: string;
  /** After row 'a', before 'b' (first generation); after 'c', before 'd' (second). */
  marks: [Date, Date];
}

/**
 * Replicates a database with `start` into a file replica: rows 'a' and 'b' in a first
 * generation, then (the shadow WAL lost while stopped) 'c' and 'd' in a second one.
 */
async function writeTwoGenerations(
  dir: string,
  start: (config: string) => Daemon | Promise<Daemon>,
  stop: (daemon: Daemon) => Promise<unknown>,
): Promise<TwoGenerations> {
  await Deno.mkdir(dir);
  const db = `${dir}/app.db`, replica = `${dir}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  // Keys both tools know, and short enough for v0.3.13 to upload within a second.
  const config = await writeConfig(`${dir}/litestream.yml`, db, replica, {
    db: { "monitor-interval": "100ms" },
    replica: { "sync-interval": "100ms" },
  });
  const marks: Date[] = [];
  for (const [row, next] of [["a", "b"], ["c", "d"]]) {
    const daemon = await start(config);
    try {
      await withLogs([daemon], async () => {
        for (const v of [row, next]) {
          await w.exec(`INSERT INTO t (v) VALUES ('${v}')`);
          await waitFor(
            async () => (await replicaValues(replica, dir)).includes(v),
            15_000,
            `'${v}' on the replica`,
          );
          if (v !== row) continue;
          // Every file holding `row` has an mtime ≤ mark (mtimes never run ahead of the
          // clock, and Date.now() drops the nanoseconds they carry); once a file written
          // now gets a later one (the kernel stamps files with a clock that may lag by a
          // tick), so does every file written after.
          const mark = Date.now() + 1;
          marks.push(new Date(mark));
          await waitFor(
            async () => {
              await Deno.writeTextFile(`${dir}/clock`, "");
              return (await Deno.stat(`${dir}/clock`)).mtime!.getTime() > mark;
            },
            1_000,
            "file times to pass the mark",
          );
        }
      });
    } finally {
      await stop(daemon);
    }
    await Deno.remove(`${dir}/.app.db-litestream`, { recursive: true });
  }
  assert.equal((await generationsOf(replica)).length, 2);
  return { replica, marks: [marks[0], marks[1]] };
}

Deno.test("restore -timestamp restores the state as of that time, in an older generation too, the same as v0.3.13 both ways", async () => {
  await using dir = await tempDir();
  const ours = await writeTwoGenerations(
    `${dir.path}/ours`,
    replicate,
    (d) => d.stopCleanly(),
  );
  const theirs = await writeTwoGenerations(
    `${dir.path}/oracle`,
    (config) => Daemon.oracle(["replicate", "-config", config]),
    (d) => d.stopOracle(),
  );
  for (const [who, g] of [["our", ours], ["v0.3.13's", theirs]] as const) {
    const url = `file://${g.replica}`;
    const cases: [string, string[]][] = [
      [g.marks[0].toISOString(), ["first", "a"]],
      [g.marks[1].toISOString(), ["first", "a", "b", "c"]],
    ];
    for (const [timestamp, want] of cases) {
      const mine = await oursRestore(dir.path, ["-timestamp", timestamp, url]);
      assert.deepEqual(await values(mine), want, `ours on ${who} replica at ${timestamp}`);
      const oracle = await oracleRestore(dir.path, ["-timestamp", timestamp, url]);
      assert.deepEqual(await values(oracle), want, `v0.3.13 on ${who} replica at ${timestamp}`);
      assert.equal(await dump(mine), await dump(oracle));
    }
    const latest = await oursRestore(dir.path, [url]);
    assert.deepEqual(await values(latest), ["first", "a", "b", "c", "d"]);
  }
});

// ---------------------------------------------------------------------------------------
// exec:, page sizes

Deno.test("exec: from the config runs the child, and replicate stops when it exits", async (t) => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  {
    await using w = new Writer(db);
    await createLoadDb(w);
  }
  /** Runs replicate with `exec` in the config until it exits by itself. */
  const runWithExec = async (exec: string) => {
    const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica);
    await Deno.writeTextFile(config, `exec: ${JSON.stringify(exec)}\n`, { append: true });
    const daemon = replicate(config);
    await withLogs([daemon], () => waitFor(() => !daemon.running, 30_000, "replicate to exit"));
    return await daemon.stop();
  };

  await t.step("a child that exits 0: final sync, then exit 0", async () => {
    const r = await runWithExec(
      `sqlite3 -cmd ".timeout 5000" ${db} "INSERT INTO t (v) VALUES ('from child')"`,
    );
    assert.equal(r.code, 0, r.log);
    assert.match(r.log, /msg="subprocess exited, litestream shutting down" code=0/);
    const restored = await oursRestore(dir.path, [`file://${replica}`]);
    assert.ok((await values(restored)).includes("from child"));
    assert.equal(await dump(restored), await dump(db));
  });

  await t.step("a child that fails: exit 1 with one line naming it", async () => {
    const r = await runWithExec(`sh -c "exit 3"`);
    assert.equal(r.code, 1, r.log);
    assert.match(r.log, /^litestream: -exec command "sh -c "exit 3"" exited with code 3$/m);
  });
});

Deno.test("databases with page sizes 1024 and 65536 replicate and restore equal, with both tools", async () => {
  await using dir = await tempDir();
  const sizes = [1024, 65536];
  const dbs = sizes.map((s) => `${dir.path}/p${s}.db`);
  const replicas = sizes.map((s) => `${dir.path}/replica-${s}`);
  for (const [i, size] of sizes.entries()) {
    await sqliteAsync(
      dbs[i],
      `PRAGMA page_size = ${size}; PRAGMA journal_mode = wal;` +
        " CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB); INSERT INTO t (v) VALUES ('first');",
    );
  }
  const config = await writeDbsConfig(
    `${dir.path}/litestream.yml`,
    dbs.map((path, i) => ({
      path,
      keys: { "min-checkpoint-page-count": 20 },
      replicas: [{ url: `file://${replicas[i]}` }],
    })),
  );
  const writers = dbs.map((db) => new Writer(db));
  try {
    const daemon = replicate(config);
    try {
      await withLogs([daemon], async () => {
        for (const r of replicas) await waitForReplica(r, 1, 15_000, daemon);
        await Promise.all(writers.map(async (w, i) => {
          await prepareWriter(w);
          // Small rows, and blobs spilling over several pages of either size.
          await writeLoad(w, { txns: 20, rows: 5, blob: 300, pauseMs: 5, tag: `s${i}` });
          await writeLoad(w, { txns: 10, rows: 2, blob: 150_000, pauseMs: 5, tag: `l${i}` });
          // Until a checkpoint restarted the WAL: the restore then crosses WAL indexes.
          await waitFor(
            async () => {
              await writeLoad(w, { txns: 1, rows: 2, blob: 150_000, pauseMs: 0, tag: `x${i}` });
              return new Set((await walSegmentNames(replicas[i])).map((s) => s.index)).size >= 2;
            },
            20_000,
            `page size ${sizes[i]}: a second WAL index`,
          );
        }));
      });
    } finally {
      await daemon.stopCleanly();
    }
  } finally {
    for (const w of writers) await w.close();
  }
  for (const [i, size] of sizes.entries()) {
    const source = await dump(dbs[i]);
    const mine = await oursRestore(dir.path, ["-config", config, dbs[i]]);
    const oracle = await oracleRestore(dir.path, [`file://${replicas[i]}`]);
    for (const out of [mine, oracle]) {
      assert.equal((await sqliteAsync(out, "PRAGMA page_size;")).trim(), String(size));
      assert.equal(await dump(out), source, `page size ${size}: ${out}`);
    }
  }
});
