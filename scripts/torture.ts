/**
 * Torture run: writer processes commit without pause while our replicator (`main.ts
 * replicate`, a real process) is killed with SIGKILL at random moments (during start-up,
 * during a snapshot upload, at a checkpoint's first write to the database file, anywhere),
 * sometimes stopped cleanly, and restarted; other processes run checkpoints of every mode.
 * After every cycle the replica is restored with our CLI: the result must pass
 * `PRAGMA integrity_check` and hold a state the source really committed, never older than
 * the previous cycle's. At the end (writers stopped, replicator run to a clean stop) the
 * restore must equal the source.
 *
 * How a committed state is recognised: each commit is one `INSERT INTO log` of rows
 * `(writer, seq)`, seq counting up by one per writer, whose trigger appends `(writer, seq)`
 * to `hist`, sets `state.last` and trims `log` to the last {@linkcode LOG_WINDOW} rows of the
 * writer. A restored database is a committed state iff, for every writer, `hist` holds
 * exactly 1..k, `state.last` is k, `log` holds the window ending at k with each row's value
 * the one derived from `(writer, seq)`, and the ballast table is untouched. Now and then a
 * writer also writes a transaction it rolls back, wholly or to a savepoint, under rows of a
 * writer id of its own plus 100 (large, so that SQLite spills them into the WAL before the
 * end, with a page cache of 16 pages): no restore may ever hold one of those.
 *
 * ```sh
 * deno run -A scripts/torture.ts --cycles=1000            # prints its seed
 * deno run -A scripts/torture.ts --cycles=50 --seed=42 --keep --debug
 * ```
 *
 * Flags: `--cycles=N` (50), `--seed=N` (random; choices repeat, timing does not), `--keep`
 * (keep the working directory even on success), `--keep-going` (do not stop at the first
 * problem), `--debug` (the replicator logs at debug level into `torture.log`),
 * `--writers=N` (2), `--ballast-mb=N` (4).
 *
 * Prints `cycles=N corrupt=0 lost=0 …` and exits 1 if anything was corrupt, lost or broken.
 * It stops at the first problem unless `--keep-going`; the working directory (database,
 * shadow WAL, replica, `torture.log` with every replicator's log) is then kept and its path
 * printed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dump, sqliteAsync, Writer } from "../tests/_helpers.ts";
import {
  Daemon,
  prepareWriter,
  runOurs,
  settled,
  walSegmentNames,
  writeConfig,
} from "../tests/_daemon.ts";
import { print } from "./bench/util.ts";

/** Checkpoint modes run by other processes. */
export const CHECKPOINT_MODES = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] as const;
export type CheckpointModeName = typeof CHECKPOINT_MODES[number];

/** How a cycle ends the replicator. */
export const STOPS = ["startup", "anytime", "snapshot", "checkpoint", "clean"] as const;
export type Stop = typeof STOPS[number];

/** Rows of `log` kept per writer (the trigger deletes older ones). */
export const LOG_WINDOW = 300;
/** Added to a writer's id for the rows of transactions it rolls back. */
const GHOST = 100;

/** Options of {@linkcode torture}. */
export interface TortureOptions {
  /** Kill-and-restore cycles. @default {50} */
  cycles?: number;
  /** Seed of every random choice (timing still varies). @default {random} */
  seed?: number;
  /** Keep the working directory even when the run passes. @default {false} */
  keep?: boolean;
  /** Concurrent writer processes. @default {2} */
  writers?: number;
  /** Incompressible bytes in the database from the start (make snapshots take time). @default {4 MiB} */
  ballastBytes?: number;
  /** Where the working directory is created. @default {the system temp dir} */
  parentDir?: string;
  /** Go on after a problem (else stop at once, leaving the evidence as it is). @default {false} */
  keepGoing?: boolean;
  /** Run the replicator with `logging.level: debug` (its logs go to `torture.log`). @default {false} */
  debug?: boolean;
  /** Receives progress lines. @default {none} */
  progress?: (line: string) => void;
}

