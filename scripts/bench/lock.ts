/**
 * Workload 7: a writer that never set a busy timeout (the `sqlite3` CLI's default, and many
 * applications) while `replicate` runs. Every moment the replicator holds SQLite's write lock
 * is a failed commit for such a writer, so this counts the failures, checks them against the
 * rows the table really holds, and reads our `litestream_write_lock_*` metrics.
 *
 * - A: 2000 single-row INSERTs, one statement per line (each its own autocommit
 *   transaction), in one `sqlite3` process.
 * - B: three rounds of one 5000-row INSERT … SELECT (rows of ~150 bytes) followed by 300
 *   single-row INSERTs, in one `sqlite3` process.
 * - C: forced checkpoints, the only ones for which ours takes the write lock: 20000
 *   single-row INSERTs back to back with `max-checkpoint-page-count: 400` (and
 *   `min-checkpoint-page-count: 100`), once with a busy timeout (`.timeout 5000`, where the
 *   writer's own `.timer` shows the longest stall a checkpoint caused, in either tool) and
 *   once without (failed commits).
 *
 * Both tools run from the same config file apart from the binary: default settings, one file
 * replica, and `addr:` so that ours serves its metrics (v0.3.13 has no write-lock metric).
 *
 * @module
 */
import {
  Replicator,
  runChecked,
  runTimed,
  type Tool,
  TOOLS,
  type ToolSet,
  waitReady,
} from "./tools.ts";
import { createDb, insertRowSql } from "./sqlite.ts";
import { fileReplica, writeReplicateConfig } from "./config.ts";
import { progress, sleep, waitUntil } from "./util.ts";

/** What our replicator reports about its holds of SQLite's write lock. */
export interface LockFigures {
  /** `litestream_write_lock_count`: holds so far. */
  count: number;
  /** `litestream_write_lock_seconds`, in milliseconds: total time held. */
  totalMs: number;
  /** `litestream_write_lock_max_seconds`, in milliseconds: longest single hold. */
  maxMs: number;
}

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** The text `/metrics` on `127.0.0.1:<port>` answers; `undefined` if it does not answer. */
async function scrapeMetrics(port: number): Promise<string | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    const text = await res.text();
    return res.ok ? text : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Scrapes `/metrics` on `127.0.0.1:<port>` and sums the write-lock families over all
 * databases; `undefined` if the server does not answer or exports none of them.
 */
export async function scrapeWriteLock(port: number): Promise<LockFigures | undefined> {
  const text = await scrapeMetrics(port);
  if (text === undefined) return undefined;
  const values = (name: string) => metricValues(text, name);
  const count = values("litestream_write_lock_count");
  const seconds = values("litestream_write_lock_seconds");
  const max = values("litestream_write_lock_max_seconds");
  if (count.length + seconds.length + max.length === 0) return undefined;
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  return {
    count: sum(count),
    totalMs: sum(seconds) * 1000,
    maxMs: max.length > 0 ? Math.max(...max) * 1000 : NaN,
  };
}

/** Values of every sample of the family `name` in `text`, whose labels contain `labels`. */
function metricValues(text: string, name: string, labels = ""): number[] {
  return [...text.matchAll(new RegExp(`^${name}(\\{[^}]*\\})? (\\S+)$`, "gm"))]
    .filter((m) => (m[1] ?? "").includes(labels))
    .map((m) => Number(m[2]));
}

/** `litestream_checkpoint_count{mode="RESTART"}` summed over databases (both tools export it). */
async function scrapeRestartCheckpoints(port: number): Promise<number | undefined> {
  const text = await scrapeMetrics(port);
  if (text === undefined) return undefined;
  return metricValues(text, "litestream_checkpoint_count", 'mode="RESTART"')
    .reduce((a, b) => a + b, 0);
}

/** Lock figures over a stretch of time: counters as the difference, the longest hold as of the end. */
export function lockDelta(
  before: LockFigures | undefined,
  after: LockFigures | undefined,
): LockFigures | undefined {
  if (!before || !after) return after;
  return {
    count: after.count - before.count,
    totalMs: after.totalMs - before.totalMs,
    maxMs: after.maxMs,
  };
}

/** Waits until ours answers on its metrics port (v0.3.13's answer is not needed). */
export async function waitMetrics(rep: Replicator, port: number): Promise<void> {
  if (rep.tool !== "ours") return;
  await waitUntil(
    async () => {
      if (!rep.running) throw new Error(`${rep.tool} replicate exited:\n${rep.logTail()}`);
      return (await scrapeMetrics(port)) !== undefined;
    },
    `${rep.tool}'s metrics on 127.0.0.1:${port}`,
    30_000,
    20,
  );
}

