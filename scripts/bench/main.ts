/**
 * `deno task bench [--quick] [--only=1,2,3,6,7] [--keep]`: runs our CLI and the real
 * Litestream v0.3.13 on the same workloads in the same run, and prints one table with both
 * and the ratio (ours / v0.3.13). The table also goes to `.bench/results.md`.
 *
 * Workloads (file replicas on local disk in a temporary directory, removed afterwards):
 * 1. writer slowdown: a separate `sqlite3` process doing single-row commits, bare and with
 *    each replicator running (started first, initial snapshot waited for);
 * 2. commit → restorable lag, p50/p99, seen from this process (no restore start-up counted);
 * 3. restore throughput on a large database (cached in `.bench/`), plus `cp` as the limit;
 * 4. snapshot throughput: replicator start to snapshot file complete;
 * 5. CPU seconds and peak RSS of each replicator process during workloads 1 and 4;
 * 6. S3 requests per hour, idle and at 10 commits/s, counted by a proxy in front of moto;
 * 7. a writer without a busy timeout: failed commits, and our write-lock metrics (lock.ts);
 * 8. large transactions (5 × 20 MiB, 1 × 256 MiB): CPU and peak RSS of `replicate`, and the
 *    RSS floor of an idle `deno run` and of idle replicators (big_txn.ts);
 * 9. restores with CPU and peak RSS: a WAL-heavy replica, a snapshot-heavy one, and from S3
 *    (restore_wal.ts);
 * 10. 200 and 1000 databases in one daemon: CPU and peak RSS for start + 3 commits each, then
 *    CPU over 20 idle seconds (many_dbs.ts);
 * 11. an application SQLite (3.40) that commits WAL frames without checksums: does each tool's
 *    restore equal the source (rollback.ts).
 *
 * Timings are printed, never asserted.
 *
 * @module
 */
import {
  killAll,
  loadTools,
  Replicator,
  REPO,
  runChecked,
  runTimed,
  type Tool,
  toolArgv,
  TOOLS,
  type ToolSet,
  waitReady,
} from "./tools.ts";
import {
  bigDb,
  createDb,
  hasMarker,
  insertRowSql,
  maxId,
  runInsertScript,
  Writer,
} from "./sqlite.ts";
import { listReplica, MarkerWatcher } from "./replica_watch.ts";
import { runS3Workload, s3Unavailable } from "./s3.ts";
import { runRestoreWalWorkload } from "./restore_wal.ts";
import { bigTxnRows, measureFloor, runBigTxnWorkload } from "./big_txn.ts";
import { manyDbsRows, runManyDbsWorkload } from "./many_dbs.ts";
import { runRollbackWorkload } from "./rollback.ts";
import {
  freePort,
  lockDelta,
  type LockFigures,
  type LockToolResult,
  runLockWorkload,
  scrapeWriteLock,
  waitMetrics,
} from "./lock.ts";
import { fileReplica, writeReplicateConfig } from "./config.ts";
import {
  clkTck,
  fmt,
  loadAverage,
  machineInfo,
  median,
  percentile,
  print,
  progress,
  sleep,
} from "./util.ts";

/** What a run does; `--quick` shrinks everything. */
interface Settings {
  quick: boolean;
  /** Single-row commits per writer batch (workload 1). */
  commits: number;
  /** Writer batches per configuration; the median is reported. */
  batches: number;
  /** Commits whose lag is measured (workload 2). */
  lagCommits: number;
  lagSpacingMs: number;
  /** Size of the large database (workloads 3 and 4). */
  bigMb: number;
  /** Runs of each restore; the median is reported. */
  restoreRuns: number;
  s3IdleSeconds: number;
  s3LoadSeconds: number;
  s3CommitsPerSecond: number;
  /** Workload 7, A: single-row commits. */
  lockSingles: number;
  /** Workload 7, B: rounds of one bulk INSERT of `lockBulkRows` rows and `lockRoundSingles` single rows. */
  lockRounds: number;
  lockBulkRows: number;
  lockRoundSingles: number;
  /** Workload 7, C: single-row commits back to back under forced checkpoints. */
  lockForcedSingles: number;
  /** Workload numbers to run. */
  only: Set<number>;
  /** Keep the temporary directory. */
  keep: boolean;
}

const USAGE = `Usage: deno task bench [--quick] [--only=1,2,3,4,5,6,7,8,9,10,11] [--keep]

  --quick   32 MiB database, fewer commits, 10 s S3 windows: a fast check
  --only    run only these workloads (3 and 4 run together; 5 comes with 1 and 4)
  --keep    keep the temporary directory (replicas and logs) and print its path
`;

