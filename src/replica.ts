/**
 * Replica: ships one database's shadow WAL to one {@linkcode ReplicaClient}, takes snapshots
 * and enforces retention. The position only advances after the store acknowledged a write.
 *
 * @module
 */
import type { Db } from "./db.ts";
import { formatPos, type Pos, samePos } from "./pos.ts";
import {
  type CallOptions,
  type ReplicaClient,
  type SnapshotInfo,
  sortedSnapshots,
  sortedWalSegments,
  type WalSegmentInfo,
} from "./replica_client.ts";
import {
  joinLz4Frames,
  lz4Compress,
  lz4CompressReader,
  lz4DecompressStream,
  Xxh32,
} from "./lz4.ts";
import { delay, Mutex, type Wakeup } from "./internal/delay.ts";
import { Scratch } from "./internal/bytes.ts";
import { FailureLog } from "./internal/failure_log.ts";
import { describeError } from "./errors.ts";
import { restore } from "./restore.ts";
import { createHash } from "node:crypto";
import { type Logger, silentLogger } from "./log.ts";
import { newReplicaMetrics, type ReplicaMetrics } from "./metrics.ts";

export const DEFAULT_SYNC_INTERVAL_MS = 1_000;
/**
 * Least time between two uploads to a file replica: the first change after a quiet spell is
 * shipped at once; during a burst of commits they are batched every 20 ms.
 */
export const DEFAULT_FILE_SYNC_INTERVAL_MS = 20;
export const DEFAULT_RETENTION_MS = 24 * 3600_000;
export const DEFAULT_RETENTION_CHECK_INTERVAL_MS = 3600_000;

/** Wait before retrying a failed sync; it doubles with each failure in a row. */
const RETRY_MIN_MS = 1_000;
/**
 * Longest wait between two attempts while syncs keep failing: also the most time it takes
 * to notice that the store is back.
 */
const RETRY_MAX_MS = 10_000;

/**
 * Segments up to this size are read and compressed in memory (one buffer per replica, kept
 * between uploads); larger ones are streamed through one block buffer, so that no segment
 * is ever held whole, whatever the size of the transaction.
 */
const IN_MEMORY_SEGMENT_BYTES = 1 << 20;

/**
 * With the default sync interval of a file replica (20 ms), segments of one WAL index uploaded
 * within this long of the first of them are merged into one once the time is up: each commit
 * is shipped within milliseconds, yet a steady writer leaves one segment a second, as with
 * v0.3.13 at its default interval, instead of up to 50, each an object to list, open and read
 * at every restore. A restore to a timestamp is then as fine-grained as with v0.3.13's
 * default: a second. A `sync-interval` set by the user is taken as the granularity wanted:
 * each upload stays a segment, as with v0.3.13.
 */
export const DEFAULT_MERGE_WINDOW_MS = 1_000;

/**
 * A run's segments are kept in memory, compressed, until it is merged: at most this many
 * bytes of them (a heavy writer's second of WAL is then a few merged segments, not one per
 * 20 ms). Segments over {@linkcode IN_MEMORY_SEGMENT_BYTES} of WAL are streamed and end a run.
 */
const MERGE_MAX_STORED_BYTES = 4 << 20;

/** Segments one replica uploaded in a row, in one WAL index, not merged yet. */
interface SegmentRun {
  generation: string;
  index: number;
  /** Where its first segment starts. */
  offset: number;
  /** Where its last segment ends. */
  end: number;
  /** Where the segments after the first start: deleted once the merged one is stored. */
  later: number[];
  /** Each segment's LZ4 frame, as uploaded. */
  frames: Uint8Array[];
  /** Their total length. */
  stored: number;
  /** xxHash32 of the WAL bytes from `offset` to `end`: the merged frame's checksum. */
  hash: Xxh32;
  /** When its first segment was uploaded (`performance.now()`). */
  startedAt: number;
}

