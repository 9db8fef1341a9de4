/**
 * The shadow WAL under `.<db>-litestream/`: one file per WAL life (index) of the current
 * generation, each a byte copy of the real WAL's header and committed frames. This file
 * owns its paths, loading after a restart (trimming a torn tail), appending committed
 * frames, reading ranges for the replicas, and removing files no replica needs.
 *
 * The current file stays open from its start (or load) until the next one starts: a sync
 * appends to it, checks its last frame and flushes it, and a replica reads its new frames,
 * each several times a second, and every open by path costs a permission check of each
 * path component under Deno's granular permissions (a `readlink` apiece). Only this object
 * creates, writes and cleans up the files; none is ever replaced in place.
 *
 * @module
 */
import {
  decodeWalFrameHeader,
  decodeWalHeader,
  frameAlign,
  isValidWalHeader,
  scanWalFrames,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  walFrameSize,
  type WalHeader,
} from "./wal.ts";
import {
  formatShadowWalName,
  isGenerationName,
  newGenerationName,
  parseShadowWalName,
} from "./layout.ts";
import type { Pos } from "./pos.ts";
import {
  closeQuietly,
  dirname,
  fileSizeSync,
  fsyncDir,
  mkdirp,
  readAtSync,
  readIntoSync,
  writeAllSync,
  writeFileAtomic,
} from "./internal/fs.ts";
import { Scratch } from "./internal/bytes.ts";
import type { Logger } from "./log.ts";

/**
 * Largest read of a WAL at once: the most memory a scan and the copy after it hold, whatever
 * the size of the transaction (one buffer, reused by every sync of the database).
 */
const SCAN_CHUNK = 1 << 20;

/** What a replica reads from the shadow WAL: the end of each file, and its bytes. */
export interface ShadowWalReader {
  /** Current end of the shadow WAL: generation, index and committed size. */
  pos(): Pos | undefined;
  /**
   * Committed size of shadow file `index` of `generation`.
   *
   * @throws {Deno.errors.NotFound} If that file is gone or belongs to another generation.
   */
  end(generation: string, index: number): number;
  /**
   * Committed bytes of file `index` from `offset` to its end (empty when there is nothing
   * new); with `scratch`, a view taken from it.
   *
   * @throws {Deno.errors.NotFound} If that file is gone.
   */
  read(generation: string, index: number, offset: number, scratch?: Scratch): Uint8Array;
  /**
   * A synchronous reader of file `index` from `offset` to `end`: fills the buffer it is
   * given and returns the byte count (0 at `end`).
   *
   * @throws {Error} If the file ends before `end`.
   */
  reader(
    generation: string,
    index: number,
    offset: number,
    end: number,
  ): (buf: Uint8Array) => number;
}

interface State {
  index: number;
  /** Committed bytes in the file, header included. */
  size: number;
  headerBytes: Uint8Array;
  header: WalHeader;
  /** Running WAL checksum at `size`. */
  checksum: [number, number];
  /** Frames past `size` that a scan found valid but not yet committed, if any. */
  tail?: Tail;
}

/**
 * Where the last scan of an uncommitted tail (a transaction whose pages SQLite spills into
 * the WAL before its commit) stopped, so that the next scan resumes there instead of
 * checksumming the whole tail again: a 256 MiB transaction was otherwise scanned from its
 * first frame at every sync while it was written.
 *
 * A resumed scan finds a commit written after the tail; it cannot see one written inside it
 * (the transaction rolled back, wholly or to a savepoint, and a shorter one committed over
 * its frames). So a tail is resumed only while SQLite's count of committed frames (its
 * wal-index header's mxFrame, read by the caller before the WAL) ends at none of the tail's
 * frames. A commit's frames precede its wal-index update: the caller polls that count while a
 * tail is pending and scans whole once the WAL has been quiet for a while.
 */
interface Tail {
  /** End of the valid frames scanned (a frame boundary past the state's `size`). */
  at: number;
  /** Running checksum there. */
  checksum: [number, number];
  /** SQLite's count of committed frames read before the scan that found the tail. */
  committed: number;
}

/** The current shadow file, open, and which file it is. */
interface OpenFile {
  generation: string;
  index: number;
  path: string;
  handle: Deno.FsFile;
}

