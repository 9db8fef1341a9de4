/**
 * Large-database snapshot and restore over S3 (moto), ours against Litestream v0.3.13:
 *
 *     deno run --allow-read --allow-write --allow-env --allow-net --allow-sys --allow-run \
 *       scripts/bench/s3_large.ts [--size-mb=2048] [--txn-mb=256] [--only=ours|v0.3.13] [--keep]
 *
 * Builds (once, cached in `.bench/s3_large/`) a WAL-mode database of about `--size-mb` MiB
 * whose rows are half random bytes, half zeros (LZ4 halves it). For each tool, on a fresh
 * moto server and its own copy of the database:
 *
 * 1. `replicate -config`: wall time from spawn to the log's "snapshot written";
 * 2. one transaction rewriting `--txn-mb` MiB of rows (one WAL index that size): time from
 *    its commit to the last growth of the WAL stored on S3; then SIGTERM;
 * 3. `restore -config -o` of snapshot plus WAL: wall time to exit. Ours also restores with
 *    `-skip-integrity-check`, since v0.3.13 runs no integrity check.
 *
 * Peak RSS is the process's VmHWM from `/proc/<pid>/status`, read every 50 ms (by an `sh`
 * loop: Deno reads `/proc` only with `--allow-all`): for the replicate process, as of the
 * snapshot and after the transaction. moto's is reported too. Each restore is checked
 * against the source (row count, blob bytes, max id, and `PRAGMA quick_check`).
 *
 * Figures are printed, never asserted. Needs about three times the database size in free
 * disk; moto needs about twice the database size in memory (it assembles a multipart
 * upload in memory, and reads whole objects into memory to serve them).
 *
 * @module
 */
import { cli, REPO, sqliteAsync } from "../../tests/_helpers.ts";
import { exists } from "../../src/internal/fs.ts";
import { litestreamBin } from "../../tests/_oracle.ts";
import { startS3Server } from "../../tests/_s3_servers.ts";
import { s3Replica, writeReplicateConfig } from "./config.ts";
import { S3ReplicaClient } from "../../src/clients/s3.ts";
import { collect } from "../../src/replica_client.ts";

const MIB = 1024 * 1024;
const ROW_BYTES = 2000; // 1000 random + 1000 zero bytes: two rows per 4 KiB page
const dec = new TextDecoder();

// deno-lint-ignore no-console
const print = (s: string) => console.log(s);

interface Flags {
  sizeMb: number;
  txnMb: number;
  only?: "ours" | "v0.3.13";
  keep: boolean;
}

function parseFlags(args: string[]): Flags {
  const flags: Flags = { sizeMb: 2048, txnMb: 256, keep: false };
  for (const a of args) {
    let m: RegExpExecArray | null;
    if ((m = /^--size-mb=(\d+)$/.exec(a))) flags.sizeMb = Number(m[1]);
    else if ((m = /^--txn-mb=(\d+)$/.exec(a))) flags.txnMb = Number(m[1]);
    else if ((m = /^--only=(ours|v0\.3\.13)$/.exec(a))) flags.only = m[1] as Flags["only"];
    else if (a === "--keep") flags.keep = true;
    else throw new Error(`Unknown flag "${a}": see the header of scripts/bench/s3_large.ts`);
  }
  if (flags.sizeMb < 1) throw new Error("--size-mb must be at least 1");
  return flags;
}