/** Options of {@linkcode Replica}. */
export interface ReplicaOptions {
  /** Unique per database. @default {the client's type} */
  name?: string;
  /**
   * Least time between two uploads; the first change after a quiet spell is uploaded at
   * once. When not set: 20 ms for a file replica, 1 s for others (to bound request costs).
   */
  syncIntervalMs?: number;
  /** Keep snapshots (and the WAL after them) this long; 0 disables retention. @default {24 h} */
  retentionMs?: number;
  /** How often retention is enforced. @default {1 h} */
  retentionCheckIntervalMs?: number;
  /** Take a snapshot this often when the database changed; 0 disables. @default {0} */
  snapshotIntervalMs?: number;
  /**
   * Merge the segments of a WAL index uploaded within this long into one; 0 never merges.
   * @default {DEFAULT_MERGE_WINDOW_MS when `syncIntervalMs` is not set and the client's
   * default interval is shorter, else 0}
   */
  mergeWindowMs?: number;
  /**
   * Restore the replica this often and compare it with the database; 0 disables.
   * @default {0}
   */
  validationIntervalMs?: number;
  logger?: Logger;
}

/**
 * What a {@linkcode Replica} needs of its database ({@linkcode Db} provides it): the shadow
 * WAL to read, wake-ups when it grows, and the snapshot and checksum points.
 */
export type ReplicaSource = Pick<
  Db,
  | "path"
  | "shadow"
  | "pos"
  | "subscribe"
  | "unsubscribe"
  | "setReplicaPos"
  | "requestNewGeneration"
  | "snapshot"
  | "checksum"
>;

/** Ships one database to one replica client. */
export class Replica implements AsyncDisposable {
  readonly db: ReplicaSource;
  readonly client: ReplicaClient;
  readonly name: string;
  readonly syncIntervalMs: number;
  readonly retentionMs: number;
  readonly retentionCheckIntervalMs: number;
  readonly snapshotIntervalMs: number;
  readonly validationIntervalMs: number;
  readonly mergeWindowMs: number;
  readonly metrics: ReplicaMetrics;
  readonly log: Logger;

  #pos?: Pos;
  #lock = new Mutex();
  #lastSnapshotPos?: Pos;
  #lastValidated?: Pos;
  #abort?: AbortController;
  #loops: Promise<void>[] = [];
  #wake?: Wakeup;
  #scratch = new Scratch(IN_MEMORY_SEGMENT_BYTES); // one small segment, never held across an await
  #run?: SegmentRun;

  constructor(db: ReplicaSource, client: ReplicaClient, options: ReplicaOptions = {}) {
    this.db = db;
    this.client = client;
    this.name = options.name ?? client.type;
    this.syncIntervalMs = options.syncIntervalMs ??
      (client.type === "file" ? DEFAULT_FILE_SYNC_INTERVAL_MS : DEFAULT_SYNC_INTERVAL_MS);
    this.retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS;
    this.retentionCheckIntervalMs = Math.min(
      options.retentionCheckIntervalMs ?? DEFAULT_RETENTION_CHECK_INTERVAL_MS,
      this.retentionMs > 0 ? this.retentionMs : Infinity,
    );
    this.snapshotIntervalMs = options.snapshotIntervalMs ?? 0;
    this.validationIntervalMs = options.validationIntervalMs ?? 0;
    this.mergeWindowMs = options.mergeWindowMs ??
      (options.syncIntervalMs === undefined && this.syncIntervalMs < DEFAULT_MERGE_WINDOW_MS
        ? DEFAULT_MERGE_WINDOW_MS
        : 0);
    this.log = (options.logger ?? silentLogger).with({ db: db.path, replica: this.name });
    this.metrics = newReplicaMetrics(db.path, this.name);
  }

  /** The last position the store acknowledged, if known. */
  pos(): Pos | undefined {
    return this.#pos ? { ...this.#pos } : undefined;
  }

