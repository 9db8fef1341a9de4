/**
 * Workload 10: many databases in one daemon. `replicate -config` with `n` small WAL-mode
 * databases, each with its own file replica (default settings). Phases:
 *
 * 1. start: spawn until every replica holds a snapshot and a WAL segment;
 * 2. commits: three rounds of one single-row commit to every database (one `sqlite3`
 *    process opening each database in turn), until every replica holds the third row;
 * 3. idle: `idleSeconds` with no writes.
 *
 * Measured: the replicator's CPU (user + sys) for phases 1 + 2 and for phase 3, and its
 * peak RSS (VmHWM) at the end of each.
 *
 * Alone: `deno run -A --lock=tests/deno.lock scripts/bench/many_dbs.ts [--dbs=200] [--idle=20]
 * [--tools=ours,v0.3.13] [--cpu-prof=DIR] [--threads] [--all-permissions]`: `--cpu-prof` writes a V8
 * CPU profile of our replicator into DIR, `--threads` prints the CPU of each thread of the
 * replicator after the commits, `--all-permissions` runs ours with `-A` instead of the task's
 * exact permissions (Deno then checks no path: what those checks cost).
 *
 * @module
 */
import { loadTools, Replicator, runChecked, type Tool, TOOLS, type ToolSet } from "./tools.ts";
import { createDb, insertRowSql } from "./sqlite.ts";
import { findMarkers, listReplica } from "./replica_watch.ts";
import { lz4Decompress } from "../../src/lz4.ts";
import { clkTck, fmt, print, progress, sleep, type TableRow, waitUntil } from "./util.ts";

/** Figures of one tool. */
export interface ManyDbsResult {
  /** Seconds from spawn until every replica held its snapshot. */
  startSeconds: number;
  /** CPU seconds from spawn until every replica held its snapshot. */
  startCpu: number;
  /** CPU seconds per thread name after the start and after the commits (with `threads`). */
  threadCpu?: {
    start: Record<string, number>;
    busy: Record<string, number>;
    idle: Record<string, number>;
  };
  /** CPU seconds from spawn until every replica held the third commit. */
  busyCpu: number;
  /** Peak RSS (MiB) by then. */
  busyPeakRssMb: number;
  /** CPU seconds during the idle phase. */
  idleCpu: number;
  /** Peak RSS (MiB) at the end of the idle phase. */
  idlePeakRssMb: number;
  /** RSS (MiB) at the end of the idle phase. */
  idleRssMb: number;
}

/** Options of {@linkcode runManyDbsWorkload}. */
export interface ManyDbsOptions {
  /** Directory for databases, replicas, config and log. */
  dir: string;
  /** Databases in the daemon. */
  dbs: number;
  /** Length of the idle phase, seconds. */
  idleSeconds: number;
  /** Tools to run. @default {TOOLS} */
  tools?: readonly Tool[];
  /** Write a V8 CPU profile of our replicator into this directory. */
  cpuProfDir?: string;
  /** Record the CPU of each thread of the replicator after the commits. */
  threads?: boolean;
}

/** Rounds of one commit per database. */
const ROUNDS = 3;

/** Markers of the commits: round r of database i carries `r * 10^6 + i`. */
function markerOf(round: number, i: number): number {
  return round * 1_000_000 + i;
}

/** True once the replica at `root` holds a WAL segment with marker `k`. */
async function replicaHolds(root: string, k: number, seen: Set<string>): Promise<boolean> {
  const { segments } = await listReplica(root);
  for (const path of segments.reverse()) {
    // Keyed by size and time too: our replicator merges segments into the first of them.
    let key: string;
    let data: Uint8Array;
    try {
      const st = await Deno.stat(path);
      key = `${path} ${st.size} ${st.mtime?.getTime()}`;
      if (seen.has(key)) continue;
      data = lz4Decompress(await Deno.readFile(path));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue;
      throw err;
    }
    seen.add(key);
    if (findMarkers(data).includes(k)) return true;
  }
  return false;
}

