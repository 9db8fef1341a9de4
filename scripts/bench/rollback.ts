/**
 * Workload 11: an application whose SQLite commits WAL frames without checksums. SQLite
 * 3.40.1 (Debian 12's `sqlite3`) sometimes leaves frames with zero salts and checksums among
 * the committed ones after a transaction that spilled pages into the WAL (a page cache of 16
 * pages here) runs `ROLLBACK TO` a savepoint and commits. Each tool replicates a database
 * (file replica, default settings) while a `sqlite3` writer commits rows, now and then in
 * such a transaction, until the WAL shows the defect and 100 commits more; then the tool is
 * stopped with SIGTERM, restores its own replica, and the result is compared with the source:
 * `PRAGMA integrity_check`, and the last row of the writer's sequence.
 *
 * Alone: `deno run -A --lock=tests/deno.lock scripts/bench/rollback.ts [--runs=3]`.
 *
 * @module
 */
import {
  loadTools,
  Replicator,
  runChecked,
  type Tool,
  toolArgv,
  TOOLS,
  type ToolSet,
} from "./tools.ts";
import { waitReady } from "./tools.ts";
import { fileReplica, writeReplicateConfig } from "./config.ts";
import { print, progress, sleep, type TableRow } from "./util.ts";
import { Writer } from "../../tests/_helpers.ts";
import {
  hasUnchecksummedCommittedFrame,
  ROLLBACK_LOAD_SCHEMA,
  RollbackLoad,
} from "../../tests/_rollback_load.ts";

/** What one run of one tool ended with. */
export interface RollbackRun {
  /** Commits until the WAL showed the defect (then 100 more were made). */
  commitsToDefect: number;
  /** The writer's last committed sequence number, in the source. */
  sourceSeq: number;
  /** The same in the restored database (undefined if the restore failed). */
  restoredSeq?: number;
  /** First line of `PRAGMA integrity_check` of the restored database, or the restore's error. */
  integrity: string;
}

/** Runs the workload for `tool` in `dir`. */
async function runOnce(
  tools: ToolSet,
  tool: Tool,
  dir: string,
  seed: number,
): Promise<RollbackRun> {
  await Deno.mkdir(dir, { recursive: true });
  const db = `${dir}/app.db`, replica = `${dir}/replica`, config = `${dir}/litestream.yml`;
  await runChecked({
    cmd: "sqlite3",
    args: [
      db,
      `PRAGMA journal_mode=wal; ${ROLLBACK_LOAD_SCHEMA}`,
    ],
  });
  await writeReplicateConfig(config, { db, replica: fileReplica(replica) });
  const rep = new Replicator(tools, tool, ["-config", config], `${dir}/replicate.log`);
  await using w = new Writer(db);
  let commits = 0, after = -1, commitsToDefect = 0;
  try {
    await waitReady(rep, replica);
    await w.exec("PRAGMA busy_timeout = 5000");
    await w.exec("PRAGMA wal_autocheckpoint = 0");
    await w.exec("PRAGMA cache_size = 16");
    const load = new RollbackLoad(w, seed);
    while (after !== 0 && commits < 20_000) {
      await load.commit();
      commits++;
      if (after > 0) after--;
      else if (after < 0 && await hasUnchecksummedCommittedFrame(db)) {
        commitsToDefect = commits;
        after = 100;
      }
      await sleep(2);
    }
    if (after !== 0) throw new Error(`no unchecksummed commit in ${commits} commits`);
    await sleep(3000); // v0.3.13 ships once a second
  } finally {
    await rep.stop();
  }
  const out = `${dir}/restored.db`;
  const r = await runChecked(toolArgv(tools, tool, "restore", ["-o", out, `file://${replica}`]))
    .catch((err: Error) => err);
  const sourceSeq = Number(await sqlite(db, "SELECT max(seq) FROM log WHERE w = 1"));
  if (r instanceof Error) {
    return { commitsToDefect, sourceSeq, integrity: `restore failed: ${r.message.split("\n")[0]}` };
  }
  const integrity = (await sqlite(out, "PRAGMA integrity_check").catch((e: Error) => e.message))
    .split("\n")[0];
  const restored = await sqlite(out, "SELECT max(seq) FROM log WHERE w = 1").catch(() => "");
  return {
    commitsToDefect,
    sourceSeq,
    restoredSeq: restored === "" ? undefined : Number(restored),
    integrity,
  };
}

async function sqlite(db: string, sql: string): Promise<string> {
  const o = await new Deno.Command("sqlite3", { args: [db, sql], stdout: "piped", stderr: "piped" })
    .output();
  if (o.code !== 0) throw new Error(new TextDecoder().decode(o.stderr).trim());
  return new TextDecoder().decode(o.stdout).trim();
}

/** Runs `runs` rounds of both tools and returns the table rows and notes. */
export async function runRollbackWorkload(
  tools: ToolSet,
  options: { dir: string; runs: number },
): Promise<{ rows: TableRow[]; notes: string[] }> {
  const results: Record<Tool, RollbackRun[]> = { ours: [], "v0.3.13": [] };
  for (let i = 0; i < options.runs; i++) {
    for (const tool of TOOLS) {
      progress(`11: SQLite's unchecksummed commits, ${tool}, run ${i + 1}/${options.runs}`);
      results[tool].push(
        await runOnce(tools, tool, `${options.dir}/w11-${tool}-${i}`, 1 + i),
      );
    }
  }
  const equal = (t: Tool) =>
    results[t].filter((r) => r.integrity === "ok" && r.restoredSeq === r.sourceSeq).length;
  const corrupt = (t: Tool) => results[t].filter((r) => r.integrity !== "ok").length;
  const n = options.runs;
  const rows: TableRow[] = [
    {
      metric: "SQLite 3.40 unchecksummed commits: restores equal to the source",
      ours: equal("ours"),
      theirs: equal("v0.3.13"),
      digits: 0,
    },
    {
      metric: "… restores failing integrity_check",
      ours: corrupt("ours"),
      theirs: corrupt("v0.3.13"),
      digits: 0,
    },
  ];
  const detail = (t: Tool) =>
    results[t].map((r) =>
      `defect after ${r.commitsToDefect} commits, source seq ${r.sourceSeq}, restored ` +
      `${r.restoredSeq ?? "none"} (${r.integrity})`
    ).join("; ");
  const notes = [
    `SQLite 3.40 unchecksummed commits (${n} runs per tool, a \`sqlite3\` writer with a 16-page ` +
    "cache committing rows, 6 % of them in a transaction that spills ~200 KiB and rolls it " +
    "back to a savepoint, until the WAL shows a committed frame with zero salts, then 100 " +
    `commits more): ours: ${detail("ours")}. v0.3.13: ${detail("v0.3.13")}.`,
  ];
  return { rows, notes };
}

if (import.meta.main) {
  const runs = Number(Deno.args.find((a) => a.startsWith("--runs="))?.slice(7) ?? 3);
  const dir = await Deno.makeTempDir({ prefix: "litestream-rollback-" });
  try {
    const out = await runRollbackWorkload(await loadTools(), { dir, runs });
    for (const r of out.rows) {
      print(`${r.metric}: ours ${r.ours} / ${runs}, v0.3.13 ${r.theirs} / ${runs}`);
    }
    for (const note of out.notes) print(`- ${note}`);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
