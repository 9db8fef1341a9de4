/**
 * Checkpoints that never let a committed WAL frame escape the shadow WAL, and never hold
 * SQLite's write lock for a backfill.
 *
 * Three facts of SQLite's WAL make this work (see README "How replication stays correct"):
 * 1. A WAL restarts (its frames get overwritten) only when every frame was backfilled into
 *    the database and no reader holds a read mark above 0. A reader on mark 0 (one that
 *    began when the WAL was fully backfilled) in turn blocks every backfill.
 * 2. So while we hold a read transaction, the WAL can restart at most once, and only after
 *    everything up to where our reader began was backfilled.
 * 3. We hold one at every moment: two read-only connections hand over to each other. The
 *    new one begins at the current end of the WAL, then we copy every committed frame into
 *    the shadow WAL, and only then does the old one end. Whenever the WAL restarts, the
 *    shadow WAL therefore already holds its whole previous life.
 *
 * A PASSIVE checkpoint is then a hand-over (our read mark moves to the frames just copied)
 * followed by SQLite's PASSIVE backfill up to that mark while writers keep appending past
 * it; no write lock. When writers never pause long enough for the backfill to catch up, a
 * forced checkpoint (RESTART or TRUNCATE mode) catches up without the lock until a few
 * frames are left, then takes the write lock only to copy and backfill those: holds of about
 * a millisecond (SQLite's two fsyncs of the backfill), counted in the metrics.
 *
 * @module
 */
import {
  type CheckpointMode,
  type CheckpointResult,
  type Connection,
  isBusyError,
} from "./sqlite.ts";
import { calcWalSize } from "./wal.ts";
import { delay } from "./internal/delay.ts";
import { type DbMetrics, LONG_WRITE_LOCK_SECONDS } from "./metrics.ts";

/** How long one attempt at the write lock retries at once before yielding (see withWriteLock). */
const WRITE_LOCK_SPIN_MS = 2;
/**
 * A forced checkpoint takes the write lock once the frames its lock-free backfill left
 * behind are this few (their copy and backfill is then the whole hold)…
 */
const LOCKED_TAIL_FRAMES = 32;
/** …or after this many lock-free rounds, or as soon as a round leaves a longer tail. */
const CATCH_UP_ROUNDS = 8;
/** A write of ours that starts a new WAL life (or creates the WAL) when none is there. */
export const UPSERT_SEQ =
  "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1";

/** Thresholds deciding when a checkpoint is due (the db config's keys). */
export interface CheckpointThresholds {
  /** Checkpoint when frames were added and this long passed since the last one; 0 disables. */
  checkpointIntervalMs: number;
  /** PASSIVE checkpoint once the current WAL life holds this many frames. */
  minCheckpointPageCount: number;
  /** Forced (RESTART) checkpoint at this many frames; 0 disables. */
  maxCheckpointPageCount: number;
  /** TRUNCATE checkpoint once the WAL file holds this many frames; 0 disables. */
  truncatePageCount: number;
  /** Least time between two checkpoint attempts that did not complete. */
  retryMs: number;
}

/** Where the shadow WAL stands, as the schedule needs it. */
export interface ShadowPoint {
  index: number;
  /** Committed bytes of the current shadow file. */
  size: number;
  pageSize: number;
}

/** Decides which checkpoint is due, remembering the last complete one and recent misses. */
export class CheckpointSchedule {
  readonly #t: CheckpointThresholds;
  #lastAt = Date.now();
  #doneAt?: { index: number; size: number };
  #missedAt?: { index: number; size: number; at: number };

  constructor(thresholds: CheckpointThresholds) {
    this.#t = thresholds;
  }