/** The shadow WAL of one database. Not safe for concurrent writers: `Db` serialises them. */
export class ShadowWal implements ShadowWalReader {
  /** The `.<db>-litestream` directory. */
  readonly dir: string;
  #generation?: string;
  #state?: State;
  #bytes = 0; // all shadow files of the generation
  /** Files of the generation below this index are gone (clean() removed them). */
  #cleanedBelow = 0;
  #checksummed = 0;
  /** The current file, open for reading and writing (see the module doc). */
  #file?: OpenFile;
  readonly #log: Logger;

  constructor(dir: string, log: Logger) {
    this.dir = dir;
    this.#log = log;
  }

  /** The current generation, if any. */
  get generation(): string | undefined {
    return this.#generation;
  }

  /** Bytes of WAL frames checksummed so far by scans and copies (what resuming a tail saves). */
  get checksummedBytes(): number {
    return this.#checksummed;
  }

  /** Frames in the current file. */
  get frames(): number {
    const sh = this.#state;
    return sh ? (sh.size - WAL_HEADER_SIZE) / walFrameSize(sh.header.pageSize) : 0;
  }

  /** Index of the current file (WAL life). */
  get index(): number | undefined {
    return this.#state?.index;
  }

  /** Committed size of the current file. */
  get size(): number {
    return this.#state?.size ?? 0;
  }

  /** Header of the WAL life the current file copies. */
  get header(): WalHeader | undefined {
    return this.#state?.header;
  }

  /** Raw header bytes of the current file. */
  get headerBytes(): Uint8Array | undefined {
    return this.#state?.headerBytes;
  }

  /** Bytes in all shadow files of the current generation (the `shadow_wal_size` metric). */
  get totalBytes(): number {
    return this.#bytes;
  }

