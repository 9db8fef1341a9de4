/**
 * Workload 8: large transactions. One `replicate` process per run and a file replica; a
 * `sqlite3` process commits `count` transactions of `txnMb` MiB each (new rows, half random
 * bytes and half zeros, plus one row carrying marker k, all in one transaction), waiting
 * after each until the replica holds marker k. Measured: the replicator's CPU (user + sys,
 * from just before the first transaction to the replica holding the last), its peak RSS
 * (VmHWM, start-up included) and the lag from each commit to its marker on the replica.
 *
 * Runs: ours at its default sync interval (20 ms for a file replica), ours at v0.3.13's
 * (`sync-interval: 1s`), and v0.3.13 (default, 1 s).
 *
 * Alone: `deno run -A --lock=tests/deno.lock scripts/bench/big_txn.ts [--txn-mb=20] [--count=5]
 * [--runs=ours,ours-1s,v0.3.13]`
 *
 * @module
 */
import {
  loadTools,
  Replicator,
  runTimed,
  type Tool,
  TOOLS,
  type ToolSet,
  track,
  waitReady,
} from "./tools.ts";
import { bigTxnSql, createDb } from "./sqlite.ts";
import { fileReplica, writeReplicateConfig } from "./config.ts";
import { clkTck, fmt, median, print, procStats, progress, sleep, type TableRow } from "./util.ts";

/** One configuration of the workload. */
export type BigTxnRun = "ours" | "ours-1s" | "v0.3.13";

/** All runs, in table order. */
export const BIG_TXN_RUNS: readonly BigTxnRun[] = ["ours", "ours-1s", "v0.3.13"];

/** Figures of one run. */
export interface BigTxnResult {
  /** Replicator CPU seconds from before the first transaction to the last on the replica. */
  cpu: number;
  /** Replicator peak RSS (VmHWM), MiB. */
  peakRssMb: number;
  /** Commit → marker on the replica, per transaction, ms. */
  lagsMs: number[];
  /** Wall time of each writer transaction, s. */
  writerSeconds: number[];
}

/** Options of {@linkcode runBigTxnWorkload}. */
export interface BigTxnOptions {
  /** Directory for databases, replicas, configs and logs. */
  dir: string;
  /** Size of each transaction's WAL, MiB. */
  txnMb: number;
  /** Transactions per run. */
  count: number;
  /** Which runs. @default {BIG_TXN_RUNS} */
  runs?: readonly BigTxnRun[];
}

function toolOf(run: BigTxnRun): Tool {
  return run === "v0.3.13" ? "v0.3.13" : "ours";
}

/** Runs one configuration on a fresh database. */
async function runOne(tools: ToolSet, run: BigTxnRun, o: BigTxnOptions): Promise<BigTxnResult> {
  const dir = `${o.dir}/w8-${o.txnMb}mb-${run}`;
  await Deno.mkdir(dir, { recursive: true });
  const db = `${dir}/db`, replica = `${dir}/replica`, config = `${dir}/litestream.yml`;
  await createDb(db);
  await writeReplicateConfig(config, {
    db,
    replica: fileReplica(replica, run === "ours-1s" ? { "sync-interval": "1s" } : {}),
  });
  const rep = new Replicator(tools, toolOf(run), ["-config", config], `${dir}/replicate.log`);
  try {
    await waitReady(rep, replica);
    await sleep(500);
    const s0 = await rep.stats();
    const lagsMs: number[] = [], writerSeconds: number[] = [];
    for (let k = 1; k <= o.count; k++) {
      const w = await runTimed({ cmd: "sqlite3", args: [db] }, bigTxnSql(k, o.txnMb));
      if (!w.success) throw new Error(`sqlite3 writer failed: ${w.stderr.trim()}`);
      const committed = performance.now();
      writerSeconds.push(w.ms / 1000);
      await rep.waitForMarker(replica, k, `${run}'s replica to hold transaction ${k}`, {
        timeoutMs: 300_000,
        newest: 3,
        label: run,
      });
      lagsMs.push(performance.now() - committed);
    }
    const s1 = await rep.stats();
    return { cpu: s1.cpuSeconds - s0.cpuSeconds, peakRssMb: s1.peakRssMb, lagsMs, writerSeconds };
  } finally {
    await rep.stop();
    // The databases are large: do not keep them for the rest of the bench.
    await Deno.remove(db).catch(() => {});
  }
}

/** Runs the workload for each configuration in turn. */
export async function runBigTxnWorkload(
  tools: ToolSet,
  o: BigTxnOptions,
): Promise<Partial<Record<BigTxnRun, BigTxnResult>>> {
  const out: Partial<Record<BigTxnRun, BigTxnResult>> = {};
  for (const run of o.runs ?? BIG_TXN_RUNS) {
    progress(`8: ${o.count} × ${o.txnMb} MiB transactions, ${run} replicating`);
    out[run] = await runOne(tools, run, o);
  }
  return out;
}