  /** The mode due for a shadow at `sh` and a WAL file of `walSize` bytes, if any. */
  due(sh: ShadowPoint, walSize: number): CheckpointMode | undefined {
    const t = this.#t, ps = sh.pageSize, done = this.#doneAt, missed = this.#missedAt;
    if (done && done.index === sh.index && done.size === sh.size) return undefined;
    // Nothing committed since a miss a moment ago: the same attempt would miss again.
    if (
      missed && missed.index === sh.index && missed.size === sh.size &&
      performance.now() - missed.at < t.retryMs
    ) return undefined;
    if (t.truncatePageCount > 0 && walSize >= calcWalSize(ps, t.truncatePageCount)) {
      return "TRUNCATE";
    }
    if (t.maxCheckpointPageCount > 0 && sh.size >= calcWalSize(ps, t.maxCheckpointPageCount)) {
      return "RESTART";
    }
    if (sh.size >= calcWalSize(ps, t.minCheckpointPageCount)) return "PASSIVE";
    if (
      t.checkpointIntervalMs > 0 && Date.now() - this.#lastAt >= t.checkpointIntervalMs &&
      sh.size > calcWalSize(ps, 1)
    ) return "PASSIVE";
    return undefined;
  }

  /**
   * Records a checkpoint that ran with the shadow at `at`: complete (the WAL was backfilled
   * up to there) or not, in which case the next attempt waits for a commit or `retryMs`.
   */
  ran(at: { index: number; size: number }, complete: boolean): void {
    this.#lastAt = Date.now();
    if (complete) {
      this.#doneAt = { index: at.index, size: at.size };
      this.#missedAt = undefined;
    } else this.#missedAt = { index: at.index, size: at.size, at: performance.now() };
  }

  /** Forgets the last checkpoint (a new generation starts from scratch). */
  reset(): void {
    this.#doneAt = this.#missedAt = undefined;
  }
}

/** What one checkpoint did. */
export interface CheckpointOutcome {
  /** Shadow bytes appended by its hand-overs. */
  copied: number;
  /** The WAL was backfilled up to the shadow's end as it stood at `at`. */
  complete: boolean;
  /** The shadow's end when the last backfill ran. */
  at: { index: number; size: number };
  /** SQLite's row for the last backfill. */
  result: CheckpointResult;
  /** TRUNCATE shrank the WAL file and a write of ours started its next life. */
  truncated: boolean;
  /** The WAL restarted before the checkpoint could move our read mark: sync again first. */
  restarted: boolean;
}

/**
 * Copies the committed frames the shadow lacks; returns the bytes appended, or -1 if the
 * WAL no longer holds the life the shadow follows.
 */
export type CopyFrames = () => number;

/** Connections a {@linkcode Checkpointer} drives; it owns none of them. */
export interface CheckpointConnections {
  /** Two read-only connections: one holds the read transaction while the other takes over. */
  readers: [Connection, Connection];
  /** Takes the write lock (no busy timeout: withWriteLock retries itself). */
  write: Connection;
  /** Runs checkpoints and our own writes; never holds a read transaction. */
  ckpt: Connection;
}

/** Holds our read mark on the WAL, moves it without letting go, and runs checkpoints. */
export class Checkpointer {
  readonly #c: CheckpointConnections;
  readonly #metrics: DbMetrics;
  readonly #busyTimeoutMs: number;
  #cur = 0;

  constructor(connections: CheckpointConnections, metrics: DbMetrics, busyTimeoutMs: number) {
    this.#c = connections;
    this.#metrics = metrics;
    this.#busyTimeoutMs = busyTimeoutMs;
  }

  /** True while one of our readers holds a read transaction. */
  get holding(): boolean {
    return this.#c.readers.some((r) => r.inTransaction);
  }

  /** Begins the read transaction that keeps other processes from restarting the WAL. */
  hold(): void {
    const r = this.#c.readers[this.#cur];
    if (!r.inTransaction) beginRead(r);
  }

