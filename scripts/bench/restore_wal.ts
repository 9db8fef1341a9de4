/**
 * Workload 9: restores, ours against Litestream v0.3.13, each restore measured for wall
 * time, CPU (user + sys) and peak RSS (`/usr/bin/time`).
 *
 * Replicas (file replicas; each tool builds its own with its own `replicate`):
 * - WAL-heavy, grown the way a real replica grows: the first snapshot of a small database,
 *   `commits` single-row commits, then `txnCount` transactions of `txnMb` MiB each (new rows,
 *   half random bytes and half zeros), waiting after each until the replica holds it. Nearly
 *   all the data reaches the replica as WAL segments, not as a snapshot;
 * - trickle: `trickleCommits` single-row commits from one long-lived writer, `trickleGapMs`
 *   apart, as an application writing steadily does: our replicate ships nearly every commit as
 *   a segment of its own (v0.3.13 one a second), so this is the replica shape whose restore
 *   pays per segment; both tools also restore our replica (the same input);
 * - snapshot-heavy: the first snapshot of the cached large database of workloads 3/4;
 * - S3: each tool's WAL-heavy file replica, shaped as its replicate ships an S3 replica (ours
 *   built again with `sync-interval: 1s`, its S3 default), copied object by object into moto
 *   (the layout is the same on both backends) and restored from there with `-config`.
 *
 * Restores (`runs` rounds, the two tools interleaved, their order swapped every round): each
 * tool from its own replica; ours from v0.3.13's WAL-heavy replica, on disk and on S3 (our
 * replicate ships a segment every 20 ms where v0.3.13 ships one a second, so our replica holds
 * more, smaller objects: this row compares the restores alone); ours without
 * `PRAGMA integrity_check`, which v0.3.13 does not run. Every output must equal the source
 * byte for byte (sha256 of the source after a TRUNCATE checkpoint).
 *
 * Alone: `deno run -A --lock=tests/deno.lock scripts/bench/restore_wal.ts [--runs=3] [--txn-mb=20]
 * [--txn-count=5] [--commits=3000] [--big-mb=128] [--trickle-commits=2000] [--trickle-gap-ms=5]
 * [--no-s3] [--keep=DIR]` (with `--keep`, the replicas are
 * built once in DIR and reused by later runs).
 *
 * @module
 */
import {
  loadTools,
  Replicator,
  REPO,
  runChecked,
  runMeasured,
  runTimed,
  type Tool,
  toolArgv,
  type ToolSet,
  waitReady,
} from "./tools.ts";
import { bigDb, bigTxnSql, createDb, insertRowSql, runInsertScript, Writer } from "./sqlite.ts";
import { fileReplica, s3Replica, writeReplicateConfig } from "./config.ts";
import { clkTck, fmt, median, print, progress, sleep, type TableRow } from "./util.ts";
import { FileReplicaClient } from "../../src/clients/file.ts";
import { S3ReplicaClient, type S3ReplicaClientOptions } from "../../src/clients/s3.ts";
import { collect } from "../../src/replica_client.ts";

/** Options of {@linkcode runRestoreWalWorkload}. */
export interface RestoreWalOptions {
  /** Directory for databases, replicas and outputs; replicas found there are reused. */
  dir: string;
  /** Single-row commits after the first snapshot. @default {3000} */
  commits?: number;
  /** Large transactions after the commits. @default {5} */
  txnCount?: number;
  /** WAL size of each large transaction, MiB. @default {20} */
  txnMb?: number;
  /** Size of the snapshot-heavy database, MiB. @default {128} */
  bigMb?: number;
  /** Rounds of restores. @default {3} */
  runs?: number;
  /** Also restore from S3 (moto). @default {true} */
  s3?: boolean;
  /** Commits of the trickle replica, each its own, `trickleGapMs` apart. @default {2000} */
  trickleCommits?: number;
  /** Pause between two commits of the trickle replica, ms. @default {5} */
  trickleGapMs?: number;
}

/** One restore's cost. */
export interface RestoreMeasure {
  wallSeconds: number;
  /** utime + stime of the restore process, s (10 ms resolution). */
  cpuSeconds: number;
  /** Peak RSS (maxrss), MiB. */
  peakRssMb: number;
}

