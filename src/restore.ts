/**
 * Restore: rebuild a database from a replica, at its latest state or at a point in time.
 *
 * Differences from v0.3.13, all in the direction of refusing rather than guessing: a
 * requested generation or index that does not exist is an error; a missing WAL index, a
 * gap or overlap between segments, a broken checksum chain or a segment that does not
 * end on a commit is an error naming the object; the result must pass
 * `PRAGMA integrity_check` before it is renamed into place, and an existing file at the
 * output path is never replaced.
 *
 * @module
 */
import {
  type ReplicaClient,
  type SnapshotInfo,
  sortedSnapshots,
  sortedWalSegments,
  type WalSegmentInfo,
} from "./replica_client.ts";
import { decodeBlockInto, LZ4_BLOCK_SIZE, Lz4FrameDecoder, Lz4FrameReader, Xxh32 } from "./lz4.ts";
import { concat } from "./internal/bytes.ts";
import {
  decodeDbPageSize,
  decodeWalHeader,
  isValidWalHeader,
  scanWalFrames,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  walFrameSize,
  type WalHeader,
} from "./wal.ts";
import { formatWalSegmentName } from "./layout.ts";
import { hex8 } from "./pos.ts";
import { NoBackupError, ReplicaIntegrityError } from "./errors.ts";
import { absPath, basename, dirname, exists, fsyncDir, writeAllSync } from "./internal/fs.ts";
import { type Logger, silentLogger } from "./log.ts";
import { Connection } from "./sqlite.ts";
import { lz4DecompressParallel } from "./internal/lz4_pool.ts";

export const DEFAULT_RESTORE_PARALLELISM = 8;
/** Snapshots stored in at least this many bytes are decoded by a pool of Workers. */
const PARALLEL_SNAPSHOT_BYTES = 4 << 20;
/** Bytes read at once from a snapshot or a large WAL segment. */
const READ_CHUNK_BYTES = 256 << 10;

/** What to restore. */
export interface RestoreTargetOptions {
  signal?: AbortSignal;
  /** Restore this generation only; it must exist. @default {the one updated last} */
  generation?: string;
  /** Restore up to and including this WAL index; it must exist. @default {no limit} */
  index?: number;
  /**
   * With `index`: stop at this byte offset of that WAL index (a commit boundary of the
   * shadow WAL, as {@linkcode Db.checksum} reports). @default {the end of the index}
   */
  offset?: number;
  /** Restore the state as of this time (segment granularity). @default {latest} */
  timestamp?: Date;
}

/** Options of {@linkcode restore}. */
export interface RestoreOptions extends RestoreTargetOptions {
  /** Path to restore into; must not exist. */
  outputPath: string;
  /** WAL segments downloaded at once. @default {8} */
  parallelism?: number;
  /** Skip `PRAGMA integrity_check` on the result. @default {false} */
  skipIntegrityCheck?: boolean;
  logger?: Logger;
  /**
   * What to restore, as {@linkcode calcRestoreTarget} found it for these options just
   * before (the CLI does, to pick a replica); computed here when not given.
   */
  target?: RestoreTarget;
}

/** The snapshot and WAL segments a restore will apply. */
export interface RestoreTarget {
  generation: string;
  snapshot: SnapshotInfo;
  /** Segments to apply in order, all with index ≥ the snapshot's. */
  segments: WalSegmentInfo[];
  /** Time of the newest file in the generation. */
  updatedAt: Date;
}

/** Summary of a finished restore. */
export interface RestoreResult extends RestoreTarget {
  outputPath: string;
  /** Final WAL index applied (the snapshot's when no segment was applied). */
  index: number;
  bytes: number;
}

interface GenerationInfo {
  generation: string;
  snapshots: SnapshotInfo[];
  segments: WalSegmentInfo[];
  createdAt: Date;
  updatedAt: Date;
}

async function generationInfo(
  client: ReplicaClient,
  generation: string,
  signal?: AbortSignal,
): Promise<GenerationInfo | undefined> {
  const snapshots = await sortedSnapshots(client, generation, { signal });
  const segments = await sortedWalSegments(client, generation, { signal });
  const times = [...snapshots, ...segments].map((x) => x.createdAt.getTime());
  if (times.length === 0) return undefined;
  return {
    generation,
    snapshots,
    segments,
    createdAt: new Date(Math.min(...times)),
    updatedAt: new Date(Math.max(...times)),
  };
}

/**
 * Chooses the generation, snapshot and WAL segments for a restore, as v0.3.13 does, but
 * never falls back silently: a named generation or index that does not exist is an error.
 *
 * @throws {NoBackupError} If nothing matches.
 */
