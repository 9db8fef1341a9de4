/**
 * The only importer of `node:sqlite`. Opens the connections the replicator needs on a
 * database and runs the few statements it issues; everything else reads raw bytes.
 *
 * @module
 */
import { DatabaseSync, type StatementSync } from "node:sqlite";

/** Result row of `PRAGMA wal_checkpoint`. */
export interface CheckpointResult {
  /** 1 if the checkpoint could not finish because of a lock. */
  busy: number;
  /** Frames in the WAL. */
  log: number;
  /** Frames copied back into the database. */
  checkpointed: number;
}

/** Checkpoint modes we issue. */
export type CheckpointMode = "PASSIVE" | "FULL" | "RESTART" | "TRUNCATE";

/** Returns true if `err` is SQLite's "database is locked" (SQLITE_BUSY) error. */
export function isBusyError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const e = err as Error & { errcode?: number };
  return e.errcode === 5 || /database is locked|SQLITE_BUSY/i.test(e.message);
}

/** One SQLite connection with the options the replicator needs. */
export class Connection {
  readonly #db: DatabaseSync;
  /** Prepared once: some run inside our holds of the write lock, where every µs counts. */
  readonly #statements = new Map<string, StatementSync>();
  readonly path: string;

  constructor(path: string, options: { readOnly?: boolean; busyTimeoutMs?: number } = {}) {
    this.path = path;
    this.#db = new DatabaseSync(path, {
      readOnly: options.readOnly ?? false,
      timeout: options.busyTimeoutMs ?? 1000,
    });
  }

  exec(sql: string): void {
    this.#db.exec(sql);
  }

  /** Runs a statement that returns one row and gives that row. */
  get<T = Record<string, unknown>>(sql: string, ...params: (string | number)[]): T | undefined {
    return this.#prepare(sql).get(...params) as T | undefined;
  }

  /** Runs a write statement through prepare() so that errors carry SQLite's errcode. */
  run(sql: string, ...params: (string | number)[]): void {
    this.#prepare(sql).run(...params);
  }

  #prepare(sql: string): StatementSync {
    let st = this.#statements.get(sql);
    if (!st) {
      st = this.#db.prepare(sql);
      this.#statements.set(sql, st);
    }
    return st;
  }

  get inTransaction(): boolean {
    return this.#db.isTransaction;
  }

  /** Runs `PRAGMA wal_checkpoint(mode)` and returns its row. */
  checkpoint(mode: CheckpointMode): CheckpointResult {
    const row = this.#prepare(`PRAGMA wal_checkpoint(${mode})`).get() as Record<
      string,
      number
    >;
    return { busy: row.busy, log: row.log, checkpointed: row.checkpointed };
  }

  /** Changes the busy timeout of this connection. */
  setBusyTimeout(ms: number): void {
    this.#db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.floor(ms))}`);
  }

  close(): void {
    this.#statements.clear();
    if (this.#db.isOpen) this.#db.close();
  }
}

/**
 * Checks that `path` is a SQLite database (or an empty or missing file that SQLite would
 * create) without creating it. Returns the page size from its header, or undefined for an
 * empty file.
 *
 * @throws {SyntaxError} If the file exists and is not a SQLite database.
 */
export async function probeDatabaseFile(path: string): Promise<number | undefined> {
  let head: Uint8Array;
  try {
    using f = await Deno.open(path, { read: true });
    head = new Uint8Array(100);
    let n = 0;
    while (n < 100) {
      const r = await f.read(head.subarray(n));
      if (r === null) break;
      n += r;
    }
    if (n === 0) return undefined;
    head = head.subarray(0, n);
  } catch (err) {
    if (err instanceof Deno.errors.IsADirectory) {
      throw new SyntaxError(`"${path}" is a directory, not a SQLite database`);
    }
    throw err;
  }
  const magic = new TextDecoder().decode(head.subarray(0, 16));
  if (head.length < 100 || magic !== "SQLite format 3\0") {
    throw new SyntaxError(`"${path}" is not a SQLite database`);
  }
  const raw = (head[16] << 8) | head[17];
  return raw === 1 ? 65536 : raw;
}
