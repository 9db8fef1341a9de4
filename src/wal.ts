/**
 * SQLite write-ahead log format: header and frame decoding, the WAL checksum, frame
 * scanning and size arithmetic. Pure: no I/O, no clock.
 *
 * Layout (all integers big-endian), from https://www.sqlite.org/fileformat.html#wal_file_format:
 * a 32-byte header (magic, version, page size, checkpoint sequence, salt-1, salt-2,
 * checksum-1, checksum-2) followed by frames of a 24-byte frame header (page number,
 * commit size, salt-1, salt-2, checksum-1, checksum-2) and one page image.
 *
 * @module
 */

/** Size of the WAL file header in bytes. */
export const WAL_HEADER_SIZE = 32;
/** Size of a WAL frame header in bytes. */
export const WAL_FRAME_HEADER_SIZE = 24;
/** WAL magic when checksums are computed over little-endian words. */
export const WAL_MAGIC_LE = 0x377f0682;
/** WAL magic when checksums are computed over big-endian words. */
export const WAL_MAGIC_BE = 0x377f0683;
/** The only WAL format version SQLite writes. */
export const WAL_VERSION = 3007000;

/** A running WAL checksum: the two 32-bit sums. */
export type WalChecksum = readonly [number, number];

/** Decoded WAL file header. */
export interface WalHeader {
  /** True when the magic says checksums read words little-endian (0x377f0682). */
  littleEndian: boolean;
  version: number;
  pageSize: number;
  checkpointSeq: number;
  salt1: number;
  salt2: number;
  checksum1: number;
  checksum2: number;
}

