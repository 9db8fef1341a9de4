/**
 * Interoperability with the real Litestream v0.3.13, both directions, file replicas, with a
 * real `sqlite3` process writing while the replicator runs.
 *
 * @module
 */
import assert from "node:assert/strict";
import { dump, integrity, tempDir, waitFor, Writer } from "./_helpers.ts";
import {
  createLoadDb,
  Daemon,
  hungOnPipe,
  ok,
  parseTable,
  prepareWriter,
  rowCount,
  runOracle,
  runOurs,
  settled,
  waitForReplica,
  walSegmentNames,
  withLogs,
  writeConfig,
  writeLoad,
} from "./_daemon.ts";
import { restore } from "../src/restore.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { hex8 } from "../src/pos.ts";

/** Fast settings for v0.3.13 (and us): checkpoints after 50 pages, syncs every 100 ms. */
const FAST = {
  db: { "monitor-interval": "100ms", "min-checkpoint-page-count": 50 },
  replica: { "sync-interval": "100ms" },
};

/** Restores with our library into `out` and returns the dump, after checking integrity. */
async function ourRestore(replica: string, out: string, index?: number): Promise<string> {
  await restore(new FileReplicaClient(replica), { outputPath: out, index });
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** Restores with our CLI into `out` and returns the dump, after checking integrity. */
async function ourCliRestore(replica: string, out: string): Promise<string> {
  ok(await runOurs(["restore", "-o", out, `file://${replica}`]), "our restore");
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** Restores with v0.3.13 into `out` and returns the dump, after checking integrity. */
async function oracleRestore(replica: string, out: string, index?: number): Promise<string> {
  const args = ["restore", "-o", out];
  if (index !== undefined) args.push("-index", hex8(index));
  ok(await runOracle([...args, `file://${replica}`]), "v0.3.13 restore");
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** Parses a Go duration as v0.3.13 prints a lag ("1.5s", "2m3s", "400ms"), in milliseconds. */
function goDurationMs(s: string): number {
  const unit: Record<string, number> = { h: 3600_000, m: 60_000, s: 1000, ms: 1, "µs": 1e-3 };
  let ms = 0;
  for (const m of s.matchAll(/(-?[\d.]+)(h|ms|m|s|µs)/g)) ms += Number(m[1]) * unit[m[2]];
  return ms;
}

/**
 * Runs `generations`, `snapshots` and `wal` of both tools on the replica URL and asserts the
 * same rows, column by column. The only difference allowed is `lag` of `generations`, which
 * both tools measure from their own start (`time.Now()` for a URL): within 2 s.
 */
async function assertSameListings(replica: string): Promise<void> {
  const url = `file://${replica}`;
  for (const cmd of ["generations", "snapshots", "wal"]) {
    const theirs = parseTable(ok(await runOracle([cmd, url]), `v0.3.13 ${cmd}`));
    const ours = parseTable(ok(await runOurs([cmd, url]), `our ${cmd}`));
    assert.deepEqual(ours.header, theirs.header, `${cmd} header`);
    assert.ok(theirs.rows.length > 0, `v0.3.13 ${cmd} lists something`);
    assert.equal(ours.rows.length, theirs.rows.length, `${cmd} row count`);
    for (let i = 0; i < theirs.rows.length; i++) {
      for (let c = 0; c < theirs.header.length; c++) {
        const col = theirs.header[c];
        const [a, b] = [ours.rows[i][c], theirs.rows[i][c]];
        if (cmd === "generations" && col === "lag") {
          assert.ok(
            Math.abs(goDurationMs(a) - goDurationMs(b)) <= 2000,
            `lag ${a} vs v0.3.13 ${b}`,
          );
        } else {
          assert.equal(a, b, `${cmd} row ${i} column ${col}`);
        }
      }
    }
  }
}

Deno.test("our restore and listings read what v0.3.13 replicated while a writer crossed its checkpoints", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, FAST);
  await using oracle = await Daemon.oracle(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, oracle);
  await writeLoad(w, { txns: 60, pauseMs: 15 });
  assert.equal(await rowCount(w), 1 + 60 * 5 - 20);
  // Let v0.3.13 ship everything before the signal (its shutdown sync is not under test).
  await settled(replica);
  await oracle.stopOracle("SIGTERM");

  await withLogs([oracle], async () => {
    const indexes = new Set((await walSegmentNames(replica)).map((s) => s.index));
    assert.ok(indexes.size >= 2, `v0.3.13 checkpointed: WAL indexes ${[...indexes]}`);
    const source = await dump(db);
    assert.equal(await ourRestore(replica, `${dir.path}/lib.db`), source);
    assert.equal(await ourCliRestore(replica, `${dir.path}/cli.db`), source);
    await assertSameListings(replica);
  });
});

Deno.test("v0.3.13 restores and lists what our replicate wrote while a writer crossed our checkpoints", async (t) => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, {
    db: { "min-checkpoint-page-count": 50 },
  });
  await using ours = Daemon.ours(["replicate", "-config", config]);
  await waitForReplica(replica, 1, 15_000, ours);
  await writeLoad(w, { txns: 60, pauseMs: 15 });
  assert.equal(await rowCount(w), 1 + 60 * 5 - 20);
  await ours.stopCleanly("SIGTERM");
  const source = await dump(db);
  const segments = await walSegmentNames(replica);
  const indexes = [...new Set(segments.map((s) => s.index))].sort((a, b) => a - b);
  assert.ok(indexes.length >= 3, `we checkpointed several times: WAL indexes ${indexes}`);
  assert.equal(new Set(segments.map((s) => s.generation)).size, 1, "one generation");

  await t.step("v0.3.13 restores the latest state", async () => {
    assert.equal(await oracleRestore(replica, `${dir.path}/theirs.db`), source);
  });

  await t.step(
    "v0.3.13 lists the same generations, snapshots and WAL segments as we do",
    async () => {
      await assertSameListings(replica);
      const listed = parseTable(ok(await runOracle(["wal", `file://${replica}`]), "v0.3.13 wal"))
        .rows.map(([, gen, index, offset]) => `${gen}/${index}/${offset}`);
      assert.deepEqual(
        listed.sort(),
        segments.map((s) => `${s.generation}/${s.index}/${s.offset}`).sort(),
        "v0.3.13 lists every segment file",
      );
    },
  );

  await t.step(
    "v0.3.13 -index restores the same database as our restore at that index",
    async () => {
      const picks = [
        ...new Set([0, 1, indexes.length >> 1, indexes.length - 2, indexes.length - 1]),
      ]
        .map((i) => indexes[i]);
      const dumps = new Set<string>();
      for (const index of picks) {
        const theirs = await oracleRestore(replica, `${dir.path}/theirs-${index}.db`, index);
        const mine = await ourRestore(replica, `${dir.path}/ours-${index}.db`, index);
        assert.equal(mine, theirs, `restores at index ${hex8(index)}`);
        dumps.add(mine);
      }
      assert.equal(dumps.size, picks.length, "each index is a different point in time");
      assert.equal(
        await ourRestore(replica, `${dir.path}/last.db`, indexes[indexes.length - 1]),
        source,
      );
    },
  );
});