function parseSettings(args: string[]): Settings {
  let quick = false, keep = false;
  let only = new Set([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  for (const a of args) {
    if (a === "--quick") quick = true;
    else if (a === "--keep") keep = true;
    else if (a.startsWith("--only=")) {
      only = new Set(a.slice(7).split(",").map((x) => Number(x.trim())));
      if ([...only].some((n) => !(n >= 1 && n <= 11))) throw new RangeError(`Bad ${a}\n${USAGE}`);
    } else if (a === "--help" || a === "-h") {
      print(USAGE);
      Deno.exit(0);
    } else throw new RangeError(`Unknown argument "${a}"\n${USAGE}`);
  }
  return {
    quick,
    keep,
    only,
    commits: quick ? 1000 : 3000,
    batches: quick ? 1 : 5,
    lagCommits: quick ? 20 : 100,
    lagSpacingMs: 150,
    bigMb: quick ? 32 : 128,
    restoreRuns: quick ? 1 : 5,
    s3IdleSeconds: quick ? 10 : 60,
    s3LoadSeconds: quick ? 10 : 60,
    s3CommitsPerSecond: 10,
    // The workloads of the issue; they take seconds, so --quick keeps them.
    lockSingles: 2000,
    lockRounds: 3,
    lockBulkRows: 5000,
    lockRoundSingles: 300,
    lockForcedSingles: 20000,
  };
}

/** One table row; values already formatted. */
interface Row {
  metric: string;
  ours: string;
  theirs: string;
  ratio: string;
}

class Report {
  readonly rows: Row[] = [];
  readonly notes: string[] = [];

  /** Adds a row of two numbers and their ratio (ours / v0.3.13). */
  num(metric: string, ours: number | undefined, theirs: number | undefined, digits = 2): void {
    this.rows.push({
      metric,
      ours: fmt(ours, digits),
      theirs: fmt(theirs, digits),
      ratio: ratio(ours, theirs),
    });
  }

  /** Adds a row of preformatted cells. */
  text(metric: string, ours: string, theirs: string, r = "—"): void {
    this.rows.push({ metric, ours, theirs, ratio: r });
  }

  markdown(): string {
    const head: Row = { metric: "metric", ours: "ours", theirs: "v0.3.13", ratio: "ratio" };
    const all = [head, ...this.rows];
    const w = (k: keyof Row) => Math.max(3, ...all.map((r) => r[k].length));
    const line = (r: Row) =>
      `| ${r.metric.padEnd(w("metric"))} | ${r.ours.padStart(w("ours"))} | ${
        r.theirs.padStart(w("theirs"))
      } | ${r.ratio.padStart(w("ratio"))} |`;
    const sep = `| ${"-".repeat(w("metric"))} | ${"-".repeat(w("ours") - 1)}: | ${
      "-".repeat(w("theirs") - 1)
    }: | ${"-".repeat(w("ratio") - 1)}: |`;
    return [line(head), sep, ...this.rows.map(line)].join("\n");
  }
}

function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b)) return "—";
  if (b === 0) return a === 0 ? "—" : "∞";
  return `${(a / b).toFixed(2)}×`;
}

const MIB = 1024 * 1024;

/** Shared state of one benchmark run. */
interface Ctx {
  settings: Settings;
  tools: ToolSet;
  tmp: string;
  report: Report;
}

/**
 * Runs `sync` so dirty pages of earlier phases are not written back (and fsyncs not
 * slowed) during the next timed section.
 */
async function flushDisk(): Promise<void> {
  await runChecked({ cmd: "sync", args: [] });
  await sleep(100);
}

