/**
 * Db: watches one SQLite database, copies every committed WAL transaction into the shadow
 * WAL under `.<db>-litestream/`, takes over checkpointing, and wakes its replicas.
 *
 * Its parts live in their own files: the shadow WAL's files in `shadow_wal.ts`, the read
 * mark, the write lock and the checkpoint sequence in `checkpoint.ts`, the file watch in
 * `wal_watcher.ts`. What is left here: the connections, the verify step that decides
 * whether the real WAL can still be followed, and the monitor loop.
 *
 * Safety rests on three rules (see README "How replication stays correct"):
 * 1. A read transaction of ours is held at every moment from open to close, handed over
 *    between two read-only connections only after the frames up to the new one's start are
 *    in the shadow WAL (`Checkpointer.handOver`). So the WAL can restart only once all of
 *    its committed frames are in the shadow WAL.
 * 2. Our checkpoints backfill up to our read mark without SQLite's write lock; forced ones
 *    take it only to copy and backfill the few frames committed since.
 * 3. On every sync the real WAL is checked against the shadow: the same life (header equal
 *    and the last copied frame unchanged), the next life (SQLite's restart header: salt-1
 *    + 1), or else a new generation.
 *
 * @module
 */
import {
  decodeWalHeader,
  decodeWalIndexHeader,
  isFreshWalHeader,
  isNextWalHeader,
  isValidWalHeader,
  WAL_HEADER_SIZE,
  WAL_INDEX_HEADER_SIZE,
  type WalHeader,
} from "./wal.ts";
import { defaultMetaPath } from "./layout.ts";
import { formatPos, MAX_INDEX, type Pos } from "./pos.ts";
import { type CheckpointMode, Connection, probeDatabaseFile } from "./sqlite.ts";
import {
  absPath,
  closeQuietly,
  dirname,
  exists,
  fileSizeSync,
  mkdirp,
  readAtSync,
  readIntoSync,
} from "./internal/fs.ts";
import { lockReplicator, ReplicatorLockedError } from "./internal/replicator_lock.ts";
import { delay, Mutex, Wakeup } from "./internal/delay.ts";
import { Scratch } from "./internal/bytes.ts";
import { FailureLog } from "./internal/failure_log.ts";
import { type Logger, silentLogger } from "./log.ts";
import { describeError, WalChainError } from "./errors.ts";
import { createHash } from "node:crypto";
import type { CallOptions } from "./replica_client.ts";
import { type DbMetrics, newDbMetrics } from "./metrics.ts";
import { bytesEqual, ShadowWal, type ShadowWalReader } from "./shadow_wal.ts";
import {
  Checkpointer,
  type CheckpointOutcome,
  CheckpointSchedule,
  UPSERT_SEQ,
} from "./checkpoint.ts";
import { WalWatcher } from "./wal_watcher.ts";

export const DEFAULT_MONITOR_INTERVAL_MS = 1_000;
export const DEFAULT_MIN_SYNC_GAP_MS = 20;
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 60_000;
export const DEFAULT_MIN_CHECKPOINT_PAGE_COUNT = 1_000;
export const DEFAULT_MAX_CHECKPOINT_PAGE_COUNT = 10_000;
export const DEFAULT_TRUNCATE_PAGE_COUNT = 500_000;
export const DEFAULT_BUSY_TIMEOUT_MS = 1_000;
/** Least time between two checkpoint attempts that could not finish, with no commit between. */
const CHECKPOINT_RETRY_MS = 100;
/** Age an unwatched WAL's mtime must have had when seen for a stat to prove it unchanged. */
const WAL_MTIME_SETTLED_MS = 1_000;
/** Longest an unwatched WAL goes without a full sync (see Db.#walUnchanged). */
const WAL_STAT_TRUST_MS = 60_000;
/**
 * While a transaction's frames sit uncommitted in the WAL (ShadowWal's `Tail`), how often the
 * monitor polls SQLite's count of committed frames, and how long after the WAL's last change
 * it does so before it scans the WAL whole once (a commit's wal-index update follows its
 * frames by the WAL's fsync).
 */
const TAIL_POLL_MS = 20;
const TAIL_QUIET_MS = 2_000;

/** Options of {@linkcode Db}. */
export interface DbOptions {
  /** Local state directory. @default {`<dir>/.<file>-litestream`} */
  metaPath?: string;
  /** Fallback poll interval; 0 starts no background loop (drive `sync()` yourself). @default {1000} */
  monitorIntervalMs?: number;
  /** React to WAL writes at once through file-system events. @default {true} */
  watch?: boolean;
  /**
   * Least time between the starts of two background syncs: an isolated commit is copied at
   * once, a burst of commits is copied in batches this far apart. @default {20}
   */
  minSyncGapMs?: number;
  /** Checkpoint when frames were added and this long passed since the last one; 0 disables. @default {60000} */
  checkpointIntervalMs?: number;
  /** PASSIVE checkpoint once the current WAL life holds this many frames. @default {1000} */
  minCheckpointPageCount?: number;
  /** Forced (RESTART) checkpoint at this many frames; 0 disables. @default {10000} */
  maxCheckpointPageCount?: number;
  /** TRUNCATE checkpoint once the WAL file holds this many frames; 0 disables. @default {500000} */
  truncatePageCount?: number;
  /** SQLite busy timeout of our connections. @default {1000} */
  busyTimeoutMs?: number;
  logger?: Logger;
}