/** What a run did and found. */
export interface TortureReport {
  seed: number;
  cycles: number;
  /** Restores failing `integrity_check`, or refusing the replica (it is broken). */
  corrupt: number;
  /** Restores with a gap, older than the previous one, or (at the end) unequal to the source. */
  lost: number;
  /** Anything else unexpected: a replicator exiting by itself or uncleanly on SIGTERM. */
  errors: number;
  /** Generations our replicator started (its `new generation` log lines). */
  generations: number;
  /** SIGKILLs of the replicator. */
  kills: number;
  /** Cycles by how they ended the replicator. */
  stops: Record<Stop, number>;
  /** `snapshot` kills that left the snapshot's `.tmp` (the upload was cut short). */
  snapshotHits: number;
  /** Restores after a cycle (the final one is not counted). */
  restores: number;
  /** Cycle restores that found no snapshot yet (only before the first snapshot). */
  emptyRestores: number;
  /** Checkpoints run by other processes, by mode. */
  foreignCheckpoints: Record<CheckpointModeName, number>;
  commits: number;
  /** Transactions rolled back wholly, and committed after a rollback to a savepoint. */
  rollbacks: number;
  savepoints: number;
  /** Commits a writer had to retry (SQLITE_BUSY past its busy timeout). */
  busyRetries: number;
  /** Times every writer process was closed (the last connection checkpoints and deletes the WAL). */
  writerRestarts: number;
  elapsedMs: number;
  /** One line per problem found. */
  problems: string[];
  /** The working directory, if it was kept. */
  dir?: string;
}

/** The report as one line: `cycles=N corrupt=0 lost=0 …`. */
export function formatReport(r: TortureReport): string {
  const stops = STOPS.map((s) => `${s}:${r.stops[s]}`).join(",");
  const ckpt = CHECKPOINT_MODES.map((m) => `${m}:${r.foreignCheckpoints[m]}`).join(",");
  return `cycles=${r.cycles} corrupt=${r.corrupt} lost=${r.lost} errors=${r.errors}` +
    ` generations=${r.generations} kills=${r.kills} stops=${stops}` +
    ` snapshot-hits=${r.snapshotHits} restores=${r.restores} empty=${r.emptyRestores}` +
    ` foreign-checkpoints=${ckpt} commits=${r.commits} rollbacks=${r.rollbacks}` +
    ` savepoints=${r.savepoints} busy-retries=${r.busyRetries}` +
    ` writer-restarts=${r.writerRestarts} seed=${r.seed}` +
    ` elapsed=${(r.elapsedMs / 1000).toFixed(1)}s`;
}

/** Runs the torture; see the module doc. */
export async function torture(options: TortureOptions = {}): Promise<TortureReport> {
  const t0 = performance.now();
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const cycles = options.cycles ?? 50;
  const progress = options.progress ?? (() => {});
  const dir = await Deno.makeTempDir({ dir: options.parentDir, prefix: "litestream-torture-" });
  const report: TortureReport = {
    seed,
    cycles: 0,
    corrupt: 0,
    lost: 0,
    errors: 0,
    generations: 0,
    kills: 0,
    stops: Object.fromEntries(STOPS.map((s) => [s, 0])) as Record<Stop, number>,
    snapshotHits: 0,
    restores: 0,
    emptyRestores: 0,
    foreignCheckpoints: Object.fromEntries(CHECKPOINT_MODES.map((m) => [m, 0])) as Record<
      CheckpointModeName,
      number
    >,
    commits: 0,
    rollbacks: 0,
    savepoints: 0,
    busyRetries: 0,
    writerRestarts: 0,
    elapsedMs: 0,
    problems: [],
  };
  progress(`seed=${seed} dir=${dir}`);
  const run = new Run(dir, seed, options, report, progress);
  let failed = true;
  try {
    await run.setUp();
    const broken = () => report.corrupt + report.lost + report.errors > 0;
    for (let c = 1; c <= cycles; c++) {
      await run.cycle(c);
      report.cycles = c;
      report.elapsedMs = performance.now() - t0;
      if (c % 10 === 0 || c === cycles) progress(`cycle ${c}/${cycles}: ${formatReport(report)}`);
      if (broken() && !options.keepGoing) break;
    }
    if (!broken() || options.keepGoing) await run.finish();
    failed = report.corrupt + report.lost + report.errors > 0;
  } catch (err) {
    throw new Error(
      `Torture run failed in cycle ${report.cycles + 1} (seed ${seed}, kept ${dir})`,
      {
        cause: err,
      },
    );
  } finally {
    await run.tearDown();
    report.elapsedMs = performance.now() - t0;
    if (failed || options.keep) report.dir = dir;
    else await Deno.remove(dir, { recursive: true });
  }
  return report;
}