/** Workloads 1 and 5: a separate writer process, bare and with each replicator running. */
async function writerWorkload(ctx: Ctx): Promise<void> {
  const { commits: n, batches } = ctx.settings;
  const last = n * batches;
  /** Each batch's wall seconds and the writer's CPU seconds over all batches. */
  const runBatches = async (db: string) => {
    const times: number[] = [];
    let cpu = 0;
    for (let b = 0; b < batches; b++) {
      await flushDisk();
      const r = await runInsertScript(db, b * n + 1, (b + 1) * n);
      times.push(r.ms / 1000);
      cpu += r.cpuSeconds;
    }
    return { times, cpu };
  };
  const bare = async (name: string) => {
    const db = `${ctx.tmp}/w1-${name}/db`;
    await Deno.mkdir(`${ctx.tmp}/w1-${name}`);
    await createDb(db);
    return await runBatches(db);
  };

  progress(`1: writer, ${batches} × ${n} commits, no replicator`);
  await bare("warmup"); // page cache, sqlite3 binary
  const bare1 = await bare("bare1");
  const bareTimes = bare1.times;
  const bareCpu = [bare1.cpu];
  const with_: Record<
    string,
    {
      times: number[];
      cpu: number;
      writerCpu: number;
      rss: number;
      catchUpMs: number;
      segments: number;
      lock?: LockFigures;
    }
  > = {};
  // Ours at its default sync interval (20 ms for a file replica) and at v0.3.13's (1 s).
  const runs: [string, Tool, Record<string, string>][] = [
    ["ours", "ours", {}],
    ["ours-1s", "ours", { "sync-interval": "1s" }],
    ["v0.3.13", "v0.3.13", {}],
  ];
  for (const [name, tool, replicaSettings] of runs) {
    progress(`1: writer, ${batches} × ${n} commits, ${name} replicating`);
    const dir = `${ctx.tmp}/w1-${name}`;
    await Deno.mkdir(dir);
    const db = `${dir}/db`;
    const replica = `${dir}/replica`;
    await createDb(db);
    // A config rather than DB REPLICA_URL arguments, for `addr:` (our write-lock metrics).
    const port = freePort();
    await writeReplicateConfig(`${dir}/litestream.yml`, {
      db,
      replica: fileReplica(replica, replicaSettings),
      addr: `127.0.0.1:${port}`,
    });
    const rep = new Replicator(
      ctx.tools,
      tool,
      ["-config", `${dir}/litestream.yml`],
      `${dir}/replicate.log`,
    );
    try {
      await waitReady(rep, replica);
      await waitMetrics(rep, port);
      await sleep(500);
      const seg0 = (await listReplica(replica)).segments.length;
      const lock0 = tool === "ours" ? await scrapeWriteLock(port) : undefined;
      const s0 = await rep.stats();
      const { times, cpu: writerCpu } = await runBatches(db);
      const tEnd = performance.now();
      await rep.waitForMarker(replica, last, `${tool}'s replica to hold the last row`);
      const catchUpMs = performance.now() - tEnd;
      const s1 = await rep.stats();
      const lock1 = tool === "ours" ? await scrapeWriteLock(port) : undefined;
      const segments = (await listReplica(replica)).segments.length - seg0;
      with_[name] = {
        times,
        cpu: s1.cpuSeconds - s0.cpuSeconds,
        writerCpu,
        rss: s1.peakRssMb,
        catchUpMs,
        segments,
        lock: lockDelta(lock0, lock1),
      };
    } finally {
      await rep.stop();
    }
  }
  progress(`1: writer, ${batches} × ${n} commits, no replicator (again)`);
  const bare2 = await bare("bare2");
  bareTimes.push(...bare2.times);
  bareCpu.push(bare2.cpu);

  const r = ctx.report;
  const b = median(bareTimes);
  const o = with_["ours"], o1 = with_["ours-1s"], t = with_["v0.3.13"];
  r.text(`writer: ${n} commits, no replicator (s)`, fmt(b, 3), fmt(b, 3));
  r.num(`writer: ${n} commits, replicator running (s)`, median(o.times), median(t.times), 3);
  r.num("writer slowdown (with / bare)", median(o.times) / b, median(t.times) / b);
  r.num("last commit → on replica, after the burst (ms)", o.catchUpMs, t.catchUpMs, 0);
  r.num(`replicator CPU during ${batches} × ${n} commits (s)`, o.cpu, t.cpu);
  r.num("  … ours at v0.3.13's sync interval (1 s)", o1.cpu, t.cpu);
  r.num("  … writer slowdown, ours at 1 s", median(o1.times) / b, median(t.times) / b);
  // Checkpoints are work someone must do: we do the application's (its own find nothing left),
  // v0.3.13 leaves much of it to the application. So the writer's CPU belongs beside ours.
  const bc = median(bareCpu);
  r.text(`writer CPU, ${batches} × ${n} commits, no replicator (s)`, fmt(bc, 2), fmt(bc, 2));
  r.num(`writer CPU, ${batches} × ${n} commits, replicator running (s)`, o.writerCpu, t.writerCpu);
  r.num("writer + replicator CPU (s)", o.writerCpu + o.cpu, t.writerCpu + t.cpu);
  r.num("  … ours at 1 s", o1.writerCpu + o1.cpu, t.writerCpu + t.cpu);
  r.num("replicator peak RSS, writer load (MiB)", o.rss, t.rss, 1);
  r.num(
    `WAL segment files in the replica after ${batches} × ${n} commits`,
    o.segments,
    t.segments,
    0,
  );
  lockRows(r, `${batches} × ${n} commits`, o.lock);
  r.notes.push(
    `Writer: one \`sqlite3\` process per batch fed ${n} single-row INSERTs (autocommit, ` +
      `\`.timeout 10000\`); median of ${batches} batch(es); bare is the median of ` +
      `${bareTimes.length} batches run before and after the replicated runs ` +
      `(${bareTimes.map((x) => x.toFixed(3)).join(", ")} s).`,
  );
  r.notes.push(
    `Replicated batches, ours: ${o.times.map((x) => x.toFixed(3)).join(", ")} s; ` +
      `v0.3.13: ${t.times.map((x) => x.toFixed(3)).join(", ")} s. CPU is utime+stime of the ` +
      "replicator from the first commit until the replica held the last row; peak RSS is " +
      "VmHWM (since process start). Writer CPU is utime+stime of the `sqlite3` processes " +
      `(/usr/bin/time), all ${batches} batches: bare ${
        bareCpu.map((x) => x.toFixed(2)).join(", ")
      } s; ours ${o.writerCpu.toFixed(2)}, ours at 1 s ${o1.writerCpu.toFixed(2)}, v0.3.13 ` +
      `${t.writerCpu.toFixed(2)} s (ours checkpoint the WAL, so the writer's own checkpoints ` +
      "find nothing to do; v0.3.13's checkpoints leave much of that work to the writer).",
  );
}