/** Sizes of the two workloads. */
export interface LockWorkloadOptions {
  /** Directory for databases, replicas, configs and logs (one subdirectory per run). */
  dir: string;
  /** A: single-row INSERTs. @default {2000} */
  singles?: number;
  /** B: rounds. @default {3} */
  rounds?: number;
  /** B: rows of the bulk INSERT of each round. @default {5000} */
  bulkRows?: number;
  /** B: single-row INSERTs after each bulk INSERT. @default {300} */
  roundSingles?: number;
  /** C: single-row INSERTs back to back. @default {20000} */
  forcedSingles?: number;
}

/** The db settings of workload C: forced checkpoints every few hundred pages. */
export const FORCED_SETTINGS = {
  "min-checkpoint-page-count": 100,
  "max-checkpoint-page-count": 400,
};

/** Failures of one writer script, checked against the table. */
export interface ScriptResult {
  /** Single-row INSERTs run and failed. */
  singles: number;
  singlesFailed: number;
  /** Bulk INSERTs run and failed (0 and 0 in workload A). */
  bulks: number;
  bulksFailed: number;
  /** Failures whose message was "database is locked". */
  lockedFailures: number;
  /** The first other error message, if any. */
  otherError?: string;
  /** True if the table holds exactly the rows of the statements that did not fail. */
  rowsMatch: boolean;
  rowsNote: string;
  /** Writer wall time, in seconds. */
  seconds: number;
  /** Ours only: write-lock figures from the writer's start to the replica settling. */
  lock?: LockFigures;
  /** Ours only: the longest hold before the writer started (start-up, initial snapshot). */
  lockMaxBeforeMs?: number;
  /** With `timer`: the statements' times as the writer saw them, in ms (1 ms resolution). */
  latency?: { p50: number; p99: number; max: number; over2ms: number };
  /** RESTART checkpoints the tool counted while the writer ran (its `litestream_checkpoint_count`). */
  restarts?: number;
  /** Largest size of the `-wal` file seen (sampled every 2 ms while the writer ran). */
  walPeakBytes: number;
  /** Set if the replica never held the row committed after the writer (figures then partial). */
  settleError?: string;
}

/** How one run of a workload is set up. */
interface RunOptions extends ScriptOptions {
  /** Keys of the db's config entry, for both tools. */
  dbSettings?: Record<string, number>;
}

/** Every workload for one tool. */
export interface LockToolResult {
  a: ScriptResult;
  b: ScriptResult;
  /** C with a busy timeout. */
  c: ScriptResult;
  /** C without one. */
  cNoTimeout: ScriptResult;
}

/** Above every marker the workloads use: the commit that shows the replica has settled. */
const SENTINEL = 9_999_999;

/** One statement of a writer script, on its own line. */
interface Statement {
  sql: string;
  kind: "single" | "bulk";
  /** Rows it inserts. */
  rows: number;
}

/** One INSERT … SELECT of `rows` rows of ~150 bytes that carry no marker. */
function bulkInsertSql(round: number, rows: number): string {
  return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c" +
    ` WHERE x < ${rows}) INSERT INTO t (v) SELECT printf('bulk %d/%06d %s customer %d ordered` +
    ` item %d; status: shipped; carrier: %d; warehouse: north; priority: normal', ${round}, x,` +
    " hex(randomblob(16)), x % 997, x % 89, x % 7) FROM c;";
}

const ERROR_LINE_REGEXP = /^(?:Parse|Runtime) error near line (\d+): (.*)$/;
const TIMER_LINE_REGEXP = /^Run Time: real (\d+\.\d+) /;

/** How a writer script runs. */
interface ScriptOptions {
  /** The CLI's `.timeout` (a busy timeout); none if undefined. */
  busyTimeoutMs?: number;
  /** Time every statement with the CLI's `.timer` (1 ms resolution). */
  timer?: boolean;
}

/**
 * Feeds `statements` to one `sqlite3` process, one per line, with `.bail off` (the CLI's
 * default when not interactive, set anyway) and no busy timeout unless asked, and returns
 * which failed, by the line number the CLI names in each error, and the statements' times.
 */
async function runScript(
  db: string,
  statements: Statement[],
  options: ScriptOptions = {},
): Promise<
  { failedLines: Map<number, string>; unmatched: string[]; seconds: number; timesMs: number[] }