async function runOne(
  tools: ToolSet,
  tool: Tool,
  o: ManyDbsOptions,
  template: string,
): Promise<ManyDbsResult> {
  const dir = `${o.dir}/w10-${o.dbs}-${tool}`;
  await Deno.mkdir(`${dir}/dbs`, { recursive: true });
  const dbs: string[] = [], replicas: string[] = [];
  const yaml = ["dbs:"];
  for (let i = 0; i < o.dbs; i++) {
    const db = `${dir}/dbs/db${i}`, replica = `${dir}/replicas/r${i}`;
    await Deno.copyFile(template, db);
    dbs.push(db);
    replicas.push(replica);
    yaml.push(
      `  - path: ${JSON.stringify(db)}`,
      "    replicas:",
      "      - type: file",
      `        path: ${JSON.stringify(replica)}`,
    );
  }
  await Deno.writeTextFile(`${dir}/litestream.yml`, yaml.join("\n") + "\n");

  if (tool === "ours" && o.cpuProfDir) {
    tools = {
      ...tools,
      replicateFlags: [...tools.replicateFlags, "--cpu-prof", `--cpu-prof-dir=${o.cpuProfDir}`],
    };
  }
  const rep = new Replicator(
    tools,
    tool,
    ["-config", `${dir}/litestream.yml`],
    `${dir}/replicate.log`,
  );
  try {
    const pending = new Set(replicas.keys());
    await waitUntil(
      async () => {
        if (!rep.running) throw new Error(`${tool} replicate exited:\n${rep.logTail()}`);
        for (const i of [...pending]) {
          const f = await listReplica(replicas[i]);
          if (f.snapshots.length > 0 && f.segments.length > 0) pending.delete(i);
        }
        return pending.size === 0;
      },
      `${tool}'s ${o.dbs} initial snapshots`,
      600_000,
      200,
    );
    const startSeconds = (performance.now() - rep.startedAt) / 1000;
    const startCpu = (await rep.stats()).cpuSeconds;
    const startThreads = o.threads ? await threadCpuOf(rep.pid) : undefined;
    // One sqlite3 process commits one row to every database, three times over.
    const script = [".bail on"];
    for (let r = 1; r <= ROUNDS; r++) {
      for (let i = 0; i < o.dbs; i++) {
        script.push(`.open ${dbs[i]}`, ".timeout 10000", insertRowSql(markerOf(r, i)));
      }
    }
    await runChecked({ cmd: "sqlite3", args: [] }, script.join("\n") + "\n");
    const waiting = new Set(replicas.keys());
    const seen = replicas.map(() => new Set<string>());
    await waitUntil(
      async () => {
        if (!rep.running) throw new Error(`${tool} replicate exited:\n${rep.logTail()}`);
        for (const i of [...waiting]) {
          if (await replicaHolds(replicas[i], markerOf(ROUNDS, i), seen[i])) waiting.delete(i);
        }
        return waiting.size === 0;
      },
      `${tool}'s ${o.dbs} replicas to hold the last commits`,
      600_000,
      200,
    );
    const busy = await rep.stats();
    const busyThreads = o.threads ? await threadCpuOf(rep.pid) : undefined;
    await sleep(o.idleSeconds * 1000);
    const idle = await rep.stats();
    const threadCpu = startThreads && busyThreads &&
      { start: startThreads, busy: busyThreads, idle: await threadCpuOf(rep.pid) };
    return {
      startSeconds,
      startCpu,
      threadCpu,
      busyCpu: busy.cpuSeconds,
      busyPeakRssMb: busy.peakRssMb,
      idleCpu: idle.cpuSeconds - busy.cpuSeconds,
      idlePeakRssMb: idle.peakRssMb,
      idleRssMb: idle.rssMb,
    };
  } finally {
    await rep.stop(120_000);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** CPU seconds (user + sys) of each thread of process `pid`, summed by thread name. */
async function threadCpuOf(pid: number): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const tck = await clkTck();
  for await (const e of Deno.readDir(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = await Deno.readTextFile(`/proc/${pid}/task/${e.name}/stat`);
    } catch {
      continue; // the thread ended
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    out[name] = (out[name] ?? 0) + (Number(fields[11]) + Number(fields[12])) / tck;
  }
  return out;
}

/** Runs the workload for each tool in turn, each on fresh databases. */
export async function runManyDbsWorkload(
  tools: ToolSet,
  o: ManyDbsOptions,
): Promise<Partial<Record<Tool, ManyDbsResult>>> {
  await Deno.mkdir(o.dir, { recursive: true });
  const template = `${o.dir}/w10-${o.dbs}-template.db`;
  await createDb(template);
  const out: Partial<Record<Tool, ManyDbsResult>> = {};
  for (const tool of o.tools ?? TOOLS) {
    progress(`10: ${o.dbs} databases in one daemon, ${tool}`);
    out[tool] = await runOne(tools, tool, o, template);
  }
  return out;
}

/** The table rows and a note for one database count. */
export function manyDbsRows(
  o: { dbs: number; idleSeconds: number },
  res: Partial<Record<Tool, ManyDbsResult>>,
): { rows: TableRow[]; notes: string[] } {
  const ours = res["ours"], t = res["v0.3.13"];
  const rows: TableRow[] = [
    {
      metric: `${o.dbs} dbs, one daemon: CPU, start + ${ROUNDS} commits each (s)`,
      ours: ours?.busyCpu ?? NaN,
      theirs: t?.busyCpu ?? NaN,
      digits: 2,
    },
    {
      metric: `${o.dbs} dbs: peak RSS (MiB)`,
      ours: ours?.idlePeakRssMb ?? NaN,
      theirs: t?.idlePeakRssMb ?? NaN,
      digits: 1,
    },
    {
      metric: `${o.dbs} dbs: CPU in the next ${o.idleSeconds} idle seconds (s)`,
      ours: ours?.idleCpu ?? NaN,
      theirs: t?.idleCpu ?? NaN,
      digits: 2,
    },
  ];
  const at = (r?: ManyDbsResult) =>
    r
      ? `start ${fmt(r.startSeconds, 1)} s, peak RSS ${fmt(r.busyPeakRssMb, 1)} MiB after the ` +
        `commits, RSS ${fmt(r.idleRssMb, 1)} MiB after the idle spell`
      : "n/a";
  const notes = [
    `${o.dbs} dbs: one \`replicate -config\` with ${o.dbs} small databases, a file replica ` +
    `each, default settings; CPU (user + sys) from spawn until every replica held its third ` +
    `commit (one \`sqlite3\` process commits one row to each database, ${ROUNDS} rounds), then ` +
    `over ${o.idleSeconds} s without writes. Ours: ${at(ours)}; v0.3.13: ${at(t)}.`,
  ];
  return { rows, notes };
}

/** One line per tool, for the standalone use. */
export function describe(tool: Tool, r: ManyDbsResult): string {
  const list = (t: Record<string, number>) =>
    Object.entries(t).sort((a, b) => b[1] - a[1]).map(([name, cpu]) => `${name} ${fmt(cpu)}`)
      .join(", ");
  const threads = r.threadCpu
    ? `; threads after start: ${list(r.threadCpu.start)}; after the commits: ${
      list(r.threadCpu.busy)
    }; after the idle spell: ${list(r.threadCpu.idle)}`
    : "";
  return `${tool}: start ${fmt(r.startSeconds, 1)} s (cpu ${
    fmt(r.startCpu)
  } s); start + ${ROUNDS} commits: cpu ${fmt(r.busyCpu)} s, peak RSS ${
    fmt(r.busyPeakRssMb, 1)
  } MiB; idle: cpu ${fmt(r.idleCpu)} s, peak RSS ${fmt(r.idlePeakRssMb, 1)} MiB, RSS ${
    fmt(r.idleRssMb, 1)
  } MiB${threads}`;
}

if (import.meta.main) {
  let dbs = 200, idleSeconds = 20, tools: Tool[] = [...TOOLS], threads = false;
  let cpuProfDir: string | undefined;
  let allPermissions = false;
  for (const a of Deno.args) {
    let m: RegExpExecArray | null;
    if ((m = /^--dbs=(\d+)$/.exec(a))) dbs = Number(m[1]);
    else if ((m = /^--idle=(\d+)$/.exec(a))) idleSeconds = Number(m[1]);
    else if ((m = /^--tools=(.+)$/.exec(a))) tools = m[1].split(",") as Tool[];
    else if ((m = /^--cpu-prof=(.+)$/.exec(a))) cpuProfDir = m[1];
    else if (a === "--threads") threads = true;
    else if (a === "--all-permissions") allPermissions = true;
    else throw new Error(`Unknown argument "${a}"`);
  }
  await clkTck();
  const loaded = await loadTools();
  const set = allPermissions ? { ...loaded, replicateFlags: ["-A"] } : loaded;
  const dir = await Deno.makeTempDir({ prefix: "litestream-manydbs-" });
  try {
    const res = await runManyDbsWorkload(set, {
      dir,
      dbs,
      idleSeconds,
      tools,
      cpuProfDir,
      threads,
    });
    for (const tool of tools) print(describe(tool, res[tool]!));
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