/**
 * Adds the rows of our write-lock figures over a load; v0.3.13 has no such metric ("—"), and
 * "n/a" means ours did not export it.
 */
function lockRows(r: Report, load: string, lock: LockFigures | undefined): void {
  r.text(`write lock held by replicator, ${load}: longest (ms)`, fmt(lock?.maxMs, 2), "—");
  r.text(`write lock held by replicator, ${load}: total (ms)`, fmt(lock?.totalMs, 1), "—");
  r.text(`write lock held by replicator, ${load}: times`, fmt(lock?.count, 0), "—");
}

/** Workload 2: commit → restorable lag, seen from this process. */
async function lagWorkload(ctx: Ctx): Promise<void> {
  const { lagCommits: n, lagSpacingMs: spacing } = ctx.settings;
  const res: Record<string, { lags: number[]; missing: number; segments: number; ok: boolean }> =
    {};
  for (const tool of TOOLS) {
    progress(`2: lag of ${n} commits ${spacing} ms apart, ${tool}`);
    const dir = `${ctx.tmp}/w2-${tool}`;
    await Deno.mkdir(dir);
    const db = `${dir}/db`;
    const replica = `${dir}/replica`;
    await createDb(db);
    const rep = new Replicator(ctx.tools, tool, [db, `file://${replica}`], `${dir}/replicate.log`);
    const watcher = new MarkerWatcher(replica);
    try {
      await waitReady(rep, replica);
      await sleep(1000);
      const before = (await listReplica(replica)).segments.length;
      await using writer = new Writer(db);
      await writer.init();
      watcher.start();
      const committedAt = new Map<number, number>();
      const t0 = performance.now();
      for (let k = 1; k <= n; k++) {
        await writer.exec(insertRowSql(k));
        committedAt.set(k, performance.now());
        await sleep(t0 + k * spacing - performance.now());
      }
      const ks = [...committedAt.keys()];
      const missing = await watcher.waitFor(ks, 20_000);
      await watcher.stop();
      const lags = ks.filter((k) => watcher.found.has(k)).map((k) =>
        watcher.found.get(k)! - committedAt.get(k)!
      );
      const segments = (await listReplica(replica)).segments.length - before;
      // Check the detector against a real restore (ours) of the last row.
      const out = `${dir}/restored.db`;
      await runChecked(toolArgv(ctx.tools, "ours", "restore", ["-o", out, `file://${replica}`]));
      const ok = await hasMarker(out, n);
      res[tool] = { lags, missing: missing.length, segments, ok };
    } finally {
      await watcher.stop();
      await rep.stop();
    }
  }
  const r = ctx.report;
  const o = res["ours"], t = res["v0.3.13"];
  r.num(
    `commit → restorable lag p50 (ms, n=${n})`,
    percentile(o.lags, 50),
    percentile(t.lags, 50),
    1,
  );
  r.num(
    `commit → restorable lag p99 (ms, n=${n})`,
    percentile(o.lags, 99),
    percentile(t.lags, 99),
    1,
  );
  r.num("commit → restorable lag max (ms)", Math.max(...o.lags), Math.max(...t.lags), 1);
  r.text(
    `WAL segment files for ${n} commits`,
    String(o.segments),
    String(t.segments),
    ratio(o.segments, t.segments),
  );
  for (const [tool, x] of Object.entries(res)) {
    if (x.missing > 0) {
      r.notes.push(
        `WARNING: ${tool}: ${x.missing} of ${n} commits never reached the replica within 20 s.`,
      );
    }
    if (!x.ok) {
      r.notes.push(
        `WARNING: ${tool}: a restore right after the lag run lacked the last row the detector had seen.`,
      );
    }
  }
  r.notes.push(
    `Lag: one long-lived \`sqlite3\` writer commits row k every ${spacing} ms; the commit time is ` +
      "when the CLI acknowledged it. A watcher in the benchmark process (inotify on the replica " +
      "plus a 5 ms poll) decompresses each new WAL segment (src/lz4.ts) and looks for row k's " +
      "marker: the time it first lists a segment holding it is when a restore would contain row k. " +
      "A restore (our CLI) after the run confirmed the last row for " +
      `${
        Object.entries(res).filter(([, x]) => x.ok).map(([t]) => t).join(" and ") || "neither tool"
      }.`,
  );
}

