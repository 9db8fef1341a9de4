/**
 * Db: watches one SQLite database, copies every committed WAL transaction into the shadow
 * WAL under `.<db>-litestream/`, takes over checkpointing, and wakes its replicas.
 *
 * Safety rests on three rules (see README "How replication stays correct"):
 * 1. A read transaction held on our own read-only connection stops every other process's
 *    checkpoint from restarting the WAL while we run.
 * 2. Our own checkpoints run while we hold the write lock: we copy the last frames, let the
 *    checkpoint backfill, and re-take the read lock before any writer can restart the WAL,
 *    so no committed frame can be lost between the last copy and the restart.
 * 3. On every sync the real WAL is checked against the shadow: the same life (header equal
 *    and the last copied frame unchanged), the next life (SQLite's restart header: salt-1
 *    + 1, old tail intact), or else a new generation.
 *
 * @module
 */
import {
  calcWalSize,
  decodeWalHeader,
  frameAlign,
  isNextWalHeader,
  isValidWalHeader,
  scanWalFrames,
  WAL_HEADER_SIZE,
  walFrameSize,
  type WalHeader,
} from "./wal.ts";
import {
  defaultMetaPath,
  formatShadowWalName,
  isGenerationName,
  newGenerationName,
  parseShadowWalName,
} from "./layout.ts";
import { formatPos, MAX_INDEX, type Pos } from "./pos.ts";
import { type CheckpointMode, Connection, isBusyError, probeDatabaseFile } from "./sqlite.ts";
import {
  absPath,
  dirname,
  exists,
  fsyncDir,
  mkdirp,
  readAtSync,
  readIntoSync,
  writeAll,
  writeAllSync,
  writeFileAtomic,
} from "./internal/fs.ts";
import { delay, Mutex, Wakeup } from "./internal/delay.ts";
import { Scratch } from "./internal/bytes.ts";
import { type Logger, silentLogger } from "./log.ts";
import { describeError } from "./errors.ts";
import { createHash } from "node:crypto";
import type { CallOptions } from "./replica_client.ts";
import { type DbMetrics, newDbMetrics } from "./metrics.ts";

export const DEFAULT_MONITOR_INTERVAL_MS = 1_000;
export const DEFAULT_MIN_SYNC_GAP_MS = 20;
export const DEFAULT_CHECKPOINT_INTERVAL_MS = 60_000;
export const DEFAULT_MIN_CHECKPOINT_PAGE_COUNT = 1_000;
export const DEFAULT_MAX_CHECKPOINT_PAGE_COUNT = 10_000;
export const DEFAULT_TRUNCATE_PAGE_COUNT = 500_000;
export const DEFAULT_BUSY_TIMEOUT_MS = 1_000;

const SCAN_CHUNK = 8 << 20;
/** How long one attempt at the write lock retries at once before yielding (see #lockWrites). */
const WRITE_LOCK_SPIN_MS = 2;
const UPSERT_SEQ =
  "INSERT INTO _litestream_seq (id, seq) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET seq = seq + 1";

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

