/**
 * Test fixtures: temporary directories, a real second process writing with the `sqlite3`
 * CLI, and database comparison.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Db, type DbOptions } from "../src/db.ts";
import { Replica, type ReplicaOptions } from "../src/replica.ts";
import { FileReplicaClient } from "../src/clients/file.ts";
import { restore } from "../src/restore.ts";
import type { Body, CallOptions, ReplicaClient, SnapshotKey } from "../src/replica_client.ts";
import type { Pos } from "../src/pos.ts";

const dec = new TextDecoder();
const enc = new TextEncoder();

/** Absolute path of the repository root. */
export const REPO = new URL("..", import.meta.url).pathname.replace(/\/$/, "");

/** A temporary directory removed on dispose. */
export async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "litestream-test-" });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true }).catch(() => {});
    },
  };
}

/** Runs SQL with the `sqlite3` CLI in its own process; returns stdout. Throws on failure. */
export function sqlite(db: string, sql: string): string {
  const o = new Deno.Command("sqlite3", {
    args: ["-bail", db, sql],
    stdout: "piped",
    stderr: "piped",
  })
    .outputSync();
  if (!o.success) throw new Error(`sqlite3 ${db} failed: ${dec.decode(o.stderr)}`);
  return dec.decode(o.stdout);
}

/** Runs SQL with the `sqlite3` CLI (one process per call). */
export async function sqliteAsync(db: string, sql: string): Promise<string> {
  const child = new Deno.Command("sqlite3", {
    args: ["-bail", db],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(enc.encode(sql + "\n"));
  await w.close();
  const o = await child.output();
  if (!o.success) throw new Error(`sqlite3 ${db} failed: ${dec.decode(o.stderr)}`);
  return dec.decode(o.stdout);
}

/**
 * The application: one long-lived `sqlite3` process holding its connection open, running
 * statements one at a time (each call waits until the CLI finished it). No `-bail`: a
 * failed statement is reported on stderr (kept, see {@linkcode Writer.stderr}) and the next
 * one runs, as in an application that logs the error and carries on. Its busy timeout is 0
 * until a script sets one (`.timeout 5000`).
 */
export class Writer implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  readonly #stderrDone: Promise<void>;
  #stderr = "";
  #seq = 0;

  constructor(db: string) {
    const child = new Deno.Command("sqlite3", {
      args: [db],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#lines = this.#readLines();
    this.#stderrDone = (async () => {
      for await (const s of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.#stderr += s;
      }
    })();
  }

  async *#readLines(): AsyncGenerator<string> {
    let buf = "";
    for await (const chunk of this.#child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        yield buf.slice(0, i);
        buf = buf.slice(i + 1);
      }
    }
  }

  /** What the process printed on stderr so far. */
  get stderr(): string {
    return this.#stderr;
  }

  /** Runs one SQL statement (a missing `;` is added) and returns its output lines. */
  exec(sql: string): Promise<string[]> {
    return this.run(sql.trim().replace(/;?$/, ";"));
  }

  /** Sends `script` (statements and dot-commands) and returns its stdout lines once it ran. */
  async run(script: string): Promise<string[]> {
    const mark = `@@done-${++this.#seq}`;
    await this.#stdin.write(enc.encode(`${script}\n.print ${mark}\n`));
    const out: string[] = [];
    for (;;) {
      const r = await this.#lines.next();
      if (r.done) {
        throw new Error(`sqlite3 exited while running: ${script.slice(0, 200)}\n${this.#stderr}`);
      }
      if (r.value === mark) return out;
      out.push(r.value);
    }
  }

  /** Ends the process and returns everything it printed on stderr. */
  async close(): Promise<string> {
    try {
      await this.#stdin.close();
    } catch { /* closed */ }
    await this.#child.status;
    await this.#lines.return?.(undefined);
    await this.#stderrDone;
    return this.#stderr;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The database's rows as `sqlite3 .dump` prints them, without Litestream's own tables. */
export async function dump(db: string): Promise<string> {
  const out = await sqliteAsync(db, ".dump");
  return out.split("\n").filter((l) => !l.includes("_litestream")).join("\n");
}

/** `PRAGMA integrity_check` through the sqlite3 CLI. */
export async function integrity(db: string): Promise<string> {
  return (await sqliteAsync(db, "PRAGMA integrity_check;")).trim();
}

/** SQL inserting `n` rows of `size` random bytes into `t` (about one page each at 4000). */
export function blobs(n: number, size = 1500): string {
  return `INSERT INTO t (v) SELECT randomblob(${size}) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<${n}) SELECT x FROM c)`;
}

/** Creates a WAL-mode database with a table `t(id INTEGER PRIMARY KEY, v)`. */
export async function createDb(path: string): Promise<void> {
  await sqliteAsync(
    path,
    "PRAGMA journal_mode=wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v); INSERT INTO t (v) VALUES ('first');",
  );
}

/** Restores `client`'s latest state to `out`, checks its integrity and returns its dump. */
export async function restoredDump(client: ReplicaClient, out: string): Promise<string> {
  await restore(client, { outputPath: out });
  assert.equal(await integrity(out), "ok");
  return await dump(out);
}

/** A database with a file replica, driven by hand (no background loops). */
export interface TestDb extends AsyncDisposable {
  dir: string;
  path: string;
  replicaPath: string;
  db: Db;
  client: FileReplicaClient;
  replica: Replica;
  /** Syncs the database, then the replica. */
  sync(): Promise<void>;
  /** Stops the replicator (final sync, then closes the Replica and the Db). */
  stop(): Promise<void>;
  /** Closes and reopens the Db and Replica (a restart of the replicator). */
  reopen(): Promise<void>;
}

/** Opens a test database in `dir` with `monitorIntervalMs: 0` unless overridden. */
export async function openTestDb(
  dir: string,
  options: DbOptions = {},
  replicaOptions: ReplicaOptions = {},
): Promise<TestDb> {
  const path = `${dir}/app.db`;
  const replicaPath = `${dir}/replica`;
  try {
    await Deno.stat(path);
  } catch {
    await createDb(path);
  }
  const client = new FileReplicaClient(replicaPath);
  const make = async () => {
    const db = new Db(path, { monitorIntervalMs: 0, ...options });
    await db.open();
    return { db, replica: new Replica(db, client, { retentionMs: 0, ...replicaOptions }) };
  };
  let cur = await make();
  const fx: TestDb = {
    dir,
    path,
    replicaPath,
    client,
    get db() {
      return cur.db;
    },
    get replica() {
      return cur.replica;
    },
    async sync() {
      await cur.db.sync();
      await cur.replica.sync();
    },
    async stop() {
      await cur.replica.close();
      await cur.db.close();
    },
    async reopen() {
      await fx.stop();
      cur = await make();
    },
    async [Symbol.asyncDispose]() {
      await cur.replica.close().catch(() => {});
      await cur.db.close().catch(() => {});
    },
  };
  return fx;
}

/** Spawns the CLI (`main.ts`) with the permissions of the deno.json tasks. */
export function cli(
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Deno.Command {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-write",
      "--allow-env",
      "--allow-net",
      "--allow-sys=osRelease,hostname",
      "--allow-run",
      `${REPO}/main.ts`,
      ...args,
    ],
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  });
}