  /** Ends every read transaction of ours (at close). */
  release(): void {
    for (const r of this.#c.readers) if (r.inTransaction) r.exec("ROLLBACK");
  }

  /**
   * Moves our read mark to the current end of the WAL without a moment unguarded: the other
   * reader begins, `copy` brings the shadow WAL up to at least where it began, and only
   * then does the old reader end. If `copy` throws or finds the WAL restarted (then the new
   * reader may sit in a life the shadow does not follow yet), the old reader keeps holding.
   *
   * @returns the bytes copied, or -1 if the WAL restarted (nothing was handed over)
   */
  handOver(copy: CopyFrames): number {
    const old = this.#c.readers[this.#cur], next = this.#c.readers[1 - this.#cur];
    beginRead(next);
    let n: number;
    try {
      n = copy();
    } catch (err) {
      next.exec("ROLLBACK");
      throw err;
    }
    if (n < 0) {
      next.exec("ROLLBACK");
      return -1;
    }
    if (old.inTransaction) old.exec("ROLLBACK");
    this.#cur = 1 - this.#cur;
    return n;
  }

  /**
   * Runs a checkpoint of `mode`. Every mode first backfills without any lock up to the
   * frames just copied. If that left frames behind (writers kept committing) and the mode
   * is forced, or `exact` asks for the database file to hold exactly the shadow's end, the
   * write lock is taken for the tail only. With `exact`, `complete` means that the database
   * file holds the state at `at` and keeps it while our current reader holds.
   */
  async run(
    mode: CheckpointMode,
    copy: CopyFrames,
    options: { exact?: boolean; position: () => { index: number; size: number } },
  ): Promise<CheckpointOutcome> {
    const t0 = performance.now();
    let copied = 0, restarted = false;
    const handOver = () => {
      const n = this.handOver(copy);
      if (n < 0) restarted = true;
      else copied += n;
      return n >= 0;
    };
    try {
      let at = options.position();
      let result: CheckpointResult = { busy: 1, log: 0, checkpointed: 0 };
      let complete = false;
      // One lock-free round: hand over to the WAL's end, then backfill up to it.
      const round = () => {
        if (!handOver()) return false;
        at = options.position();
        result = this.#c.ckpt.checkpoint("PASSIVE");
        complete = isComplete(result);
        return true;
      };
      const needsLock = () => !restarted && ((!complete && mode !== "PASSIVE") || options.exact);
      if (round() && needsLock()) {
        // Writers committed during the backfill. Catch up without the lock while each round
        // leaves a shorter tail, so that the hold below covers a few frames only.
        let tail = tailFrames(result);
        for (let i = 0; i < CATCH_UP_ROUNDS && tail > LOCKED_TAIL_FRAMES; i++) {
          if (!round() || !needsLock()) break;
          const next = tailFrames(result);
          if (next >= tail) break; // the writers outpace the backfill: lock now
          tail = next;
        }
      }
      if (complete && !options.exact) {
        // Re-begin on read mark 0 (if nothing was committed since), so that the next write
        // of the application restarts the WAL.
        handOver();
      } else if (needsLock()) {
        complete = false; // with `exact`, only a backfill under the lock counts
        await this.withWriteLock(this.#busyTimeoutMs, () => {
          const n = copy(); // the tail: no writer can add to it now
          if (n < 0) {
            restarted = true;
            return;
          }
          copied += n;
          at = options.position();
          result = this.#backfillLocked();
          complete = isComplete(result);
        });
      }
      let truncated = false;
      if (complete && !restarted && mode === "TRUNCATE") truncated = this.#truncate();
      return { copied, complete: complete && !restarted, at, result, truncated, restarted };
    } catch (err) {
      const m = this.#metrics;
      m.checkpointErrors[mode] = (m.checkpointErrors[mode] ?? 0) + 1;
      throw err;
    } finally {
      // Failed ones too, as v0.3.13 counts them.
      const m = this.#metrics;
      m.checkpointCount[mode] = (m.checkpointCount[mode] ?? 0) + 1;
      m.checkpointSeconds[mode] = (m.checkpointSeconds[mode] ?? 0) +
        (performance.now() - t0) / 1000;
    }
  }