interface ShadowState {
  index: number;
  /** Committed bytes in the shadow file, header included. */
  size: number;
  headerBytes: Uint8Array;
  header: WalHeader;
  /** Running WAL checksum at `size`. */
  checksum: [number, number];
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
  #read?: Connection; // read-only, holds the long read transaction; closed last
  #write?: Connection; // takes the write lock around our checkpoints
  #ckpt?: Connection; // runs checkpoints and our own writes
  #pageSize = 0;
  #generation?: string;
  #shadow?: ShadowState;
  #syncLock = new Mutex();
  #checkpointLock = new Mutex();
  #subscribers = new Set<Wakeup>();
  #scratch = new Scratch(4 << 20); // WAL bytes of one sync, under #syncLock
  #replicaIndexes = new Map<string, Pos>();
  #lastCheckpointAt = Date.now();
  #checkpointedAt?: { index: number; size: number };
  // Set when our own checkpoint backfilled the whole WAL while we held the write lock: the
  // shadow then holds every frame of that WAL life, so its successor can be followed
  // whatever the restarted WAL overwrote or truncated.
  #sealed?: { index: number; size: number };
  #forceNewGeneration?: string;
  // Where the shadow stood when a PASSIVE checkpoint last missed the write lock.
  #lockMissedAt?: { index: number; size: number; at: number };
  #abort?: AbortController;
  #monitorDone: Promise<void> = Promise.resolve();
  #wake = new Wakeup();
  #watcher?: Deno.FsWatcher;
  #watchFailed = false;
  // The WAL's stat at the start of the last successful sync (see #walUnchanged).
  #walSeen?: Deno.FileInfo;
  #waitingLogged = false;
  #closed = false;

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
  }

  /** Page size of the database (0 before the first successful sync). */
  get pageSize(): number {
    return this.#pageSize;
  }

  /** The current generation, or undefined before the first successful sync. */
  get generation(): string | undefined {
    return this.#generation;
  }

  /** Current end of the shadow WAL: generation, index and committed size. */
  pos(): Pos | undefined {
    if (!this.#generation || !this.#shadow) return undefined;
    return { generation: this.#generation, index: this.#shadow.index, offset: this.#shadow.size };
  }

  /** Path of shadow WAL file `index` of `generation`. */
  shadowWalPath(generation: string, index: number): string {
    return `${this.metaPath}/generations/${generation}/wal/${formatShadowWalName(index)}`;
  }

  /** Starts the monitor loop (unless `monitorIntervalMs` is 0). Syncs once first. */
  async open(): Promise<void> {
    this.#abort = new AbortController();
    try {
      await this.sync();
    } catch (err) {
      // A database that is not SQLite, or cannot be put in WAL mode, is a hard error.
      if (
        err instanceof SyntaxError || err instanceof RangeError ||
        err instanceof Deno.errors.NotFound
      ) throw err;
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
  sync(_options: CallOptions = {}): Promise<void> {
    return this.#syncLock.run(() => this.#sync());
  }

  async #sync(): Promise<void> {
    if (this.#closed) return;
    if (!this.#read && !(await this.#init())) return;
    const t0 = performance.now();
    try {
      let changed = false;
      this.#ensureWalExists(this.#ckpt!);
      this.#walSeen = undefined;
      let wal = this.#readWalHeader();
      const seen = wal.info;
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
      if (verdict.kind === "new") {
        await this.#createGeneration(verdict.reason);
        changed = true;
      } else {
        if (verdict.kind === "next") {
          // Finish the old life from its intact tail (unless sealed), then follow the new one.
          if (!this.#isSealed()) await this.#copyFrames();
          await this.#startShadowIndex(this.#shadow!.index + 1, wal.bytes);
          changed = true;
        }
        if (await this.#copyFrames() > 0) changed = true;
      }
      const mode = this.#checkpointMode(wal.size);
      if (mode && !this.#checkpointLock.locked) {
        if ((await this.#checkpointLock.run(() => this.#checkpoint(mode))).copied) changed = true;
      }
      if (changed) {
        for (const s of this.#subscribers) s.notify();
        await this.#cleanShadow();
      }
      this.#walSeen = seen;
      this.metrics.syncCount++;
      this.metrics.walSize = wal.size;
      this.metrics.dbSize = this.#dbFile?.statSync().size ?? 0;
      this.metrics.shadowWalIndex = this.#shadow?.index ?? 0;
    } catch (err) {
      this.metrics.syncErrorCount++;
      throw err;
    } finally {
      this.metrics.syncSeconds += (performance.now() - t0) / 1000;
    }
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
      ckpt.exec("PRAGMA wal_autocheckpoint = 0");
      ckpt.exec("CREATE TABLE IF NOT EXISTS _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)");
      ckpt.exec("CREATE TABLE IF NOT EXISTS _litestream_lock (id INTEGER)");
      this.#pageSize = Number(ckpt.get<{ page_size: number }>("PRAGMA page_size")!.page_size);
      // No busy timeout: #lockWrites retries itself (SQLite's handler would block us).
      const write = new Connection(this.path, { busyTimeoutMs: 0 });
      write.exec("PRAGMA wal_autocheckpoint = 0");
      this.#ensureWalExists(ckpt);
      const read = new Connection(this.path, { readOnly: true, busyTimeoutMs: this.busyTimeoutMs });
      this.#ckpt = ckpt;
      this.#write = write;
      this.#read = read;
      this.#beginRead();
    } catch (err) {
      ckpt.close();
      this.#closeConnections();
      if (err instanceof RangeError) throw err;
      const msg = describeError(err);
      if (/file is not a database|not a database/i.test(msg)) {
        throw new SyntaxError(`"${this.path}" is not a SQLite database`, { cause: err });
      }
      throw new Error(`Cannot open database "${this.path}"`, { cause: err });
    }
    await mkdirp(this.metaPath, 0o700);
    await this.#loadShadowState();
    this.log.info("initialized db", { pageSize: this.#pageSize });
    return true;
  }

  #beginRead(): void {
    const r = this.#read!;
    if (r.inTransaction) return;
    r.exec("BEGIN");
    r.get("SELECT COUNT(1) FROM _litestream_seq");
  }

  #ensureWalExists(conn: Connection): void {
    let size = 0;
    try {
      size = Deno.statSync(this.walPath).size;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    if (size < WAL_HEADER_SIZE) conn.run(UPSERT_SEQ);
  }

  // The per-sync file work below uses synchronous calls (see readAtSync); only the
  // fdatasync of the shadow WAL goes through the thread pool.
  #readWalHeader(): { bytes: Uint8Array; size: number; info: Deno.FileInfo } {
    using f = Deno.openSync(this.walPath, { read: true });
    const info = f.statSync();
    const size = info.size;
    const bytes = readAtSync(f, 0, WAL_HEADER_SIZE);
    if (bytes.length < WAL_HEADER_SIZE) {
      throw new Error(`Cannot read WAL header of "${this.path}": WAL is ${size} bytes`);
    }
    return { bytes, size, info };
  }

  /** Loads the generation and the last shadow WAL file, trimming any torn tail. */
  async #loadShadowState(): Promise<void> {
    this.#generation = undefined;
    this.#shadow = undefined;
    let gen: string;
    try {
      gen = (await Deno.readTextFile(`${this.metaPath}/generation`)).trim();
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    if (!isGenerationName(gen)) return;
    const dir = `${this.metaPath}/generations/${gen}/wal`;
    let index = -1;
    try {
      for await (const e of Deno.readDir(dir)) {
        const i = parseShadowWalName(e.name);
        if (i !== undefined && i > index) index = i;
        if (e.name.endsWith(".tmp")) await Deno.remove(`${dir}/${e.name}`).catch(() => {});
      }
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    if (index < 0) return;
    const path = this.shadowWalPath(gen, index);
    using f = Deno.openSync(path, { read: true, write: true });
    const fileSize = f.statSync().size;
    const headerBytes = readAtSync(f, 0, WAL_HEADER_SIZE);
    if (headerBytes.length < WAL_HEADER_SIZE || !isValidWalHeader(headerBytes)) return;
    const header = decodeWalHeader(headerBytes);
    const scan = scanFile(f, WAL_HEADER_SIZE, fileSize, header, [
      header.checksum1,
      header.checksum2,
    ]);
    if (scan.end < fileSize) {
      // A crash during an append left frames without their commit: drop them.
      this.log.warn("shadow wal trimmed to last commit", { index, from: fileSize, to: scan.end });
      await f.truncate(scan.end);
      await f.syncData();
    }
    this.#generation = gen;
    this.#shadow = { index, size: scan.end, headerBytes, header, checksum: scan.checksum };
  }

  #verify(walHeaderBytes: Uint8Array, walSize: number): Verdict {
    const sh = this.#shadow;
    if (!this.#generation) return { kind: "new", reason: "no generation exists" };
    if (!sh) return { kind: "new", reason: "no shadow wal" };
    if (sh.index >= MAX_INDEX) return { kind: "new", reason: "max index exceeded" };
    if (!isValidWalHeader(walHeaderBytes)) {
      return { kind: "new", reason: "wal header invalid" };
    }
    const same = bytesEqual(walHeaderBytes, sh.headerBytes);
    if (!same && this.#isSealed()) {
      return isNextWalHeader(sh.header, decodeWalHeader(walHeaderBytes))
        ? { kind: "next" }
        : { kind: "new", reason: "wal restarted more than once since last checkpoint" };
    }
    if (!same) {
      if (sh.size <= WAL_HEADER_SIZE) return { kind: "new", reason: "wal header only, mismatched" };
      if (!isNextWalHeader(sh.header, decodeWalHeader(walHeaderBytes))) {
        return { kind: "new", reason: "wal restarted more than once since last sync" };
      }
    }
    if (walSize < sh.size) return { kind: "new", reason: "wal truncated by another process" };
    if (sh.size > WAL_HEADER_SIZE) {
      // The last frame we copied must still be there, byte for byte.
      const fs = walFrameSize(sh.header.pageSize);
      using w = Deno.openSync(this.walPath, { read: true });
      using s = Deno.openSync(this.shadowWalPath(this.#generation, sh.index), { read: true });
      const a = readAtSync(w, sh.size - fs, fs);
      const b = readAtSync(s, sh.size - fs, fs);
      if (!bytesEqual(a, b)) return { kind: "new", reason: "wal overwritten by another process" };
    }
    return same ? { kind: "same" } : { kind: "next" };
  }

  async #createGeneration(reason: string): Promise<void> {
    const gen = newGenerationName();
    const wal = this.#readWalHeader();
    if (!isValidWalHeader(wal.bytes)) {
      throw new Error(`Cannot start a generation for "${this.path}": WAL header is invalid`);
    }
    this.#pageSize = decodeWalHeader(wal.bytes).pageSize;
    await mkdirp(`${this.metaPath}/generations/${gen}/wal`, 0o700);
    this.#generation = gen;
    await this.#startShadowIndex(0, wal.bytes);
    await this.#copyFrames();
    await writeFileAtomic(`${this.metaPath}/generation`, new TextEncoder().encode(`${gen}\n`), {
      mode: 0o600,
    });
    this.#checkpointedAt = undefined;
    // Older generations' shadow files are of no use any more.
    for await (const e of Deno.readDir(`${this.metaPath}/generations`)) {
      if (e.name !== gen) {
        await Deno.remove(`${this.metaPath}/generations/${e.name}`, { recursive: true });
      }
    }
    this.log.info("new generation", { generation: gen, reason });
  }

  async #startShadowIndex(index: number, headerBytes: Uint8Array): Promise<void> {
    const header = decodeWalHeader(headerBytes);
    const path = this.shadowWalPath(this.#generation!, index);
    {
      using f = await Deno.open(path, { write: true, create: true, truncate: true, mode: 0o600 });
      await writeAll(f, headerBytes);
      await f.syncData();
    }
    await fsyncDir(dirname(path));
    this.#shadow = {
      index,
      size: WAL_HEADER_SIZE,
      headerBytes: headerBytes.slice(0, WAL_HEADER_SIZE),
      header,
      checksum: [header.checksum1, header.checksum2],
    };
    this.#pageSize = header.pageSize;
  }

  /**
   * Appends the committed frames of the current WAL life that the shadow lacks.
   * Returns the number of bytes appended.
   */
  async #copyFrames(): Promise<number> {
    const sh = this.#shadow!;
    using wal = Deno.openSync(this.walPath, { read: true });
    const walSize = wal.statSync().size;
    this.#scratch.reset();
    const scan = scanFile(wal, sh.size, walSize, sh.header, sh.checksum, this.#scratch);
    if (scan.end <= sh.size) return 0;
    const n = scan.end - sh.size;
    {
      using out = Deno.openSync(this.shadowWalPath(this.#generation!, sh.index), { write: true });
      out.seekSync(sh.size, Deno.SeekMode.Start);
      const keptBytes = scan.data?.reduce((a, b) => a + b.length, 0) ?? 0;
      if (scan.data && keptBytes >= n) {
        let left = n;
        for (const part of scan.data) {
          if (left <= 0) break;
          writeAllSync(out, part.subarray(0, Math.min(left, part.length)));
          left -= part.length;
        }
      } else {
        for (let off = sh.size; off < scan.end; off += SCAN_CHUNK) {
          this.#scratch.reset();
          const n = Math.min(SCAN_CHUNK, scan.end - off);
          writeAllSync(out, readAtSync(wal, off, n, this.#scratch));
        }
      }
      await out.syncData();
    }
    sh.size = scan.end;
    sh.checksum = scan.checksum;
    this.metrics.totalWalBytes += n;
    if (this.log.enabled("debug")) {
      this.log.debug("copied frames", { pos: formatPos(this.pos()!), bytes: n });
    }
    return n;
  }

  #isSealed(): boolean {
    const sh = this.#shadow;
    return !!sh && this.#sealed?.index === sh.index && this.#sealed.size === sh.size;
  }

  #checkpointMode(walSize: number): CheckpointMode | undefined {
    const sh = this.#shadow;
    if (!sh) return undefined;
    const ps = sh.header.pageSize;
    const done = this.#checkpointedAt;
    const fresh = !done || done.index !== sh.index || done.size !== sh.size;
    if (!fresh) return undefined; // nothing new to backfill since our last full checkpoint
    if (this.truncatePageCount > 0 && walSize >= calcWalSize(ps, this.truncatePageCount)) {
      return "TRUNCATE";
    }
    if (
      this.maxCheckpointPageCount > 0 && sh.size >= calcWalSize(ps, this.maxCheckpointPageCount)
    ) {
      return "RESTART";
    }
    if (sh.size >= calcWalSize(ps, this.minCheckpointPageCount)) return "PASSIVE";
    if (
      this.checkpointIntervalMs > 0 &&
      Date.now() - this.#lastCheckpointAt >= this.checkpointIntervalMs &&
      sh.size > calcWalSize(ps, 1)
    ) return "PASSIVE";
    return undefined;
  }

  /**
   * Runs a checkpoint without ever letting a committed frame escape the shadow WAL.
   * Says whether frames were copied into the shadow WAL and whether the whole WAL was backfilled.
   */
  async #checkpoint(mode: CheckpointMode): Promise<{ copied: boolean; complete: boolean }> {
    const read = this.#read!, write = this.#write!, ckpt = this.#ckpt!;
    const t0 = performance.now();
    // 1. Hold the write lock: from here until we re-take the read lock, nothing commits.
    // PASSIVE tries briefly and comes back on a later sync; the forced modes wait.
    const sh0 = this.#shadow!;
    const missed = this.#lockMissedAt;
    if (
      mode === "PASSIVE" && missed && missed.index === sh0.index && missed.size === sh0.size &&
      performance.now() - missed.at < this.monitorIntervalMs
    ) {
      return { copied: false, complete: false }; // nothing committed since the last miss
    }
    if (!(await this.#lockWrites(mode === "PASSIVE" ? 0 : this.busyTimeoutMs))) {
      this.#lockMissedAt = { index: sh0.index, size: sh0.size, at: performance.now() };
      this.log.debug("checkpoint postponed: database busy", { mode });
      return { copied: false, complete: false };
    }
    this.#lockMissedAt = undefined;
    let result;
    let copied = 0;
    try {
      copied = await this.#copyFrames(); // 2. the shadow now holds every committed frame
      read.exec("ROLLBACK"); // 3. let the checkpoint backfill past our read mark
      try {
        result = ckpt.checkpoint("PASSIVE");
      } finally {
        // 4. Re-take the read lock before any writer can restart the WAL. If the WAL was
        // fully backfilled this lands on read mark 0, which blocks every later backfill.
        this.#beginRead();
      }
    } catch (err) {
      this.metrics.checkpointErrors[mode] = (this.metrics.checkpointErrors[mode] ?? 0) + 1;
      throw err;
    } finally {
      write.exec("ROLLBACK");
    }
    const complete = result.busy === 0 && result.checkpointed === result.log;
    const sh = this.#shadow!;
    if (complete) this.#sealed = { index: sh.index, size: sh.size };
    if (!complete && mode === "RESTART") {
      // Forced, as v0.3.13 does at max-checkpoint-page-count: wait for readers on old
      // snapshots. Frames committed meanwhile stay in the old life's tail, which the next
      // sync copies before following the restarted WAL (or starts a new generation).
      read.exec("ROLLBACK");
      try {
        result = ckpt.checkpoint("RESTART");
      } finally {
        this.#beginRead();
      }
    } else if (complete && mode === "TRUNCATE") {
      // Our read lock sits on mark 0: this succeeds only if no frame was added meanwhile.
      const t = ckpt.checkpoint("TRUNCATE");
      if (t.busy === 0) {
        // Start the next WAL life now, so its header is the direct successor we follow.
        ckpt.run(UPSERT_SEQ);
        this.#wake.notify();
      }
    }
    if (complete || result.busy === 0) this.#checkpointedAt = { index: sh.index, size: sh.size };
    this.#lastCheckpointAt = Date.now();
    this.metrics.checkpointCount[mode] = (this.metrics.checkpointCount[mode] ?? 0) + 1;
    this.metrics.checkpointSeconds[mode] = (this.metrics.checkpointSeconds[mode] ?? 0) +
      (performance.now() - t0) / 1000;
    this.log.debug("checkpoint", {
      mode,
      busy: result.busy,
      log: result.log,
      checkpointed: result.checkpointed,
    });
    return { copied: copied > 0, complete };
  }

  /**
   * Takes the write lock on our write connection. SQLite's own busy handler sleeps 1, 2, 5…
   * ms between tries, blocking our event loop meanwhile (node:sqlite is synchronous), and
   * loses nearly every race against a writer committing back to back, whose lock is free
   * only for the microseconds between two transactions. So the connection has no busy
   * timeout and we retry at once for WRITE_LOCK_SPIN_MS, then yield 1 ms, until `waitMs`.
   */
  async #lockWrites(waitMs: number): Promise<boolean> {
    const until = performance.now() + waitMs;
    for (;;) {
      const spinUntil = performance.now() + WRITE_LOCK_SPIN_MS;
      do {
        try {
          this.#write!.exec("BEGIN IMMEDIATE");
          return true;
        } catch (err) {
          if (!isBusyError(err)) throw err;
        }
      } while (performance.now() < spinUntil);
      if (performance.now() >= until) return false;
      await delay(1);
    }
  }

  /**
   * Backfills the whole WAL into the database file (under the write lock, as every checkpoint
   * of ours) and hashes the file, which then holds exactly the state at the returned
   * position: our read lock sits on read mark 0, which keeps every checkpoint from changing
   * the file while it is read, and no checkpoint of ours runs meanwhile.
   *
   * @returns undefined when readers on older snapshots kept the checkpoint from completing
   */
  async checksum(): Promise<{ pos: Pos; sha256: string; size: number } | undefined> {
    return await this.#checkpointLock.run(async () => {
      let pos: Pos | undefined;
      await this.#syncLock.run(async () => {
        await this.#sync();
        if (!this.#read || !this.#shadow) return;
        if ((await this.#checkpoint("PASSIVE")).complete) pos = this.pos();
      });
      if (!pos) return undefined;
      const file = this.#dbFile!; // synchronous calls only (see #dbFile)
      const size = file.statSync().size;
      const hash = createHash("sha256");
      const buf = new Uint8Array(4 << 20);
      file.seekSync(0, Deno.SeekMode.Start);
      for (let done = 0; done < size;) {
        const n = file.readSync(buf.subarray(0, Math.min(buf.length, size - done)));
        if (n === null) break;
        hash.update(buf.subarray(0, n));
        done += n;
      }
      return { pos, sha256: hash.digest("hex"), size };
    });
  }

  /** Removes shadow WAL files that every replica has moved past (keeping one extra). */
  async #cleanShadow(): Promise<void> {
    const gen = this.#generation, sh = this.#shadow;
    if (!gen || !sh) return;
    let min = sh.index;
    for (const pos of this.#replicaIndexes.values()) {
      min = Math.min(min, pos.generation === gen ? pos.index : 0);
    }
    const dir = `${this.metaPath}/generations/${gen}/wal`;
    for await (const e of Deno.readDir(dir)) {
      const i = parseShadowWalName(e.name);
      if (i !== undefined && i < min - 1) await Deno.remove(`${dir}/${e.name}`).catch(() => {});
    }
  }

  /**
   * Reads committed shadow WAL bytes of `index` from `offset` to its current end.
   * Returns an empty array when there is nothing new in that file. With `scratch`, the bytes
   * are a view taken from it.
   *
   * @throws {Deno.errors.NotFound} If that shadow file no longer exists.
   */
  readShadow(generation: string, index: number, offset: number, scratch?: Scratch): Uint8Array {
    const end = this.shadowEnd(generation, index);
    if (offset >= end) return new Uint8Array(0);
    using f = Deno.openSync(this.shadowWalPath(generation, index), { read: true });
    return readAtSync(f, offset, end - offset, scratch);
  }

  /** Committed size of shadow file `index` (NotFound if it is gone). */
  shadowEnd(generation: string, index: number): number {
    const sh = this.#shadow;
    if (generation === this.#generation && sh && index === sh.index) return sh.size;
    if (generation !== this.#generation || !sh || index > sh.index) {
      throw new Deno.errors.NotFound(`No shadow WAL ${generation}/${formatShadowWalName(index)}`);
    }
    return Deno.statSync(this.shadowWalPath(generation, index)).size;
  }

  /**
   * Runs `fn` with a reader of the database file while no checkpoint of ours can run, and
   * the position whose WAL index the snapshot belongs to. Restores replay that WAL index
   * from offset 0 over the snapshot, so pages a concurrent checkpoint by another process
   * writes while we read are overwritten by their WAL frames.
   *
   * The reader fills the buffer it is given from where the last call stopped and returns
   * the byte count, short only at the end of the file (0 there). It is synchronous, so the
   * caller can reuse one buffer for the whole file.
   */
  async snapshot<T>(
    fn: (pos: Pos, read: (buf: Uint8Array) => number) => Promise<T>,
  ): Promise<T> {
    return await this.#checkpointLock.run(async () => {
      await this.sync();
      const pos = this.pos();
      if (!pos) throw new Error(`Cannot snapshot "${this.path}": database not initialized`);
      // Only synchronous calls on this handle: Deno's async file calls work on a duplicate
      // descriptor and close it afterwards, which drops SQLite's locks (see #dbFile).
      const file = this.#dbFile!;
      const size = file.statSync().size;
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
    while (!signal.aborted) {
      // Arm before syncing: a write after this point wakes us, one before it the sync sees.
      if (this.watch) this.#armWatch(signal);
      const lastStart = performance.now();
      try {
        await this.sync();
      } catch (err) {
        if (signal.aborted) break;
        this.log.error("sync failed", { error: describeError(err) });
        await delay(Math.min(this.monitorIntervalMs, 1000), { signal }).catch(() => {});
      }
      // With a watch armed, a poll only stats the WAL: an idle database costs no reads.
      while (!(await this.#wake.wait(this.monitorIntervalMs, signal)) && !signal.aborted) {
        if (!this.#watcher || !this.#walUnchanged()) break;
      }
      // Under a burst every commit wakes us: batch what arrives within the gap.
      const wait = lastStart + this.minSyncGapMs - performance.now();
      if (wait > 0 && !signal.aborted) await delay(wait, { signal }).catch(() => {});
    }
  }

  /** True if the WAL file looks as at the start of the last sync and no checkpoint is due. */
  #walUnchanged(): boolean {
    const seen = this.#walSeen, st = statOrUndefined(this.walPath);
    if (!seen || !st) return false;
    return st.ino === seen.ino && st.size === seen.size &&
      st.mtime?.getTime() === seen.mtime?.getTime() && !this.#checkpointMode(st.size);
  }

  /**
   * Arms a one-shot watch (inotify) on the `-wal` file: the first write after this wakes
   * the monitor and ends the watch, which the monitor arms again before its next sync. A
   * standing watch delivers an event for every write SQLite makes, thousands a second
   * under a burst of commits, and handling them cost more CPU than copying the frames.
   *
   * Only the `-wal` file is watched, never the directory: on directory events Deno's
   * watcher opens and closes the changed file, and closing a descriptor of the database
   * file drops SQLite's locks in this process (see #dbFile).
   */
  #armWatch(signal: AbortSignal): void {
    if (this.#watcher || this.#watchFailed || signal.aborted) return;
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(this.walPath, { recursive: false });
    } catch (err) {
      // No WAL yet: the next pass tries again (the poll covers the gap).
      if (!(err instanceof Deno.errors.NotFound)) {
        this.#watchFailed = true;
        this.log.warn("file watch failed, polling only", { error: describeError(err) });
      }
      return;
    }
    this.#watcher = watcher;
    const end = () => {
      signal.removeEventListener("abort", end);
      if (this.#watcher === watcher) this.#watcher = undefined;
      try {
        watcher.close();
      } catch { /* already closed */ }
    };
    signal.addEventListener("abort", end, { once: true });
    (async () => {
      try {
        for await (const _ of watcher) {
          this.#wake.notify();
          break;
        }
      } catch {
        /* closed; the poll still runs */
      } finally {
        end();
      }
    })();
  }

  #closeConnections(): void {
    // Read-write connections first: the last connection to close would checkpoint and
    // delete the WAL, costing a new generation on the next start; a read-only one cannot.
    for (const c of [this.#ckpt, this.#write]) {
      try {
        c?.close();
      } catch { /* keep closing */ }
    }
    try {
      this.#read?.close();
    } catch { /* closed */ }
    this.#ckpt = this.#write = this.#read = undefined;
    try {
      this.#dbFile?.close();
    } catch { /* closed */ }
    this.#dbFile = undefined;
  }

  /** Stops the monitor, syncs once more, and closes the connections (keeping the WAL). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#abort?.abort();
    await this.#monitorDone;
    const errors: unknown[] = [];
    if (this.#read) {
      try {
        await this.sync();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#closed = true;
    await this.#syncLock.run(() => {
      try {
        if (this.#read?.inTransaction) this.#read.exec("ROLLBACK");
      } catch (err) {
        errors.push(err);
      }
      this.#closeConnections();
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

function statOrUndefined(path: string): Deno.FileInfo | undefined {
  try {
    return Deno.statSync(path);
  } catch {
    return undefined;
  }
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * Scans frames of `file` from `start` (a frame boundary) to `size`, returning the end of the
 * last valid commit and the checksum there. Reads grow from 16 frames (after a WAL restart
 * the file keeps its old size, so most of it is stale and never needs reading). With
 * `scratch`, reads land in it and the bytes read are returned too while they stay under
 * 8 MiB, to copy without re-reading.
 */
function scanFile(
  file: Deno.FsFile,
  start: number,
  size: number,
  header: WalHeader,
  seed: readonly [number, number],
  scratch?: Scratch,
): { end: number; checksum: [number, number]; data?: Uint8Array[] } {
  const fs = walFrameSize(header.pageSize);
  const maxChunk = Math.max(1, Math.floor(SCAN_CHUNK / fs)) * fs;
  let chunk = Math.min(16 * fs, maxChunk);
  let off = start;
  let sum: [number, number] = [seed[0], seed[1]];
  let end = start;
  let endSum: [number, number] = [seed[0], seed[1]];
  let data: Uint8Array[] | undefined = scratch ? [] : undefined;
  let kept = 0;
  const limit = frameAlign(size, header.pageSize);
  while (off + fs <= limit) {
    if (scratch && !data) scratch.reset(); // no longer keeping: reuse the memory
    const buf = readAtSync(file, off, Math.min(chunk, limit - off), scratch);
    const usable = buf.subarray(0, Math.floor(buf.length / fs) * fs);
    if (usable.length === 0) break;
    if (data) {
      kept += usable.length;
      if (kept <= SCAN_CHUNK) data.push(usable);
      else data = undefined;
    }
    const r = scanWalFrames(usable, header, sum);
    if (r.committedBytes > 0) {
      end = off + r.committedBytes;
      endSum = r.committedChecksum;
    }
    if (r.stop !== "end") break;
    sum = r.checksum;
    off += usable.length;
    chunk = Math.min(chunk * 4, maxChunk);
  }
  return { end, checksum: endSum, data };
}