  pos(): Pos | undefined {
    if (!this.#generation || !this.#state) return undefined;
    return { generation: this.#generation, index: this.#state.index, offset: this.#state.size };
  }

  /** Path of shadow file `index` of `generation`. */
  path(generation: string, index: number): string {
    return `${this.#walDir(generation)}/${formatShadowWalName(index)}`;
  }

  #walDir(generation: string): string {
    return `${this.dir}/generations/${generation}/wal`;
  }

  /** Loads the generation and its last file after a restart, trimming a torn tail. */
  async load(): Promise<void> {
    this.close();
    this.#generation = undefined;
    this.#state = undefined;
    this.#bytes = 0;
    this.#cleanedBelow = 0;
    let gen: string;
    try {
      gen = (await Deno.readTextFile(`${this.dir}/generation`)).trim();
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    if (!isGenerationName(gen)) return;
    const dir = this.#walDir(gen);
    let index = -1, bytes = 0;
    try {
      for await (const e of Deno.readDir(dir)) {
        if (e.name.endsWith(".tmp")) {
          await Deno.remove(`${dir}/${e.name}`).catch(() => {});
          continue;
        }
        const i = parseShadowWalName(e.name);
        if (i === undefined) continue;
        if (i > index) index = i;
        bytes += (await Deno.stat(`${dir}/${e.name}`)).size;
      }
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    if (index < 0) return;
    const f = Deno.openSync(this.path(gen, index), { read: true, write: true });
    try {
      const fileSize = fileSizeSync(f);
      const headerBytes = readAtSync(f, 0, WAL_HEADER_SIZE);
      if (headerBytes.length < WAL_HEADER_SIZE || !isValidWalHeader(headerBytes)) return;
      const header = decodeWalHeader(headerBytes);
      const scan = scanFile(f, WAL_HEADER_SIZE, fileSize, header, [
        header.checksum1,
        header.checksum2,
      ], new Scratch(SCAN_CHUNK));
      if (scan.end < fileSize) {
        // A crash during an append left frames without their commit: drop them.
        this.#log.warn("shadow wal trimmed to last commit", {
          index,
          from: fileSize,
          to: scan.end,
        });
        await f.truncate(scan.end);
        await f.syncData();
        bytes -= fileSize - scan.end;
      }
      this.#generation = gen;
      this.#bytes = bytes;
      this.#state = { index, size: scan.end, headerBytes, header, checksum: scan.checksum };
      this.#file = { generation: gen, index, path: this.path(gen, index), handle: f };
    } finally {
      if (this.#file?.handle !== f) f.close();
    }
  }

  /**
   * Starts a new generation whose file 0 copies the WAL life of `walHeader`. The generation
   * becomes the one a restart loads only at {@linkcode ShadowWal.commitGeneration}, once
   * its first frames are in.
   */
  async beginGeneration(walHeader: Uint8Array): Promise<string> {
    const gen = newGenerationName();
    await mkdirp(this.#walDir(gen), 0o700);
    this.#generation = gen;
    this.#bytes = 0;
    this.#cleanedBelow = 0;
    await this.startIndex(0, walHeader);
    return gen;
  }

  /** Records the current generation as the one to continue and removes all others. */
  async commitGeneration(): Promise<void> {
    const gen = this.#generation!;
    await writeFileAtomic(`${this.dir}/generation`, new TextEncoder().encode(`${gen}\n`), {
      mode: 0o600,
    });
    for await (const e of Deno.readDir(`${this.dir}/generations`)) {
      if (e.name !== gen) {
        await Deno.remove(`${this.dir}/generations/${e.name}`, { recursive: true });
      }
    }
  }

  /** Starts file `index`, which copies the WAL life whose header is `walHeader`. */
  async startIndex(index: number, walHeader: Uint8Array): Promise<void> {
    const headerBytes = walHeader.slice(0, WAL_HEADER_SIZE);
    const header = decodeWalHeader(headerBytes);
    const generation = this.#generation!;
    const path = this.path(generation, index);
    let f: Deno.FsFile | undefined;
    try {
      f = await Deno.open(path, {
        read: true,
        write: true,
        create: true,
        truncate: true,
        mode: 0o600,
      });
      writeAllSync(f, headerBytes);
      await f.syncData();
      await fsyncDir(dirname(path));
    } catch (err) {
      f?.close();
      throw new Error(`Cannot start shadow WAL "${path}"`, { cause: err });
    }
    this.close();
    this.#file = { generation, index, path, handle: f };
    this.#bytes += WAL_HEADER_SIZE;
    this.#state = {
      index,
      size: WAL_HEADER_SIZE,
      headerBytes,
      header,
      checksum: [header.checksum1, header.checksum2],
    };
  }

  /**
   * Appends the committed frames of the current WAL life that the shadow lacks, reading
   * them from `wal`, the open WAL file. Synchronous and without fsync, so that it can run
   * while we hold SQLite's write lock: call {@linkcode ShadowWal.flush} afterwards.
   *
   * @returns the number of bytes appended, or -1 if the WAL file no longer holds the life
   * the current file copies (its header changed: the WAL was restarted or truncated)
   */
  append(wal: Deno.FsFile, scratch: Scratch, committed?: number): number {
    const sh = this.#state!;
    scratch.reset();
    // SQLite writes a restarted WAL's header before any of its frames: read it first.
    if (!bytesEqual(readAtSync(wal, 0, WAL_HEADER_SIZE, scratch), sh.headerBytes)) return -1;
    const walSize = fileSizeSync(wal);
    const tail = sh.tail;
    sh.tail = undefined;
    if (committed !== undefined && tail) {
      // The last commit ends before the tail (nothing new committed) or past it.
      const end = WAL_HEADER_SIZE + committed * walFrameSize(sh.header.pageSize);
      if (end <= sh.size || end >= tail.at) {
        const n = this.#appendResumed(wal, walSize, tail, scratch, committed);
        if (n >= 0) return n;
        // The tail changed under us (its checksums were rewritten at its commit).
      }
    }
    const scan = scanFile(wal, sh.size, walSize, sh.header, sh.checksum, scratch);
    this.#checksummed += scan.validTo - sh.size;
    const n = this.#appendScanned(wal, scan);
    this.#keepTail(scan, committed);
    return n;
  }

  /** Remembers the valid frames `scan` found past its last commit (see {@linkcode Tail}). */
  #keepTail(scan: Scan, committed: number | undefined): void {
    const sh = this.#state!;
    if (committed !== undefined && scan.validTo > sh.size) {
      sh.tail = { at: scan.validTo, checksum: scan.validChecksum, committed };
    }
  }

  /**
   * While the last scan left frames that are valid but not committed yet, SQLite's count of
   * committed frames it was found with (see {@linkcode Tail}).
   */
  get tailCommitted(): number | undefined {
    return this.#state?.tail?.committed;
  }

  /**
   * Scans on from where `tail` stopped. A commit found past it is copied with every frame
   * since the state's end checked again, as a whole scan would have checked them.
   *
   * @returns the bytes appended, or -1 if the frames no longer continue the tail
   */
  #appendResumed(
    wal: Deno.FsFile,
    walSize: number,
    tail: Tail,
    scratch: Scratch,
    committed: number,
  ): number {
    const sh = this.#state!;
    const fs = walFrameSize(sh.header.pageSize);
    const scan = scanFile(wal, tail.at, walSize, sh.header, tail.checksum, scratch);
    this.#checksummed += scan.validTo - tail.at;
    if (scan.validTo === tail.at && tail.at + fs <= frameAlign(walSize, sh.header.pageSize)) {
      return -1; // the frame after the tail does not follow it
    }
    let n = 0;
    if (scan.end > tail.at) {
      const from = sh.size;
      const buf = scratch.take(Math.min(scanChunk(fs), scan.end - from));
      n = this.#appendScanned(wal, { ...scan, buf, keptTo: from }, true);
      if (n < 0) return -1;
    }
    this.#keepTail(scan, committed);
    return n;
  }

