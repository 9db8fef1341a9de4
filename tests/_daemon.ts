/**
 * Fixtures for tests that run replicators as real processes: ours (`main.ts replicate`) and
 * the real Litestream v0.3.13, with their logs captured, config files, replica listings and
 * a workload for the `sqlite3` writer.
 *
 * @module
 */
import { cli, type Writer } from "./_helpers.ts";
import { litestreamBin } from "./_oracle.ts";
import { parseWalSegmentName } from "../src/layout.ts";

const dec = new TextDecoder();

/** A replicator process whose stdout and stderr are collected while it runs. */
export class Daemon implements AsyncDisposable {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  #log = "";
  #drained: Promise<unknown>;
  #status?: Deno.CommandStatus;

  private constructor(name: string, cmd: Deno.Command) {
    this.name = name;
    this.child = cmd.spawn();
    this.#drained = Promise.all([this.#drain(this.child.stdout), this.#drain(this.child.stderr)]);
    this.child.status.then((s) => this.#status = s);
  }

  /** Starts our CLI: `main.ts <args>`. */
  static ours(args: string[]): Daemon {
    return new Daemon("ours", cli(args));
  }

  /** Starts the real Litestream v0.3.13 with `args`. */
  static async oracle(args: string[]): Promise<Daemon> {
    const cmd = new Deno.Command(await litestreamBin(), {
      args,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    });
    return new Daemon("v0.3.13", cmd);
  }

  async #drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) this.#log += chunk;
  }

  /** Everything the process printed so far. */
  get log(): string {
    return this.#log;
  }

  /** True until the process exited. */
  get running(): boolean {
    return this.#status === undefined;
  }

  /**
   * Sends `signal` and waits for the exit (SIGKILL after `timeoutMs`).
   * Returns the exit status and the whole log; throws if it had to SIGKILL.
   */
  async stop(
    signal: Deno.Signal = "SIGTERM",
    timeoutMs = 20_000,
  ): Promise<{ code: number; signal: Deno.Signal | null; log: string }> {
    const r = await this.#stop(signal, timeoutMs);
    if (r.timedOut) {
      throw new Error(
        `${this.name} did not exit within ${timeoutMs} ms of ${signal}; log:\n${r.log}`,
      );
    }
    return r;
  }

  async #stop(signal: Deno.Signal, timeoutMs: number) {
    if (this.running) {
      try {
        this.child.kill(signal);
      } catch { /* exited meanwhile */ }
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((r) =>
      timer = setTimeout(() => r("timeout"), timeoutMs)
    );
    const first = await Promise.race([this.child.status, timeout]);
    clearTimeout(timer);
    if (first === "timeout") {
      try {
        this.child.kill("SIGKILL");
      } catch { /* exited meanwhile */ }
    }
    const status = await this.child.status;
    await this.#drained;
    return {
      code: status.code,
      signal: status.signal,
      log: this.#log,
      timedOut: first === "timeout",
    };
  }

  /** Stops with `signal` and asserts a clean exit (code 0), returning the log. */
  async stopCleanly(signal: Deno.Signal = "SIGTERM"): Promise<string> {
    const r = await this.stop(signal);
    if (r.code !== 0 || r.signal !== null) {
      throw new Error(
        `${this.name} exited with code ${r.code} (signal ${r.signal}) after ${signal}; log:\n${r.log}`,
      );
    }
    return r.log;
  }