/** Workloads 3, 4 and 5: snapshot and restore of the large database, and `cp`. */
async function bigDbWorkload(ctx: Ctx): Promise<void> {
  const { bigMb, restoreRuns } = ctx.settings;
  const src = await bigDb(`${REPO}/.bench`, bigMb);
  const size = (await Deno.stat(src)).size;
  const mb = size / MIB;
  const snap: Record<string, { ms: number; cpu: number; rss: number; mib: number }> = {};
  let rows = 0;
  for (const tool of TOOLS) {
    progress(`3/4: snapshot of a ${mb.toFixed(0)} MiB database, ${tool}`);
    const dir = `${ctx.tmp}/w3-${tool}`;
    await Deno.mkdir(dir);
    const db = `${dir}/db`;
    await Deno.copyFile(src, db);
    if (!rows) rows = await maxId(db);
    const replica = `${dir}/replica`;
    const rep = new Replicator(ctx.tools, tool, [db, `file://${replica}`], `${dir}/replicate.log`);
    try {
      const ms = await waitReady(rep, replica);
      const s = await rep.stats();
      const files = await listReplica(replica);
      const mib = (await Deno.stat(files.snapshots[0])).size / MIB;
      snap[tool] = { ms, cpu: s.cpuSeconds, rss: s.peakRssMb, mib };
      await sleep(1500); // let both finish shipping the WAL of the start-up
    } finally {
      await rep.stop();
    }
  }
  // Restores: each tool from its own replica, and ours from v0.3.13's.
  const restores: [string, Tool, Tool, string[]][] = [
    ["ours", "ours", "ours", []],
    ["v0.3.13", "v0.3.13", "v0.3.13", []],
    ["ours from v0.3.13", "ours", "v0.3.13", []],
    // Like for like: v0.3.13 runs no integrity check.
    ["ours, no integrity check", "ours", "ours", ["-skip-integrity-check"]],
  ];
  const restoreTimes: Record<string, number[]> = {};
  for (let i = 0; i < restoreRuns; i++) {
    for (const [name, tool, owner, flags] of restores) {
      progress(`3: restore ${i + 1}/${restoreRuns}, ${name}`);
      const out = `${ctx.tmp}/w3-restored-${tool}-${owner}-${i}.db`;
      const argv = toolArgv(ctx.tools, tool, "restore", [
        ...flags,
        "-o",
        out,
        `file://${ctx.tmp}/w3-${owner}/replica`,
      ]);
      await flushDisk();
      const r = await runTimed(argv);
      if (!r.success) throw new Error(`restore (${name}) failed: ${r.stderr.trim().slice(-1000)}`);
      (restoreTimes[name] ??= []).push(r.ms / 1000);
      const got = await maxId(out);
      if (got !== rows) throw new Error(`restore (${name}) has ${got} rows, want ${rows}`);
      for (const p of [out, `${out}-wal`, `${out}-shm`]) await Deno.remove(p).catch(() => {});
    }
  }
  const restoreSec: Record<string, number> = {};
  for (const [name, times] of Object.entries(restoreTimes)) restoreSec[name] = median(times);
  progress("3: cp of the database file");
  const cpTimes: number[] = [];
  for (let i = 0; i < Math.max(restoreRuns, 2); i++) {
    const out = `${ctx.tmp}/w3-cp-${i}.db`;
    await flushDisk();
    cpTimes.push((await runChecked({ cmd: "cp", args: [src, out] })).ms / 1000);
    await Deno.remove(out);
  }
  const cp = median(cpTimes);

  const r = ctx.report;
  const o = snap["ours"], t = snap["v0.3.13"];
  r.num(`snapshot of ${mb.toFixed(0)} MiB db: start → file complete (s)`, o.ms / 1000, t.ms / 1000);
  r.num("snapshot throughput (MiB/s)", mb / (o.ms / 1000), mb / (t.ms / 1000), 1);
  r.num("snapshot file size (MiB)", o.mib, t.mib, 1);
  r.num("replicator CPU, start → snapshot (s)", o.cpu, t.cpu);
  r.num("replicator peak RSS, start → snapshot (MiB)", o.rss, t.rss, 1);
  r.num("restore from own replica (s)", restoreSec["ours"], restoreSec["v0.3.13"]);
  r.num(
    "restore throughput, own replica (MiB/s)",
    mb / restoreSec["ours"],
    mb / restoreSec["v0.3.13"],
    1,
  );
  r.num(
    "restore, ours without integrity_check (s)",
    restoreSec["ours, no integrity check"],
    restoreSec["v0.3.13"],
  );
  r.num(
    "ours restoring v0.3.13's replica (s) vs v0.3.13",
    restoreSec["ours from v0.3.13"],
    restoreSec["v0.3.13"],
  );
  r.num(
    "  … throughput (MiB/s)",
    mb / restoreSec["ours from v0.3.13"],
    mb / restoreSec["v0.3.13"],
    1,
  );
  r.text(
    `cp of the db file, the limit (s / MiB/s)`,
    `${fmt(cp, 3)} / ${fmt(mb / cp, 0)}`,
    `${fmt(cp, 3)} / ${fmt(mb / cp, 0)}`,
  );
  r.notes.push(
    `Large database: ${mb.toFixed(1)} MiB, ${rows} rows (random hex + repeated text), cached in ` +
      `.bench/. Snapshot time runs from spawning \`replicate\` (process start-up included) to the ` +
      `snapshot file being renamed into place. Restore is the wall time of the \`restore\` CLI ` +
      `process (median of ${restoreRuns}; ours includes Deno start-up and PRAGMA ` +
      `integrity_check, v0.3.13 does no integrity check), output checked for the row count. ` +
      `cp is plain \`cp\` (no fsync), page cache warm.`,
  );
}