/** mulberry32: small, fast, good enough to drive choices reproducibly. */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Uniform integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  /** One of `weights`' keys, chosen in proportion to its weight. */
  pick<K extends string>(weights: Record<K, number>): K {
    const entries = Object.entries(weights) as [K, number][];
    let r = this.next() * entries.reduce((a, [, w]) => a + w, 0);
    for (const [k, w] of entries) if ((r -= w) < 0) return k;
    return entries[entries.length - 1][0];
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** SQL for the value of row `(w, seq)` of `log`: a run of one letter, 50..749 long. */
function valueSql(w: string, seq: string): string {
  return `printf('%.*c', 50 + ((${w} * 7919 + ${seq} * 104729) % 700), char(97 + ((${w} + ${seq}) % 26)))`;
}

const SCHEMA = `
PRAGMA journal_mode = wal;
CREATE TABLE log (w INTEGER NOT NULL, seq INTEGER NOT NULL, v TEXT NOT NULL, PRIMARY KEY (w, seq));
CREATE TABLE hist (w INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (w, seq)) WITHOUT ROWID;
CREATE TABLE state (w INTEGER PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE ballast (id INTEGER PRIMARY KEY, b BLOB NOT NULL);
CREATE TRIGGER log_commit AFTER INSERT ON log BEGIN
  INSERT INTO hist VALUES (NEW.w, NEW.seq);
  INSERT INTO state VALUES (NEW.w, NEW.seq) ON CONFLICT (w) DO UPDATE SET last = excluded.last;
  DELETE FROM log WHERE w = NEW.w AND seq <= NEW.seq - ${LOG_WINDOW};
END;
`;

const BALLAST_HASH_SQL = "SELECT hex(sha3_query('SELECT id, b FROM ballast ORDER BY id'))";

/** One application process committing numbered rows as fast as it can. */
class AppWriter {
  readonly id: number;
  readonly #db: string;
  readonly #rng: Rng;
  readonly #report: TortureReport;
  #writer?: Writer;
  #loop?: Promise<void>;
  #stopping = false;
  /** Highest seq known committed. */
  committed = 0;
  /** Highest seq ever sent (a commit may be durable before we hear of it). */
  attempted = 0;
  /** Why the writer stopped by itself. */
  error?: unknown;

  constructor(id: number, db: string, seed: number, report: TortureReport) {
    this.id = id;
    this.#db = db;
    this.#rng = new Rng(seed);
    this.#report = report;
  }

  async start(): Promise<void> {
    this.#writer = new Writer(this.#db);
    await prepareWriter(this.#writer, { autocheckpoint: 0 });
    await this.#writer.exec("PRAGMA cache_size = 16"); // rolled-back rows spill into the WAL
    this.#stopping = false;
    this.#loop = this.#run(this.#writer).catch((err) => {
      this.error ??= err;
    });
  }

  /** Finishes the commit in flight and closes the process. */
  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#loop;
    await this.#writer?.close();
    this.#writer = undefined;
  }

  async #run(writer: Writer): Promise<void> {
    while (!this.#stopping) {
      // Mostly single rows; sometimes a bigger transaction spanning many pages.
      const n = this.#rng.next() < 0.1 ? this.#rng.int(2, 60) : 1;
      const from = this.committed + 1;
      const to = from + n - 1;
      this.attempted = Math.max(this.attempted, to);
      const insert =
        `INSERT INTO log (w, seq, v) SELECT ${this.id}, x, ${valueSql(String(this.id), "x")}` +
        ` FROM (WITH RECURSIVE c(x) AS (SELECT ${from} UNION ALL SELECT x + 1 FROM c` +
        ` WHERE x < ${to}) SELECT x FROM c);`;
      const check = ` SELECT coalesce(max(seq), 0) FROM hist WHERE w = ${this.id}`;
      const dice = this.#rng.next();
      if (dice < 0.03) {
        // Never committed: rows of writer id + 100, large enough to spill into the WAL.
        await writer.exec(`BEGIN; ${this.#ghostSql()} ROLLBACK;`);
        this.#report.rollbacks++;
        continue;
      }
      const sql = dice < 0.06
        ? `BEGIN; ${insert} SAVEPOINT s; ${this.#ghostSql()} ROLLBACK TO s; RELEASE s; COMMIT;`
        : insert;
      const out = await writer.exec(sql + check);
      if (dice < 0.06) this.#report.savepoints++;
      const now = Number(out[out.length - 1]);
      if (now === to) {
        this.committed = to;
        this.#report.commits++;
      } else if (now === from - 1) {
        this.#report.busyRetries++;
      } else {
        throw new Error(`Writer ${this.id} expected seq ${from - 1} or ${to}, read ${out}`);
      }
      const pause = this.#rng.int(0, 6);
      if (pause > 0) await sleep(pause);
    }
  }

  /** An INSERT of 20..200 rows of ~2 KB that must never be seen committed (writer id + 100). */
  #ghostSql(): string {
    const n = this.#rng.int(20, 200);
    return `INSERT INTO log (w, seq, v) SELECT ${GHOST + this.id}, x, hex(randomblob(1000))` +
      ` FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${n})` +
      ` SELECT x FROM c);`;
  }
}