export async function calcRestoreTarget(
  client: ReplicaClient,
  options: RestoreTargetOptions = {},
): Promise<RestoreTarget> {
  const { signal, generation, index, timestamp, offset } = options;
  if (offset !== undefined && index === undefined) {
    throw new RangeError("Cannot restore to an offset without an index");
  }
  const all = await client.generations({ signal });
  if (generation !== undefined && !all.includes(generation)) {
    throw new NoBackupError(`Generation "${generation}" not found in replica "${client.location}"`);
  }
  const infos: GenerationInfo[] = [];
  for (const g of generation !== undefined ? [generation] : all) {
    const info = await generationInfo(client, g, signal);
    if (info) infos.push(info);
  }
  if (infos.length === 0) {
    throw new NoBackupError(`No backups found in replica "${client.location}"`);
  }
  let candidates = infos.filter((i) => i.snapshots.length > 0);
  if (timestamp) {
    const t = timestamp.getTime();
    candidates = candidates.filter((i) =>
      i.createdAt.getTime() <= t && t <= i.updatedAt.getTime() &&
      i.snapshots.some((s) => s.createdAt.getTime() <= t)
    );
    if (candidates.length === 0) {
      const ranges = infos.map((i) =>
        `${i.generation} ${i.createdAt.toISOString()}..${i.updatedAt.toISOString()}`
      ).join(", ");
      throw new NoBackupError(
        `No backup in replica "${client.location}" covers ${timestamp.toISOString()} (available: ${ranges})`,
      );
    }
  }
  if (candidates.length === 0) {
    throw new NoBackupError(`No snapshot found in replica "${client.location}"`);
  }
  // The generation updated last wins; on a tie, the first listed (as v0.3.13).
  const pick = candidates.reduce((a, b) => (b.updatedAt > a.updatedAt ? b : a));

  let snaps = pick.snapshots;
  if (index !== undefined) snaps = snaps.filter((s) => s.index <= index);
  if (timestamp) snaps = snaps.filter((s) => s.createdAt.getTime() <= timestamp.getTime());
  if (snaps.length === 0) {
    throw new NoBackupError(
      `No snapshot in generation "${pick.generation}" at or before ${
        index !== undefined ? `index ${hex8(index)}` : timestamp!.toISOString()
      }`,
    );
  }
  const snapshot = timestamp
    ? snaps.reduce((a, b) => (b.createdAt >= a.createdAt ? b : a))
    : snaps[snaps.length - 1];

  const segments: WalSegmentInfo[] = [];
  for (const s of pick.segments) {
    if (s.index < snapshot.index) continue;
    if (index !== undefined && s.index > index) break;
    if (offset !== undefined && s.index === index && s.offset >= offset) break;
    if (timestamp && s.createdAt.getTime() > timestamp.getTime()) break;
    segments.push(s);
  }
  if (index !== undefined) {
    const highest = Math.max(snapshot.index, ...pick.segments.map((s) => s.index));
    if (index > highest) {
      throw new NoBackupError(
        `Index ${hex8(index)} not found in generation "${pick.generation}" (highest is ${
          hex8(highest)
        })`,
      );
    }
  }
  checkSegmentsContinuity(pick.generation, snapshot.index, segments);
  // A snapshot is taken of the WAL index it names, which our replicator uploads first
  // (v0.3.13 may crash between the two, so the index right before it may be the last one);
  // one further beyond the WAL means the indexes between were lost.
  const lastWal = pick.segments.at(-1)?.index;
  if (segments.length === 0 && lastWal !== undefined && lastWal < snapshot.index - 1) {
    throw new ReplicaIntegrityError(
      `Replica's snapshot ${hex8(snapshot.index)} of generation "${pick.generation}" is beyond ` +
        `its WAL, which ends at index ${hex8(lastWal)}: WAL indexes ${hex8(lastWal + 1)}..${
          hex8(snapshot.index - 1)
        } are missing`,
    );
  }
  return { generation: pick.generation, snapshot, segments, updatedAt: pick.updatedAt };
}

/** Every WAL index from the snapshot's to the last must be present and start at offset 0. */
function checkSegmentsContinuity(gen: string, from: number, segments: WalSegmentInfo[]): void {
  if (segments.length === 0) return;
  const last = segments[segments.length - 1].index;
  let i = 0;
  for (let idx = from; idx <= last; idx++) {
    if (i >= segments.length || segments[i].index !== idx) {
      throw new ReplicaIntegrityError(
        `Replica is missing WAL index ${hex8(idx)} of generation "${gen}"`,
      );
    }
    if (segments[i].offset !== 0) {
      throw new ReplicaIntegrityError(
        `Replica is missing WAL segment ${gen}/${formatWalSegmentName(idx, 0)}`,
      );
    }
    while (i < segments.length && segments[i].index === idx) i++;
  }
}

/** Restores tried when objects vanish between listing and reading them (see restore()). */
const RESTORE_ATTEMPTS = 3;

/**
 * Restores a database from `client` into `options.outputPath`, which must not exist.
 *
 * Writes to a hidden temporary file beside it, applies the WAL (each frame's salts and
 * checksum validated before its page is written), checks `PRAGMA integrity_check`, then
 * links the file into place (atomically
 * refusing to replace a file created meanwhile). First removes what restores killed earlier
 * left in the output's directory ({@linkcode removeAbandonedRestores}).
 *
 * @throws {NoBackupError} If the replica has nothing matching.
 * @throws {ReplicaIntegrityError} If a piece of the replica is missing or corrupt.
 * @throws {Deno.errors.AlreadyExists} If the output path exists.
 */