> {
  const pre = [
    ...(options.busyTimeoutMs !== undefined ? [`.timeout ${options.busyTimeoutMs}`] : []),
    ...(options.timer ? [".timer on"] : []),
  ];
  const script = [...pre, ...statements.map((s) => s.sql)].join("\n") + "\n";
  const r = await runTimed({ cmd: "sqlite3", args: ["-cmd", ".bail off", db] }, script);
  const failedLines = new Map<number, string>();
  const unmatched: string[] = [];
  for (const line of r.stderr.split("\n")) {
    if (!line.trim()) continue;
    const m = ERROR_LINE_REGEXP.exec(line);
    // The CLI numbers lines of its input: the dot-commands come first.
    if (m) failedLines.set(Number(m[1]) - pre.length, m[2]);
    else unmatched.push(line);
  }
  const timesMs: number[] = [];
  for (const line of r.stdout.split("\n")) {
    const m = TIMER_LINE_REGEXP.exec(line);
    if (m) timesMs.push(Number(m[1]) * 1000);
  }
  return { failedLines, unmatched, seconds: r.ms / 1000, timesMs };
}

/** Rows of `t` carrying a marker (single-row INSERTs) and not (bulk rows, and the first row). */
async function countRows(db: string): Promise<{ marked: number; other: number }> {
  const r = await runChecked({
    cmd: "sqlite3",
    args: [
      "-cmd",
      ".timeout 10000",
      db,
      "SELECT count(*) FILTER (WHERE v LIKE 'LSB:%'), count(*) FILTER (WHERE v NOT LIKE 'LSB:%')" +
      " FROM t;",
    ],
  });
  const [marked, other] = r.stdout.trim().split("|").map(Number);
  return { marked, other };
}

/**
 * Runs one writer script against a fresh database replicated by `tool`, then commits a
 * sentinel row (with a busy timeout) and waits until the replica holds it.
 */
async function runOne(
  tools: ToolSet,
  tool: Tool,
  dir: string,
  statements: Statement[],
  options: RunOptions = {},
): Promise<ScriptResult> {
  await Deno.mkdir(dir, { recursive: true });
  const db = `${dir}/db`;
  const replica = `${dir}/replica`;
  const config = `${dir}/litestream.yml`;
  await createDb(db);
  const before = await countRows(db);
  const port = freePort();
  await writeReplicateConfig(config, {
    db,
    replica: fileReplica(replica),
    dbSettings: options.dbSettings,
    addr: `127.0.0.1:${port}`,
  });
  const rep = new Replicator(tools, tool, ["-config", config], `${dir}/replicate.log`);
  try {
    await waitReady(rep, replica);
    await waitMetrics(rep, port);
    await sleep(500);
    const lock0 = tool === "ours" ? await scrapeWriteLock(port) : undefined;
    const restarts0 = await scrapeRestartCheckpoints(port);

    let walPeakBytes = 0, writing = true;
    const sampler = (async () => {
      while (writing) {
        try {
          walPeakBytes = Math.max(walPeakBytes, (await Deno.stat(`${db}-wal`)).size);
        } catch { /* between a TRUNCATE and the next write */ }
        await sleep(2);
      }
    })();
    const script = await runScript(db, statements, options).finally(() => writing = false);
    await sampler;
    const { failedLines, unmatched, seconds, timesMs } = script;
    const restarts1 = await scrapeRestartCheckpoints(port);
    const after = await countRows(db);

    // Let the replica settle: a commit that waits for the lock, then until it is replicated.
    await runChecked({
      cmd: "sqlite3",
      args: ["-cmd", ".timeout 10000", "-bail", db, insertRowSql(SENTINEL)],
    });
    let settleError: string | undefined;
    try {
      await rep.waitForMarker(replica, SENTINEL, `${tool}'s replica to hold the last row`);
    } catch (err) {
      // Reported beside the figures: one tool stuck must not hide the other's results.
      settleError = err instanceof Error ? err.message.split("\n")[0] : String(err);
    }
    const lock1 = tool === "ours" ? await scrapeWriteLock(port) : undefined;

    let singles = 0, singlesFailed = 0, bulks = 0, bulksFailed = 0, lockedFailures = 0;
    let wantMarked = 0, wantOther = 0;
    let otherError = unmatched[0];
    statements.forEach((s, i) => {
      const error = failedLines.get(i + 1);
      if (s.kind === "single") singles++;
      else bulks++;
      if (error === undefined) {
        if (s.kind === "single") wantMarked += s.rows;
        else wantOther += s.rows;
        return;
      }
      if (s.kind === "single") singlesFailed++;
      else bulksFailed++;
      if (/database is locked/.test(error)) lockedFailures++;
      else otherError ??= `line ${i + 1}: ${error}`;
    });
    const gotMarked = after.marked - before.marked, gotOther = after.other - before.other;
    const rowsMatch = gotMarked === wantMarked && gotOther === wantOther &&
      failedLines.size === singlesFailed + bulksFailed;
    const rowsNote = `rows: ${gotMarked} single + ${gotOther} bulk in the table, ` +
      `${wantMarked} + ${wantOther} expected from the errors`;
    return {
      singles,
      singlesFailed,
      bulks,
      bulksFailed,
      lockedFailures,
      otherError,
      rowsMatch,
      rowsNote,
      seconds,
      lock: lockDelta(lock0, lock1),
      lockMaxBeforeMs: lock0?.maxMs,
      latency: options.timer ? latencyFigures(timesMs) : undefined,
      restarts: restarts0 !== undefined && restarts1 !== undefined
        ? restarts1 - restarts0
        : undefined,
      walPeakBytes,
      settleError,
    };
  } finally {
    await rep.stop();
  }
}