Deno.test("our replicate continues the generation v0.3.13 left in the same meta directory and replica", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, FAST);
  const oracle = await Daemon.oracle(["replicate", "-config", config]);
  try {
    await waitForReplica(replica, 1, 15_000, oracle);
    await writeLoad(w, { txns: 30, pauseMs: 15, tag: "a" });
    await settled(replica);
  } finally {
    await oracle.stopOracle("SIGTERM");
  }
  const [gen] = new Set((await walSegmentNames(replica)).map((s) => s.generation));

  // The application stays connected and idle, so the WAL is exactly as v0.3.13 left it.
  const ours = Daemon.ours(["replicate", "-config", config]);
  try {
    await waitFor(() => /initialized db/.test(ours.log), 15_000, "our replicate to start");
    await writeLoad(w, { txns: 30, pauseMs: 15, tag: "b" });
  } finally {
    await ours.stopCleanly("SIGTERM");
  }
  await withLogs([oracle, ours], async () => {
    assert.doesNotMatch(ours.log, /new generation/, "we followed v0.3.13's shadow WAL");
    const segments = await walSegmentNames(replica);
    assert.deepEqual([...new Set(segments.map((s) => s.generation))], [gen]);
    const source = await dump(db);
    assert.equal(await ourRestore(replica, `${dir.path}/lib.db`), source);
    assert.equal(await oracleRestore(replica, `${dir.path}/theirs.db`), source);
  });
});

