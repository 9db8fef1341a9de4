/**
 * `restore` killed with SIGKILL: it never leaves an output file, and what it leaves beside
 * the output (hidden, locked temporary files) is removed by the next restore into the same
 * directory.
 *
 * @module
 */
import assert from "node:assert/strict";
import { blobs, cli, dump, integrity, openTestDb, tempDir, Writer } from "./_helpers.ts";
import { removeAbandonedRestores } from "../src/restore.ts";

/** When a restore of the fixture gets killed, judged from the files it has made so far. */
interface Moment {
  name: string;
  /** True once the restore is at this moment; `files` maps names in the output dir to sizes. */
  reached(files: Map<string, number>): boolean;
}

const TEMP_REGEXP = /^\.r\.db-restore-[0-9a-f]{8}$/;

function tempSize(files: Map<string, number>): number | undefined {
  for (const [name, size] of files) if (TEMP_REGEXP.test(name)) return size;
  return undefined;
}

function listSizes(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const e of Deno.readDirSync(dir)) {
    try {
      out.set(e.name, Deno.statSync(`${dir}/${e.name}`).size);
    } catch { /* removed meanwhile */ }
  }
  return out;
}

/**
 * A replica whose restore takes long enough to be killed in each phase: a ~34 MiB snapshot
 * (300k indexed rows, which make the integrity check take a while, and 8 MiB of blobs),
 * then 16 MiB of new pages in the WAL after it. Returns the source path, the replica
 * directory and the size of the database the snapshot holds.
 */
async function bigReplica(
  dir: string,
): Promise<{ source: string; replica: string; snapshotBytes: number }> {
  await using fx = await openTestDb(dir);
  await using w = new Writer(fx.path);
  await w.exec(
    "BEGIN; CREATE TABLE s (a INTEGER PRIMARY KEY, b TEXT); CREATE INDEX s_b ON s (b);" +
      " INSERT INTO s (b) SELECT hex(randomblob(16)) FROM (WITH RECURSIVE c(x) AS" +
      " (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT x FROM c); COMMIT",
  );
  await w.exec(blobs(2_000, 3900));
  await fx.sync(); // copies and checkpoints: the database file now holds those pages
  const info = await fx.replica.snapshot();
  assert.ok(info.size > 20 << 20, `snapshot of ${info.size} bytes`);
  const snapshotBytes = (await Deno.stat(fx.path)).size;
  await w.exec(blobs(4_000, 3900));
  await w.exec("UPDATE t SET v = 'rewritten' WHERE id % 5 = 0");
  await fx.sync();
  await fx.stop();
  return { source: fx.path, replica: fx.replicaPath, snapshotBytes };
}

/** Polls `dir` every millisecond until `reached` holds or `child` exits; true if reached. */
async function watch(
  dir: string,
  child: Deno.ChildProcess,
  reached: (files: Map<string, number>) => boolean,
): Promise<boolean> {
  let exited = false;
  child.status.then(() => exited = true);
  const end = Date.now() + 60_000;
  while (!exited && Date.now() < end) {
    if (reached(listSizes(dir))) return true;
    await new Promise((r) => setTimeout(r, 1));
  }
  return false;
}

Deno.test("restore killed with SIGKILL at any moment leaves no output, and its files go on the next restore (never a running one's)", async () => {
  await using dir = await tempDir();
  const { source, replica, snapshotBytes } = await bigReplica(dir.path);
  const outDir = `${dir.path}/out`;
  await Deno.mkdir(outDir);
  const out = `${outDir}/r.db`;
  const moments: Moment[] = [
    { name: "at start-up", reached: () => true },
    {
      name: "once its lock file exists",
      reached: (f) => [...f.keys()].some((n) => n.endsWith(".lock")),
    },
    {
      name: "while writing the snapshot",
      reached: (f) => (tempSize(f) ?? 0) > snapshotBytes / 4,
    },
    {
      name: "while applying the WAL",
      reached: (f) => (tempSize(f) ?? 0) > snapshotBytes,
    },
    {
      name: "during the integrity check",
      reached: (f) => [...f.keys()].some((n) => /-restore-[0-9a-f]{8}-shm$/.test(n)),
    },
  ];
  for (const m of moments) {
    const child = cli(["restore", "-o", out, `file://${replica}`]).spawn();
    assert.ok(await watch(outDir, child, m.reached), `restore ended before it was ${m.name}`);
    if (tempSize(listSizes(outDir)) !== undefined) {
      // Another restore's cleanup leaves a running restore alone.
      assert.deepEqual(await removeAbandonedRestores(outDir), []);
      assert.notEqual(tempSize(listSizes(outDir)), undefined);
    }
    child.kill("SIGKILL");
    await child.output();
    const left = [...listSizes(outDir).keys()];
    assert.ok(!left.includes("r.db"), `killed ${m.name}, it left an output file: ${left}`);
    // This restore removed what the one killed before it left.
    const owners = new Set(left.map((n) => /-restore-([0-9a-f]{8})/.exec(n)?.[1]));
    assert.ok(owners.size <= 1, `killed ${m.name}, files of several restores: ${left}`);
  }
  // Something was left behind by the last kills (otherwise the cleanup below proves nothing).
  const litter = [...listSizes(outDir).keys()].sort();
  assert.ok(litter.some((n) => TEMP_REGEXP.test(n)), `litter: ${litter}`);
  assert.ok(litter.some((n) => n.endsWith("-shm")), `litter: ${litter}`);

  const o = await cli(["restore", "-o", out, `file://${replica}`]).output();
  assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
  assert.deepEqual([...listSizes(outDir).keys()], ["r.db"]);
  assert.equal(await integrity(out), "ok");
  assert.equal(await dump(out), await dump(source));
});