/** The measures of one case, for both columns. */
export interface RestoreCase {
  /** e.g. "WAL-heavy, own replica". */
  name: string;
  ours: RestoreMeasure[];
  theirs: RestoreMeasure[];
}

/** What {@linkcode runRestoreWalWorkload} found. */
export interface RestoreWalResult {
  cases: RestoreCase[];
  rows: TableRow[];
  notes: string[];
}

const MIB = 1024 * 1024;

/** A built replica and the sha256 its restores must have. */
interface Built {
  replica: string;
  sha256: string;
  bytes: number;
}

async function sha256(path: string): Promise<string> {
  return (await runChecked({ cmd: "sha256sum", args: [path] })).stdout.split(" ")[0];
}

/** Checkpoints `db` completely (nothing replicates it any more) and hashes it. */
async function sourceFingerprint(db: string): Promise<{ sha256: string; bytes: number }> {
  await runChecked({ cmd: "sqlite3", args: [db, "PRAGMA wal_checkpoint(TRUNCATE);"] });
  return { sha256: await sha256(db), bytes: (await Deno.stat(db)).size };
}

/** Loads a replica built by an earlier run in `dir`, if it is complete. */
async function cached(dir: string): Promise<Built | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/built.json`)) as Built;
  } catch {
    return undefined;
  }
}

async function saveBuilt(dir: string, built: Built): Promise<Built> {
  await Deno.writeTextFile(`${dir}/built.json`, JSON.stringify(built));
  return built;
}

/** How {@linkcode buildReplica} makes one replica. */
interface BuildPlan {
  /** Creates the source database at `db`. @default {createDb} */
  source?: (db: string) => Promise<void>;
  /** `replicate`'s arguments. @default {[db, file://replica]} */
  args?: (db: string, replica: string) => Promise<string[]>;
  /** The writes, run once the replica holds its first snapshot. */
  load?: (db: string, replica: string, rep: Replicator) => Promise<void>;
}

/**
 * Builds (or reuses) `tool`'s replica under `dir`: the source database, `replicate` until the
 * load is on the replica, then the source's fingerprint (the source itself is removed).
 */
async function buildReplica(
  tools: ToolSet,
  tool: Tool,
  dir: string,
  plan: BuildPlan,
): Promise<Built> {
  const old = await cached(dir);
  if (old) return old;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  const db = `${dir}/db`, replica = `${dir}/replica`;
  await (plan.source ?? createDb)(db);
  const args = plan.args ? await plan.args(db, replica) : [db, `file://${replica}`];
  const rep = new Replicator(tools, tool, args, `${dir}/replicate.log`);
  try {
    await waitReady(rep, replica);
    if (plan.load) {
      await sleep(500);
      await plan.load(db, replica, rep);
    }
    await sleep(1500); // a last checkpoint's segment, if any
  } finally {
    await rep.stop();
  }
  const fp = await sourceFingerprint(db);
  await Deno.remove(db);
  return await saveBuilt(dir, { replica, ...fp });
}

/** Builds (or reuses) `tool`'s WAL-heavy file replica under `dir`. */
function buildWalHeavy(
  tools: ToolSet,
  tool: Tool,
  dir: string,
  o: Required<RestoreWalOptions>,
  syncInterval?: string,
): Promise<Built> {
  return buildReplica(tools, tool, dir, {
    args: async (db, replica) => {
      if (!syncInterval) return [db, `file://${replica}`];
      // The replica's `sync-interval`, which only a config file sets.
      const config = `${dir}/litestream.yml`;
      await writeReplicateConfig(config, {
        db,
        replica: fileReplica(replica, { "sync-interval": syncInterval }),
      });
      return ["-config", config];
    },
    load: async (db, replica, rep) => {
      progress(`9: ${tool} replicating ${o.commits} single-row commits`);
      await runInsertScript(db, 1, o.commits);
      for (let k = 1; k <= o.txnCount; k++) {
        progress(`9: ${tool} replicating transaction ${k} of ${o.txnMb} MiB`);
        const m = o.commits + k;
        const w = await runTimed({ cmd: "sqlite3", args: [db] }, bigTxnSql(m, o.txnMb));
        if (!w.success) throw new Error(`sqlite3 writer failed: ${w.stderr.trim()}`);
        await rep.waitForMarker(replica, m, `${tool}'s replica to hold transaction ${k}`, {
          timeoutMs: 300_000,
          newest: 3,
        });
      }
    },
  });
}