/** p50, p99 and the longest of `timesMs`, and how many exceed 2 ms. */
function latencyFigures(timesMs: number[]): ScriptResult["latency"] {
  if (timesMs.length === 0) return undefined;
  const sorted = [...timesMs].sort((a, b) => a - b);
  const q = (p: number) => sorted[Math.floor(p * (sorted.length - 1))];
  return {
    p50: q(0.5),
    p99: q(0.99),
    max: sorted.at(-1)!,
    over2ms: sorted.filter((t) => t > 2).length,
  };
}

/** Statements of workload A: `n` single-row INSERTs. */
function workloadA(n: number): Statement[] {
  return Array.from({ length: n }, (_, i) => ({
    sql: insertRowSql(i + 1),
    kind: "single" as const,
    rows: 1,
  }));
}

/** Statements of workload B: `rounds` × (one INSERT of `bulkRows` rows, `singles` INSERTs). */
function workloadB(rounds: number, bulkRows: number, singles: number): Statement[] {
  const out: Statement[] = [];
  let k = 0;
  for (let round = 1; round <= rounds; round++) {
    out.push({ sql: bulkInsertSql(round, bulkRows), kind: "bulk", rows: bulkRows });
    for (let i = 0; i < singles; i++) out.push({ sql: insertRowSql(++k), kind: "single", rows: 1 });
  }
  return out;
}

/** Runs workloads A and B for both tools (ours first), each on a fresh database and daemon. */
export async function runLockWorkload(
  tools: ToolSet,
  options: LockWorkloadOptions,
): Promise<Record<Tool, LockToolResult>> {
  const {
    singles = 2000,
    rounds = 3,
    bulkRows = 5000,
    roundSingles = 300,
    forcedSingles = 20000,
  } = options;
  const out = {} as Record<Tool, LockToolResult>;
  for (const tool of TOOLS) {
    progress(`7: no busy timeout, A: ${singles} single-row commits, ${tool} replicating`);
    const a = await runOne(tools, tool, `${options.dir}/w7a-${tool}`, workloadA(singles));
    progress(
      `7: no busy timeout, B: ${rounds} × (${bulkRows}-row INSERT + ${roundSingles} single rows),` +
        ` ${tool} replicating`,
    );
    const b = await runOne(
      tools,
      tool,
      `${options.dir}/w7b-${tool}`,
      workloadB(rounds, bulkRows, roundSingles),
    );
    const forced = workloadA(forcedSingles);
    progress(`7: forced checkpoints, C: ${forcedSingles} commits with .timeout 5000, ${tool}`);
    const c = await runOne(tools, tool, `${options.dir}/w7c-${tool}`, forced, {
      dbSettings: FORCED_SETTINGS,
      busyTimeoutMs: 5000,
      timer: true,
    });
    progress(`7: forced checkpoints, C: ${forcedSingles} commits, no busy timeout, ${tool}`);
    const cNoTimeout = await runOne(tools, tool, `${options.dir}/w7d-${tool}`, forced, {
      dbSettings: FORCED_SETTINGS,
    });
    out[tool] = { a, b, c, cNoTimeout };
  }
  return out;
}