  /**
   * Appends what is left of the life the current file copies, after the WAL restarted into
   * the life of `next` while no read transaction of ours held it (we were stopped): its
   * committed frames still in the WAL file past the shadow's end. The new life overwrites
   * the file from its start; if it has reached the end of the old frames we read (the frame
   * there carries its salts), earlier ones may have been overwritten before we read them,
   * and nothing is appended. Nor is anything if the frame there has zero salts: SQLite writes
   * frames so until their transaction commits, and SQLite 3.40 sometimes commits them so
   * (see WalChainError); the old life's wal-index is gone, so whether more was committed
   * after it cannot be known.
   *
   * @returns the bytes appended, or -1 if the new life reached them or the end is unknown
   */
  appendEndedLife(wal: Deno.FsFile, scratch: Scratch, next: WalHeader): number {
    const sh = this.#state!;
    const walSize = fileSizeSync(wal);
    const scan = scanFile(wal, sh.size, walSize, sh.header, sh.checksum, scratch);
    const after = readAtSync(wal, scan.end, WAL_FRAME_HEADER_SIZE);
    if (after.length === WAL_FRAME_HEADER_SIZE) {
      const f = decodeWalFrameHeader(after);
      if (f.salt1 === next.salt1 && f.salt2 === next.salt2) return -1;
      if (f.salt1 === 0 && f.salt2 === 0) return -1;
    }
    // No read transaction of ours holds this life: frames read again for the copy (those the
    // scan's buffer no longer holds) are checked again, as the new life may be overwriting
    // them meanwhile.
    return this.#appendScanned(wal, scan, true);
  }