/** Workload 6: S3 request counts. */
async function s3Workload(ctx: Ctx): Promise<void> {
  const s = ctx.settings;
  const why = await s3Unavailable();
  const r = ctx.report;
  if (why) {
    r.text("S3 requests/hour, idle", `n/a (${why})`, "n/a");
    r.text(`S3 requests/hour, ${s.s3CommitsPerSecond} commits/s`, `n/a (${why})`, "n/a");
    return;
  }
  progress("6: S3 requests against moto (both tools at once)");
  const res = await runS3Workload(ctx.tools, {
    dir: ctx.tmp,
    idleSeconds: s.s3IdleSeconds,
    loadSeconds: s.s3LoadSeconds,
    commitsPerSecond: s.s3CommitsPerSecond,
  });
  const o = res["ours"], t = res["v0.3.13"];
  r.num("S3 requests/hour, idle", o.idlePerHour, t.idlePerHour, 0);
  r.num(`S3 requests/hour, ${s.s3CommitsPerSecond} commits/s`, o.loadPerHour, t.loadPerHour, 0);
  r.num(
    "replicator CPU per idle minute (s)",
    o.idleCpuSeconds * 60 / s.s3IdleSeconds,
    t.idleCpuSeconds * 60 / s.s3IdleSeconds,
    3,
  );
  r.notes.push(
    `S3: moto behind one recording proxy per tool, default settings (sync-interval 1 s), both ` +
      `tools at once; ${s.s3IdleSeconds} s idle then ${s.s3LoadSeconds} s at ` +
      `${s.s3CommitsPerSecond} commits/s, counts × ${3600 / s.s3IdleSeconds} per hour (hourly ` +
      `retention checks fall outside the windows). Idle: ours ${o.idleRequests} (${o.idleKinds}), ` +
      `v0.3.13 ${t.idleRequests} (${t.idleKinds}). Load: ours ${o.loadRequests} (${o.loadKinds}), ` +
      `v0.3.13 ${t.loadRequests} (${t.loadKinds}).`,
  );
}