  /**
   * Stops v0.3.13 with `signal`, accepting its two known shutdown defects; whatever the
   * test checks next (restores equal to the source) still decides whether it replicated
   * everything.
   * - When the final sync checkpoints (the WAL is above min-checkpoint-page-count, which it
   *   stays at after a PASSIVE checkpoint until the next write restarts it), releasing the
   *   read lock uses the already cancelled context, so it logs `checkpoint: mode=PASSIVE
   *   err=release read lock: context canceled` and exits 1 — after the final sync of the
   *   shadow WAL and the replica.
   * - Upstream #524 (fixed on main in Dec 2023, never released in v0.3): the replica's own
   *   sync loop is still uploading a WAL segment when shutdown cancels its context; the
   *   upload returns, but the goroutine feeding it through an io.Pipe blocks forever, so
   *   the process never exits. Its log shows it: after `signal received`, a segment whose
   *   `write wal segment` lines outnumber its `wal segment written` lines although the
   *   shutdown's own final sync wrote it. Then it is killed after 10 s.
   */
  async stopOracle(signal: Deno.Signal = "SIGTERM"): Promise<string> {
    const r = await this.#stop(signal, 10_000);
    if (r.timedOut) {
      if (hungOnPipe(r.log)) return r.log;
      throw new Error(`${this.name} did not exit within 10000 ms of ${signal}; log:\n${r.log}`);
    }
    if (r.code === 0 && r.signal === null) return r.log;
    const errors = r.log.split("\n").filter((l) => /level=ERROR/.test(l));
    const known = errors.length > 0 &&
      errors.every((l) => /release read lock: context canceled/.test(l));
    if (r.code === 1 && r.signal === null && known) return r.log;
    throw new Error(`${this.name} exited with code ${r.code} (signal ${r.signal}); log:\n${r.log}`);
  }