/** Waits until `fn` returns true (polling every 20 ms), or throws after `timeoutMs`. */
export async function waitFor(
  fn: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = "condition",
): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > end) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** True when running under CI, where a missing test server must fail the tests, not skip them. */
export function isCi(): boolean {
  return Deno.env.get("CI") === "true";
}

/** A loopback port that nothing listens on (free a moment ago): for servers to start on, or to refuse. */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/**
 * A {@linkcode ReplicaClient} passing every call to a real one: subclass it and override the
 * calls a test wants to fail, delay or interleave with something else.
 */
export class WrappedClient implements ReplicaClient {
  readonly inner: ReplicaClient;
  constructor(inner: ReplicaClient) {
    this.inner = inner;
  }
  get type(): string {
    return this.inner.type;
  }
  get location(): string {
    return this.inner.location;
  }
  generations(o?: CallOptions) {
    return this.inner.generations(o);
  }
  snapshots(g: string, o?: CallOptions) {
    return this.inner.snapshots(g, o);
  }
  writeSnapshot(k: SnapshotKey, d: Body, o?: CallOptions) {
    return this.inner.writeSnapshot(k, d, o);
  }
  openSnapshot(k: SnapshotKey, o?: CallOptions) {
    return this.inner.openSnapshot(k, o);
  }
  deleteSnapshot(k: SnapshotKey, o?: CallOptions) {
    return this.inner.deleteSnapshot(k, o);
  }
  walSegments(g: string, o?: CallOptions) {
    return this.inner.walSegments(g, o);
  }
  writeWalSegment(p: Pos, d: Body, o?: CallOptions) {
    return this.inner.writeWalSegment(p, d, o);
  }
  openWalSegment(p: Pos, o?: CallOptions) {
    return this.inner.openWalSegment(p, o);
  }
  deleteWalSegments(p: Pos[], o?: CallOptions) {
    return this.inner.deleteWalSegments(p, o);
  }
  deleteGeneration(g: string, o?: CallOptions) {
    return this.inner.deleteGeneration(g, o);
  }
}