export async function restore(
  client: ReplicaClient,
  options: RestoreOptions,
): Promise<RestoreResult> {
  const out = absPath(options.outputPath);
  const log = (options.logger ?? silentLogger).with({ output: out });
  const signal = options.signal;
  if (await exists(out)) {
    throw new Deno.errors.AlreadyExists(`Cannot restore to "${out}": file already exists`);
  }
  if (!(await exists(dirname(out)))) {
    throw new Deno.errors.NotFound(`Cannot restore to "${out}": directory does not exist`);
  }
  for (const path of await removeAbandonedRestores(dirname(out))) {
    log.info("removed files of an interrupted restore", { path });
  }
  let target = options.target ?? await calcRestoreTarget(client, options);
  const t0 = performance.now();
  let bytes = 0;
  let index = target.snapshot.index;
  for (let attempt = 1;; attempt++) {
    const work = await claimWorkFiles(out);
    const tmp = work.path;
    try {
      log.info("restoring snapshot", {
        generation: target.generation,
        index: hex8(target.snapshot.index),
      });
      const pageSize = await writeSnapshot(client, target, tmp, signal);
      using file = await Deno.open(tmp, { read: true, write: true });
      const wal = await applyWal(client, target, file, pageSize, options);
      bytes = wal.bytes;
      index = wal.index ?? target.snapshot.index;
      // The check reads what the kernel holds while the data goes to disk; both must pass.
      const synced = file.sync();
      try {
        if (!options.skipIntegrityCheck) checkIntegrity(tmp);
      } finally {
        await synced;
      }
      file.close();
      // link() fails if the output appeared meanwhile: we never replace a file.
      await Deno.link(tmp, out);
      await work.release();
      await fsyncDir(dirname(out));
      break;
    } catch (err) {
      // An object listed a moment ago can be gone: a replicator merged a run of segments into
      // the first of them, or retention deleted it. Listing again finds what replaced it.
      if (
        !(err instanceof Deno.errors.NotFound) || attempt >= RESTORE_ATTEMPTS || signal?.aborted
      ) throw err;
      log.warn("an object of the replica vanished while restoring; listing it again", {
        error: err.message,
      });
      target = await calcRestoreTarget(client, { ...options, generation: target.generation });
    } finally {
      await work.release();
    }
  }
  log.info("restored", {
    generation: target.generation,
    index: hex8(index),
    elapsedMs: Math.round(performance.now() - t0),
  });
  return { ...target, outputPath: out, index, bytes };
}

/**
 * A restore's files are `<dir>/.<output name>-restore-<8 hex>` (the database being built)
 * with SQLite's suffixes (and `-spool`, which earlier versions wrote), plus
 * `….lock`: created first and removed last, and locked
 * (flock) by the restoring process for as long as it runs, so the kernel releases the lock
 * when that process dies, however it dies.
 */
const WORK_LOCK_REGEXP = /^\..+-restore-[0-9a-f]{8}\.lock$/;
const WORK_LOCK_EXT = ".lock";
const WORK_SUFFIXES = ["", "-wal", "-shm", "-journal", "-spool"];

/** The temporary files of one running restore. */
interface WorkFiles {
  /** Path of the database being built; SQLite's `-wal`/`-shm` go beside it. */
  readonly path: string;
  /** Removes the files and then the lock file, and releases the lock; runs once. */
  release(): Promise<void>;
}

/**
 * Creates and locks the lock file of a new restore into `out`.
 *
 * A restore cleaning up at the same moment may take the lock between our create and our
 * lock and remove the file; then the name no longer leads to the file we locked, and we
 * start over with a new name.
 */
async function claimWorkFiles(out: string): Promise<WorkFiles> {
  for (;;) {
    const path = `${dirname(out)}/.${basename(out)}-restore-${crypto.randomUUID().slice(0, 8)}`;
    const lockPath = path + WORK_LOCK_EXT;
    const lock = await Deno.open(lockPath, { write: true, createNew: true, mode: 0o600 });
    let ours = false;
    try {
      try {
        await lock.lock(true);
      } catch {
        // A file system without flock: no cleanup can take it from us either.
      }
      const [held, named] = [await lock.stat(), await Deno.stat(lockPath).catch(() => undefined)];
      ours = named !== undefined && named.ino === held.ino && named.dev === held.dev;
    } finally {
      if (!ours) lock.close();
    }
    if (!ours) continue;
    let released: Promise<void> | undefined;
    const release = () =>
      released ??= (async () => {
        try {
          for (const s of WORK_SUFFIXES) await removeIfExists(path + s);
          await removeIfExists(lockPath);
        } finally {
          lock.close();
        }
      })();
    return { path, release };
  }
}

/**
 * Removes the temporary files that restores into `dir` left behind when they were killed
 * (their lock file is no longer locked). A running restore's files are never touched.
 *
 * @returns The temporary database paths whose files were removed.
 */
export async function removeAbandonedRestores(dir: string): Promise<string[]> {
  const removed: string[] = [];
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return removed;
    throw err;
  }
  for (const e of entries) {
    if (!e.isFile || !WORK_LOCK_REGEXP.test(e.name)) continue;
    const lockPath = `${dir}/${e.name}`;
    let lock: Deno.FsFile;
    try {
      lock = await Deno.open(lockPath, { read: true });
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue; // its owner finished meanwhile
      throw err;
    }
    try {
      // Locked: its restore is running. No flock here: nobody can tell, leave it.
      if (!(await lock.tryLock(true).catch(() => false))) continue;
      const path = lockPath.slice(0, -WORK_LOCK_EXT.length);
      for (const s of WORK_SUFFIXES) await removeIfExists(path + s);
      await removeIfExists(lockPath);
      removed.push(path);
    } finally {
      lock.close();
    }
  }
  return removed;
}

