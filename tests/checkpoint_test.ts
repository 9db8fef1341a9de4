/**
 * Our checkpoints against real application processes: writers without a busy timeout must
 * never see `database is locked` from our lock-free PASSIVE path, and writers and foreign
 * checkpoints of every mode racing our checkpoints must never lose a frame.
 *
 * @module
 */
import assert from "node:assert/strict";
import {
  blobs,
  dump,
  integrity,
  openTestDb,
  restoredDump,
  sqliteAsync,
  tempDir,
  Writer,
} from "./_helpers.ts";
import { Logger, memorySink } from "../src/log.ts";

/** `n` single-row INSERT statements, each its own transaction, tagged `tag-<first+i>`. */
function singleRowCommits(tag: string, first: number, n: number): string {
  return Array.from(
    { length: n },
    (_, i) => `INSERT INTO t (v) VALUES ('${tag}-${first + i}');`,
  ).join("\n");
}

const LOCKED_REGEXP = /database is locked/;

for (
  const variant of [
    { name: "its autocheckpoint off", autocheckpoint: 0 },
    { name: "its own autocheckpoint at 1000 pages (the default)", autocheckpoint: 1000 },
    { name: "its own autocheckpoint at 10 pages", autocheckpoint: 10 },
  ]
) {
  Deno.test(`a writer with no busy timeout never gets "database is locked" while our checkpoints run (${variant.name})`, async () => {
    await using dir = await tempDir();
    // PASSIVE only, driven by the monitor loop (WAL watch and poll), as in the daemon.
    await using fx = await openTestDb(dir.path, {
      monitorIntervalMs: 1000,
      minCheckpointPageCount: 20,
      maxCheckpointPageCount: 0,
      truncatePageCount: 0,
      checkpointIntervalMs: 0,
    });
    const gen = fx.db.generation, locks = fx.db.metrics.writeLockCount;
    // The sqlite3 CLI's busy timeout is 0 unless `.timeout` is given: any lock we take
    // while it commits makes its statement fail.
    await using w = new Writer(fx.path);
    await w.run(`PRAGMA wal_autocheckpoint = ${variant.autocheckpoint};`);
    const failIfLocked = (when: string) => {
      if (LOCKED_REGEXP.test(w.stderr)) {
        assert.fail(
          `the writer got "database is locked" ${when}; metrics ${
            JSON.stringify(fx.db.metrics)
          }; stderr:\n${w.stderr.split("\n").slice(0, 5).join("\n")}`,
        );
      }
    };
    // A chunk of 1000 commits lasts many of the monitor's 20 ms sync gaps.
    const ROUNDS = 8, CHUNK = 1000, MAX_PER_ROUND = 30_000;
    const passive = () => fx.db.metrics.checkpointCount.PASSIVE ?? 0;
    let commits = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const index0 = fx.db.pos()!.index;
      // Commit back to back until one of our checkpoints ran while a chunk was being
      // committed and (after the first round) the WAL restarted under the writer: the
      // round cannot end before a checkpoint raced the writer.
      let raced = false, n = 0;
      while (!raced || (round > 0 && fx.db.pos()!.index === index0)) {
        if (n >= MAX_PER_ROUND) {
          assert.fail(
            `round ${round}: ${n} commits without a checkpoint racing them and a WAL restart ` +
              `(index ${index0} -> ${fx.db.pos()!.index}); metrics ${
                JSON.stringify(fx.db.metrics)
              }`,
          );
        }
        const before = passive();
        await w.run(singleRowCommits("c", commits, CHUNK));
        if (passive() > before) raced = true;
        commits += CHUNK;
        n += CHUNK;
        failIfLocked(`in round ${round}`);
        assert.equal(fx.db.generation, gen, `round ${round}: no new generation`);
      }
      // Writer idle: our next sync copies the rest and backfills the whole WAL, so the
      // first commit of the next round restarts it.
      await fx.db.sync();
    }
    const stderr = await w.close();
    assert.doesNotMatch(stderr, LOCKED_REGEXP, `writer stderr:\n${stderr}`);
    assert.equal(stderr, "", "the writer reported no error");
    assert.equal(fx.db.metrics.writeLockCount, locks, "PASSIVE never took the write lock");
    await fx.sync();
    const rows = await sqliteAsync(fx.path, "SELECT count(*) FROM t WHERE v LIKE 'c-%'");
    assert.equal(Number(rows.trim()), commits, "every commit is in the database");
    assert.ok(fx.db.pos()!.index >= ROUNDS - 1, `the WAL restarted each round`);
    assert.equal(fx.db.generation, gen, "one generation");
    assert.equal(await restoredDump(fx.client, `${dir.path}/r.db`), await dump(fx.path));
  });
}