type Verdict = { kind: "same" } | { kind: "next" } | { kind: "new"; reason: string };

/** A replicated database. Create, `open()`, attach replicas, and `close()` when done. */
export class Db implements AsyncDisposable {
  readonly path: string;
  readonly walPath: string;
  readonly metaPath: string;
  readonly monitorIntervalMs: number;
  readonly checkpointIntervalMs: number;
  readonly minCheckpointPageCount: number;
  readonly maxCheckpointPageCount: number;
  readonly truncatePageCount: number;
  readonly busyTimeoutMs: number;
  readonly watch: boolean;
  readonly minSyncGapMs: number;
  readonly metrics: DbMetrics;
  readonly log: Logger;

  // POSIX locks are per process: closing ANY descriptor of the database file drops every
  // lock SQLite holds on it, after which another process may checkpoint and delete the
  // WAL under us. So the file is opened once, before the connections, and closed after.
  #dbFile?: Deno.FsFile;
  // The same holds for the `-shm` file, where SQLite keeps the WAL's locks: opened once
  // (after the connections created it), read with synchronous calls, closed after them.
  #shmFile?: Deno.FsFile;
  // The WAL, kept open across syncs (an open by path costs a permission check of each path
  // component: see #walHandle), with the identity of the file it has open.
  #wal?: { file: Deno.FsFile; dev: number; ino: number | null };
  #conns: Connection[] = []; // read-write ones first: see #closeConnections
  #checkpointer?: Checkpointer;
  readonly #shadow: ShadowWal;
  readonly #schedule: CheckpointSchedule;
  #pageSize = 0;
  // True once a sync completed in this process with no WAL restart under it: from then on
  // our read transaction guarantees that a restarted WAL's previous life is complete in the
  // shadow WAL (see checkpoint.ts), so the next life is followed without checking the tail.
  #continuous = false;
  #syncLock = new Mutex();
  #checkpointLock = new Mutex();
  #subscribers = new Set<Wakeup>();
  #scratch = new Scratch(4 << 20); // WAL bytes of one sync, under #syncLock
  #replicaIndexes = new Map<string, Pos>();
  #forceNewGeneration?: string;
  #abort?: AbortController;
  #monitorDone: Promise<void> = Promise.resolve();
  #wake = new Wakeup();
  #watcher: WalWatcher;
  // The WAL's stat at the start of the last successful sync, and when (wall clock) it was
  // taken (see #walUnchanged).
  #walSeen?: Deno.FileInfo;
  #walSeenAt = 0;
  /** When (performance.now) a sync last saw the WAL's stat change. */
  #walChangedAt = 0;
  /** The checkpoint lock's holder waits for the running sync (see #syncForLockHolder). */
  #lockHolderWaits = false;
  /** The next sync scans the WAL's uncommitted tail whole (see TAIL_QUIET_MS). */
  #fullScanDue = false;
  /** Set by a sync that copied committed frames (read by the monitor loop). */
  #copiedFrames = false;
  #waitingLogged = false;
  #closed = false;
  /** Our flock on `.<db>-litestream/replicate.lock` (see replicator_lock.ts). */
  #replicatorLock?: Deno.FsFile;