/** Workload 7: a writer without a busy timeout, A and B (see lock.ts). */
async function lockWorkload(ctx: Ctx): Promise<void> {
  const s = ctx.settings;
  const res = await runLockWorkload(ctx.tools, {
    dir: ctx.tmp,
    singles: s.lockSingles,
    rounds: s.lockRounds,
    bulkRows: s.lockBulkRows,
    roundSingles: s.lockRoundSingles,
    forcedSingles: s.lockForcedSingles,
  });
  const r = ctx.report;
  const o = res["ours"], t = res["v0.3.13"];
  const failed = (metric: string, f: (x: LockToolResult) => [number, number]) => {
    const [of, oTotal] = f(o), [tf, tTotal] = f(t);
    r.text(metric, `${of} / ${oTotal}`, `${tf} / ${tTotal}`);
  };
  const a = `A: ${s.lockSingles} single-row commits`;
  const b = `B: ${s.lockRounds} × (${s.lockBulkRows}-row INSERT + ${s.lockRoundSingles} rows)`;
  failed(`no busy timeout, ${a}: failed`, (x) => [x.a.singlesFailed, x.a.singles]);
  failed(`no busy timeout, B: failed single-row commits`, (x) => [x.b.singlesFailed, x.b.singles]);
  failed(`no busy timeout, B: failed ${s.lockBulkRows}-row INSERTs`, (x) => [
    x.b.bulksFailed,
    x.b.bulks,
  ]);
  lockRows(r, "A", o.a.lock);
  lockRows(r, "B", o.b.lock);
  const c = `C: ${s.lockForcedSingles} commits, forced checkpoints`;
  r.num(`${c}: RESTART checkpoints`, o.c.restarts, t.c.restarts, 0);
  lockRows(r, "C", o.c.lock);
  r.num(`${c}, .timeout 5000: longest commit (ms)`, o.c.latency?.max, t.c.latency?.max, 0);
  r.num(`${c}, .timeout 5000: commits over 2 ms`, o.c.latency?.over2ms, t.c.latency?.over2ms, 0);
  r.num(`${c}, .timeout 5000: writer (s)`, o.c.seconds, t.c.seconds, 3);
  r.num(`${c}: WAL peak (MiB)`, o.c.walPeakBytes / MIB, t.c.walPeakBytes / MIB, 1);
  failed(`${c}, no busy timeout: failed`, (x) => [
    x.cNoTimeout.singlesFailed,
    x.cNoTimeout.singles,
  ]);
  r.notes.push(
    `No busy timeout: one \`sqlite3\` process (no \`.timeout\`, \`.bail off\`) fed one ` +
      `statement per line, each its own autocommit transaction; ${a}; ${b}, the bulk rows ` +
      "~140 bytes from INSERT … SELECT over a recursive CTE. Each on a fresh WAL database with " +
      "its own replicator (one config file for both tools: default settings, a file replica, " +
      "`addr:`), started once the first snapshot and WAL segment were on the replica. A failure " +
      "is an error line of the CLI, classified by the line number it names; every count was " +
      "checked against the rows in the table afterwards. Writer wall time A/B: ours " +
      `${fmt(o.a.seconds, 3)}/${fmt(o.b.seconds, 3)} s, v0.3.13 ` +
      `${fmt(t.a.seconds, 3)}/${fmt(t.b.seconds, 3)} s.`,
  );
  r.notes.push(
    "Write lock: our `litestream_write_lock_count`, `…_seconds` (differences from the writer's " +
      "start until the replica held a last row committed with a busy timeout) and " +
      "`…_max_seconds` (longest hold since start-up; before the writer: " +
      `A ${fmt(o.a.lockMaxBeforeMs, 2)} ms, B ${fmt(o.b.lockMaxBeforeMs, 2)} ms). ` +
      "v0.3.13 has no such metric. Goal: longest hold ≤ 2 ms and no failed commit in A or B.",
  );
  r.notes.push(
    `Forced checkpoints (C): the same single-row INSERTs back to back with ` +
      `\`min-checkpoint-page-count: 100\` and \`max-checkpoint-page-count: 400\` for both tools; ` +
      'RESTART checkpoints from each tool\'s `litestream_checkpoint_count{mode="RESTART"}`. ' +
      "With `.timeout 5000` and `.timer on`, the longest commit is the CLI's own time of its " +
      "slowest statement (1 ms resolution; a statement that finds the lock taken sleeps in " +
      "SQLite's busy handler, 1 ms at first): the stall a checkpoint caused, in either tool. " +
      "WAL peak: the `-wal` file's size sampled every 2 ms. Ours: the lock-free backfill runs " +
      "until the frames left behind are few, then the write lock covers their copy and " +
      "backfill (two fsyncs). Without a busy timeout every statement that meets a hold fails.",
  );
  for (const [tool, x] of Object.entries(res)) {
    for (
      const [name, w] of [["A", x.a], ["B", x.b], ["C", x.c], [
        "C without timeout",
        x.cNoTimeout,
      ]] as const
    ) {
      if (w.settleError) {
        r.notes.push(`WARNING: ${tool}, ${name}: ${w.settleError}; lock figures end there.`);
      }
      if (!w.rowsMatch) {
        r.notes.push(
          `WARNING: ${tool}, ${name}: failure count disagrees with the table (${w.rowsNote}).`,
        );
      }
      const failures = w.singlesFailed + w.bulksFailed;
      if (w.lockedFailures < failures) {
        r.notes.push(
          `WARNING: ${tool}, ${name}: ${failures - w.lockedFailures} failure(s) other than ` +
            `"database is locked", first: ${w.otherError}`,
        );
      }
      if (tool === "ours" && failures > 0 && w.lock?.count === 0) {
        r.notes.push(
          `WARNING: ours, ${name}: ${failures} failed commits but litestream_write_lock_count ` +
            "did not move: is the metric wired?",
        );
      }
    }
  }
}

/** Workload 9: restores, each with CPU and peak RSS (see restore_wal.ts). */
async function restoreWalWorkload(ctx: Ctx): Promise<void> {
  const q = ctx.settings.quick;
  const res = await runRestoreWalWorkload(ctx.tools, {
    dir: ctx.tmp,
    commits: ctx.settings.commits,
    txnMb: q ? 8 : 20,
    bigMb: ctx.settings.bigMb,
    runs: q ? 1 : 3,
  });
  for (const x of res.rows) ctx.report.num(x.metric, x.ours, x.theirs, x.digits);
  ctx.report.notes.push(...res.notes);
}

/** Workload 8: large transactions, and the RSS floor (see big_txn.ts). */
async function bigTxnWorkload(ctx: Ctx): Promise<void> {
  const q = ctx.settings.quick;
  const r = ctx.report;
  progress("8: RSS floor: an idle deno run, idle replicators");
  const floor = await measureFloor(ctx.tools, `${ctx.tmp}/w8-floor`);
  r.num("RSS floor: idle `deno run` of a timer (MiB)", floor.denoIdle, NaN, 1);
  r.num(
    "replicate, one idle db (MiB)",
    floor.replicateIdle["ours"],
    floor.replicateIdle["v0.3.13"],
    1,
  );
  for (const [txnMb, count] of q ? [[20, 2], [64, 1]] : [[20, 5], [256, 1]]) {
    const res = await runBigTxnWorkload(ctx.tools, { dir: ctx.tmp, txnMb, count });
    const out = bigTxnRows({ txnMb, count }, res);
    for (const x of out.rows) r.num(x.metric, x.ours, x.theirs, x.digits);
    r.notes.push(...out.notes);
  }
}

