/**
 * The application side of the benchmark: databases and writers, all through the `sqlite3`
 * CLI in separate processes (the same writer for every tool).
 *
 * @module
 */
import { type MeasuredRun, runChecked, runMeasured, track } from "./tools.ts";
import { marker } from "./replica_watch.ts";
import { exists, progress } from "./util.ts";

const enc = new TextEncoder();

/** Filler stored with every benchmark row, so rows look like application data. */
const PAYLOAD = "order=1234;customer=acme;status=shipped;note=benchmark row";

/** SQL inserting the row that carries marker `k`, committed on its own. */
export function insertRowSql(k: number): string {
  return `INSERT INTO t (v) VALUES ('${marker(k)}${PAYLOAD}');`;
}

/** WAL bytes per row of {@linkcode bigTxnSql}: ~2000-byte rows, two per 4 KiB page (4120-byte frame). */
const WAL_BYTES_PER_BIG_ROW = 2060;

/**
 * A `sqlite3` script of one transaction of about `mb` MiB of new rows (half random bytes,
 * half zeros), then marker k's row.
 */
export function bigTxnSql(k: number, mb: number): string {
  const rows = Math.round(mb * 1024 * 1024 / WAL_BYTES_PER_BIG_ROW);
  return [
    ".timeout 10000",
    ".bail on",
    "BEGIN;",
    `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rows})` +
    " INSERT INTO t (v) SELECT randomblob(1000) || zeroblob(1000) FROM c;",
    insertRowSql(k),
    "COMMIT;",
    "",
  ].join("\n");
}

/** Creates a small WAL-mode database with the table `t(id, v)` the workloads write to. */
export async function createDb(path: string): Promise<void> {
  await runChecked({
    cmd: "sqlite3",
    args: [
      "-bail",
      path,
      "PRAGMA journal_mode=wal; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);" +
      " INSERT INTO t (v) VALUES ('first');",
    ],
  });
}

/**
 * Runs the rows `first..last` as single-row commits in one `sqlite3` process fed a script
 * on stdin; returns its wall time and its CPU (user + sys). The busy timeout makes a writer wait (as applications do)
 * while a replicator holds the write lock for a checkpoint.
 */
export async function runInsertScript(
  db: string,
  first: number,
  last: number,
): Promise<MeasuredRun> {
  const lines = [".timeout 10000", ".bail on"];
  for (let k = first; k <= last; k++) lines.push(insertRowSql(k));
  const r = await runMeasured({ cmd: "sqlite3", args: [db] }, lines.join("\n") + "\n");
  if (!r.success) throw new Error(`sqlite3 writer failed: ${r.stderr.trim()}`);
  return r;
}

/**
 * A long-lived `sqlite3` process holding its connection open, running statements one at a
 * time: {@linkcode exec} resolves when the CLI has finished (committed) the statement.
 */
export class Writer implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  #seq = 0;

  constructor(db: string) {
    this.#child = new Deno.Command("sqlite3", {
      args: [db],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    track(this.#child);
    this.#stdin = this.#child.stdin.getWriter();
    this.#lines = this.#readLines();
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

  /** Sets the busy timeout; call once before the first write. */
  async init(): Promise<void> {
    await this.exec(".timeout 10000");
  }

  /** Runs one statement or dot-command and waits until the CLI finished it. */
  async exec(sql: string): Promise<void> {
    const mark = `@@done-${++this.#seq}`;
    await this.#stdin.write(enc.encode(`${sql}\n.print ${mark}\n`));
    for (;;) {
      const r = await this.#lines.next();
      if (r.done) throw new Error(`sqlite3 writer exited while running: ${sql}`);
      if (r.value === mark) return;
    }
  }

  async close(): Promise<void> {
    try {
      await this.#stdin.close();
    } catch {
      // already closed
    }
    await this.#child.status;
    await this.#lines.return?.(undefined);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Bump when the recipe of {@linkcode bigDb} changes, so cached files are rebuilt. */
const BIG_DB_RECIPE = "v1";

/**
 * Returns the path of a WAL-mode database of at least `mb` MiB (rows of random hex and
 * repeated text: random-ish but compressible), built once and cached in `cacheDir`.
 */
export async function bigDb(cacheDir: string, mb: number): Promise<string> {
  const path = `${cacheDir}/db-${mb}mb-${BIG_DB_RECIPE}.sqlite`;
  if (await exists(path)) return path;
  await Deno.mkdir(cacheDir, { recursive: true });
  const tmp = `${path}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  progress(`building a ${mb} MiB database (cached as ${path})`);
  const target = mb * 1024 * 1024;
  try {
    const create = "PRAGMA page_size=4096; PRAGMA journal_mode=off; PRAGMA synchronous=off;" +
      " CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);";
    await runChecked({ cmd: "sqlite3", args: ["-bail", tmp, create] });
    let size = 0;
    while (size < target) {
      // About 360 bytes a row: 64 random hex digits and text repeated with variations.
      const rows = Math.max(1000, Math.ceil((target - size) / 330));
      const fill = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c" +
        ` WHERE x < ${rows}) INSERT INTO t (v) SELECT printf('%08d %s %s / %s / %s', x,` +
        " hex(randomblob(32)), 'customer ' || (x % 997) || ' ordered item ' || (x % 89)," +
        " 'the quick brown fox jumps over the lazy dog', 'status: shipped; carrier: ' ||" +
        " (x % 7) || '; warehouse: north; priority: normal; gift wrap: no; notes: none')" +
        " FROM c;";
      await runChecked({
        cmd: "sqlite3",
        args: ["-bail", tmp, `PRAGMA journal_mode=off; PRAGMA synchronous=off; ${fill}`],
      });
      size = (await Deno.stat(tmp)).size;
    }
    await runChecked({ cmd: "sqlite3", args: ["-bail", tmp, "PRAGMA journal_mode=wal;"] });
    await Deno.rename(tmp, path);
  } finally {
    for (const p of [tmp, `${tmp}-wal`, `${tmp}-shm`]) await Deno.remove(p).catch(() => {});
  }
  return path;
}

/** `SELECT max(id) FROM t` of `db` (which must not be replicated meanwhile). */
export async function maxId(db: string): Promise<number> {
  const r = await runChecked({ cmd: "sqlite3", args: [db, "SELECT max(id) FROM t;"] });
  return Number(r.stdout.trim());
}

/** Returns true if `db` holds the row carrying marker `k`. */
export async function hasMarker(db: string, k: number): Promise<boolean> {
  const r = await runChecked({
    cmd: "sqlite3",
    args: [db, `SELECT count(*) FROM t WHERE v LIKE '${marker(k)}%';`],
  });
  return Number(r.stdout.trim()) > 0;
}