  /**
   * Waits until v0.3.13 has no upload in flight (every `write wal segment` and `write
   * snapshot` of its log has its `…written` line) and its log has not grown for `quietMs`
   * (longer than its 1 s sync interval, so a sync that found something to ship would have
   * logged it). Stop it only then: its shutdown re-uploads a segment still in flight, and
   * on SFTP the second upload truncates the file (`O_TRUNC`) before the process exits, so a
   * replica stopped mid-upload can keep a 0-byte segment.
   */
  async settled(quietMs = 1_500, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let seen = -1;
    let since = Date.now();
    while (Date.now() < deadline) {
      if (this.#log.length !== seen) {
        seen = this.#log.length;
        since = Date.now();
      } else if (!uploadInFlight(this.#log) && Date.now() - since >= quietMs) {
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`${this.name} did not settle within ${timeoutMs} ms; log:\n${this.#log}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.running) await this.stop("SIGKILL").catch(() => {});
  }
}

/**
 * True when a v0.3.13 log shows the upstream #524 hang after a shutdown signal: some WAL
 * segment was started more often than finished, yet finished at least once.
 */
export function hungOnPipe(log: string): boolean {
  // The upload cut off may have started before the signal (the sync loop's), the one that
  // completes after it (the final sync's): count both over the whole log.
  if (!log.includes("signal received")) return false;
  const started = new Map<string, number>();
  const written = new Map<string, number>();
  for (const line of log.split("\n")) {
    const m = /msg="(write wal segment|wal segment written)".* position=(\S+)/.exec(line);
    if (!m) continue;
    const counts = m[1] === "write wal segment" ? started : written;
    counts.set(m[2], (counts.get(m[2]) ?? 0) + 1);
  }
  for (const [pos, n] of started) {
    const done = written.get(pos) ?? 0;
    if (done > 0 && n > done) return true;
  }
  return false;
}

/** True when a v0.3.13 log shows an upload started and not yet finished. */
function uploadInFlight(log: string): boolean {
  const count = (re: RegExp) => log.match(re)?.length ?? 0;
  return count(/msg="write wal segment"/g) > count(/msg="wal segment written"/g) ||
    count(/msg="write snapshot"/g) > count(/msg="snapshot written"/g);
}

/** Output of a finished command. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs our CLI to completion. */
export async function runOurs(args: string[]): Promise<RunResult> {
  const o = await cli(args).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Runs the real Litestream v0.3.13 to completion. */
export async function runOracle(args: string[]): Promise<RunResult> {
  const o = await new Deno.Command(await litestreamBin(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

/** Throws with the output unless the command exited 0; returns stdout. */
export function ok(r: RunResult, what: string): string {
  if (r.code !== 0) {
    throw new Error(`${what} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

/** Splits a listing (header line, then whitespace-separated columns) into header and rows. */
export function parseTable(text: string): { header: string[]; rows: string[][] } {
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const [head = "", ...rest] = lines;
  return { header: head.split(/\s+/), rows: rest.map((l) => l.split(/\s+/)) };
}

/** Writes a config file for one database with one file replica; keys are YAML scalars. */
export async function writeConfig(
  path: string,
  dbPath: string,
  replicaDir: string,
  keys: { db?: Record<string, string | number>; replica?: Record<string, string | number> } = {},
): Promise<string> {
  const lines = ["dbs:", `  - path: ${dbPath}`];
  for (const [k, v] of Object.entries(keys.db ?? {})) lines.push(`    ${k}: ${v}`);
  lines.push("    replicas:", `      - url: file://${replicaDir}`);
  for (const [k, v] of Object.entries(keys.replica ?? {})) lines.push(`        ${k}: ${v}`);
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
  return path;
}

/** A file of the replica: path relative to the root, size and mtime. */
export interface ReplicaFile {
  path: string;
  size: number;
  mtime: number;
}

/** Every file under the replica root, sorted by path (empty if the root does not exist). */
export async function replicaFiles(root: string): Promise<ReplicaFile[]> {
  const out: ReplicaFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    let entries: Deno.DirEntry[];
    try {
      entries = await Array.fromAsync(Deno.readDir(`${root}/${rel}`));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    for (const e of entries) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) await walk(p);
      else {
        try {
          const st = await Deno.stat(`${root}/${p}`);
          out.push({ path: p, size: st.size, mtime: st.mtime?.getTime() ?? 0 });
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) throw err; // a .tmp renamed meanwhile
        }
      }
    }
  };
  await walk("");
  return out.sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
}

/** A WAL segment found in the replica directory by its file name. */
export interface SegmentName {
  generation: string;
  index: number;
  offset: number;
}

/** The WAL segments of every generation, parsed from the file names. */
export async function walSegmentNames(root: string): Promise<SegmentName[]> {
  const out: SegmentName[] = [];
  for (const f of await replicaFiles(root)) {
    const m = /^generations\/([0-9a-f]{16})\/wal\/([^/]+)$/.exec(f.path);
    const seg = m ? parseWalSegmentName(m[2]) : undefined;
    if (m && seg) out.push({ generation: m[1], ...seg });
  }
  return out;
}

/** Number of snapshot files in every generation. */
export async function snapshotCount(root: string): Promise<number> {
  return (await replicaFiles(root)).filter((f) => f.path.endsWith(".snapshot.lz4")).length;
}

/** Waits until the replica holds a snapshot and at least `segments` WAL segments. */
export async function waitForReplica(
  root: string,
  segments = 1,
  timeoutMs = 15_000,
  daemon?: Daemon,
): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (
      await snapshotCount(root) > 0 && (await walSegmentNames(root)).length >= segments
    ) return;
    if (daemon && !daemon.running) {
      throw new Error(`${daemon.name} exited before the replica was written; log:\n${daemon.log}`);
    }
    if (Date.now() > end) {
      throw new Error(
        `Timed out waiting for ${segments} WAL segment(s) in ${root}` +
          (daemon ? `; ${daemon.name} log:\n${daemon.log}` : ""),
      );
    }
    await sleep(25);
  }
}

/** Waits until the replica's files stop changing for `quietMs`; returns them. */
export async function settled(root: string, quietMs = 300): Promise<ReplicaFile[]> {
  let last = JSON.stringify(await replicaFiles(root));
  let since = Date.now();
  const end = Date.now() + 15_000;
  for (;;) {
    await sleep(25);
    const now = JSON.stringify(await replicaFiles(root));
    if (now !== last) [last, since] = [now, Date.now()];
    else if (Date.now() - since >= quietMs) return JSON.parse(now);
    if (Date.now() > end) throw new Error(`Timed out waiting for ${root} to settle`);
  }
}