async function removeIfExists(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

function segName(s: WalSegmentInfo): string {
  return `${s.generation}/${formatWalSegmentName(s.index, s.offset)}`;
}

async function writeSnapshot(
  client: ReplicaClient,
  target: RestoreTarget,
  tmp: string,
  signal?: AbortSignal,
): Promise<number> {
  const name = `${target.generation}/${hex8(target.snapshot.index)} snapshot`;
  using file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
  let head: Uint8Array | undefined;
  let size = 0;
  try {
    const raw = releaseSpent(readChunks(await client.openSnapshot(target.snapshot, { signal })));
    // Large snapshots: blocks decoded by Workers while this thread hashes and writes.
    const parallel = target.snapshot.size >= PARALLEL_SNAPSHOT_BYTES &&
      navigator.hardwareConcurrency > 1;
    for await (const chunk of parallel ? lz4DecompressParallel(raw) : decodeSerially(raw)) {
      if (!head) head = chunk.slice(0, 100);
      else if (head.length < 100) {
        head = concat([head, chunk.slice(0, 100 - head.length)]);
      }
      writeAllSync(file, chunk);
      size += chunk.length;
      // Both decoders hand out each block in a buffer of its own: free it now (see release).
      release(chunk);
    }
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw new ReplicaIntegrityError(`Snapshot ${name} is corrupt`, { cause: err });
    }
    throw err;
  }
  let pageSize: number;
  try {
    pageSize = decodeDbPageSize(head ?? new Uint8Array(0));
  } catch (err) {
    throw new ReplicaIntegrityError(`Snapshot ${name} is not a SQLite database`, { cause: err });
  }
  if (size % pageSize !== 0) {
    throw new ReplicaIntegrityError(
      `Snapshot ${name} is ${size} bytes, not a whole number of ${pageSize}-byte pages`,
    );
  }
  return pageSize;
}

/**
 * Passes on `chunks` (each in a buffer of its own, as {@linkcode readChunks} yields them) to
 * the LZ4 frame reader of the loop consuming them, and frees each once that reader is surely
 * done with it: a reader keeps no more than one incomplete block (4 MiB at most) of what it
 * was given, and nothing once the loop asked for more than the last chunk or left.
 */
async function* releaseSpent(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const held: Uint8Array[] = [];
  let heldBytes = 0;
  try {
    for await (const chunk of chunks) {
      while (held.length > 0 && heldBytes - held[0].length >= LZ4_BLOCK_SIZE + 64) {
        const spent = held.shift()!;
        heldBytes -= spent.length;
        release(spent);
      }
      held.push(chunk);
      heldBytes += chunk.length;
      yield chunk;
    }
  } finally {
    for (const chunk of held) release(chunk);
  }
}

/** A BYOB reader of `stream`, or undefined if it is not a byte stream (a file's is). */
function byobReader(stream: ReadableStream<Uint8Array>): ReadableStreamBYOBReader | undefined {
  try {
    return stream.getReader({ mode: "byob" });
  } catch {
    return undefined;
  }
}

/**
 * Reads `stream` in chunks of up to {@linkcode READ_CHUNK_BYTES}, each in a new buffer of its own that the caller
 * may {@linkcode release}: a byte stream (a file's) reads straight into them, any other is
 * copied (its own chunks may share buffers, as Node's pooled ones do).
 */
async function* readChunks(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const byob = byobReader(stream);
  if (!byob) {
    let buf = new Uint8Array(READ_CHUNK_BYTES);
    let n = 0;
    for await (let chunk of stream) {
      while (chunk.length > 0) {
        const take = Math.min(chunk.length, buf.length - n);
        buf.set(chunk.subarray(0, take), n);
        n += take;
        chunk = chunk.subarray(take);
        if (n === buf.length) {
          yield buf;
          buf = new Uint8Array(READ_CHUNK_BYTES);
          n = 0;
        }
      }
    }
    if (n > 0) yield buf.subarray(0, n);
    return;
  }
  try {
    for (;;) {
      const { value, done } = await byob.read(new Uint8Array(READ_CHUNK_BYTES));
      if (done) return;
      if (value.length > 0) yield value;
    }
  } finally {
    await byob.cancel().catch(() => {});
    byob.releaseLock();
  }
}

/**
 * Reads `stream` in pieces of the sizes `needed()` asks for, each in a buffer of its own that
 * the caller may {@linkcode release}: with an LZ4 frame reader's {@linkcode
 * Lz4FrameReader.needed}, a piece per part of the frame, so that every block reaches the
 * reader whole and is handed on without being copied together from {@linkcode readChunks}'
 * chunks (20 ms of a 100 MiB WAL restore). Where nothing is needed (the frame has ended),
 * what follows is read in plain chunks for the reader to refuse. A stream that is not a byte
 * stream is read by {@linkcode readChunks}.
 */