/** Workload 10: many databases in one daemon (see many_dbs.ts). */
async function manyDbsWorkload(ctx: Ctx): Promise<void> {
  const q = ctx.settings.quick;
  const idleSeconds = q ? 5 : 20;
  for (const dbs of q ? [50] : [200, 1000]) {
    const res = await runManyDbsWorkload(ctx.tools, { dir: ctx.tmp, dbs, idleSeconds });
    const out = manyDbsRows({ dbs, idleSeconds }, res);
    for (const x of out.rows) ctx.report.num(x.metric, x.ours, x.theirs, x.digits);
    ctx.report.notes.push(...out.notes);
  }
}

/** Workload 11: an application SQLite that commits frames without checksums (rollback.ts). */
async function rollbackWorkload(ctx: Ctx): Promise<void> {
  const runs = ctx.settings.quick ? 1 : 3;
  const out = await runRollbackWorkload(ctx.tools, { dir: ctx.tmp, runs });
  for (const x of out.rows) ctx.report.num(x.metric, x.ours, x.theirs, x.digits);
  ctx.report.notes.push(...out.notes);
}

async function main(args: string[]): Promise<number> {
  const settings = parseSettings(args);
  const started = performance.now();
  const tmp = await Deno.makeTempDir({ prefix: "litestream-bench-" });
  const cleanup = () => {
    killAll();
    if (!settings.keep) {
      try {
        Deno.removeSync(tmp, { recursive: true });
      } catch {
        // already gone
      }
    }
  };
  const onSignal = () => {
    cleanup();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);

  const report = new Report();
  const info = await machineInfo();
  info["load average at start"] = await loadAverage();
  let failed = false;
  try {
    await clkTck();
    const tools = await loadTools();
    info["v0.3.13"] = tools.oracleBin;
    // Warm up both (Deno's module cache) and note their start-up cost.
    const startup: Record<string, number> = {};
    for (const tool of TOOLS) {
      const times: number[] = [];
      for (let i = 0; i < 3; i++) {
        times.push((await runChecked(toolArgv(tools, tool, "version", []))).ms);
      }
      startup[tool] = median(times.slice(1));
    }
    report.num("process start-up: `version` (ms)", startup["ours"], startup["v0.3.13"], 0);
    const ctx: Ctx = { settings, tools, tmp, report };
    const workloads: [number[], string, (c: Ctx) => Promise<void>][] = [
      [[1, 5], "writer slowdown", writerWorkload],
      [[2], "lag", lagWorkload],
      [[3, 4, 5], "snapshot/restore", bigDbWorkload],
      [[6], "S3 requests", s3Workload],
      [[7], "no busy timeout", lockWorkload],
      [[8], "large transactions", bigTxnWorkload],
      [[9], "restores", restoreWalWorkload],
      [[10], "many databases", manyDbsWorkload],
      [[11], "unchecksummed commits", rollbackWorkload],
    ];
    for (const [nums, name, fn] of workloads) {
      if (!nums.some((x) => settings.only.has(x))) continue;
      try {
        await fn(ctx);
      } catch (err) {
        failed = true;
        const msg = err instanceof Error ? err.message : String(err);
        progress(`${name} failed: ${msg}`);
        report.text(`${name}`, "error", "error");
        report.notes.push(`ERROR in ${name}: ${msg.split("\n").join(" / ").slice(0, 800)}`);
      }
    }
  } finally {
    cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }

  info["load average at end"] = await loadAverage();
  const lines: string[] = [];
  lines.push(`# Benchmark: ours vs Litestream v0.3.13${settings.quick ? " (--quick)" : ""}`);
  lines.push("");
  for (const [k, v] of Object.entries(info)) lines.push(`- ${k}: ${v}`);
  lines.push(`- total bench time: ${((performance.now() - started) / 1000).toFixed(0)} s`);
  lines.push("");
  lines.push("ratio = ours / v0.3.13 (for times lower is better for ours; for MiB/s higher).");
  lines.push("");
  lines.push(report.markdown());
  lines.push("");
  for (const n of report.notes) lines.push(`- ${n}`);
  const text = lines.join("\n") + "\n";
  print();
  print(text);
  await Deno.mkdir(`${REPO}/.bench`, { recursive: true });
  await Deno.writeTextFile(`${REPO}/.bench/results.md`, text);
  progress(`results written to ${REPO}/.bench/results.md`);
  if (settings.keep) progress(`kept ${tmp}`);
  return failed ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