/** Another process running `PRAGMA wal_checkpoint(MODE)` now and then, modes in turn. */
class ForeignCheckpointer {
  readonly #db: string;
  readonly #rng: Rng;
  readonly #report: TortureReport;
  #loop?: Promise<void>;
  #stopping = false;
  #paused = 0;
  #current: Promise<unknown> = Promise.resolve();
  #n = 0;

  constructor(db: string, seed: number, report: TortureReport) {
    this.#db = db;
    this.#rng = new Rng(seed);
    this.#report = report;
  }

  start(): void {
    this.#loop = this.#run();
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    await this.#loop;
  }

  /** Runs `fn` with no foreign checkpoint running or starting. */
  async paused<T>(fn: () => Promise<T>): Promise<T> {
    this.#paused++;
    try {
      await this.#current;
      return await fn();
    } finally {
      this.#paused--;
    }
  }

  async #run(): Promise<void> {
    while (!this.#stopping) {
      await sleep(this.#rng.int(30, 300));
      if (this.#paused > 0 || this.#stopping) continue;
      const mode = CHECKPOINT_MODES[this.#n++ % CHECKPOINT_MODES.length];
      const busyMs = [0, 20, 100, 300][this.#rng.int(0, 3)];
      this.#current = sqliteAsync(
        this.#db,
        `PRAGMA busy_timeout = ${busyMs}; PRAGMA wal_checkpoint(${mode});`,
      ).then(
        () => this.#report.foreignCheckpoints[mode]++,
        () => {}, // SQLITE_BUSY before it began: it did nothing
      );
      await this.#current;
    }
  }
}

/** What one restore held. */
interface Restored {
  /** Per writer id: the k of its committed prefix. */
  k: Map<number, number>;
}

class Run {
  readonly dir: string;
  readonly db: string;
  readonly replica: string;
  readonly config: string;
  readonly #rng: Rng;
  readonly #report: TortureReport;
  readonly #progress: (line: string) => void;
  readonly #writers: AppWriter[] = [];
  readonly #checkpointer: ForeignCheckpointer;
  readonly #ballastBytes: number;
  readonly #debug: boolean;
  #daemon?: Daemon;
  #ballastHash = "";
  #last?: Restored;
  #logFile?: Deno.FsFile;

  constructor(
    dir: string,
    seed: number,
    options: TortureOptions,
    report: TortureReport,
    progress: (line: string) => void,
  ) {
    this.dir = dir;
    this.db = `${dir}/app.db`;
    this.replica = `${dir}/replica`;
    this.config = `${dir}/litestream.yml`;
    this.#rng = new Rng(seed);
    this.#report = report;
    this.#progress = progress;
    this.#ballastBytes = options.ballastBytes ?? 4 << 20;
    this.#debug = options.debug ?? false;
    for (let i = 1; i <= (options.writers ?? 2); i++) {
      this.#writers.push(new AppWriter(i, this.db, seed + 1000 * i, report));
    }
    this.#checkpointer = new ForeignCheckpointer(this.db, seed + 77, report);
  }

  async setUp(): Promise<void> {
    this.#logFile = await Deno.open(`${this.dir}/torture.log`, { write: true, create: true });
    const rows = Math.ceil(this.#ballastBytes / 65536);
    await sqliteAsync(
      this.db,
      SCHEMA +
        `INSERT INTO ballast (b) SELECT randomblob(65536) FROM (WITH RECURSIVE c(x) AS` +
        ` (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rows}) SELECT x FROM c);`,
    );
    this.#ballastHash = (await sqliteAsync(this.db, BALLAST_HASH_SQL)).trim();
    // Small thresholds: checkpoints every few commits, RESTARTs often; frequent snapshots;
    // retention keeps the replica small over a long run.
    await writeConfig(this.config, this.db, this.replica, {
      db: {
        "min-checkpoint-page-count": 16,
        "max-checkpoint-page-count": 128,
        "checkpoint-interval": "1s",
        "busy-timeout": "5s",
      },
      replica: {
        "snapshot-interval": "400ms",
        retention: "5s",
        "retention-check-interval": "1s",
      },
    });
    if (this.#debug) {
      await Deno.writeTextFile(this.config, "logging:\n  level: debug\n", { append: true });
    }
    for (const w of this.#writers) await w.start();
    this.#checkpointer.start();
  }

  #log(line: string): void {
    this.#logFile?.writeSync(new TextEncoder().encode(line + "\n"));
  }

  #problem(kind: "corrupt" | "lost" | "errors", cycle: number, what: string): void {
    this.#report[kind]++;
    const line = `cycle ${cycle}: ${kind}: ${what}`;
    this.#report.problems.push(line);
    this.#log(line);
    this.#progress(line);
  }

  async cycle(c: number): Promise<void> {
    for (const w of this.#writers) {
      if (w.error) throw new Error(`Writer ${w.id} failed`, { cause: w.error });
    }
    const stop = this.#rng.pick<Stop>({
      startup: 15,
      anytime: 30,
      snapshot: 20,
      checkpoint: 20,
      clean: 15,
    });
    const delayMs = stop === "startup" ? this.#rng.int(0, 150) : this.#rng.int(100, 1200);
    this.#report.stops[stop]++;
    const stale = this.#snapshotTmps();
    const daemon = this.#daemon = Daemon.ours(["replicate", "-config", this.config]);
    let note = "";
    if (stop === "clean") {
      // Only once it runs: a SIGTERM during Deno's start-up, before the handler is
      // installed, kills the process (no worse than SIGKILL, but not a clean stop).
      const end = Date.now() + 10_000;
      while (!/msg="replicating to"/.test(daemon.log) && daemon.running && Date.now() < end) {
        await sleep(5);
      }
      await sleep(delayMs);
      const r = await daemon.stop("SIGTERM").catch((err: Error) => ({
        code: -1,
        signal: null,
        log: err.message,
      }));
      if (r.code !== 0 || r.signal !== null) {
        this.#problem("errors", c, `replicate exited ${r.code}/${r.signal} on SIGTERM`);
      }
    } else {
      if (stop === "startup" || stop === "anytime") await sleep(delayMs);
      let upload: { path: string; ino: number | null } | undefined;
      if (stop === "snapshot") {
        upload = await this.#untilSnapshotUpload(daemon, stale);
        note = upload?.path ?? "no snapshot upload seen";
      } else if (stop === "checkpoint") {
        note = await this.#checkpointer.paused(() => this.#untilDbWrite(daemon));
      }
      if (!daemon.running) this.#problem("errors", c, "replicate exited by itself");
      await daemon.stop("SIGKILL");
      this.#report.kills++;
      // The upload was cut short if its .tmp is still there.
      if (upload && upload.ino !== null && this.#ino(upload.path) === upload.ino) {
        this.#report.snapshotHits++;
      }
    }
    this.#daemon = undefined;
    this.#report.generations += daemon.log.match(/msg="new generation"/g)?.length ?? 0;
    this.#log(`--- cycle ${c} stop=${stop} delay=${delayMs} ${note}\n${daemon.log}`);
    // While no replicator runs: writers go on, other processes checkpoint, and sometimes
    // every writer closes (the last connection checkpoints and deletes the WAL).
    if (this.#rng.next() < 0.15) {
      for (const w of this.#writers) await w.stop();
      for (const w of this.#writers) await w.start();
      this.#report.writerRestarts++;
    }
    await this.#restoreAndCheck(c);
  }

  /**
   * Waits until a snapshot is being written to the replica; returns its `.tmp` path and
   * inode. `stale` are the `.tmp` files earlier kills left (a generation not written to again
   * keeps them).
   */
  async #untilSnapshotUpload(
    daemon: Daemon,
    stale: Map<string, number | null>,
  ): Promise<{ path: string; ino: number | null } | undefined> {
    const end = Date.now() + 3000;
    while (Date.now() < end && daemon.running) {
      for (const [path, ino] of this.#snapshotTmps()) {
        if (!stale.has(path) || stale.get(path) !== ino) return { path, ino };
      }
      await sleep(1);
    }
    return undefined;
  }

  /** The snapshot `.tmp` files in the replica, with their inodes. */
  #snapshotTmps(): Map<string, number | null> {
    const out = new Map<string, number | null>();
    let gens: Deno.DirEntry[] = [];
    try {
      gens = [...Deno.readDirSync(`${this.replica}/generations`)];
    } catch { /* not yet */ }
    for (const g of gens) {
      const dir = `${this.replica}/generations/${g.name}/snapshots`;
      try {
        for (const e of Deno.readDirSync(dir)) {
          if (e.name.endsWith(".tmp")) out.set(`${dir}/${e.name}`, this.#ino(`${dir}/${e.name}`));
        }
      } catch { /* not yet, or deleted by retention */ }
    }
    return out;
  }

  #ino(path: string): number | null {
    try {
      return Deno.statSync(path).ino;
    } catch {
      return null;
    }
  }