Deno.test("our replicate after v0.3.13 with writes in between keeps every replica restorable by both tools", async () => {
  await using dir = await tempDir();
  const db = `${dir.path}/app.db`, replica = `${dir.path}/replica`;
  await using w = new Writer(db);
  await prepareWriter(w);
  await createLoadDb(w);
  const config = await writeConfig(`${dir.path}/litestream.yml`, db, replica, FAST);
  const daemons: Daemon[] = [];
  const run = async (daemon: Daemon, tag: string) => {
    daemons.push(daemon);
    try {
      await waitFor(() => /initialized db/.test(daemon.log), 15_000, `${daemon.name} to start`);
      await writeLoad(w, { txns: 20, pauseMs: 15, tag });
      if (daemon.name !== "ours") await settled(replica);
    } finally {
      if (daemon.name === "ours") await daemon.stopCleanly("SIGTERM");
      else await daemon.stopOracle("SIGTERM");
    }
    // Nobody replicates now: the application restarts the WAL if it was fully checkpointed.
    await writeLoad(w, { txns: 3, pauseMs: 0, tag: `${tag}-unreplicated` });
  };
  await run(await Daemon.oracle(["replicate", "-config", config]), "a");
  await run(Daemon.ours(["replicate", "-config", config]), "b");
  await run(await Daemon.oracle(["replicate", "-config", config]), "c");
  // A last run of ours picks up the unreplicated writes, whatever generation it decides on.
  const last = Daemon.ours(["replicate", "-config", config]);
  daemons.push(last);
  await waitFor(() => /initialized db/.test(last.log), 15_000, "our replicate to start");
  await last.stopCleanly("SIGTERM");
  await withLogs(daemons, async () => {
    const source = await dump(db);
    assert.equal(await ourRestore(replica, `${dir.path}/lib.db`), source);
    assert.equal(await oracleRestore(replica, `${dir.path}/theirs.db`), source);
  });
});

Deno.test("hungOnPipe() tells v0.3.13's #524 shutdown hang from a clean shutdown", () => {
  // Tail of the log of a v0.3.13 that never exited after SIGTERM (CI, 2026-11-27).
  const line = (msg: string, pos: string) =>
    `time=2026-11-27T13:36:08.966Z level=INFO msg="${msg}" db=/tmp/x/app.db replica=s3 position=${pos}`;
  const before = [
    line("write wal segment", "8998cb8952f8487b/00000008:4152"),
    line("wal segment written", "8998cb8952f8487b/00000008:4152") + " elapsed=1.79ms sz=206000",
  ];
  const signal =
    'time=2026-11-27T13:36:08.966Z level=INFO msg="signal received, litestream shutting down"';
  const hung = [
    ...before,
    signal,
    line("write wal segment", "8998cb8952f8487b/00000009:0"),
    line("write wal segment", "8998cb8952f8487b/00000009:0"),
    line("wal segment written", "8998cb8952f8487b/00000009:0") + " elapsed=4.33ms sz=4152",
  ];
  assert.equal(hungOnPipe(hung.join("\n")), true);
  // One start, one finish: a clean shutdown, not the hang.
  assert.equal(hungOnPipe([...before, signal, ...hung.slice(4)].join("\n")), false);
  // Started twice, never finished: the final sync did not write it either, so not #524.
  assert.equal(hungOnPipe(hung.slice(0, 5).join("\n")), false);
  // The same lines before the signal are not a shutdown.
  assert.equal(hungOnPipe([...hung.slice(3), ...before].join("\n")), false);
  // The cut-off upload began before the signal (the sync loop's), the final sync's after it.
  const started = [...before, hung[3], signal, hung[4], hung[5]];
  assert.equal(hungOnPipe(started.join("\n")), true);
});