async function* readPieces(
  stream: ReadableStream<Uint8Array>,
  needed: () => number,
): AsyncGenerator<Uint8Array> {
  const reader = byobReader(stream);
  if (!reader) {
    yield* readChunks(stream);
    return;
  }
  try {
    for (;;) {
      const n = needed() || READ_CHUNK_BYTES;
      let buf = new Uint8Array(n);
      let got = 0;
      while (got < n) {
        // The read takes the buffer over and hands back a view of the same memory.
        const { value, done } = await reader.read(buf.subarray(got));
        if (value) buf = new Uint8Array(value.buffer, 0, n);
        if (done || !value) break;
        got += value.length;
      }
      if (got > 0) yield got === n ? buf : buf.subarray(0, got);
      if (got < n) return;
    }
  } finally {
    await reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

async function* decodeSerially(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  const dec = new Lz4FrameDecoder();
  for await (const chunk of source) yield* dec.push(chunk);
  dec.finish();
}

/** Segments stored in at most this many bytes are downloaded whole; larger ones stream. */
const PREFETCH_MAX_SEGMENT_BYTES = 1 << 20;
/** Neighbouring pages are written to the database file in runs of up to this many bytes. */
const WRITE_RUN_BYTES = 256 << 10;

/**
 * Applies the target's WAL segments to the database file `file`, one WAL index at a time,
 * strictly in order, while later small segments download in parallel.
 *
 * @returns The bytes of WAL applied and the last index applied (none without segments).
 */
async function applyWal(
  client: ReplicaClient,
  target: RestoreTarget,
  file: Deno.FsFile,
  pageSize: number,
  options: RestoreOptions,
): Promise<{ bytes: number; index?: number }> {
  const segs = target.segments;
  const fetcher = new SegmentFetcher(
    client,
    segs,
    Math.max(1, options.parallelism ?? DEFAULT_RESTORE_PARALLELISM),
    options.signal,
  );
  const log = options.logger ?? silentLogger;
  // Two buffers serve the whole restore (pages untouched by a small restore cost nothing).
  const decoded = new Uint8Array(MAX_DECODE_BUFFER_BYTES);
  const run = new Uint8Array(Math.max(WRITE_RUN_BYTES, pageSize));
  let bytes = 0;
  let index: number | undefined;
  let i = 0;
  try {
    while (i < segs.length) {
      const idx = segs[i].index;
      const applier = new WalIndexApplier(file, pageSize, target.generation, idx, run);
      // With an offset, the index's last segment may run past it: keep only what precedes it.
      const stopAt = options.offset !== undefined && idx === options.index
        ? options.offset
        : Infinity;
      const limit = (chunk: Uint8Array) =>
        chunk.subarray(0, Math.max(0, Math.min(chunk.length, stopAt - applier.length)));
      let stored = 0; // where the segments so far end (applied up to stopAt)
      for (; i < segs.length && segs[i].index === idx; i++) {
        const seg = segs[i];
        if (seg.offset > stored) {
          throw new ReplicaIntegrityError(
            `Replica is missing WAL bytes ${stored}..${seg.offset} of index ${
              hex8(idx)
            } in generation "${target.generation}" (before ${segName(seg)})`,
          );
        }
        // A segment starting inside what was applied must lie wholly inside it: a merge of
        // segments into one (src/replica.ts) stores the merged one, then deletes the ones it
        // covers, which a restore in between still lists. Anything else is an overlap.
        const covered = seg.offset < stored;
        let decodedLength = 0;
        try {
          // SQLite's checksums cover every byte of a WAL header and frame, and the applier
          // checks them all before it writes a page: the LZ4 content checksum would check
          // the same bytes a second time (xxHash32 was a tenth of a WAL-heavy restore). A
          // segment that decodes to other bytes fails the WAL checksum chain, named the same.
          // (A covered segment is not applied: its bytes are only counted.)
          const dec = new ReusingLz4Decoder(decoded, false);
          for await (const chunk of releaseSpent(fetcher.take(i, () => dec.needed))) {
            for (const block of dec.push(chunk)) {
              decodedLength += block.length;
              if (!covered) applier.push(limit(block));
            }
          }
          dec.finish();
        } catch (err) {
          // A covered segment may be deleted once listed: the merge it was left by is done.
          if (covered && err instanceof Deno.errors.NotFound) continue;
          // A bad frame may show before the LZ4 checksum does: name the segment either way.
          if (!(err instanceof SyntaxError || err instanceof ReplicaIntegrityError)) throw err;
          throw new ReplicaIntegrityError(`WAL segment ${segName(seg)} is corrupt`, { cause: err });
        }
        if (!covered) stored = seg.offset + decodedLength;
        else if (seg.offset + decodedLength > stored) {
          throw new ReplicaIntegrityError(
            `WAL segment ${segName(seg)} overlaps the previous segment`,
          );
        } else {
          log.warn("skipped a wal segment an earlier one covers (a merge not finished)", {
            segment: segName(seg),
          });
        }
      }
      if (stopAt !== Infinity && applier.length < stopAt) {
        throw new NoBackupError(
          `Replica holds WAL index ${
            hex8(idx)
          } of generation "${target.generation}" up to ${applier.length}, not ${stopAt}`,
        );
      }
      applier.finish();
      bytes += applier.length;
      index = idx;
      log.debug("applied wal", { index: hex8(idx) });
    }
  } finally {
    fetcher.close();
    release(decoded);
    release(run);
  }
  return { bytes, index };
}

/**
 * Hands out the stored bytes of each segment, in order, in buffers the caller owns (and
 * should {@linkcode release} once applied). While one is applied, the next `parallelism`
 * segments are requested: small ones (up to 1 MiB each) download whole; a larger one is only
 * opened (its request answered, which a server like moto takes a while to do) and streams in
 * its turn, {@linkcode READ_CHUNK_BYTES} at a time, so memory stays bounded by the small ones
 * and the connections' buffers.
 */
class SegmentFetcher {
  readonly #client: ReplicaClient;
  readonly #segs: WalSegmentInfo[];
  readonly #parallelism: number;
  readonly #signal?: AbortSignal;
  /** Segments requested ahead of their turn: read whole (small) or opened (large). */
  readonly #pending = new Map<number, Promise<Uint8Array | ReadableStream<Uint8Array>>>();
  /** The next segment to consider requesting ahead. */
  #next = 0;

  constructor(
    client: ReplicaClient,
    segs: WalSegmentInfo[],
    parallelism: number,
    signal?: AbortSignal,
  ) {
    this.#client = client;
    this.#segs = segs;
    this.#parallelism = parallelism;
    this.#signal = signal;
  }

  /**
   * The stored bytes of segment `i`, whole or in the pieces `needed()` asks for (see
   * {@linkcode readPieces}); call once per segment, in order.
   */
  async *take(i: number, needed: () => number): AsyncGenerator<Uint8Array> {
    // This segment is requested before the ones requested ahead: it is needed first.
    const got = this.#pending.get(i) ?? this.#request(this.#segs[i]);
    this.#pending.delete(i);
    this.#next = Math.max(this.#next, i + 1);
    this.#prefetch();
    const bytes = await got;
    if (bytes instanceof Uint8Array) yield bytes;
    else yield* readPieces(bytes, needed);
  }

  /** Stops requesting ahead; streams opened ahead are cancelled, reads finish unheeded. */
  close(): void {
    for (const p of this.#pending.values()) {
      p.then((b) => b instanceof ReadableStream ? b.cancel() : undefined).catch(() => {});
    }
    this.#pending.clear();
    this.#next = this.#segs.length;
  }

  #request(seg: WalSegmentInfo): Promise<Uint8Array | ReadableStream<Uint8Array>> {
    const opened = this.#client.openWalSegment(seg, { signal: this.#signal });
    const p = seg.size <= PREFETCH_MAX_SEGMENT_BYTES
      ? opened.then((stream) => readSized(stream, seg.size))
      : opened;
    // Awaited in order; one never reached (an earlier one failed) must not end the process as
    // an unhandled rejection.
    p.catch(() => {});
    return p;
  }

  #prefetch(): void {
    for (; this.#next < this.#segs.length; this.#next++) {
      if (this.#pending.size >= this.#parallelism) return;
      this.#pending.set(this.#next, this.#request(this.#segs[this.#next]));
    }
  }
}

/**
 * Reads a whole stream of about `size` bytes (a listed object's size) into one new buffer,
 * which the caller owns and may {@linkcode release}. A byte stream (a file's) reads straight
 * into it.
 */
async function readSized(stream: ReadableStream<Uint8Array>, size: number): Promise<Uint8Array> {
  // One spare byte: a full buffer then means the object grew since it was listed.
  let buf = new Uint8Array(size + 1);
  let n = 0;
  const room = (more: number) => {
    if (n + more <= buf.length) return;
    const bigger = new Uint8Array(Math.max(2 * buf.length, n + more));
    bigger.set(buf.subarray(0, n));
    release(buf);
    buf = bigger;
  };
  const byob = byobReader(stream);
  if (!byob) {
    for await (const chunk of stream) {
      room(chunk.length);
      buf.set(chunk, n);
      n += chunk.length;
    }
    return buf.subarray(0, n);
  }
  try {
    for (;;) {
      room(1);
      // The read takes the buffer over and hands back a view of the same memory.
      const { value, done } = await byob.read(buf.subarray(n));
      if (value) buf = new Uint8Array(value.buffer);
      if (done) break;
      n += value!.length;
    }
  } finally {
    byob.releaseLock();
  }
  return buf.subarray(0, n);
}

/**
 * Frees the memory of `bytes` now rather than at V8's next garbage collection, which large
 * buffers do not hasten (a restore's dead buffers piled up to ~65 MiB). `bytes` must be the
 * only view of its buffer still in use; freeing it twice does nothing.
 */
function release(bytes: Uint8Array): void {
  const buffer = bytes.buffer as ArrayBuffer;
  if (!buffer.detached) buffer.transfer(0);
}

/** Largest LZ4 block (4 MiB) plus the 64 KiB window of linked blocks. */
const MAX_DECODE_BUFFER_BYTES = (4 << 20) + (64 << 10);

/**
 * Decodes exactly one LZ4 frame fed in chunks, checking everything {@linkcode Lz4FrameDecoder}
 * checks, but yields each block as a view of one buffer reused for the next block: a restore
 * applies hundreds of MiB of WAL, and a new array per block is memory V8 returns only at its
 * next collection (~65 MiB of them piled up).
 */
class ReusingLz4Decoder {
  readonly #reader = new Lz4FrameReader();
  readonly #hash?: Xxh32;
  readonly #buf: Uint8Array;
  /** Linked blocks: bytes of earlier output kept at the front of `#buf` (up to 64 KiB). */
  #history = 0;
  #total = 0;
  /**
   * @param buf Receives each decoded block: {@linkcode MAX_DECODE_BUFFER_BYTES} long.
   * @param contentChecksum Whether to check the frame's content checksum: not for content
   * the caller validates byte for byte by other means.
   */
  constructor(buf: Uint8Array, contentChecksum = true) {
    this.#buf = buf;
    if (contentChecksum) this.#hash = new Xxh32();
  }

  /** Bytes to feed before the frame's next part is complete (see Lz4FrameReader.needed). */
  get needed(): number {
    return this.#reader.needed;
  }

  /** Feeds encoded bytes; yields the decoded blocks, each valid until the next is yielded. */
  *push(chunk: Uint8Array): Generator<Uint8Array> {
    for (const block of this.#reader.push(chunk)) {
      // A block spanning chunks is a copy the reader made: ours to free once decoded. (One
      // that is a view of an earlier chunk ends it: that chunk is spent too.)
      const copy = block.data.buffer !== chunk.buffer;
      const linked = this.#reader.linked;
      let out: Uint8Array;
      if (block.stored) {
        out = block.data;
        if (linked) this.#keepHistory(out);
      } else {
        // A block may not decode to more than the frame's block size.
        const dst = this.#buf.subarray(0, this.#history + this.#reader.maxBlockSize);
        const end = decodeBlockInto(block.data, dst, this.#history);
        out = this.#buf.subarray(this.#history, end);
      }
      this.#hash?.update(out);
      this.#total += out.length;
      yield out;
      if (linked && !block.stored) this.#keepHistory(out);
      if (copy) release(block.data);
    }
  }

  /** Moves the last 64 KiB of history plus `out` to the front of the buffer. */
  #keepHistory(out: Uint8Array): void {
    const buf = this.#buf;
    const keep = Math.min(64 << 10, this.#history + out.length);
    if (out.buffer === buf.buffer) {
      const end = out.byteOffset - buf.byteOffset + out.length;
      buf.copyWithin(0, end - keep, end);
    } else {
      const fromHistory = keep - Math.min(keep, out.length);
      buf.copyWithin(0, this.#history - fromHistory, this.#history);
      buf.set(out.subarray(out.length - (keep - fromHistory)), fromHistory);
    }
    this.#history = keep;
  }

  /** Checks that a whole, valid frame was read. @throws {SyntaxError} If it was not. */
  finish(): void {
    this.#reader.verify(this.#hash?.digest(), this.#total);
  }
}

/**
 * Applies one WAL index (header plus frames, fed in order in chunks of any size) to the
 * database file as a checkpoint would: the newest committed image of each page, then the
 * size of the last commit. Every frame's salts and checksum chain are validated before its
 * page is written; each chunk's pages are written as they arrive (the newest image of a page
 * wins, as later chunks overwrite earlier ones), in page order, neighbours coalesced. A frame
 * that fails validation, or an index that does not end on a commit, fails the restore, whose
 * file is then discarded, so pages written before the failure do no harm.
 */
class WalIndexApplier {
  readonly #file: Deno.FsFile;
  readonly #pageSize: number;
  readonly #frameSize: number;
  readonly #what: string;
  readonly #run: Uint8Array;
  #header?: WalHeader;
  #sum: [number, number] = [0, 0];
  /** The start of a header or frame split across chunks. */
  readonly #carry: Uint8Array;
  #carryLength = 0;
  #frames = 0;
  #committedFrames = 0;
  #commitSize = 0;
  /** Decoded bytes received so far (the next segment's expected offset). */
  length = 0;

  /** @param run Reused to gather runs of pages (one applier at a time), a page or more long. */
  constructor(
    file: Deno.FsFile,
    pageSize: number,
    generation: string,
    index: number,
    run: Uint8Array,
  ) {
    this.#file = file;
    this.#run = run;
    this.#pageSize = pageSize;
    this.#frameSize = walFrameSize(pageSize);
    this.#what = `WAL index ${hex8(index)} of generation "${generation}"`;
    this.#carry = new Uint8Array(this.#frameSize);
  }

  /** Validates the frames completed by `chunk` and writes their pages. */
  push(chunk: Uint8Array): void {
    this.length += chunk.length;
    let data = chunk;
    if (!this.#header) {
      data = this.#fillCarry(data, WAL_HEADER_SIZE);
      if (this.#carryLength < WAL_HEADER_SIZE) return;
      this.#carryLength = 0;
      this.#readHeader(this.#carry.subarray(0, WAL_HEADER_SIZE));
    }
    const fs = this.#frameSize;
    if (this.#carryLength > 0) {
      data = this.#fillCarry(data, fs);
      if (this.#carryLength < fs) return;
      this.#carryLength = 0;
      this.#apply(this.#carry);
    }
    const whole = data.length - (data.length % fs);
    if (whole > 0) this.#apply(data.subarray(0, whole));
    this.#fillCarry(data.subarray(whole), fs);
  }

  /** Moves bytes from the front of `data` into the carry until it holds `n`; returns the rest. */
  #fillCarry(data: Uint8Array, n: number): Uint8Array {
    const take = Math.min(n - this.#carryLength, data.length);
    this.#carry.set(data.subarray(0, take), this.#carryLength);
    this.#carryLength += take;
    return data.subarray(take);
  }

  #readHeader(head: Uint8Array): void {
    if (!isValidWalHeader(head)) {
      throw new ReplicaIntegrityError(`${this.#what} has an invalid WAL header`);
    }
    this.#header = decodeWalHeader(head);
    if (this.#header.pageSize !== this.#pageSize) {
      throw new ReplicaIntegrityError(
        `${this.#what} has page size ${this.#header.pageSize}, the snapshot has ${this.#pageSize}`,
      );
    }
    this.#sum = [this.#header.checksum1, this.#header.checksum2];
  }

  /** Validates whole frames, then writes their pages. */
  #apply(frames: Uint8Array): void {
    const fs = this.#frameSize;
    const scan = scanWalFrames(frames, this.#header!, this.#sum);
    if (scan.stop !== "end") {
      throw new ReplicaIntegrityError(
        `${this.#what} has a broken ${scan.stop} at frame ${this.#frames + scan.validFrames + 1}`,
      );
    }
    this.#sum = scan.checksum;
    if (scan.committedBytes > 0) {
      this.#committedFrames = this.#frames + scan.committedBytes / fs;
      this.#commitSize = scan.commitSize;
    }
    const first = this.#frames;
    this.#frames += frames.length / fs;
    const order = this.#pageOrder(frames, first);
    const ps = this.#pageSize;
    const maxRun = Math.floor(this.#run.length / ps);
    // Runs of neighbouring pages: [start, end) in `order`.
    let start = 0;
    while (start < order.length) {
      const pgno = pageNumber(frames, order[start] * fs);
      let end = start + 1;
      while (
        end < order.length && end - start < maxRun &&
        pageNumber(frames, order[end] * fs) === pgno + (end - start)
      ) end++;
      this.#file.seekSync((pgno - 1) * ps, Deno.SeekMode.Start);
      if (end - start === 1) {
        const at = order[start] * fs + WAL_FRAME_HEADER_SIZE;
        writeAllSync(this.#file, frames.subarray(at, at + ps));
      } else {
        const run = this.#run.subarray(0, ps * (end - start));
        for (let k = start; k < end; k++) {
          const at = order[k] * fs + WAL_FRAME_HEADER_SIZE;
          run.set(frames.subarray(at, at + ps), (k - start) * ps);
        }
        writeAllSync(this.#file, run);
      }
      start = end;
    }
  }

  /**
   * The frames of `frames` to write, in page order, keeping the last frame of each page: as
   * they come when their page numbers increase (SQLite writes each transaction's pages in
   * page order), else sorted.
   */
  #pageOrder(frames: Uint8Array, first: number): number[] {
    const fs = this.#frameSize;
    const n = frames.length / fs;
    const order: number[] = new Array(n);
    let prev = 0;
    let sorted = true;
    for (let k = 0; k < n; k++) {
      const pgno = pageNumber(frames, k * fs);
      if (pgno === 0) {
        throw new ReplicaIntegrityError(`${this.#what} names page 0 at frame ${first + k + 1}`);
      }
      if (pgno <= prev) sorted = false;
      prev = pgno;
      order[k] = k;
    }
    if (sorted) return order;
    const last = new Map<number, number>();
    for (let k = 0; k < n; k++) last.set(pageNumber(frames, k * fs), k);
    return [...last.keys()].sort((a, b) => a - b).map((pgno) => last.get(pgno)!);
  }

  /** Checks that the index ends on a commit, then sets the database's size. */
  finish(): void {
    if (!this.#header) {
      throw new ReplicaIntegrityError(`${this.#what} has an invalid WAL header`);
    }
    if (this.#carryLength > 0) {
      throw new ReplicaIntegrityError(`${this.#what} ends inside a frame (${this.length} bytes)`);
    }
    if (this.#committedFrames !== this.#frames) {
      throw new ReplicaIntegrityError(`${this.#what} does not end on a commit`);
    }
    if (this.#frames === 0) return;
    this.#file.truncateSync(this.#commitSize * this.#pageSize);
  }
}

/** The page number in the frame header at `at` of `frames`. */
function pageNumber(frames: Uint8Array, at: number): number {
  return ((frames[at] << 24) | (frames[at + 1] << 16) | (frames[at + 2] << 8) | frames[at + 3]) >>>
    0;
}

/** Runs `PRAGMA integrity_check` on a restored file. @throws {ReplicaIntegrityError} */
function checkIntegrity(path: string): void {
  const conn = new Connection(path, { busyTimeoutMs: 5000 });
  try {
    // No memory map (it reads faster): its pages would count in the process's resident
    // memory, as much as the whole database.
    const row = conn.get<Record<string, string>>("PRAGMA integrity_check");
    const result = row ? String(Object.values(row)[0]) : "no result";
    if (result !== "ok") {
      throw new ReplicaIntegrityError(`Restored database fails integrity_check: ${result}`);
    }
  } finally {
    conn.close();
  }
}