/** Returns the cached database of `sizeMb` MiB, building it first if needed. */
async function cachedDb(dir: string, sizeMb: number): Promise<string> {
  const path = `${dir}/db-${sizeMb}mb.db`;
  if (await exists(path)) return path;
  const rows = Math.ceil(sizeMb * MIB / (ROW_BYTES + 48));
  const tmp = `${path}.building`;
  await Deno.remove(tmp).catch(() => {});
  const t0 = performance.now();
  print(`building ${path} (${rows} rows)...`);
  // Rollback journal while filling (no 2 GB WAL), then WAL mode as Litestream needs.
  const batch = 100_000;
  let sql = "PRAGMA page_size = 4096; PRAGMA journal_mode = delete; PRAGMA synchronous = off;" +
    " CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB);\n";
  for (let done = 0; done < rows; done += batch) {
    const n = Math.min(batch, rows - done);
    sql += "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < " +
      `${n}) INSERT INTO t (b) SELECT randomblob(${ROW_BYTES / 2}) || zeroblob(${
        ROW_BYTES / 2
      }) FROM c;\n`;
  }
  sql += "PRAGMA journal_mode = wal;";
  await sqliteAsync(tmp, sql);
  await Deno.rename(tmp, path);
  const size = (await Deno.stat(path)).size;
  print(
    `built ${(size / MIB).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return path;
}

/**
 * Follows the peak RSS (VmHWM) of `pid` until it exits. Deno reads `/proc` only with
 * `--allow-all`, so a small `sh` loop reads it for us.
 */
class RssWatch {
  peak = 0;
  readonly done: Promise<void>;

  constructor(pid: number) {
    const child = new Deno.Command("sh", {
      args: [
        "-c",
        'while grep -h "^VmHWM:" "/proc/$1/status" 2>/dev/null; do sleep 0.05; done',
        "sh",
        String(pid),
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.done = (async () => {
      for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
        for (const m of text.matchAll(/VmHWM:\s+(\d+) kB/g)) {
          this.peak = Math.max(this.peak, Number(m[1]) * 1024);
        }
      }
      await child.status;
    })();
  }
}

/** A measured child process: its output, its peak RSS and its exit. */
class Proc {
  readonly t0 = performance.now();
  readonly child: Deno.ChildProcess;
  readonly rss: RssWatch;
  log = "";
  readonly #drained: Promise<unknown>;

  constructor(cmd: Deno.Command) {
    this.child = cmd.spawn();
    this.rss = new RssWatch(this.child.pid);
    const drain = async (s: ReadableStream<Uint8Array>) => {
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) this.log += chunk;
    };
    this.#drained = Promise.all([drain(this.child.stdout), drain(this.child.stderr)]);
  }

  /** Waits until the output matches `re`; returns ms since spawn. */
  async waitFor(re: RegExp): Promise<number> {
    let exited = false;
    this.child.status.then(() => exited = true);
    while (!re.test(this.log)) {
      if (exited) throw new Error(`exited before ${re}; output:\n${this.log}`);
      await sleep(20);
    }
    return performance.now() - this.t0;
  }

  /** Waits for the exit (after `signal`, if given); returns the exit code. */
  async finish(signal?: Deno.Signal): Promise<number> {
    if (signal) this.child.kill(signal);
    const status = await this.child.status;
    await this.rss.done;
    await this.#drained;
    return status.code;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Total stored bytes of the replica's WAL segments. */
async function storedWalBytes(client: S3ReplicaClient): Promise<number> {
  let n = 0;
  for (const gen of await client.generations()) {
    for (const s of await collect(client.walSegments(gen))) n += s.size;
  }
  return n;
}

/** The moto server process started by this process, for its peak RSS. */
async function motoPid(): Promise<number | undefined> {
  const o = await new Deno.Command("ps", {
    args: ["-o", "pid=,args=", "--ppid", String(Deno.pid)],
    stdout: "piped",
    stderr: "null",
  }).output();
  const line = dec.decode(o.stdout).split("\n").find((l) => l.includes("moto"));
  return line ? Number(line.trim().split(/\s+/)[0]) : undefined;
}

/** Row count and total blob bytes: cheap evidence two databases hold the same rows. */
async function fingerprint(db: string): Promise<string> {
  return (await sqliteAsync(db, "SELECT count(*), sum(length(b)), max(id) FROM t;")).trim();
}

interface Row {
  tool: string;
  what: string;
  wallMs: number;
  peakRss: number;
  note?: string;
}

function mib(n: number): string {
  return `${(n / MIB).toFixed(0)} MiB`;
}

async function runTool(
  tool: "ours" | "v0.3.13",
  source: string,
  work: string,
  txnMb: number,
  rows: Row[],
): Promise<void> {
  await Deno.mkdir(work, { recursive: true });
  const db = `${work}/app.db`;
  const copy = await new Deno.Command("cp", { args: ["--reflink=auto", source, db] }).output();
  if (!copy.success) throw new Error(`cp failed: ${dec.decode(copy.stderr)}`);

  await using server = await startS3Server("moto");
  const motoProc = await motoPid();
  const moto = motoProc ? new RssWatch(motoProc) : undefined;
  const config = `${work}/litestream.yml`;
  await writeReplicateConfig(config, { db, replica: s3Replica(server, "large/db") });
  const bin = tool === "ours" ? undefined : await litestreamBin();
  const command = (args: string[]) =>
    bin
      ? new Deno.Command(bin, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      : cli(args);

  print(`${tool}: replicate (snapshot)...`);
  const rep = new Proc(command(["replicate", "-config", config]));
  const snapshotMs = await rep.waitFor(/snapshot written/);
  const snapshotRss = rep.rss.peak;
  await using client = new S3ReplicaClient(server.clientOptions("large/db"));
  let stored = 0;
  for (const gen of await client.generations()) {
    for (const s of await collect(client.snapshots(gen))) stored += s.size;
  }
  rows.push({
    tool,
    what: "snapshot",
    wallMs: snapshotMs,
    peakRss: snapshotRss,
    note: `stored ${mib(stored)}`,
  });
  print(`  ${(snapshotMs / 1000).toFixed(1)} s, peak RSS ${mib(snapshotRss)}`);

  if (txnMb > 0) {
    // One transaction rewriting txnMb MiB of rows: one WAL index of that size to ship.
    print(`${tool}: one ${txnMb} MiB transaction...`);
    const before = await storedWalBytes(client);
    const rowsToUpdate = Math.ceil(txnMb * MIB / (ROW_BYTES + 48));
    await sqliteAsync(
      db,
      "PRAGMA busy_timeout = 10000; UPDATE t SET b = randomblob(" +
        `${ROW_BYTES / 2}) || zeroblob(${ROW_BYTES / 2}) WHERE id <= ${rowsToUpdate};`,
    );
    const committed = performance.now();
    let last = before, lastChange = committed;
    while (last === before || performance.now() - lastChange < 2000) {
      if (performance.now() - committed > 300_000) throw new Error("WAL never shipped");
      await sleep(250);
      const now = await storedWalBytes(client);
      if (now !== last) [last, lastChange] = [now, performance.now()];
    }
    rows.push({
      tool,
      what: `ship ${txnMb} MiB transaction`,
      wallMs: lastChange - committed,
      peakRss: rep.rss.peak,
      note: `stored ${mib(last - before)} of WAL`,
    });
    print(`  ${((lastChange - committed) / 1000).toFixed(1)} s, peak RSS ${mib(rep.rss.peak)}`);
  }
  const code = await rep.finish("SIGTERM");
  if (code !== 0 && tool === "ours") throw new Error(`replicate failed:\n${rep.log}`);
  const expected = await fingerprint(db);

  const variants: [string, string[]][] = tool === "ours"
    ? [["restore", []], ["restore -skip-integrity-check", ["-skip-integrity-check"]]]
    : [["restore", []]];
  for (const [what, extra] of variants) {
    const out = `${work}/restored.db`;
    await Deno.remove(out).catch(() => {});
    print(`${tool}: ${what}...`);
    const res = new Proc(command(["restore", ...extra, "-config", config, "-o", out, db]));
    const resCode = await res.finish();
    const wallMs = performance.now() - res.t0;
    if (resCode !== 0) throw new Error(`${tool} ${what} failed:\n${res.log}`);
    const got = await fingerprint(out);
    const check = (await sqliteAsync(out, "PRAGMA quick_check;")).trim();
    if (got !== expected || check !== "ok") {
      throw new Error(`${tool} ${what}: restored ${got} (${check}), source ${expected}`);
    }
    rows.push({ tool, what, wallMs, peakRss: res.rss.peak });
    print(`  ${(wallMs / 1000).toFixed(1)} s, peak RSS ${mib(res.rss.peak)}`);
    await Deno.remove(out);
  }
  if (moto) rows.push({ tool, what: "(moto server)", wallMs: NaN, peakRss: moto.peak });
}

async function main(): Promise<void> {
  const flags = parseFlags(Deno.args);
  const dir = `${REPO}/.bench/s3_large`;
  await Deno.mkdir(dir, { recursive: true });
  const source = await cachedDb(dir, flags.sizeMb);
  const size = (await Deno.stat(source)).size;
  const rows: Row[] = [];
  for (const tool of ["ours", "v0.3.13"] as const) {
    if (flags.only && flags.only !== tool) continue;
    const work = await Deno.makeTempDir({ dir, prefix: `run-${tool}-` });
    try {
      await runTool(tool, source, work, flags.txnMb, rows);
    } finally {
      if (!flags.keep) await Deno.remove(work, { recursive: true }).catch(() => {});
    }
  }
  print(`\nS3 (moto) snapshot and restore of a ${mib(size)} database`);
  print("| tool | step | wall time | peak RSS | note |");
  print("| --- | --- | ---: | ---: | --- |");
  for (const r of rows) {
    const wall = Number.isNaN(r.wallMs) ? "" : `${(r.wallMs / 1000).toFixed(1)} s`;
    print(`| ${r.tool} | ${r.what} | ${wall} | ${mib(r.peakRss)} | ${r.note ?? ""} |`);
  }
}

if (import.meta.main) await main();