/** Runs `fn`; if it throws, appends the daemons' logs to the error message. */
export async function withLogs<T>(daemons: Daemon[], fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof Error) {
      for (const d of daemons) err.message += `\n--- ${d.name} log ---\n${d.log}`;
    }
    throw err;
  }
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Sets the busy timeout of the writer so our checkpoints' write lock makes it wait, not fail. */
export async function prepareWriter(w: Writer, options: { autocheckpoint?: number } = {}) {
  await w.exec("PRAGMA busy_timeout = 10000");
  if (options.autocheckpoint !== undefined) {
    await w.exec(`PRAGMA wal_autocheckpoint = ${options.autocheckpoint}`);
  }
}

/**
 * The application's workload: `txns` transactions, each inserting `rows` rows of `blob`
 * random bytes, updating three older rows and deleting one every third transaction; pauses
 * `pauseMs` between them.
 */
export async function writeLoad(
  w: Writer,
  options: { txns: number; rows?: number; blob?: number; pauseMs?: number; tag?: string },
): Promise<void> {
  const { txns, rows = 5, blob = 2000, pauseMs = 10, tag = "load" } = options;
  for (let i = 0; i < txns; i++) {
    const values = Array.from(
      { length: rows },
      (_, k) => `('${tag}-${i}-${k}', randomblob(${blob}))`,
    ).join(", ");
    await w.exec(
      `BEGIN; INSERT INTO t (v, b) VALUES ${values};` +
        ` UPDATE t SET v = v || '+' WHERE id IN (SELECT id FROM t WHERE id % 7 = ${
          i % 7
        } ORDER BY id DESC LIMIT 3);` +
        ` DELETE FROM t WHERE id IN (SELECT id FROM t WHERE v LIKE '${tag}-%' ORDER BY id LIMIT ${
          i % 3 === 0 ? 1 : 0
        }); COMMIT`,
    );
    if (pauseMs > 0) await sleep(pauseMs);
  }
}

/** Creates a WAL-mode database with table `t(id INTEGER PRIMARY KEY, v, b)` and one row. */
export async function createLoadDb(w: Writer): Promise<void> {
  await w.exec(
    "PRAGMA journal_mode = wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB);" +
      " INSERT INTO t (v, b) VALUES ('first', randomblob(100))",
  );
}

/** Row count of `t` as the writer sees it. */
export async function rowCount(w: Writer): Promise<number> {
  return Number((await w.exec("SELECT count(*) FROM t"))[0]);
}

/**
 * Starts `argv` (a program and its arguments) through `setsid`, in a new session and process
 * group whose id is its pid, as a terminal starts a foreground job; {@linkcode signalGroup}
 * then reaches every process of it, as Ctrl-C does. Dispose with {@linkcode killGroup}: the
 * Daemon's own dispose only kills the leader.
 */
export function startInNewGroup(
  name: string,
  argv: string[],
  options: { cwd?: string } = {},
): Daemon {
  // Daemon's constructor is private so that callers use its factories; this is one more.
  const make = Daemon as unknown as new (name: string, cmd: Deno.Command) => Daemon;
  return new make(
    name,
    new Deno.Command("setsid", {
      args: argv,
      cwd: options.cwd,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }),
  );
}

/** Sends `signal` to every process of the group led by `daemon` ({@linkcode startInNewGroup}). */
export function signalGroup(daemon: Daemon, signal: Deno.Signal): void {
  Deno.kill(-daemon.child.pid, signal); // a negative pid names a process group
}

/** SIGKILLs the group led by `daemon` if any of it may still run; never throws. */
export async function killGroup(daemon: Daemon): Promise<void> {
  try {
    signalGroup(daemon, "SIGKILL");
  } catch { /* the group is gone */ }
  await daemon.stop("SIGKILL").catch(() => {});
}