/** Decoded WAL frame header. */
export interface WalFrameHeader {
  pgno: number;
  /** Database size in pages after this commit, or 0 when the frame is not a commit frame. */
  commit: number;
  salt1: number;
  salt2: number;
  checksum1: number;
  checksum2: number;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Returns true if `n` is a page size SQLite can use (a power of two from 512 to 65536). */
export function isValidPageSize(n: number): boolean {
  return Number.isInteger(n) && n >= 512 && n <= 65536 && (n & (n - 1)) === 0;
}

/**
 * Decodes the 32-byte WAL header at the start of `bytes`.
 *
 * @throws {SyntaxError} If fewer than 32 bytes are given, the magic is not a WAL magic,
 * or the page size is invalid.
 */
export function decodeWalHeader(bytes: Uint8Array): WalHeader {
  if (bytes.length < WAL_HEADER_SIZE) {
    throw new SyntaxError(
      `Cannot decode WAL header: need ${WAL_HEADER_SIZE} bytes, got ${bytes.length}`,
    );
  }
  const v = view(bytes);
  const magic = v.getUint32(0);
  if (magic !== WAL_MAGIC_LE && magic !== WAL_MAGIC_BE) {
    throw new SyntaxError(`Cannot decode WAL header: bad magic 0x${magic.toString(16)}`);
  }
  const pageSize = v.getUint32(8);
  if (!isValidPageSize(pageSize)) {
    throw new SyntaxError(`Cannot decode WAL header: invalid page size ${pageSize}`);
  }
  return {
    littleEndian: magic === WAL_MAGIC_LE,
    version: v.getUint32(4),
    pageSize,
    checkpointSeq: v.getUint32(12),
    salt1: v.getUint32(16),
    salt2: v.getUint32(20),
    checksum1: v.getUint32(24),
    checksum2: v.getUint32(28),
  };
}

/** Encodes a WAL header, computing its checksum; the checksum fields of `h` are ignored. */
export function encodeWalHeader(h: Omit<WalHeader, "checksum1" | "checksum2">): Uint8Array {
  const out = new Uint8Array(WAL_HEADER_SIZE);
  const v = view(out);
  v.setUint32(0, h.littleEndian ? WAL_MAGIC_LE : WAL_MAGIC_BE);
  v.setUint32(4, h.version);
  v.setUint32(8, h.pageSize);
  v.setUint32(12, h.checkpointSeq);
  v.setUint32(16, h.salt1);
  v.setUint32(20, h.salt2);
  const [c1, c2] = walChecksum(h.littleEndian, out.subarray(0, 24), [0, 0]);
  v.setUint32(24, c1);
  v.setUint32(28, c2);
  return out;
}

/** Returns true if the header's stored checksum matches its first 24 bytes. */
export function isWalHeaderChecksumValid(bytes: Uint8Array): boolean {
  const h = decodeWalHeader(bytes);
  const [c1, c2] = walChecksum(h.littleEndian, bytes.subarray(0, 24), [0, 0]);
  return c1 === h.checksum1 && c2 === h.checksum2;
}

/**
 * Returns true if `bytes` starts with a well-formed WAL header whose checksum matches;
 * false (never throws) for anything else.
 */
export function isValidWalHeader(bytes: Uint8Array): boolean {
  try {
    return isWalHeaderChecksumValid(bytes);
  } catch {
    return false;
  }
}

/** Decodes a 24-byte frame header. @throws {SyntaxError} If fewer than 24 bytes are given. */
export function decodeWalFrameHeader(bytes: Uint8Array): WalFrameHeader {
  if (bytes.length < WAL_FRAME_HEADER_SIZE) {
    throw new SyntaxError(
      `Cannot decode WAL frame header: need ${WAL_FRAME_HEADER_SIZE} bytes, got ${bytes.length}`,
    );
  }
  const v = view(bytes);
  return {
    pgno: v.getUint32(0),
    commit: v.getUint32(4),
    salt1: v.getUint32(8),
    salt2: v.getUint32(12),
    checksum1: v.getUint32(16),
    checksum2: v.getUint32(20),
  };
}

/**
 * Computes SQLite's WAL checksum of `data` (a multiple of 8 bytes), continuing from `seed`.
 *
 * Words are read in the byte order the WAL magic names; sums wrap at 32 bits.
 *
 * @throws {RangeError} If `data.length` is not a multiple of 8.
 */
export function walChecksum(
  littleEndian: boolean,
  data: Uint8Array,
  seed: WalChecksum,
): [number, number] {
  if (data.length % 8 !== 0) {
    throw new RangeError(`Cannot checksum ${data.length} bytes: not a multiple of 8`);
  }
  let s0 = seed[0] | 0;
  let s1 = seed[1] | 0;
  const n = data.length;
  if (littleEndian && data.byteOffset % 4 === 0) {
    // Fast path: aligned native little-endian words.
    const w = new Uint32Array(data.buffer, data.byteOffset, n >>> 2);
    for (let i = 0; i < w.length; i += 2) {
      s0 = (s0 + w[i] + s1) | 0;
      s1 = (s1 + w[i + 1] + s0) | 0;
    }
  } else {
    const v = view(data);
    for (let i = 0; i < n; i += 8) {
      s0 = (s0 + v.getUint32(i, littleEndian) + s1) | 0;
      s1 = (s1 + v.getUint32(i + 4, littleEndian) + s0) | 0;
    }
  }
  return [s0 >>> 0, s1 >>> 0];
}

/** Bytes of one copy of the wal-index header at the start of the `-shm` file (two copies follow each other). */
export const WAL_INDEX_HEADER_SIZE = 48;

/** What {@linkcode decodeWalIndexHeader} reads from the `-shm` file. */
export interface WalIndexHeader {
  /** Frames of the current WAL life that are committed (SQLite's `mxFrame`). */
  mxFrame: number;
  /** The life's salts as the WAL header stores them (its bytes 16 to 24). */
  salt: Uint8Array;
}

const NATIVE_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Decodes the wal-index header SQLite keeps at the start of the `-shm` file, as a reader
 * does without its locks: both copies must be equal, initialised and carry a valid
 * checksum (SQLite writes them in the machine's byte order), else the header was being
 * written and undefined is returned (try again).
 */
export function decodeWalIndexHeader(bytes: Uint8Array): WalIndexHeader | undefined {
  const n = WAL_INDEX_HEADER_SIZE;
  if (bytes.length < 2 * n) return undefined;
  const a = bytes.subarray(0, n), b = bytes.subarray(n, 2 * n);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return undefined;
  const v = view(a);
  if (v.getUint32(0, NATIVE_LITTLE_ENDIAN) !== 3007000 || a[12] !== 1) return undefined;
  const sum = walChecksum(NATIVE_LITTLE_ENDIAN, a.slice(0, 40), [0, 0]);
  if (
    sum[0] !== v.getUint32(40, NATIVE_LITTLE_ENDIAN) ||
    sum[1] !== v.getUint32(44, NATIVE_LITTLE_ENDIAN)
  ) return undefined;
  return { mxFrame: v.getUint32(16, NATIVE_LITTLE_ENDIAN), salt: a.slice(32, 40) };
}

/** Size in bytes of one frame (frame header plus page) for `pageSize`. */
export function walFrameSize(pageSize: number): number {
  return WAL_FRAME_HEADER_SIZE + pageSize;
}

/** Size in bytes of a WAL holding `frames` frames: `32 + frames × (24 + pageSize)`. */
export function calcWalSize(pageSize: number, frames: number): number {
  return WAL_HEADER_SIZE + frames * walFrameSize(pageSize);
}

/** Rounds `size` down to a whole number of frames (0 if it holds no full header). */
export function frameAlign(size: number, pageSize: number): number {
  if (size < WAL_HEADER_SIZE) return 0;
  const fs = walFrameSize(pageSize);
  return WAL_HEADER_SIZE + Math.floor((size - WAL_HEADER_SIZE) / fs) * fs;
}

/** Why {@linkcode scanWalFrames} stopped. */
export type WalScanStop = "end" | "salt" | "checksum";

/** Result of {@linkcode scanWalFrames}. */
export interface WalScanResult {
  /** Bytes of `data`, from its start, up to and including the last valid commit frame. */
  committedBytes: number;
  /** Running checksum after the last valid commit frame (the seed if there was none). */
  committedChecksum: [number, number];
  /** Database size in pages named by the last valid commit frame, or 0 if none. */
  commitSize: number;
  /** Number of whole frames that passed validation (committed or not). */
  validFrames: number;
  /** Running checksum after the last valid frame (to continue a scan in the next chunk). */
  checksum: [number, number];
  /** What ended the scan: the data ran out, a salt changed, or a checksum broke. */
  stop: WalScanStop;
}

/**
 * Validates consecutive frames in `data` (which starts on a frame boundary) against the
 * WAL header's salts and the checksum chain starting at `seed`, as SQLite's recovery does.
 *
 * Only frames up to the last commit frame count as committed: a transaction whose commit
 * frame is missing, or any frame after a broken checksum, is never included.
 */
export function scanWalFrames(
  data: Uint8Array,
  header: WalHeader,
  seed: WalChecksum,
): WalScanResult {
  const fs = walFrameSize(header.pageSize);
  const v = view(data);
  let sum: [number, number] = [seed[0], seed[1]];
  const result: WalScanResult = {
    committedBytes: 0,
    committedChecksum: [seed[0], seed[1]],
    commitSize: 0,
    validFrames: 0,
    checksum: [seed[0], seed[1]],
    stop: "end",
  };
  for (let off = 0; off + fs <= data.length; off += fs) {
    if (v.getUint32(off + 8) !== header.salt1 || v.getUint32(off + 12) !== header.salt2) {
      result.stop = "salt";
      return result;
    }
    sum = walChecksum(header.littleEndian, data.subarray(off, off + 8), sum);
    sum = walChecksum(
      header.littleEndian,
      data.subarray(off + WAL_FRAME_HEADER_SIZE, off + fs),
      sum,
    );
    if (sum[0] !== v.getUint32(off + 16) || sum[1] !== v.getUint32(off + 20)) {
      result.stop = "checksum";
      return result;
    }
    result.validFrames++;
    result.checksum = sum;
    const commit = v.getUint32(off + 4);
    if (commit !== 0) {
      result.committedBytes = off + fs;
      result.committedChecksum = [sum[0], sum[1]];
      result.commitSize = commit;
    }
  }
  return result;
}

/**
 * Returns the checksum stored in the last frame of a WAL prefix (`data` holds the header and
 * whole frames), i.e. the seed for validating the frames that follow it.
 */
export function lastChecksum(data: Uint8Array, pageSize: number): [number, number] {
  const v = view(data);
  if (data.length <= WAL_HEADER_SIZE) return [v.getUint32(24), v.getUint32(28)];
  const fs = walFrameSize(pageSize);
  const last = WAL_HEADER_SIZE + (Math.floor((data.length - WAL_HEADER_SIZE) / fs) - 1) * fs;
  return [v.getUint32(last + 16), v.getUint32(last + 20)];
}

/**
 * Returns true when `next` is the header SQLite writes when it restarts the WAL right after
 * the life described by `prev`: same format and page size and salt-1 + 1 (SQLite's
 * walRestartHdr). Any other change means at least one whole WAL life went by unseen.
 *
 * The checkpoint sequence is not compared: SQLite writes the restarting connection's own
 * counter (`Wal.nCkpt`, read from the file only at recovery), so it does not grow by one
 * when two connections take turns restarting the WAL. Salt-1 lives in the shared wal-index
 * header and grows by exactly one per restart, whichever connection restarts.
 */
export function isNextWalHeader(prev: WalHeader, next: WalHeader): boolean {
  return prev.littleEndian === next.littleEndian &&
    prev.pageSize === next.pageSize &&
    next.salt1 === ((prev.salt1 + 1) >>> 0);
}

/**
 * Returns true when `next` is the header SQLite writes into an empty WAL file (after a
 * TRUNCATE checkpoint) from a connection that never restarted a WAL itself: its checkpoint
 * sequence is 0, and SQLite then draws new random salts (sqlite3WalFrames) instead of
 * salt-1 + 1, so the salts cannot tell how many lives went by. Same format and page size.
 */
export function isFreshWalHeader(prev: WalHeader, next: WalHeader): boolean {
  return prev.littleEndian === next.littleEndian &&
    prev.pageSize === next.pageSize &&
    next.checkpointSeq === 0;
}

/** SQLite database file header magic, `"SQLite format 3\0"`. */
export const DB_HEADER_MAGIC = "SQLite format 3\0";

/**
 * Reads the page size from a database file header (the first 100 bytes of page 1).
 *
 * @throws {SyntaxError} If the bytes are not a SQLite database header.
 */
export function decodeDbPageSize(bytes: Uint8Array): number {
  if (bytes.length < 100) {
    throw new SyntaxError(`Cannot decode database header: need 100 bytes, got ${bytes.length}`);
  }
  const magic = new TextDecoder().decode(bytes.subarray(0, 16));
  if (magic !== DB_HEADER_MAGIC) {
    throw new SyntaxError("Cannot decode database header: not a SQLite 3 database");
  }
  const raw = view(bytes).getUint16(16);
  const pageSize = raw === 1 ? 65536 : raw;
  if (!isValidPageSize(pageSize)) {
    throw new SyntaxError(`Cannot decode database header: invalid page size ${raw}`);
  }
  return pageSize;
}