  /**
   * Backfills the whole WAL while we hold the write lock and the shadow holds every frame.
   * Neither a writer nor anyone's RESTART or TRUNCATE checkpoint (they need the write lock
   * too) can change the WAL meanwhile, so our read transaction may end for the moment: it
   * would stop the backfill at our read mark. It begins again at the WAL's end (on read
   * mark 0 if the backfill completed, so that the next write restarts the WAL), also if the
   * checkpoint throws.
   */
  #backfillLocked(): CheckpointResult {
    const r = this.#c.readers[this.#cur];
    if (r.inTransaction) r.exec("ROLLBACK");
    try {
      return this.#c.ckpt.checkpoint("PASSIVE");
    } finally {
      beginRead(r);
    }
  }

  /**
   * Backfills the whole WAL into the database file and truncates it, for a WAL life the
   * shadow WAL cannot follow to its end (see WalChainError): our read transactions end first,
   * since no mark of ours may hold that backfill back, and begin again in the next life,
   * which a write of ours starts. Retries while other connections keep the truncation from
   * completing (a writer, a reader on an older snapshot), for up to the busy timeout.
   *
   * @returns false if the WAL could not be truncated in that time
   */
  async restartWal(): Promise<boolean> {
    this.release();
    try {
      const until = performance.now() + this.#busyTimeoutMs;
      for (;;) {
        this.#c.ckpt.checkpoint("PASSIVE"); // the bulk of it, without any lock
        if (this.#truncate()) return true;
        if (performance.now() >= until) return false;
        await delay(10);
      }
    } finally {
      this.hold();
    }
  }

  /**
   * Shrinks the fully backfilled WAL file to nothing and starts its next life with a write
   * of ours, so its header is the direct successor we follow. SQLite takes the write lock
   * for both; neither waits for a busy writer (the next checkpoint tries again).
   */
  #truncate(): boolean {
    const ckpt = this.#c.ckpt;
    ckpt.setBusyTimeout(0);
    let busy: number;
    const t0 = performance.now();
    try {
      busy = ckpt.checkpoint("TRUNCATE").busy;
    } catch (err) {
      if (!isBusyError(err)) throw err;
      busy = 1;
    } finally {
      ckpt.setBusyTimeout(this.#busyTimeoutMs);
    }
    this.#recordHold(performance.now() - t0);
    if (busy !== 0) return false;
    this.write(UPSERT_SEQ);
    return true;
  }

  /** Runs a write statement of ours on the checkpoint connection, timed as a lock hold. */
  write(sql: string): void {
    const t0 = performance.now();
    try {
      this.#c.ckpt.run(sql);
    } finally {
      this.#recordHold(performance.now() - t0);
    }
  }

  /**
   * Takes the write lock on our write connection, runs `locked` and releases the lock, all
   * in one synchronous stretch: no other task of ours (an upload's continuation, say) can run
   * while we hold it. SQLite's own busy handler sleeps 1, 2, 5… ms between tries, blocking
   * our event loop meanwhile (node:sqlite is synchronous), so the connection has no busy
   * timeout and we retry at once for WRITE_LOCK_SPIN_MS, then yield 1 ms, until `waitMs`.
   *
   * @returns false if the lock was not free within `waitMs` (`locked` did not run)
   */
  async withWriteLock(waitMs: number, locked: () => void): Promise<boolean> {
    const until = performance.now() + waitMs;
    let spinUntil = performance.now() + WRITE_LOCK_SPIN_MS;
    while (!this.#tryBeginImmediate()) {
      if (performance.now() < spinUntil) continue;
      if (performance.now() >= until) return false;
      await delay(1);
      spinUntil = performance.now() + WRITE_LOCK_SPIN_MS;
    }
    const t0 = performance.now();
    try {
      locked();
    } finally {
      try {
        this.#c.write.exec("ROLLBACK");
      } finally {
        this.#recordHold(performance.now() - t0);
      }
    }
    return true;
  }

  /** One try at the write lock: false if another connection holds it. */
  #tryBeginImmediate(): boolean {
    try {
      this.#c.write.exec("BEGIN IMMEDIATE");
      return true;
    } catch (err) {
      if (!isBusyError(err)) throw err;
      return false;
    }
  }

  #recordHold(ms: number): void {
    const m = this.#metrics, s = ms / 1000;
    m.writeLockCount++;
    m.writeLockSeconds += s;
    if (s > m.writeLockMaxSeconds) m.writeLockMaxSeconds = s;
    if (s > LONG_WRITE_LOCK_SECONDS) m.writeLockLongCount++;
  }
}

function beginRead(r: Connection): void {
  r.exec("BEGIN");
  try {
    r.get("SELECT COUNT(1) FROM _litestream_seq");
  } catch (err) {
    r.exec("ROLLBACK");
    throw err;
  }
}

/** Frames of the WAL that a checkpoint left behind (committed after our read mark). */
function tailFrames(r: CheckpointResult): number {
  return Math.max(0, r.log - r.checkpointed);
}

function isComplete(r: CheckpointResult): boolean {
  return r.busy === 0 && r.checkpointed === r.log;
}