/**
 * Builds (or reuses) `tool`'s trickle replica under `dir`: `commits` single-row commits from one
 * long-lived writer, `gapMs` apart, as an application writing steadily does. Our replicate
 * ships nearly every commit as a segment of its own; v0.3.13 one segment a second.
 */
function buildTrickle(
  tools: ToolSet,
  tool: Tool,
  dir: string,
  commits: number,
  gapMs: number,
): Promise<Built> {
  return buildReplica(tools, tool, dir, {
    load: async (db, replica, rep) => {
      progress(`9: ${tool} replicating ${commits} commits ${gapMs} ms apart`);
      await using w = new Writer(db);
      await w.init();
      for (let k = 1; k <= commits; k++) {
        await w.exec(insertRowSql(k));
        await sleep(gapMs);
      }
      await rep.waitForMarker(replica, commits, `${tool}'s replica to hold the last commit`);
    },
  });
}

/** Builds (or reuses) `tool`'s replica of the large database: one snapshot. */
function buildSnapshotHeavy(
  tools: ToolSet,
  tool: Tool,
  dir: string,
  bigMb: number,
): Promise<Built> {
  return buildReplica(tools, tool, dir, {
    source: async (db) => {
      await Deno.copyFile(await bigDb(`${REPO}/.bench`, bigMb), db);
      progress(`9: ${tool} snapshotting a ${bigMb} MiB database`);
    },
  });
}

/**
 * Wall seconds to list every object of the replica under `client` and GET them all, 8 at a
 * time, throwing the bytes away: what the store itself takes, the limit of a restore from it.
 */