  #exists(path: string): boolean {
    try {
      Deno.statSync(path);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Waits for the replicator's first write to the database file: with no other process
   * checkpointing and writers that never do (autocheckpoint off), that is its checkpoint.
   */
  async #untilDbWrite(daemon: Daemon): Promise<string> {
    const watcher = Deno.watchFs(this.db, { recursive: false });
    let closed = false;
    const close = () => {
      if (!closed) watcher.close();
      closed = true;
    };
    const timer = setTimeout(close, 3000);
    daemon.child.status.then(close);
    try {
      for await (const e of watcher) {
        if (e.kind === "modify") return "checkpoint write seen";
      }
      return "no checkpoint write seen";
    } finally {
      clearTimeout(timer);
      close();
    }
  }

  async #restoreAndCheck(c: number): Promise<void> {
    const out = `${this.dir}/restored-${c}.db`;
    this.#report.restores++;
    const r = await runOurs([
      "restore",
      "-if-replica-exists",
      "-o",
      out,
      `file://${this.replica}`,
    ]);
    if (r.code !== 0) {
      const gen = /generation=([0-9a-f]{16})/.exec(r.stderr)?.[1];
      const first = gen ? await this.#firstBadIndex(gen) : undefined;
      this.#problem(
        "corrupt",
        c,
        `restore exited ${r.code}: ${r.stderr.trim().split("\n").pop()}` +
          (first ? `; restores of generation ${gen} fail from WAL index ${first} on` : ""),
      );
      return;
    }
    if (!this.#exists(out)) {
      this.#report.emptyRestores++;
      if (this.#last) this.#problem("lost", c, "restore found no backup after an earlier one");
      return;
    }
    const restored = await this.#check(c, out);
    if (restored) {
      if (this.#last) {
        for (const [w, k] of this.#last.k) {
          if ((restored.k.get(w) ?? 0) < k) {
            this.#problem("lost", c, `writer ${w} went back from ${k} to ${restored.k.get(w)}`);
          }
        }
      }
      this.#last = restored;
      await Deno.remove(out);
    }
  }

  /** The first WAL index of `generation` up to which a restore fails, in hex. */
  async #firstBadIndex(generation: string): Promise<string | undefined> {
    const indexes = new Set(
      (await walSegmentNames(this.replica)).filter((s) => s.generation === generation).map((s) =>
        s.index
      ),
    );
    for (const index of [...indexes].sort((a, b) => a - b)) {
      const hex = index.toString(16).padStart(8, "0");
      const out = `${this.dir}/probe-${generation}-${hex}.db`;
      const r = await runOurs(
        ["restore", "-generation", generation, "-index", hex, "-o", out, `file://${this.replica}`],
      );
      await Deno.remove(out).catch(() => {});
      if (r.code !== 0) return hex;
    }
    return undefined;
  }

  /** Checks a restored database; returns what it holds, or undefined after a problem. */
  async #check(c: number, path: string): Promise<Restored | undefined> {
    let out: string;
    try {
      out = await sqliteAsync(
        path,
        `PRAGMA integrity_check;
         SELECT 'H', w, count(*), min(seq), max(seq) FROM hist GROUP BY w;
         SELECT 'S', w, last FROM state;
         SELECT 'L', w, count(*), min(seq), max(seq), sum(v IS NOT ${
          valueSql("w", "seq")
        }) FROM log GROUP BY w;
         SELECT 'B', (${BALLAST_HASH_SQL});
         SELECT 'G', count(*) FROM hist WHERE w >= ${GHOST};`,
      );
    } catch (err) {
      this.#problem("corrupt", c, `cannot read ${path}: ${(err as Error).message.trim()}`);
      return undefined;
    }
    const lines = out.trim().split("\n");
    if (lines[0] !== "ok") {
      this.#problem("corrupt", c, `integrity_check of ${path}: ${lines.slice(0, 5).join("; ")}`);
      return undefined;
    }
    const rows = lines.slice(1).map((l) => l.split("|"));
    const k = new Map<number, number>();
    const problems: string[] = [];
    for (const w of this.#writers) {
      const h = rows.find((r) => r[0] === "H" && Number(r[1]) === w.id)?.slice(2).map(Number);
      const s = rows.find((r) => r[0] === "S" && Number(r[1]) === w.id)?.slice(2).map(Number);
      const l = rows.find((r) => r[0] === "L" && Number(r[1]) === w.id)?.slice(2).map(Number);
      const n = h ? h[2] : 0;
      k.set(w.id, n);
      const want = n === 0 ? { h: undefined, s: undefined, l: undefined } : {
        h: [n, 1, n],
        s: [n],
        l: [Math.min(n, LOG_WINDOW), Math.max(1, n - LOG_WINDOW + 1), n, 0],
      };
      const same = (a?: number[], b?: number[]) => JSON.stringify(a) === JSON.stringify(b);
      if (!same(h, want.h)) problems.push(`writer ${w.id} hist ${h} (want ${want.h})`);
      if (!same(s, want.s)) problems.push(`writer ${w.id} state ${s} (want ${want.s})`);
      if (!same(l, want.l)) problems.push(`writer ${w.id} log ${l} (want ${want.l})`);
      if (n > w.attempted) problems.push(`writer ${w.id} at ${n}, never sent past ${w.attempted}`);
    }
    const ghosts = Number(rows.find((r) => r[0] === "G")?.[1] ?? -1);
    if (ghosts !== 0) problems.push(`${ghosts} rows of rolled-back transactions`);
    const ballast = rows.find((r) => r[0] === "B")?.[1];
    if (ballast !== this.#ballastHash) problems.push(`ballast hash ${ballast}`);
    if (problems.length > 0) {
      this.#problem("lost", c, `${path} is no committed state: ${problems.join("; ")}`);
      return undefined;
    }
    return { k };
  }

  /** Stops the writers, lets a replicator catch up and stop cleanly, compares a restore. */
  async finish(): Promise<void> {
    const c = this.#report.cycles + 1;
    await this.#checkpointer.stop();
    for (const w of this.#writers) await w.stop();
    const daemon = this.#daemon = Daemon.ours(["replicate", "-config", this.config]);
    try {
      await settled(this.replica, 500);
    } finally {
      const r = await daemon.stop("SIGTERM").catch((err: Error) => ({
        code: -1,
        signal: null,
        log: err.message,
      }));
      this.#daemon = undefined;
      this.#report.generations += daemon.log.match(/msg="new generation"/g)?.length ?? 0;
      this.#log(`--- final\n${daemon.log}`);
      if (r.code !== 0 || r.signal !== null) {
        this.#problem("errors", c, `replicate exited ${r.code}/${r.signal} on SIGTERM`);
      }
    }
    const out = `${this.dir}/restored-final.db`;
    const r = await runOurs(["restore", "-o", out, `file://${this.replica}`]);
    if (r.code !== 0) {
      this.#problem("lost", c, `final restore exited ${r.code}: ${r.stderr.trim()}`);
      return;
    }
    const restored = await this.#check(c, out);
    if (!restored) return;
    for (const w of this.#writers) {
      if (restored.k.get(w.id) !== w.committed) {
        this.#problem(
          "lost",
          c,
          `writer ${w.id} restored at ${restored.k.get(w.id)}, committed ${w.committed}`,
        );
      }
    }
    if (await dump(out) !== await dump(this.db)) {
      this.#problem("lost", c, `final restore ${out} differs from the source`);
      return;
    }
    await Deno.remove(out);
  }

  async tearDown(): Promise<void> {
    await this.#daemon?.stop("SIGKILL").catch(() => {});
    await this.#checkpointer.stop().catch(() => {});
    for (const w of this.#writers) await w.stop().catch(() => {});
    this.#logFile?.close();
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      cycles: { type: "string", default: "50" },
      seed: { type: "string" },
      writers: { type: "string", default: "2" },
      "ballast-mb": { type: "string", default: "4" },
      keep: { type: "boolean", default: false },
      "keep-going": { type: "boolean", default: false },
      debug: { type: "boolean", default: false },
    },
  });
  const enc = new TextEncoder();
  const report = await torture({
    cycles: Number(values.cycles),
    seed: values.seed !== undefined ? Number(values.seed) : undefined,
    writers: Number(values.writers),
    ballastBytes: Number(values["ballast-mb"]) * (1 << 20),
    keep: values.keep,
    keepGoing: values["keep-going"],
    debug: values.debug,
    progress: (line) => Deno.stderr.writeSync(enc.encode(`torture: ${line}\n`)),
  });
  for (const p of report.problems) print(p);
  print(formatReport(report));
  if (report.dir) print(`kept ${report.dir}`);
  Deno.exit(report.corrupt + report.lost + report.errors > 0 ? 1 : 0);
}