/** Resident memory of processes that do nothing, MiB: where Deno's floor lies. */
export interface Floor {
  /** `deno run` of a script that only keeps a timer. */
  denoIdle: number;
  /** `replicate` of one small database to a file replica, idle, per tool. */
  replicateIdle: Record<Tool, number>;
}

/** Measures {@linkcode Floor}: each process is read 3 s after it started (or was ready). */
export async function measureFloor(tools: ToolSet, dir: string): Promise<Floor> {
  await Deno.mkdir(dir, { recursive: true });
  const script = `${dir}/idle.ts`;
  await Deno.writeTextFile(script, "setInterval(() => {}, 1000);\n");
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", script],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  track(child);
  let denoIdle = NaN;
  try {
    await sleep(3000);
    denoIdle = (await procStats(child.pid))?.rssMb ?? NaN;
  } finally {
    child.kill("SIGKILL");
    await child.status;
  }
  const replicateIdle = {} as Record<Tool, number>;
  for (const tool of TOOLS) {
    const db = `${dir}/idle-${tool}.db`, replica = `${dir}/idle-${tool}-replica`;
    await createDb(db);
    const rep = new Replicator(tools, tool, [db, `file://${replica}`], `${dir}/idle-${tool}.log`);
    try {
      await waitReady(rep, replica);
      await sleep(3000);
      replicateIdle[tool] = (await rep.stats()).rssMb;
    } finally {
      await rep.stop();
    }
  }
  return { denoIdle, replicateIdle };
}

/** The table rows and notes of one load (`count` × `txnMb` MiB). */
export function bigTxnRows(
  o: { txnMb: number; count: number },
  res: Partial<Record<BigTxnRun, BigTxnResult>>,
): { rows: TableRow[]; notes: string[] } {
  const load = `${o.count} × ${o.txnMb} MiB txn${o.count > 1 ? "s" : ""}`;
  const ours = res["ours"], slow = res["ours-1s"], t = res["v0.3.13"];
  const rows: TableRow[] = [];
  const row = (metric: string, a: number | undefined, b: number | undefined, digits: number) =>
    rows.push({ metric, ours: a ?? NaN, theirs: b ?? NaN, digits });
  row(`replicate CPU, ${load}, sync-interval 1 s (s)`, slow?.cpu, t?.cpu, 2);
  row(`  … ours at its default 20 ms (s)`, ours?.cpu, t?.cpu, 2);
  row(`replicate peak RSS, ${load} (MiB)`, ours?.peakRssMb, t?.peakRssMb, 1);
  row(`  … ours at sync-interval 1 s (MiB)`, slow?.peakRssMb, t?.peakRssMb, 1);
  row(
    `${load}: commit → on replica, median (ms)`,
    ours ? median(ours.lagsMs) : NaN,
    t ? median(t.lagsMs) : NaN,
    0,
  );
  const writer = (r?: BigTxnResult) => r ? r.writerSeconds.map((x) => fmt(x, 2)).join("/") : "n/a";
  const notes = [
    `${load}: one \`sqlite3\` process per transaction inserts rows of 1000 random and 1000 ` +
    "zero bytes (the WAL grows by the transaction's size) and one marker row, in one " +
    "transaction; the next starts once the replica holds the marker. CPU (user + sys) runs " +
    "from just before the first transaction to the replica holding the last; peak RSS is " +
    "VmHWM since start-up. The lag includes the bench decoding the newest segments (the " +
    `whole transaction) to find the marker. Writer seconds: ours ${writer(ours)}, ours 1 s ` +
    `${writer(slow)}, v0.3.13 ${writer(t)}.`,
  ];
  return { rows, notes };
}

/** One line per run, for the standalone use. */
export function describe(run: BigTxnRun, r: BigTxnResult): string {
  return `${run}: cpu ${fmt(r.cpu)} s, peak RSS ${fmt(r.peakRssMb, 1)} MiB, lag median ${
    fmt(median(r.lagsMs), 0)
  } ms (max ${fmt(Math.max(...r.lagsMs), 0)}), writer ${
    r.writerSeconds.map((s) => fmt(s, 2)).join("/")
  } s`;
}

if (import.meta.main) {
  let txnMb = 20, count = 5, runs: BigTxnRun[] = [...BIG_TXN_RUNS];
  for (const a of Deno.args) {
    let m: RegExpExecArray | null;
    if ((m = /^--txn-mb=(\d+)$/.exec(a))) txnMb = Number(m[1]);
    else if ((m = /^--count=(\d+)$/.exec(a))) count = Number(m[1]);
    else if ((m = /^--runs=(.+)$/.exec(a))) runs = m[1].split(",") as BigTxnRun[];
    else throw new Error(`Unknown argument "${a}"`);
  }
  await clkTck();
  const tools = await loadTools();
  const dir = await Deno.makeTempDir({ prefix: "litestream-bigtxn-" });
  try {
    const res = await runBigTxnWorkload(tools, { dir, txnMb, count, runs });
    for (const run of runs) print(describe(run, res[run]!));
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