  /** @returns the bytes appended, or -1 if `recheck` found frames changed since the scan */
  #appendScanned(wal: Deno.FsFile, scan: Scan, recheck = false): number {
    const sh = this.#state!;
    if (scan.end <= sh.size) return 0;
    const n = scan.end - sh.size;
    const out = this.#current();
    try {
      if (!this.#write(out.handle, sh.size, scan, wal, recheck ? sh.checksum : undefined)) {
        return -1;
      }
    } catch (err) {
      throw new Error(`Cannot append to shadow WAL "${out.path}"`, { cause: err });
    }
    sh.size = scan.end;
    sh.checksum = scan.checksum;
    this.#bytes += n;
    return n;
  }

  /**
   * Copies `[from, scan.end)` of the WAL: from the scan's buffer, or again through it. With
   * `recheck` (the checksum at `from`), frames read again are validated again; if they no
   * longer are the frames the scan saw, the file is cut back to `from` and false returned.
   */
  #write(
    out: Deno.FsFile,
    from: number,
    scan: Scan,
    wal: Deno.FsFile,
    recheck?: readonly [number, number],
  ): boolean {
    out.seekSync(from, Deno.SeekMode.Start);
    if (scan.end <= scan.keptTo) {
      writeAllSync(out, scan.buf.subarray(0, scan.end - from));
      return true;
    }
    const header = this.#state!.header;
    let sum = recheck;
    for (let off = from; off < scan.end;) {
      const part = scan.buf.subarray(0, Math.min(scan.buf.length, scan.end - off));
      const n = readIntoSync(wal, off, part);
      if (n < part.length) throw new Error(`WAL ended at ${off + n}, before ${scan.end}`);
      if (sum) {
        this.#checksummed += part.length;
        const r = scanWalFrames(part, header, sum);
        if (r.stop !== "end") {
          out.truncateSync(from);
          return false;
        }
        sum = r.checksum;
      }
      writeAllSync(out, part);
      off += n;
    }
    if (sum && (sum[0] !== scan.checksum[0] || sum[1] !== scan.checksum[1])) {
      out.truncateSync(from);
      return false;
    }
    return true;
  }

  /** Makes the current file's appended frames durable. */
  async flush(): Promise<void> {
    if (!this.#generation || !this.#state) return;
    const f = this.#current();
    try {
      // Deno runs it on a duplicate of the descriptor: closing the file meanwhile is safe.
      await f.handle.syncData();
    } catch (err) {
      throw new Error(`Cannot flush shadow WAL "${f.path}"`, { cause: err });
    }
  }

  /** Closes the current file (a later {@linkcode ShadowWal.load} opens it again). */
  close(): void {
    closeQuietly(this.#file?.handle);
    this.#file = undefined;
  }

  /** The open current file. */
  #current(): OpenFile {
    const f = this.#file, sh = this.#state;
    if (!f || !sh || f.generation !== this.#generation || f.index !== sh.index) {
      throw new Error(`Shadow WAL of "${this.dir}" is not open`);
    }
    return f;
  }

  /**
   * True if the frame that ends the current file is still, byte for byte, in `wal`, the
   * open WAL file (same place): the WAL was not overwritten since we copied it.
   */
  lastFrameMatches(wal: Deno.FsFile): boolean {
    const sh = this.#state!;
    if (sh.size <= WAL_HEADER_SIZE) return true;
    const fs = walFrameSize(sh.header.pageSize);
    frameScratch.reset();
    return bytesEqual(
      readAtSync(wal, sh.size - fs, fs, frameScratch),
      readAtSync(this.#current().handle, sh.size - fs, fs, frameScratch),
    );
  }

  end(generation: string, index: number): number {
    const sh = this.#state;
    if (generation === this.#generation && sh && index === sh.index) return sh.size;
    if (generation !== this.#generation || !sh || index > sh.index) {
      throw new Deno.errors.NotFound(`No shadow WAL ${generation}/${formatShadowWalName(index)}`);
    }
    return Deno.statSync(this.path(generation, index)).size;
  }

  read(generation: string, index: number, offset: number, scratch?: Scratch): Uint8Array {
    const end = this.end(generation, index);
    if (offset >= end) return new Uint8Array(0);
    const cur = this.#file;
    if (cur && cur.generation === generation && cur.index === index) {
      return readAtSync(cur.handle, offset, end - offset, scratch);
    }
    using f = Deno.openSync(this.path(generation, index), { read: true });
    return readAtSync(f, offset, end - offset, scratch);
  }

  reader(generation: string, index: number, offset: number, end: number) {
    const path = this.path(generation, index);
    let off = offset;
    return (buf: Uint8Array): number => {
      const want = Math.min(buf.length, end - off);
      if (want <= 0) return 0;
      using file = Deno.openSync(path, { read: true }); // one open per call (4 MiB blocks)
      const n = readIntoSync(file, off, buf.subarray(0, want));
      if (n < want) throw new Error(`Shadow WAL "${path}" ended early at ${off + n}`);
      off += n;
      return n;
    };
  }

  /** Removes the current generation's files below index `keepFrom`. */
  async clean(keepFrom: number): Promise<void> {
    const gen = this.#generation;
    // Files are only ever added at higher indexes: no need to list the directory again (an
    // async call per sync) until the replicas have moved past another file.
    if (!gen || keepFrom <= this.#cleanedBelow) return;
    const dir = this.#walDir(gen);
    for await (const e of Deno.readDir(dir)) {
      const i = parseShadowWalName(e.name);
      if (i === undefined || i >= keepFrom) continue;
      const path = `${dir}/${e.name}`;
      try {
        const size = Deno.statSync(path).size;
        await Deno.remove(path);
        this.#bytes -= size;
      } catch { /* gone already */ }
    }
    if (gen === this.#generation) this.#cleanedBelow = keepFrom;
  }
}

/** True if both byte arrays hold the same bytes. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The two frames {@linkcode ShadowWal.lastFrameMatches} compares, for every database of the
 * process: it runs on every sync, synchronously, so one buffer serves them all.
 */
const frameScratch = new Scratch(2 * walFrameSize(65536));

/** What {@linkcode scanFile} found. */
interface Scan {
  /** End of the last valid commit. */
  end: number;
  /** Running checksum there. */
  checksum: [number, number];
  /** End of the valid frames, committed or not (a transaction being written). */
  validTo: number;
  /** Running checksum there. */
  validChecksum: [number, number];
  /** The scan's buffer, free once the scan returns (the copy reuses it). */
  buf: Uint8Array;
  /** `buf` starts with the file's bytes from the scan's start up to here (the start if not). */
  keptTo: number;
}

/**
 * Scans frames of `file` from `start` (a frame boundary) to `size`, returning the end of the
 * last valid commit and the checksum there. Reads grow from 16 frames (after a WAL restart
 * the file keeps its old size, so most of it is stale and never needs reading) up to
 * {@linkcode SCAN_CHUNK}, all into one buffer taken from `scratch` (reset first): while what
 * was read fits in it, it is kept there to copy without reading it again.
 */
function scanFile(
  file: Deno.FsFile,
  start: number,
  size: number,
  header: WalHeader,
  seed: readonly [number, number],
  scratch: Scratch,
): Scan {
  const fs = walFrameSize(header.pageSize);
  const limit = frameAlign(size, header.pageSize);
  let sum: [number, number] = [seed[0], seed[1]];
  let end = start;
  let endSum: [number, number] = [seed[0], seed[1]];
  let validTo = start;
  scratch.reset();
  if (start + fs > limit) {
    return {
      end,
      checksum: endSum,
      validTo,
      validChecksum: sum,
      buf: new Uint8Array(0),
      keptTo: start,
    };
  }
  const maxChunk = scanChunk(fs);
  const buf = scratch.take(Math.min(maxChunk, limit - start));
  let chunk = Math.min(16 * fs, buf.length);
  let off = start;
  let at = 0; // where the next read lands in buf
  let keeping = true;
  let keptTo = start;
  while (off + fs <= limit) {
    let want = Math.min(chunk, limit - off);
    if (keeping && at + want > buf.length) {
      if (at < buf.length) want = buf.length - at; // fill the buffer before giving it up
      else keeping = false;
    }
    if (!keeping) at = 0;
    const n = readIntoSync(file, off, buf.subarray(at, at + want));
    const usable = buf.subarray(at, at + Math.floor(n / fs) * fs);
    if (usable.length === 0) break;
    if (keeping) keptTo = off + usable.length;
    const r = scanWalFrames(usable, header, sum);
    if (r.committedBytes > 0) {
      end = off + r.committedBytes;
      endSum = r.committedChecksum;
    }
    validTo = off + r.validFrames * fs;
    sum = r.checksum;
    if (r.stop !== "end") break;
    off += usable.length;
    if (keeping) at += usable.length;
    chunk = Math.min(chunk * 4, maxChunk);
  }
  return {
    end,
    checksum: endSum,
    validTo,
    validChecksum: sum,
    buf,
    keptTo: keeping ? keptTo : start,
  };
}

/** Bytes of whole frames of size `frameSize` a WAL read takes at most. */
function scanChunk(frameSize: number): number {
  return Math.max(1, Math.floor(SCAN_CHUNK / frameSize)) * frameSize;
}