  constructor(path: string, options: DbOptions = {}) {
    this.path = absPath(path);
    this.walPath = `${this.path}-wal`;
    this.metaPath = options.metaPath ? absPath(options.metaPath) : defaultMetaPath(this.path);
    this.monitorIntervalMs = options.monitorIntervalMs ?? DEFAULT_MONITOR_INTERVAL_MS;
    this.checkpointIntervalMs = options.checkpointIntervalMs ?? DEFAULT_CHECKPOINT_INTERVAL_MS;
    this.minCheckpointPageCount = options.minCheckpointPageCount ??
      DEFAULT_MIN_CHECKPOINT_PAGE_COUNT;
    this.maxCheckpointPageCount = options.maxCheckpointPageCount ??
      DEFAULT_MAX_CHECKPOINT_PAGE_COUNT;
    this.truncatePageCount = options.truncatePageCount ?? DEFAULT_TRUNCATE_PAGE_COUNT;
    this.busyTimeoutMs = options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS;
    this.watch = options.watch ?? true;
    this.minSyncGapMs = options.minSyncGapMs ?? DEFAULT_MIN_SYNC_GAP_MS;
    if (!(this.minCheckpointPageCount > 0)) {
      throw new RangeError(`Cannot open "${this.path}": min-checkpoint-page-count must be > 0`);
    }
    this.log = (options.logger ?? silentLogger).with({ db: this.path });
    this.metrics = newDbMetrics(this.path);
    this.#shadow = new ShadowWal(this.metaPath, this.log);
    this.#schedule = new CheckpointSchedule({
      checkpointIntervalMs: this.checkpointIntervalMs,
      minCheckpointPageCount: this.minCheckpointPageCount,
      maxCheckpointPageCount: this.maxCheckpointPageCount,
      truncatePageCount: this.truncatePageCount,
      retryMs: Math.min(CHECKPOINT_RETRY_MS, this.monitorIntervalMs || CHECKPOINT_RETRY_MS),
    });
    this.#watcher = new WalWatcher(this.walPath, () => this.#wake.notify(), this.log);
  }

  /** Page size of the database (0 before the first successful sync). */
  get pageSize(): number {
    return this.#pageSize;
  }

  /** The current generation, or undefined before the first successful sync. */
  get generation(): string | undefined {
    return this.#shadow.generation;
  }

  /** The shadow WAL, as replicas read it. */
  get shadow(): ShadowWalReader {
    return this.#shadow;
  }

  /** Current end of the shadow WAL: generation, index and committed size. */
  pos(): Pos | undefined {
    return this.#shadow.pos();
  }

  /** Path of shadow WAL file `index` of `generation`. */
  shadowWalPath(generation: string, index: number): string {
    return this.#shadow.path(generation, index);
  }

  /** Starts the monitor loop (unless `monitorIntervalMs` is 0). Syncs once first. */
  async open(): Promise<void> {
    this.#abort = new AbortController();
    try {
      await this.sync();
    } catch (err) {
      // A database that is not SQLite, cannot be put in WAL mode, or that we may not write
      // (Deno's permissions or the file system's) is a hard error: retrying cannot fix it.
      if (
        err instanceof SyntaxError || err instanceof RangeError ||
        err instanceof Deno.errors.NotFound || err instanceof ReplicatorLockedError
      ) throw err;
      if (isPermissionError(err)) {
        throw new Error(`Cannot replicate "${this.path}"`, { cause: err });
      }
      this.log.error("sync failed", { error: describeError(err) });
    }
    if (this.monitorIntervalMs > 0) this.#monitorDone = this.#monitor(this.#abort.signal);
  }

  /** Returns a wake-up that is notified whenever the shadow WAL changes. */
  subscribe(): Wakeup {
    const w = new Wakeup();
    this.#subscribers.add(w);
    return w;
  }

  unsubscribe(w: Wakeup): void {
    this.#subscribers.delete(w);
  }

  /** Records a replica's position, so shadow files it still needs are kept. */
  setReplicaPos(name: string, pos: Pos | undefined): void {
    if (pos) this.#replicaIndexes.set(name, pos);
    else this.#replicaIndexes.delete(name);
  }

  /** Makes the next sync start a new generation (for example when a replica is inconsistent). */
  requestNewGeneration(reason: string): void {
    this.#forceNewGeneration = reason;
    this.#wake.notify();
  }

  /**
   * Copies new committed WAL frames into the shadow WAL, starting a new generation if the
   * WAL can no longer be followed, and checkpoints when a threshold is crossed.
   *
   * @throws {SyntaxError} If the file is not a SQLite database.
   */
  async sync(_options: CallOptions = {}): Promise<void> {
    if (await this.#syncLock.run(() => this.#sync())) {
      // The WAL must be restarted (see #sync): after the snapshot or validation in flight.
      await this.#checkpointLock.run(() => this.#syncLock.run(() => this.#syncForLockHolder()));
    }
  }

  /** The monitor's sync: one that must restart the WAL during a snapshot leaves it to the next. */
  #syncNow(): Promise<boolean> {
    return this.#syncLock.run(() => this.#sync());
  }

  /**
   * @returns true if the WAL must be restarted but a snapshot or a validation is reading the
   * database file (nothing was copied)
   */
  async #sync(): Promise<boolean> {
    if (this.#closed) return false;
    if (!this.#checkpointer && !(await this.#init())) return false;
    const t0 = performance.now();
    try {
      try {
        await this.#syncOnce();
      } catch (err) {
        if (!(err instanceof WalChainError)) throw err;
        // The shadow WAL cannot follow this life to its end: let SQLite put every frame it
        // counts as committed into the database file, start the WAL over, and start a new
        // generation, whose snapshot holds them all. No snapshot or validation may read the
        // database file meanwhile: they hold the checkpoint lock while they do, and wait for
        // a sync with it (see #syncForLockHolder); otherwise the next sync tries again.
        const warn = () =>
          this.log.warn("wal cannot be followed, restarting it for a new generation", {
            error: err.message,
          });
        const restart = async () => {
          if (!(await this.#checkpointer!.restartWal())) {
            throw new Error(
              `Cannot restart the WAL of "${this.path}": other connections kept it busy`,
              { cause: err },
            );
          }
        };
        if (this.#lockHolderWaits) {
          warn();
          await restart();
        } else if (!(await this.#checkpointLock.tryRun(() => (warn(), restart()))).ran) {
          this.#wake.notify();
          return true;
        }
        this.#forceNewGeneration = "wal frames committed without valid checksums";
        await this.#syncOnce();
      }
      return false;
    } catch (err) {
      this.metrics.syncErrorCount++;
      throw err;
    } finally {
      this.metrics.syncCount++; // failed ones too, as v0.3.13 counts them
      this.metrics.syncSeconds += (performance.now() - t0) / 1000;
    }
  }

  /** #sync for a holder of the checkpoint lock that reads nothing until it returns. */
  async #syncForLockHolder(): Promise<void> {
    this.#lockHolderWaits = true;
    try {
      await this.#sync();
    } finally {
      this.#lockHolderWaits = false;
    }
  }

  async #syncOnce(): Promise<void> {
    const shadow = this.#shadow;
    let changed = false;
    const stat = this.#ensureWalExists();
    const fullScan = this.#fullScanDue;
    this.#fullScanDue = false;
    const before = this.#walSeen;
    this.#walSeen = undefined;
    const seenAt = Date.now();
    let wal = this.#readWalHeader(stat);
    const seen = wal.info;
    if (!before || !sameStat(before, seen)) this.#walChangedAt = performance.now();
    let verdict: Verdict = this.#forceNewGeneration
      ? { kind: "new", reason: this.#forceNewGeneration }
      : this.#verify(wal.bytes, wal.size);
    // SQLite writes a restarted WAL's header before its first frame: if the header changed
    // while we checked, the tail we saw overwritten is the restart's, so check again
    // against the new header rather than start a needless generation.
    for (let i = 0; i < 3 && verdict.kind === "new" && !this.#forceNewGeneration; i++) {
      const again = this.#readWalHeader();
      if (bytesEqual(again.bytes, wal.bytes)) break;
      wal = again;
      verdict = this.#verify(wal.bytes, wal.size);
    }
    this.#forceNewGeneration = undefined;
    // Finish the old life from its intact tail (unless our read transaction already
    // guaranteed it complete); if the new life overwrote part of it, start over.
    if (
      verdict.kind === "next" && !this.#continuous &&
      this.#copyEndedLife(decodeWalHeader(wal.bytes)) < 0
    ) {
      verdict = {
        kind: "new",
        reason: "wal restarted while stopped, its last frames overwritten or unreadable",
      };
    }
    if (verdict.kind === "new") {
      await this.#createGeneration(verdict.reason, wal.bytes);
      changed = true;
    } else {
      if (verdict.kind === "next") {
        await shadow.startIndex(shadow.index! + 1, wal.bytes);
        changed = true;
      }
      if (this.#copy(fullScan) > 0) changed = true;
    }
    const mode = this.#schedule.due(this.#shadowPoint(), wal.size);
    // Never waits for the checkpoint lock while holding the sync lock: its holder (a
    // snapshot, say) may be waiting for the sync lock.
    if (mode) {
      const out = await this.#checkpointLock.tryRun(() => this.#checkpoint(mode));
      if (out.ran && out.value.copied > 0) changed = true;
    }
    if (changed) await shadow.flush();
    // A restart during this first sync could have cut the copy short: only a sync that
    // saw the same header from start to end establishes the guarantee.
    if (!this.#continuous) {
      this.#continuous = bytesEqual(this.#readWalHeader().bytes, shadow.headerBytes!);
    }
    if (changed) {
      for (const s of this.#subscribers) s.notify();
      await this.#cleanShadow();
    }
    this.#walSeen = seen;
    this.#walSeenAt = seenAt;
    this.#copiedFrames = changed;
    this.metrics.walSize = wal.size;
    this.metrics.dbSize = this.#dbFile ? fileSizeSync(this.#dbFile) : 0;
    this.metrics.shadowWalIndex = shadow.index ?? 0;
    this.metrics.shadowWalSize = shadow.totalBytes;
    this.metrics.walScannedBytes = shadow.checksummedBytes;
  }

  async #init(): Promise<boolean> {
    let pageSize: number | undefined;
    try {
      pageSize = await probeDatabaseFile(this.path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        if (!this.#waitingLogged) this.log.info("waiting for database to be created");
        this.#waitingLogged = true;
        if (!(await exists(dirname(this.path)))) {
          throw new Deno.errors.NotFound(`Cannot open "${this.path}": directory does not exist`);
        }
        return false;
      }
      throw err;
    }
    if (pageSize === undefined) return false; // empty file: not initialized by the app yet
    this.#dbFile = Deno.openSync(this.path, { read: true });
    const ckpt = new Connection(this.path, { busyTimeoutMs: this.busyTimeoutMs });
    this.#conns = [ckpt];
    try {
      let row: { journal_mode: string } | undefined;
      try {
        row = ckpt.get<{ journal_mode: string }>("PRAGMA journal_mode = wal");
      } catch (err) {
        if ((err as { errcode?: number }).errcode === 8) { // SQLITE_READONLY
          throw new RangeError(
            `Cannot replicate "${this.path}": it cannot be put in WAL mode (database is read-only)`,
            { cause: err },
          );
        }
        throw err;
      }
      const mode = String(row?.journal_mode ?? "").toLowerCase();
      if (mode !== "wal") {
        throw new RangeError(
          `Cannot replicate "${this.path}": it cannot be put in WAL mode (journal_mode is "${mode}")`,
        );
      }
      // One replicator per database: taken once the database is known to be replicable
      // (nothing is left behind otherwise), before any write of ours.
      await mkdirp(this.metaPath, 0o700);
      this.#replicatorLock ??= lockReplicator(this.metaPath, this.path);
      ckpt.exec("PRAGMA wal_autocheckpoint = 0");
      // One transaction: on a first start, one commit (and WAL fsync) instead of two.
      ckpt.exec(
        "BEGIN; CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER);" +
          " CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER); COMMIT",
      );
      this.#pageSize = Number(ckpt.get<{ page_size: number }>("PRAGMA page_size")!.page_size);
      // No busy timeout: Checkpointer.withWriteLock retries itself (SQLite's handler would block us).
      const write = new Connection(this.path, { busyTimeoutMs: 0 });
      this.#conns.push(write);
      write.exec("PRAGMA wal_autocheckpoint = 0");
      const readers: [Connection, Connection] = [0, 1].map(() => {
        const r = new Connection(this.path, { readOnly: true, busyTimeoutMs: this.busyTimeoutMs });
        this.#conns.push(r);
        return r;
      }) as [Connection, Connection];
      this.#checkpointer = new Checkpointer(
        { readers, write, ckpt },
        this.metrics,
        this.busyTimeoutMs,
      );
      this.#ensureWalExists();
      this.#checkpointer.hold();
      // SQLite created it for the connections above (unless in exclusive locking mode).
      try {
        this.#shmFile = Deno.openSync(`${this.path}-shm`, { read: true });
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
      }
    } catch (err) {
      this.#closeConnections();
      this.#releaseReplicatorLock();
      if (err instanceof RangeError || err instanceof ReplicatorLockedError) throw err;
      const msg = describeError(err);
      if (/file is not a database|not a database/i.test(msg)) {
        throw new SyntaxError(`"${this.path}" is not a SQLite database`, { cause: err });
      }
      throw new Error(`Cannot open database "${this.path}"`, { cause: err });
    }
    await this.#shadow.load();
    this.#continuous = false;
    this.log.info("initialized db", { pageSize: this.#pageSize });
    return true;
  }

  /**
   * Starts a WAL life with a write of ours if the WAL holds no header. Returns the WAL's
   * stat when it already held one (the caller's #readWalHeader can use it).
   */
  #ensureWalExists(): Deno.FileInfo | undefined {
    let info: Deno.FileInfo | undefined;
    try {
      info = Deno.statSync(this.walPath);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    if (info && info.size >= WAL_HEADER_SIZE) return info;
    this.#checkpointer!.write(UPSERT_SEQ);
    return undefined;
  }

  // The per-sync file work uses synchronous calls (see readAtSync); only the fdatasync of
  // the shadow WAL goes through the thread pool.
  #readWalHeader(
    stat?: Deno.FileInfo,
  ): { bytes: Uint8Array; size: number; info: Deno.FileInfo } {
    // Stat by path (see fileSizeSync), before the read: a WAL replaced in between shows as
    // changed at the next sync, never as unchanged.
    const info = stat ?? Deno.statSync(this.walPath);
    const f = this.#walHandle(info);
    const size = fileSizeSync(f);
    const bytes = readAtSync(f, 0, WAL_HEADER_SIZE);
    if (bytes.length < WAL_HEADER_SIZE) {
      throw new Error(`Cannot read WAL header of "${this.path}": WAL is ${size} bytes`);
    }
    return { bytes, size, info };
  }

  /**
   * The open WAL file, given `info`, a stat of its path taken just before: the descriptor
   * kept from an earlier sync if that is the file at the path now, else the path opened
   * again. So a WAL deleted and created again, or replaced, is never read through the
   * descriptor of the file it replaced (whose inode number no new file can take while the
   * descriptor holds it). If the path changes again between the stat and the open, the stat
   * is of an older file than the one read: the next sync sees the path changed.
   */
  #walHandle(info: Deno.FileInfo): Deno.FsFile {
    const w = this.#wal;
    // Without inode numbers (not on Unix), every sync opens the path again.
    if (w && w.ino !== null && w.ino === info.ino && w.dev === info.dev) return w.file;
    this.#closeWal();
    const file = Deno.openSync(this.walPath, { read: true });
    try {
      const st = file.statSync(); // of the file opened, wherever the path points now
      this.#wal = { file, dev: st.dev, ino: st.ino };
    } catch (err) {
      closeQuietly(file);
      throw err;
    }
    return file;
  }

  /** The WAL file the current sync opened (see #walHandle). */
  #walFile(): Deno.FsFile {
    if (!this.#wal) throw new Error(`WAL of "${this.path}" is not open`);
    return this.#wal.file;
  }

  #closeWal(): void {
    closeQuietly(this.#wal?.file);
    this.#wal = undefined;
  }

  #verify(walHeaderBytes: Uint8Array, walSize: number): Verdict {
    const sh = this.#shadow;
    if (!sh.generation) return { kind: "new", reason: "no generation exists" };
    if (sh.index === undefined) return { kind: "new", reason: "no shadow wal" };
    if (sh.index >= MAX_INDEX) return { kind: "new", reason: "max index exceeded" };
    if (!isValidWalHeader(walHeaderBytes)) {
      return { kind: "new", reason: "wal header invalid" };
    }
    const same = bytesEqual(walHeaderBytes, sh.headerBytes!);
    if (!same && this.#continuous) {
      // Our read mark let one restart through at most, after we had copied that whole life
      // (see checkpoint.ts), so the changed header starts the next life. Salt-1 + 1 confirms
      // it, except after a TRUNCATE whose first new frame came from a connection that never
      // restarted a WAL: SQLite gave that header fresh salts (a new generation there was a
      // false alarm, seen when another process ran TRUNCATE checkpoints).
      const next = decodeWalHeader(walHeaderBytes);
      return isNextWalHeader(sh.header!, next) || isFreshWalHeader(sh.header!, next)
        ? { kind: "next" }
        : { kind: "new", reason: "wal restarted more than once since last sync" };
    }
    if (!same) {
      if (sh.size <= WAL_HEADER_SIZE) return { kind: "new", reason: "wal header only, mismatched" };
      if (!isNextWalHeader(sh.header!, decodeWalHeader(walHeaderBytes))) {
        return { kind: "new", reason: "wal restarted more than once since last sync" };
      }
    }
    if (walSize < sh.size) return { kind: "new", reason: "wal truncated by another process" };
    // The last frame we copied must still be there, byte for byte.
    if (!sh.lastFrameMatches(this.#walFile())) {
      return { kind: "new", reason: "wal overwritten by another process" };
    }
    return same ? { kind: "same" } : { kind: "next" };
  }

  async #createGeneration(reason: string, walHeader: Uint8Array): Promise<void> {
    if (!isValidWalHeader(walHeader)) {
      throw new Error(`Cannot start a generation for "${this.path}": WAL header is invalid`);
    }
    this.#pageSize = decodeWalHeader(walHeader).pageSize;
    const gen = await this.#shadow.beginGeneration(walHeader);
    this.#copy();
    await this.#shadow.flush();
    await this.#shadow.commitGeneration();
    this.#schedule.reset();
    this.log.info("new generation", { generation: gen, reason });
  }

  /**
   * Appends the committed frames of the current WAL life that the shadow lacks (no fsync:
   * see ShadowWal.append), resuming the scan of an uncommitted tail unless `fullScan`.
   * Returns the bytes appended, or -1 if the WAL restarted.
   */
  #copy(fullScan = false): number {
    // SQLite's count of committed frames, read before the WAL: its frames are all there.
    const committed = this.#committedFrames();
    const n = this.#shadow.append(
      this.#walFile(),
      this.#scratch,
      fullScan ? undefined : committed,
    );
    if (n < 0) {
      this.#wake.notify(); // the next sync follows the restarted WAL
      return n;
    }
    this.#checkCommitted(committed);
    if (n > 0) {
      this.metrics.totalWalBytes += n;
      if (this.log.enabled("debug")) {
        this.log.debug("copied frames", { pos: formatPos(this.pos()!), bytes: n });
      }
    }
    return n;
  }

  /**
   * Frames of the shadow's WAL life that SQLite counts as committed (its wal-index header's
   * mxFrame), or undefined if that cannot be read consistently (no `-shm` file: the
   * application uses `locking_mode=EXCLUSIVE`; or it was being written) or belongs to
   * another life (the WAL restarted).
   */
  #committedFrames(): number | undefined {
    const f = this.#shmFile, header = this.#shadow.headerBytes;
    if (!f || !header) return undefined;
    for (let i = 0; i < 3; i++) {
      const h = decodeWalIndexHeader(readAtSync(f, 0, 2 * WAL_INDEX_HEADER_SIZE));
      if (h) return bytesEqual(h.salt, header.subarray(16, 24)) ? h.mxFrame : undefined;
    }
    return undefined;
  }

  /**
   * Throws WalChainError if SQLite counted more frames of the shadow's WAL life as committed
   * (read before the copy) than the copy found valid: the frames past it fail their
   * checksums, yet our read mark may already stand past them, and a checkpoint would then put
   * pages into the database file that no WAL segment of ours holds.
   */
  #checkCommitted(committed: number | undefined): void {
    const frames = this.#shadow.frames;
    if (committed !== undefined && committed > frames) {
      throw new WalChainError(
        `WAL of "${this.path}": SQLite counts ${committed} frames committed, but frame ` +
          `${frames + 1} fails its checksum`,
      );
    }
  }

  /** Copies the rest of a WAL life that ended while we were stopped (see ShadowWal.appendEndedLife). */
  #copyEndedLife(next: WalHeader): number {
    const n = this.#shadow.appendEndedLife(this.#walFile(), this.#scratch, next);
    if (n > 0) this.metrics.totalWalBytes += n;
    return n;
  }

  #shadowPoint() {
    const sh = this.#shadow;
    return { index: sh.index!, size: sh.size, pageSize: sh.header!.pageSize };
  }

  /** Runs a checkpoint (under #checkpointLock) and records it in the schedule. */
  async #checkpoint(mode: CheckpointMode, exact = false): Promise<CheckpointOutcome> {
    const out = await this.#checkpointer!.run(mode, () => this.#copy(), {
      exact,
      position: () => ({ index: this.#shadow.index!, size: this.#shadow.size }),
    });
    this.#schedule.ran(out.at, out.complete);
    if (out.truncated || out.restarted) this.#wake.notify();
    this.log.debug("checkpoint", {
      mode,
      busy: out.result.busy,
      log: out.result.log,
      checkpointed: out.result.checkpointed,
      complete: out.complete,
    });
    return out;
  }

  /**
   * Backfills the whole WAL into the database file and hashes the file, which then holds
   * exactly the state at the returned position: the backfill's last frames were copied and
   * backfilled under the write lock, and our read transaction, whose mark no checkpoint of
   * ours moves meanwhile, keeps every checkpoint from changing the file while it is read.
   *
   * @returns undefined when readers on older snapshots kept the checkpoint from completing
   */
  async checksum(): Promise<{ pos: Pos; sha256: string; size: number } | undefined> {
    return await this.#checkpointLock.run(async () => {
      let pos: Pos | undefined;
      await this.#syncLock.run(async () => {
        await this.#syncForLockHolder();
        if (!this.#checkpointer || !this.pos()) return;
        const out = await this.#checkpoint("PASSIVE", true);
        if (out.complete) {
          pos = { generation: this.generation!, index: out.at.index, offset: out.at.size };
        }
        await this.#shadow.flush();
      });
      if (!pos) return undefined;
      const file = this.#dbFile!; // synchronous calls only (see #dbFile)
      const size = fileSizeSync(file);
      const hash = createHash("sha256");
      const buf = new Uint8Array(4 << 20);
      for (let done = 0; done < size;) {
        const n = readIntoSync(file, done, buf.subarray(0, Math.min(buf.length, size - done)));
        if (n === 0) break;
        hash.update(buf.subarray(0, n));
        done += n;
      }
      return { pos, sha256: hash.digest("hex"), size };
    });
  }

  /**
   * Removes shadow WAL files that every replica has moved past (keeping one extra); none
   * before a replica has said where it stands.
   */
  async #cleanShadow(): Promise<void> {
    const gen = this.generation, index = this.#shadow.index;
    if (!gen || index === undefined) return;
    // Until every replica has said where it stands (just after a start, or while its store
    // is down), any file may still be needed. That includes the first syncs, which run before
    // any replica is attached: a WAL restarted while we were stopped moves the index on, and
    // the store may still end in a file a cleaning with no replica to ask would remove.
    if (this.#replicaIndexes.size === 0 || this.#replicaIndexes.size < this.#subscribers.size) {
      return;
    }
    let min = index;
    for (const pos of this.#replicaIndexes.values()) {
      min = Math.min(min, pos.generation === gen ? pos.index : 0);
    }
    await this.#shadow.clean(min - 1);
  }

  /**
   * Runs `fn` with a reader of the database file while no checkpoint of ours can run, and
   * the position whose WAL index the snapshot belongs to. Restores replay that WAL index
   * from offset 0 over the snapshot, so pages a concurrent checkpoint by another process
   * writes while we read are overwritten by their WAL frames: our read mark, which no
   * checkpoint of ours moves meanwhile, keeps them within frames the shadow holds.
   *
   * The reader fills the buffer it is given from where the last call stopped and returns
   * the byte count, short only at the end of the file (0 there). It is synchronous, so the
   * caller can reuse one buffer for the whole file.
   */
  async snapshot<T>(
    fn: (pos: Pos, read: (buf: Uint8Array) => number) => Promise<T>,
  ): Promise<T> {
    return await this.#checkpointLock.run(async () => {
      await this.#syncLock.run(() => this.#syncForLockHolder());
      const pos = this.pos();
      if (!pos) throw new Error(`Cannot snapshot "${this.path}": database not initialized`);
      // Only synchronous calls on this handle: Deno's async file calls work on a duplicate
      // descriptor and close it afterwards, which drops SQLite's locks (see #dbFile).
      const file = this.#dbFile!;
      const size = fileSizeSync(file);
      let off = 0;
      const read = (buf: Uint8Array): number => {
        const n = readIntoSync(file, off, buf.subarray(0, Math.max(0, size - off)));
        off += n;
        return n;
      };
      return await fn(pos, read);
    });
  }

  async #monitor(signal: AbortSignal): Promise<void> {
    const failures = new FailureLog(this.log, "sync");
    // The last sync copied frames and the WAL changed since: a burst, whose next sync comes
    // after the gap below whatever wakes us.
    let burst = false;
    while (!signal.aborted) {
      // Arm before a sync that may be the last of a burst: a write after this point wakes
      // us, one before it the sync sees. Within a burst the watch (an open and a close of a
      // watcher each time, and events for every write) would only repeat what the gap does.
      burst &&= this.#walStatChanged();
      // While a transaction spills into the WAL, every write would end a watch at once (and
      // closing one waits for Deno's watcher thread: 0.3 s per 256 MiB transaction); the
      // polls of a pending tail (below) notice its commit instead.
      if (this.watch && !burst && this.#shadow.tailCommitted === undefined) {
        this.#watcher.arm(signal);
      }
      const lastStart = performance.now();
      this.#copiedFrames = false;
      try {
        await this.#syncNow();
        failures.succeeded();
      } catch (err) {
        if (signal.aborted) break;
        failures.failed(err);
        await delay(Math.min(this.monitorIntervalMs, 1000), { signal }).catch(() => {});
      }
      burst = this.#copiedFrames;
      // A poll only stats the WAL while that proves it unchanged: an idle database costs
      // no reads. Polls fall on shared ticks, so the event loop wakes once per interval for
      // all databases rather than once for each.
      while (!burst) {
        const tail = this.#shadow.tailCommitted;
        const ms = tail === undefined
          ? untilNextTick(this.monitorIntervalMs)
          : Math.min(TAIL_POLL_MS, this.monitorIntervalMs);
        if (await this.#wake.wait(ms, signal)) break;
        if (signal.aborted || !this.#walUnchanged()) break;
        if (tail !== undefined && this.#tailMayHaveCommitted(tail)) break;
      }
      // Under a burst every commit wakes us: batch what arrives within the gap.
      const wait = lastStart + this.minSyncGapMs - performance.now();
      if (wait > 0 && !signal.aborted) await delay(wait, { signal }).catch(() => {});
    }
  }

  /** True if the WAL's inode, size or mtime differ from what the last sync started with. */
  #walStatChanged(st = statOrUndefined(this.walPath)): boolean {
    const seen = this.#walSeen;
    return !seen || !st || !sameStat(seen, st);
  }

  /**
   * True if a transaction whose uncommitted frames the last sync saw may have committed:
   * SQLite's count of committed frames moved from `tail`'s, or the WAL has been quiet for
   * TAIL_QUIET_MS (the next sync then scans it whole).
   */
  #tailMayHaveCommitted(tail: number): boolean {
    if (performance.now() - this.#walChangedAt >= TAIL_QUIET_MS) {
      this.#fullScanDue = true;
      return true;
    }
    return this.#committedFrames() !== tail;
  }

  /**
   * True if the WAL file looks as at the start of the last sync and no checkpoint is due.
   *
   * Without an armed watch (all slots taken, see WatchSlots) an equal stat proves nothing
   * only if the mtime seen was old when it was seen: a frame written after a restart can
   * leave the size as it was, and a write in the same clock tick as the one seen would
   * leave the mtime too. A write after the stat gets a later mtime than one already a
   * second old. A full sync every WAL_STAT_TRUST_MS covers a clock stepped back.
   */
  #walUnchanged(): boolean {
    const st = statOrUndefined(this.walPath);
    if (!st || this.#shadow.index === undefined || this.#walStatChanged(st)) return false;
    if (!this.#watcher.armed) {
      const at = this.#walSeenAt, mtime = this.#walSeen!.mtime?.getTime();
      if (mtime === undefined || mtime > at - WAL_MTIME_SETTLED_MS) return false;
      if (Date.now() - at > WAL_STAT_TRUST_MS) return false;
    }
    return !this.#schedule.due(this.#shadowPoint(), st.size);
  }

  #releaseReplicatorLock(): void {
    closeQuietly(this.#replicatorLock); // closing the file releases its flock
    this.#replicatorLock = undefined;
  }

  #closeConnections(): void {
    // Read-write connections first (they were opened first): the last connection to close
    // would checkpoint and delete the WAL, costing a new generation on the next start; a
    // read-only one cannot.
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* keep closing */ }
    }
    this.#conns = [];
    this.#checkpointer = undefined;
    closeQuietly(this.#dbFile);
    this.#dbFile = undefined;
    closeQuietly(this.#shmFile);
    this.#shmFile = undefined;
    this.#closeWal();
    this.#shadow.close();
  }

  /** Stops the monitor, syncs once more, and closes the connections (keeping the WAL). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#abort?.abort();
    await this.#monitorDone;
    const errors: unknown[] = [];
    if (this.#checkpointer) {
      try {
        await this.sync();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#closed = true;
    await this.#syncLock.run(() => {
      try {
        this.#checkpointer?.release();
      } catch (err) {
        errors.push(err);
      }
      this.#closeConnections();
      this.#releaseReplicatorLock();
    });
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) {
      throw new AggregateError(errors, `Cannot close database "${this.path}" cleanly`);
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** True for a missing Deno permission or a file-system permission error, anywhere in the cause chain. */
function isPermissionError(err: unknown): boolean {
  for (let e = err; e instanceof Error; e = e.cause) {
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      return true;
    }
  }
  return false;
}

/** Milliseconds until the next multiple of `intervalMs` on the process's monotonic clock. */
/** True if two stats show the same inode, size and mtime. */
function sameStat(a: Deno.FileInfo, b: Deno.FileInfo): boolean {
  return a.ino === b.ino && a.size === b.size && a.mtime?.getTime() === b.mtime?.getTime();
}

function untilNextTick(intervalMs: number): number {
  return intervalMs - (performance.now() % intervalMs);
}

function statOrUndefined(path: string): Deno.FileInfo | undefined {
  try {
    return Deno.statSync(path);
  } catch {
    return undefined;
  }
}