  /** Starts the upload loop (woken by the database), retention and snapshot timers. */
  open(): void {
    this.#abort = new AbortController();
    const signal = this.#abort.signal;
    this.#wake = this.db.subscribe();
    this.#wake.notify(); // first pass right away
    this.#loops.push(this.#monitor(signal));
    if (this.retentionMs > 0) {
      this.#loops.push(
        this.#every(this.retentionCheckIntervalMs, signal, () => this.enforceRetention({ signal })),
      );
    }
    if (this.validationIntervalMs > 0) {
      this.#loops.push(
        this.#every(
          this.validationIntervalMs,
          signal,
          async () => void await this.validate({ signal }),
        ),
      );
    }
    if (this.snapshotIntervalMs > 0) {
      this.#loops.push(this.#every(this.snapshotIntervalMs, signal, async () => {
        const pos = this.db.pos();
        if (pos && !samePos(pos, this.#lastSnapshotPos)) await this.snapshot({ signal });
      }));
    }
  }

  /** Uploads everything the shadow WAL holds that the replica lacks. */
  sync(options: CallOptions = {}): Promise<void> {
    return this.#lock.run(() => this.#sync(options));
  }

  /**
   * With `batch` (the monitor loop), at most one segment per WAL index and call. Merges the
   * current run of segments when its window is over, or at once with `mergeNow`.
   */
  async #sync(options: CallOptions, batch = false, mergeNow = false): Promise<void> {
    const dpos = this.db.pos();
    if (!dpos) return;
    try {
      if (!this.#pos || this.#pos.generation !== dpos.generation) {
        await this.#resolvePos(dpos, options);
        if (!this.#pos) return;
      }
      try {
        await this.#upload(options, batch);
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err;
        // The shadow WAL we were shipping from is gone (cleaned while we were stopped):
        // the store can only be continued from a new snapshot.
        this.log.warn("shadow wal missing; taking a new snapshot", { error: describeError(err) });
        await this.#snapshotLocked(options);
      }
      const due = this.#mergeDueIn();
      if (due !== undefined && (mergeNow || due <= 0)) await this.#mergeRun(options);
    } catch (err) {
      // Recompute the position from the store next time: never assume a write landed. (That
      // also finishes a merge this left halfway: see #indexEnd.)
      this.#pos = undefined;
      this.#run = undefined;
      this.metrics.syncErrorCount++;
      throw err;
    }
  }

  /** Finds where the store's copy of this generation ends, or starts it with a snapshot. */
  async #resolvePos(dpos: Pos, options: CallOptions): Promise<void> {
    const gen = dpos.generation;
    const snapshots = await sortedSnapshots(this.client, gen, options);
    if (snapshots.length === 0) {
      await this.#snapshotLocked(options);
      return;
    }
    const maxSnap = snapshots[snapshots.length - 1];
    const segments = (await sortedWalSegments(this.client, gen, options))
      .filter((s) => s.index >= maxSnap.index);
    let pos: Pos;
    if (segments.length === 0) {
      pos = { generation: gen, index: maxSnap.index, offset: 0 };
    } else {
      const index = segments[segments.length - 1].index;
      const offset = await this.#indexEnd(segments.filter((s) => s.index === index), options);
      pos = { generation: gen, index, offset };
    }
    // The store cannot be ahead of our own shadow WAL for the same generation.
    if (pos.index > dpos.index || (pos.index === dpos.index && pos.offset > dpos.offset)) {
      this.log.error("replica is ahead of the local shadow wal; starting a new generation", {
        replicaPos: formatPos(pos),
        dbPos: formatPos(dpos),
      });
      this.db.requestNewGeneration("replica ahead of shadow wal");
      return;
    }
    try {
      this.db.shadow.end(gen, pos.index);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      // The shadow files the store still needs are gone: start over from a snapshot.
      await this.#snapshotLocked(options);
      return;
    }
    this.#pos = pos;
    this.#lastSnapshotPos = { generation: gen, index: maxSnap.index, offset: 0 };
    this.#report();
  }

  /** Where the store's segments of one WAL index end (0 when it has none). */
  async #storeEnd(generation: string, index: number, options: CallOptions): Promise<number> {
    const segs = (await sortedWalSegments(this.client, generation, options))
      .filter((s) => s.index === index);
    return await this.#indexEnd(segs, options);
  }

  /**
   * Where the stored segments `segs` of one WAL index (sorted by offset) end, 0 if none. First
   * finishes a merge (see #mergeRun) stopped between storing the merged segment and deleting
   * the segments it covers: before anything is uploaded after them, since v0.3.13 would
   * restore only up to such an overlap. The merged segment was written after all of those, so
   * only segments stored no earlier than the last one are measured (usually none).
   */
  async #indexEnd(segs: WalSegmentInfo[], options: CallOptions): Promise<number> {
    const last = segs.at(-1);
    if (!last) return 0;
    const end = last.offset + await this.#decodedLength(last, options);
    for (const seg of segs.slice(0, -1)) {
      if (seg.createdAt < last.createdAt) continue;
      const segEnd = seg.offset + await this.#decodedLength(seg, options);
      if (segEnd < end) continue;
      const covered = segs.filter((s) => s.offset > seg.offset);
      await this.client.deleteWalSegments(covered, options);
      this.log.info("interrupted merge of wal segments finished", {
        pos: formatPos(seg),
        deleted: covered.length,
      });
      return segEnd;
    }
    return end;
  }

  /** Decoded size of a stored segment, streamed (a segment may hold a huge transaction). */
  async #decodedLength(seg: Pos, options: CallOptions): Promise<number> {
    const stream = (await this.client.openWalSegment(seg, options)).pipeThrough(
      lz4DecompressStream(),
    );
    let n = 0;
    for await (const chunk of stream) n += chunk.length;
    return n;
  }

  /**
   * Uploads the shadow WAL from the replica's position to its end. With `batch`, frames that
   * arrive in the same WAL index while a segment uploads are left for the next pass, which
   * the monitor runs `syncIntervalMs` later: during a burst of commits this batches them
   * into one segment per interval instead of one per upload. With `untilIndex`, stops at
   * the start of that WAL index.
   */
  async #upload(options: CallOptions, batch = false, untilIndex = Infinity): Promise<void> {
    let lastIndex: number | undefined;
    for (;;) {
      options.signal?.throwIfAborted();
      const pos = this.#pos!;
      const dpos = this.db.pos();
      if (!dpos || dpos.generation !== pos.generation) return;
      if (pos.index >= untilIndex) return;
      const end = this.db.shadow.end(pos.generation, pos.index);
      if (pos.offset >= end) {
        if (pos.index < dpos.index) {
          this.#pos = { ...pos, index: pos.index + 1, offset: 0 };
          continue;
        }
        return;
      }
      if (batch && lastIndex === pos.index) {
        this.#wake?.notify(); // the next pass ships it
        return;
      }
      lastIndex = pos.index;
      const t0 = performance.now();
      const size = end - pos.offset;
      if (size <= IN_MEMORY_SEGMENT_BYTES) {
        this.#scratch.reset();
        const raw = this.db.shadow.read(pos.generation, pos.index, pos.offset, this.#scratch)
          .subarray(0, size);
        // lz4Compress copies what it keeps: the scratch is free again once it returns.
        const frame = lz4Compress(raw);
        const joins = this.#joinsRun(pos, frame.length);
        const hash = joins
          ? this.#run!.hash.update(raw)
          : this.mergeWindowMs > 0
          ? new Xxh32().update(raw)
          : undefined;
        // The run ends before anything after it is stored (see #mergeRun).
        if (!joins) await this.#mergeRun(options);
        await this.client.writeWalSegment(pos, frame, options);
        if (joins) {
          const run = this.#run!;
          run.later.push(pos.offset);
          run.frames.push(frame);
          run.stored += frame.length;
          run.end = end;
        } else if (hash) {
          this.#run = {
            generation: pos.generation,
            index: pos.index,
            offset: pos.offset,
            end,
            later: [],
            frames: [frame],
            stored: frame.length,
            hash,
            startedAt: t0,
          };
        }
      } else {
        await this.#mergeRun(options);
        await this.client.writeWalSegment(pos, this.#shadowStream(pos, end), options);
      }
      this.#pos = { ...pos, offset: end };
      this.metrics.walBytes += size;
      this.#report();
      this.log.debug("wal segment written", {
        pos: formatPos(pos),
        bytes: size,
        elapsedMs: Math.round(performance.now() - t0),
      });
    }
  }

  /** Whether a segment at `pos`, stored in `stored` bytes, continues the current run. */
  #joinsRun(pos: Pos, stored: number): boolean {
    const run = this.#run;
    return !!run && run.generation === pos.generation && run.index === pos.index &&
      run.end === pos.offset && run.stored + stored <= MERGE_MAX_STORED_BYTES &&
      performance.now() - run.startedAt < this.mergeWindowMs;
  }

  /** Milliseconds until the current run is due to be merged; none without a run to merge. */
  #mergeDueIn(): number | undefined {
    const run = this.#run;
    if (!run || run.later.length === 0) return undefined;
    return run.startedAt + this.mergeWindowMs - performance.now();
  }

  /**
   * Ends the current run: stores its segments as one in place of the first (one LZ4 frame of
   * their blocks, see joinLz4Frames) and deletes the others. Each store replaces an object
   * atomically and the merged segment holds exactly the bytes of the run, so a restore at any
   * moment finds the run, or the merged segment and, until the deletions land, segments it
   * covers. Our restore skips those; v0.3.13's writes them after it into the WAL file, where
   * SQLite's checksum chain ends the WAL at the merged segment's end. That end is the WAL's
   * end: nothing is uploaded after the run before its deletions land (#indexEnd finishes an
   * interrupted merge first).
   */
  async #mergeRun(options: CallOptions): Promise<void> {
    const run = this.#run;
    this.#run = undefined;
    if (!run || run.later.length === 0) return;
    const first = { generation: run.generation, index: run.index, offset: run.offset };
    const t0 = performance.now();
    await this.client.writeWalSegment(first, joinLz4Frames(run.frames, run.hash.digest()), options);
    await this.client.deleteWalSegments(run.later.map((offset) => ({ ...first, offset })), options);
    this.log.debug("wal segments merged", {
      pos: formatPos(first),
      segments: run.later.length + 1,
      bytes: run.end - run.offset,
      elapsedMs: Math.round(performance.now() - t0),
    });
  }

  /** The LZ4 frame of shadow file `pos.index` from `pos.offset` to `end`, as a stream. */
  #shadowStream(pos: Pos, end: number): ReadableStream<Uint8Array> {
    return lz4CompressReader(
      this.db.shadow.reader(pos.generation, pos.index, pos.offset, end),
      { sizeHint: end - pos.offset },
    );
  }

  #report(): void {
    this.db.setReplicaPos(this.name, this.#pos);
    if (this.#pos) {
      this.metrics.walIndex = this.#pos.index;
      this.metrics.walOffset = this.#pos.offset;
    }
  }

  /** Takes a snapshot now (uploading the WAL it depends on first). */
  snapshot(options: CallOptions = {}): Promise<SnapshotInfo> {
    return this.#lock.run(() => this.#snapshotLocked(options));
  }

  async #snapshotLocked(options: CallOptions): Promise<SnapshotInfo> {
    return await this.db.snapshot(async (pos, read) => {
      const t0 = performance.now();
      // Upload this WAL index from offset 0 up to now before the snapshot itself: a restore
      // from the snapshot always replays it, which also repairs pages a checkpoint by
      // another process wrote while we read the database file.
      // First finish the earlier indexes: a restore from an older snapshot crosses them.
      // (If their shadow files are gone, they cannot be finished: such a restore then fails
      // on the gap, naming it, and this snapshot is where restores start again.)
      if (this.#pos && this.#pos.generation === pos.generation && this.#pos.index < pos.index) {
        try {
          await this.#upload(options, false, pos.index);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) throw err;
          this.log.warn("snapshot follows an index the shadow wal no longer holds", {
            pos: formatPos(this.#pos),
          });
        }
      }
      if (!this.#pos || this.#pos.generation !== pos.generation || this.#pos.index !== pos.index) {
        // Continue after what an interrupted run already stored for this index: uploading
        // it again from offset 0 would leave segments that overlap.
        const end = await this.#storeEnd(pos.generation, pos.index, options);
        if (end > pos.offset) {
          this.db.requestNewGeneration("replica ahead of shadow wal");
          throw new Error(
            `Replica "${this.name}" holds WAL index ${pos.index} up to ${end}, beyond the local ${pos.offset}`,
          );
        }
        this.#pos = { generation: pos.generation, index: pos.index, offset: end };
      }
      await this.#upload(options);
      const info = await this.client.writeSnapshot(
        { generation: pos.generation, index: pos.index },
        // A small database is read into a buffer of its size, not a 4 MiB one (a daemon with
        // many databases snapshots them all at start-up).
        lz4CompressReader(read, { sizeHint: fileSize(this.db.path) }),
        options,
      );
      this.#lastSnapshotPos = this.db.pos();
      this.log.info("snapshot written", {
        pos: formatPos(pos),
        size: info.size,
        elapsedMs: Math.round(performance.now() - t0),
      });
      return info;
    });
  }

  /**
   * Deletes what the retention period no longer needs: whole generations without a
   * retained snapshot, and in the others the snapshots and WAL before the oldest retained
   * snapshot. The newest snapshot of the current generation is always kept; a new one is
   * taken only if none is retained and the database changed since.
   */
  async enforceRetention(options: CallOptions = {}): Promise<void> {
    if (this.retentionMs <= 0) return;
    await this.#lock.run(async () => {
      // A run merged later could store a segment retention just deleted.
      await this.#mergeRun(options);
      const dpos = this.db.pos();
      const cutoff = Date.now() - this.retentionMs;
      for (const gen of await this.client.generations(options)) {
        const snaps = await sortedSnapshots(this.client, gen, options);
        let retained = snaps.filter((s) => s.createdAt.getTime() >= cutoff);
        if (gen === dpos?.generation && retained.length === 0) {
          if (!samePos(dpos, this.#lastSnapshotPos) && this.#pos) {
            retained = [await this.#snapshotLocked(options)];
          } else if (snaps.length > 0) {
            retained = [snaps[snaps.length - 1]]; // idle: keep the newest, upload nothing
          }
        }
        if (retained.length === 0) {
          if (gen !== dpos?.generation) {
            await this.client.deleteGeneration(gen, options);
            this.log.info("generation deleted", { generation: gen });
          }
          continue;
        }
        const min = retained[0].index;
        for (const s of snaps) {
          if (s.index < min) await this.client.deleteSnapshot(s, options);
        }
        const old = (await sortedWalSegments(this.client, gen, options)).filter((s) =>
          s.index < min
        );
        if (old.length > 0) {
          await this.client.deleteWalSegments(old, options);
          this.log.info("wal segments deleted", {
            generation: gen,
            before: min,
            count: old.length,
          });
        }
      }
    });
  }

  /**
   * Checks that the replica restores to exactly the database: hashes the database at a
   * position (after a full checkpoint), uploads up to it, restores the replica to that same
   * position in a temporary directory and compares the two files.
   *
   * @returns `"ok"` or `"error"` (also counted in the metrics), or `undefined` when no
   * consistent point could be taken now (readers on old snapshots blocked the checkpoint) or
   * nothing changed since the last successful validation
   */
  async validate(options: CallOptions = {}): Promise<"ok" | "error" | undefined> {
    const point = await this.db.checksum();
    if (!point) {
      this.log.debug("validation postponed: checkpoint did not complete");
      return undefined;
    }
    if (samePos(point.pos, this.#lastValidated)) return undefined; // idle: nothing new to check
    await this.sync(options);
    const dir = await Deno.makeTempDir({ prefix: "litestream-validate-" });
    try {
      const out = `${dir}/db`;
      await restore(this.client, {
        outputPath: out,
        generation: point.pos.generation,
        index: point.pos.index,
        offset: point.pos.offset,
        signal: options.signal,
      });
      const restored = await sha256File(out);
      const status = restored === point.sha256 ? "ok" : "error";
      this.metrics.validations[status]++;
      if (status === "ok") this.#lastValidated = point.pos;
      // Not `db` and `replica`: those fields of the logger name the database and replica.
      const fields = {
        pos: formatPos(point.pos),
        dbSha256: point.sha256.slice(0, 16),
        replicaSha256: restored.slice(0, 16),
      };
      if (status === "ok") this.log.info("validation ok", fields);
      else this.log.error("validation failed: replica differs from database", fields);
      return status;
    } catch (err) {
      this.metrics.validations.error++;
      throw new Error(`Cannot validate replica "${this.name}"`, { cause: err });
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  async #monitor(signal: AbortSignal): Promise<void> {
    let backoff = 0;
    let last = -Infinity; // the first upload runs at once (performance.now() starts near 0)
    const failures = new FailureLog(this.log, "replica sync");
    while (!signal.aborted) {
      // After a failure, wait the backoff out even while commits keep arriving: retrying on
      // each commit would hammer a store that is down, and log an error per commit.
      if (backoff > 0) await delay(backoff, { signal }).catch(() => {});
      else await this.#wake!.wait(this.#mergeDueIn(), signal);
      if (signal.aborted) break;
      const wait = last + this.syncIntervalMs - performance.now();
      if (wait > 0) await delay(wait, { signal }).catch(() => {});
      if (signal.aborted) break;
      last = performance.now();
      try {
        await this.#lock.run(() => this.#sync({ signal }, true));
        failures.succeeded();
        backoff = 0;
      } catch (err) {
        if (signal.aborted) break;
        backoff = Math.min(backoff ? backoff * 2 : RETRY_MIN_MS, RETRY_MAX_MS);
        failures.failed(err, { retryInMs: backoff });
      }
    }
  }

  async #every(ms: number, signal: AbortSignal, fn: () => Promise<void>): Promise<void> {
    while (!signal.aborted) {
      try {
        await delay(ms, { signal });
      } catch {
        break;
      }
      try {
        await fn();
      } catch (err) {
        if (signal.aborted) break;
        this.log.error("replica maintenance failed", { error: describeError(err) });
      }
    }
  }

  /** Stops the loops after one last upload of everything synced so far. */
  async close(): Promise<void> {
    this.#abort?.abort();
    await Promise.all(this.#loops);
    this.#loops = [];
    if (this.#wake) this.db.unsubscribe(this.#wake);
    await this.#lock.run(() => this.#sync({}, false, true));
    this.db.setReplicaPos(this.name, undefined); // no longer holds shadow files back
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(4 << 20);
  for (let n = await f.read(buf); n !== null; n = await f.read(buf)) {
    hash.update(buf.subarray(0, n));
  }
  return hash.digest("hex");
}

/** Size of the file at `path` (by path: no descriptor of the database is opened), if known. */
function fileSize(path: string): number | undefined {
  try {
    return Deno.statSync(path).size;
  } catch {
    return undefined;
  }
}