Deno.test("writers and foreign checkpoints of every mode race our checkpoints and nothing is lost", async () => {
  await using dir = await tempDir();
  // Small thresholds: our PASSIVE, forced RESTART and TRUNCATE paths all run.
  const log = memorySink("info");
  await using fx = await openTestDb(dir.path, {
    logger: new Logger(log),
    monitorIntervalMs: 1000,
    minCheckpointPageCount: 8,
    maxCheckpointPageCount: 64,
    truncatePageCount: 256,
  });
  const gen = fx.db.generation!;
  await using a = new Writer(fx.path);
  await using b = new Writer(fx.path);
  await using other = new Writer(fx.path);
  await a.run(".timeout 5000\nCREATE TABLE big (id INTEGER PRIMARY KEY, b BLOB);");
  // b also checkpoints (PASSIVE) after nearly every commit of its own, as SQLite does at
  // wal_autocheckpoint pages, and restarts the WAL whenever it finds it fully backfilled.
  await b.run(".timeout 5000\nPRAGMA wal_autocheckpoint = 4;");
  // A foreign FULL, RESTART or TRUNCATE checkpoint holds the write lock while it waits for
  // our reader: its timeout stays well below the writers'.
  await other.run(".timeout 50");
  const MODES = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] as const;
  const foreign: string[] = [];
  // As many cycles as fit in 12 s (the more, the likelier a race is hit), at least 16.
  const B_COMMITS = 100, MAX_CYCLES = 400, MIN_CYCLES = 16, DEADLINE = Date.now() + 12_000;
  let cycle = 0;
  const context = () =>
    `foreign checkpoints (mode:busy|log|checkpointed), last ones: ${
      foreign.slice(-8).join(" ")
    }; our log:\n${log.lines.slice(-5).join("\n")}`;
  const check = async (what: string) => {
    // Everyone paused: our sync and the replica's catch up with every commit.
    await fx.sync();
    assert.deepEqual(fx.replica.pos(), fx.db.pos(), `${what}: the replica caught up`);
    assert.equal(fx.db.generation, gen, `${what}: same generation; ${context()}`);
    assert.equal(
      await restoredDump(fx.client, `${dir.path}/r-${cycle}.db`),
      await dump(fx.path),
      `${what}: the restore equals the source`,
    );
  };
  for (; cycle < MAX_CYCLES && (cycle < MIN_CYCLES || Date.now() < DEADLINE); cycle++) {
    // Mostly small transactions; now and then one past max-checkpoint-page-count, or past
    // truncate-page-count, so that the WAL file grows and our forced modes run.
    const pages = cycle % 8 === 5 ? 300 : cycle % 2 === 0 ? 80 : 6;
    const mode = MODES[cycle % MODES.length];
    const [, , out] = await Promise.all([
      a.run(
        `BEGIN IMMEDIATE; ${blobs(pages, 3000).replace("INTO t (v)", "INTO big (b)")};` +
          ` DELETE FROM big WHERE id <= (SELECT max(id) - 300 FROM big); COMMIT;`,
      ),
      b.run(
        singleRowCommits(`b${cycle}`, 0, B_COMMITS) +
          `\nUPDATE t SET v = v || '+' WHERE id = (SELECT max(id) FROM t);`,
      ),
      other.run(`PRAGMA wal_checkpoint(${mode});`),
    ]);
    foreign.push(`${mode}:${out.join(",")}`);
    assert.equal(fx.db.generation, gen, `cycle ${cycle}: same generation; ${context()}`);
    if (cycle % 16 === 15) await check(`after cycle ${cycle}`);
  }
  const errors = [await a.close(), await b.close(), await other.close()].join("");
  assert.equal(errors, "", "no process reported an error");
  await check("at the end");
  assert.equal(await integrity(fx.path), "ok");
  assert.deepEqual(await fx.client.generations(), [gen], "one generation on the replica");
  const counts = fx.db.metrics.checkpointCount;
  for (const mode of ["PASSIVE", "RESTART", "TRUNCATE"]) {
    assert.ok((counts[mode] ?? 0) > 0, `our ${mode} checkpoints ran (${JSON.stringify(counts)})`);
  }
  const rows = await sqliteAsync(fx.path, "SELECT count(*) FROM t WHERE v LIKE 'b%'");
  assert.equal(Number(rows.trim()), cycle * B_COMMITS, "every single-row commit is there");
});