async function getAllSeconds(client: S3ReplicaClient): Promise<number> {
  const t0 = performance.now();
  const opens: (() => Promise<ReadableStream<Uint8Array>>)[] = [];
  for (const gen of await client.generations()) {
    for await (const s of client.snapshots(gen)) opens.push(() => client.openSnapshot(s));
    for await (const w of client.walSegments(gen)) opens.push(() => client.openWalSegment(w));
  }
  let next = 0;
  const worker = async () => {
    while (next < opens.length) {
      for await (const _ of await opens[next++]()) { /* the bytes are not needed */ }
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return (performance.now() - t0) / 1000;
}

/** The parts of tests/_s3_servers.ts used here. */
interface S3Server extends AsyncDisposable {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  clientOptions(path: string): S3ReplicaClientOptions;
}
interface S3ServersModule {
  s3ServerUnavailable(kind: "moto"): Promise<string | undefined>;
  startS3Server(kind: "moto"): Promise<S3Server>;
}

async function loadServers(): Promise<S3ServersModule> {
  // Computed at run time: the test helpers pull a test-only package (see s3.ts).
  const spec = new URL("../../tests/_s3_servers.ts", import.meta.url).href;
  return await import(spec) as S3ServersModule;
}

/** Copies every snapshot and WAL segment of the file replica `root` to `to`. */
async function copyReplica(root: string, to: S3ReplicaClient): Promise<void> {
  const from = new FileReplicaClient(root);
  for (const gen of await from.generations()) {
    for (const s of await collect(from.snapshots(gen))) {
      await to.writeSnapshot(s, await readAllStream(await from.openSnapshot(s)));
    }
    for (const s of await collect(from.walSegments(gen))) {
      await to.writeWalSegment(s, await readAllStream(await from.openWalSegment(s)));
    }
  }
}

async function readAllStream(s: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(s).arrayBuffer());
}

/**
 * Runs one restore into `out` under `/usr/bin/time` ({@linkcode runMeasured}), checks the
 * output's sha256 and removes it. CPU and RSS are NaN when `/usr/bin/time` is missing.
 */
async function timedRestore(
  tools: ToolSet,
  tool: Tool,
  args: string[],
  out: string,
  want: string,
): Promise<RestoreMeasure> {
  const argv = toolArgv(tools, tool, "restore", ["-o", out, ...args]);
  await runChecked({ cmd: "sync", args: [] });
  await sleep(100);
  const r = await runMeasured(argv);
  if (!r.success) {
    throw new Error(`${tool} restore ${args.join(" ")} failed: ${r.stderr.trim().slice(-1500)}`);
  }
  const got = await sha256(out);
  if (got !== want) {
    throw new Error(`${tool} restore ${args.join(" ")}: output differs from the source`);
  }
  for (const p of [out, `${out}-wal`, `${out}-shm`]) await Deno.remove(p).catch(() => {});
  return { wallSeconds: r.ms / 1000, cpuSeconds: r.cpuSeconds, peakRssMb: r.peakRssMb };
}

/** Builds the replicas and runs the restores; see the module doc. */
export async function runRestoreWalWorkload(
  tools: ToolSet,
  options: RestoreWalOptions,
): Promise<RestoreWalResult> {
  const o: Required<RestoreWalOptions> = {
    dir: options.dir,
    commits: options.commits ?? 3000,
    txnCount: options.txnCount ?? 5,
    txnMb: options.txnMb ?? 20,
    bigMb: options.bigMb ?? 128,
    runs: options.runs ?? 3,
    s3: options.s3 ?? true,
    trickleCommits: options.trickleCommits ?? 2000,
    trickleGapMs: options.trickleGapMs ?? 5,
  };
  const wal: Record<Tool, Built> = {} as Record<Tool, Built>;
  const snap: Record<Tool, Built> = {} as Record<Tool, Built>;
  const trickle: Record<Tool, Built> = {} as Record<Tool, Built>;
  const tag = `${o.commits}c-${o.txnCount}x${o.txnMb}mb`;
  for (const tool of ["ours", "v0.3.13"] as const) {
    wal[tool] = await buildWalHeavy(tools, tool, `${o.dir}/w9-wal-${tag}-${tool}`, o);
    snap[tool] = await buildSnapshotHeavy(
      tools,
      tool,
      `${o.dir}/w9-snap-${o.bigMb}mb-${tool}`,
      o.bigMb,
    );
    trickle[tool] = await buildTrickle(
      tools,
      tool,
      `${o.dir}/w9-trickle-${o.trickleCommits}c-${o.trickleGapMs}ms-${tool}`,
      o.trickleCommits,
      o.trickleGapMs,
    );
  }
  const notes: string[] = [];
  // Each case: our arguments and replica, and v0.3.13's (by default, its own WAL-heavy one).
  type Plan = {
    name: string;
    ours: string[];
    oursFrom: Built;
    theirs?: string[];
    theirsFrom: Built;
    /** Without `theirs`: the case whose v0.3.13 figures to show. @default {0} */
    shareWith?: number;
  };
  const file = (b: Built) => [`file://${b.replica}`];
  const v = "v0.3.13";
  const plans: Plan[] = [
    {
      name: "WAL-heavy, own replica",
      ours: file(wal.ours),
      oursFrom: wal.ours,
      theirs: file(wal[v]),
      theirsFrom: wal[v],
    },
    {
      name: "WAL-heavy, v0.3.13's replica",
      ours: file(wal[v]),
      oursFrom: wal[v],
      theirsFrom: wal[v],
    },
    {
      name: "WAL-heavy, ours without integrity_check",
      ours: ["-skip-integrity-check", ...file(wal.ours)],
      oursFrom: wal.ours,
      theirsFrom: wal[v],
    },
    {
      name: `trickle (${o.trickleCommits} commits ${o.trickleGapMs} ms apart), own replica`,
      ours: file(trickle.ours),
      oursFrom: trickle.ours,
      theirs: file(trickle[v]),
      theirsFrom: trickle[v],
    },
    {
      name: "trickle, both restoring our replica",
      ours: file(trickle.ours),
      oursFrom: trickle.ours,
      theirs: file(trickle.ours),
      theirsFrom: trickle.ours,
    },
    {
      name: "snapshot-heavy, own replica",
      ours: file(snap.ours),
      oursFrom: snap.ours,
      theirs: file(snap[v]),
      theirsFrom: snap[v],
    },
  ];
  let server: S3Server | undefined;
  const s3Limit: Partial<Record<Tool, number>> = {};
  try {
    if (o.s3) {
      const mod = await loadServers();
      const why = await mod.s3ServerUnavailable("moto");
      if (why) notes.push(`Restore from S3 skipped: moto unavailable (${why}).`);
      else {
        // What each replicate writes to S3: ours ships an S3 replica every second by default
        // (as v0.3.13 does), not every 20 ms as a file replica, so it holds as few objects.
        const s3Shaped: Record<Tool, Built> = {
          ours: await buildWalHeavy(tools, "ours", `${o.dir}/w9-wal-${tag}-ours-1s`, o, "1s"),
          [v]: wal[v],
        };
        progress("9: copying the WAL-heavy replicas into moto");
        server = await mod.startS3Server("moto");
        const cfg: Record<Tool, string[]> = {} as Record<Tool, string[]>;
        for (const tool of ["ours", "v0.3.13"] as const) {
          const prefix = `w9/${tool}`;
          await using client = new S3ReplicaClient(server.clientOptions(prefix));
          await copyReplica(s3Shaped[tool].replica, client);
          const times: number[] = [];
          for (let i = 0; i < o.runs; i++) times.push(await getAllSeconds(client));
          s3Limit[tool] = median(times);
          const path = `${o.dir}/w9-s3-${tool}.yml`;
          const db = `${o.dir}/w9-s3-${tool}.db`;
          await writeReplicateConfig(path, { db, replica: s3Replica(server, prefix) });
          cfg[tool] = ["-config", path, db];
        }
        plans.push({
          name: "WAL-heavy, from S3 (moto)",
          ours: cfg.ours,
          oursFrom: s3Shaped.ours,
          theirs: cfg[v],
          theirsFrom: wal[v],
        }, {
          name: "WAL-heavy, v0.3.13's replica, from S3 (moto)",
          ours: cfg[v],
          oursFrom: wal[v],
          theirsFrom: wal[v],
          shareWith: plans.length,
        });
      }
    }
    const cases: RestoreCase[] = plans.map((p) => ({ name: p.name, ours: [], theirs: [] }));
    for (let round = 0; round < o.runs; round++) {
      for (const [i, p] of plans.entries()) {
        const jobs: [Tool, string[], string, RestoreMeasure[]][] = [
          ["ours", p.ours, p.oursFrom.sha256, cases[i].ours],
        ];
        if (p.theirs) jobs.push([v, p.theirs, p.theirsFrom.sha256, cases[i].theirs]);
        if (round % 2 === 1) jobs.reverse();
        for (const [tool, args, sha, into] of jobs) {
          progress(`9: restore ${round + 1}/${o.runs}, ${p.name}, ${tool}`);
          into.push(await timedRestore(tools, tool, args, `${o.dir}/w9-out-${tool}.db`, sha));
        }
      }
    }
    // Cases without their own v0.3.13 column share another's (by default, the first).
    for (const [i, c] of cases.entries()) {
      if (c.theirs.length === 0) c.theirs = cases[plans[i].shareWith ?? 0].theirs;
    }

    const rows: TableRow[] = [];
    const med = (ms: RestoreMeasure[], k: keyof RestoreMeasure) => median(ms.map((m) => m[k]));
    for (const [i, c] of cases.entries()) {
      rows.push({
        metric: `restore ${c.name} (s)`,
        ours: med(c.ours, "wallSeconds"),
        theirs: med(c.theirs, "wallSeconds"),
        digits: 2,
      });
      rows.push({
        metric: "  … throughput (MiB/s)",
        ours: plans[i].oursFrom.bytes / MIB / med(c.ours, "wallSeconds"),
        theirs: plans[i].theirsFrom.bytes / MIB / med(c.theirs, "wallSeconds"),
        digits: 0,
      });
      rows.push({
        metric: "  … CPU user+sys (s)",
        ours: med(c.ours, "cpuSeconds"),
        theirs: med(c.theirs, "cpuSeconds"),
        digits: 2,
      });
      rows.push({
        metric: "  … peak RSS (MiB)",
        ours: med(c.ours, "peakRssMb"),
        theirs: med(c.theirs, "peakRssMb"),
        digits: 1,
      });
    }
    if (s3Limit.ours !== undefined) {
      rows.push({
        metric: "GET of every object from moto, 8 at a time, the limit (s)",
        ours: s3Limit.ours,
        theirs: s3Limit[v]!,
        digits: 2,
      });
    }
    const segments = async (b: Record<Tool, Built>) => {
      const out = {} as Record<Tool, number>;
      for (const tool of ["ours", "v0.3.13"] as const) {
        const client = new FileReplicaClient(b[tool].replica);
        let n = 0;
        for (const gen of await client.generations()) {
          n += (await collect(client.walSegments(gen))).length;
        }
        out[tool] = n;
      }
      return out;
    };
    const trickleSegs = await segments(trickle);
    const walSegs = await segments(wal);
    const range = (ms: RestoreMeasure[], k: keyof RestoreMeasure, d: number) =>
      `${fmt(Math.min(...ms.map((m) => m[k])), d)}–${fmt(Math.max(...ms.map((m) => m[k])), d)}`;
    const mib = fmt(wal.ours.bytes / MIB, 1);
    notes.push(
      `Restores: WAL-heavy = the first snapshot of a 1-row database, then ${o.commits} ` +
        `single-row commits and ${o.txnCount} × ${o.txnMb} MiB transactions (${mib} MiB), ` +
        "each tool's replica written by its own replicate (segments: " +
        `ours ${walSegs.ours}, v0.3.13 ${walSegs[v]}); ` +
        `trickle = ${o.trickleCommits} single-row commits from one long-lived \`sqlite3\`, ` +
        `${o.trickleGapMs} ms apart (segments: ours ${trickleSegs.ours}, v0.3.13 ${
          trickleSegs[v]
        }); ` +
        `snapshot-heavy = the ${o.bigMb} MiB database's first snapshot; S3 = the WAL-heavy file ` +
        "replicas copied into moto, ours built again with `sync-interval: 1s` (what our " +
        "replicate uses for S3 by default); the limit row GETs every object of each replica " +
        "(listing included) from the bench process and throws the bytes away. " +
        `Median of ${o.runs} rounds, the two tools interleaved; every ` +
        "output equal to the source byte for byte (sha256). CPU = utime+stime, RSS = maxrss " +
        "(/usr/bin/time); ours includes Deno start-up and, unless said otherwise, " +
        "PRAGMA integrity_check. Ranges (wall s / CPU s / RSS MiB): " +
        cases.map((c) =>
          `${c.name}: ours ${range(c.ours, "wallSeconds", 2)} / ${
            range(c.ours, "cpuSeconds", 2)
          } / ` +
          `${range(c.ours, "peakRssMb", 0)}, v0.3.13 ${range(c.theirs, "wallSeconds", 2)} / ` +
          `${range(c.theirs, "cpuSeconds", 2)} / ${range(c.theirs, "peakRssMb", 0)}`
        ).join("; ") + ".",
    );
    return { cases, rows, notes };
  } finally {
    await server?.[Symbol.asyncDispose]();
  }
}

if (import.meta.main) {
  const o: Partial<RestoreWalOptions> = {};
  let keep: string | undefined;
  for (const a of Deno.args) {
    let m: RegExpExecArray | null;
    if ((m = /^--runs=(\d+)$/.exec(a))) o.runs = Number(m[1]);
    else if ((m = /^--txn-mb=(\d+)$/.exec(a))) o.txnMb = Number(m[1]);
    else if ((m = /^--txn-count=(\d+)$/.exec(a))) o.txnCount = Number(m[1]);
    else if ((m = /^--trickle-commits=(\d+)$/.exec(a))) o.trickleCommits = Number(m[1]);
    else if ((m = /^--trickle-gap-ms=(\d+)$/.exec(a))) o.trickleGapMs = Number(m[1]);
    else if ((m = /^--commits=(\d+)$/.exec(a))) o.commits = Number(m[1]);
    else if ((m = /^--big-mb=(\d+)$/.exec(a))) o.bigMb = Number(m[1]);
    else if (a === "--no-s3") o.s3 = false;
    else if ((m = /^--keep=(.+)$/.exec(a))) keep = m[1];
    else throw new Error(`Unknown argument "${a}": see the header of scripts/bench/restore_wal.ts`);
  }
  await clkTck();
  const tools = await loadTools();
  const dir = keep ?? await Deno.makeTempDir({ prefix: "litestream-restore-wal-" });
  if (keep) await Deno.mkdir(dir, { recursive: true });
  try {
    const res = await runRestoreWalWorkload(tools, { ...o, dir });
    print("| metric | ours | v0.3.13 | ratio |");
    print("| --- | ---: | ---: | ---: |");
    for (const r of res.rows) {
      print(
        `| ${r.metric} | ${fmt(r.ours, r.digits)} | ${fmt(r.theirs, r.digits)} | ${
          fmt(r.ours / r.theirs, 2)
        }× |`,
      );
    }
    for (const n of res.notes) print(`- ${n}`);
  } finally {
    if (!keep) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
