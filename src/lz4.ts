/**
 * LZ4 frame format (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md), as
 * Litestream v0.3.13 stores every snapshot and WAL segment: exactly one frame per object,
 * FLG 0x64 (version 1, independent blocks, content checksum, no block checksum), BD 0x70
 * (4 MiB blocks). Blocks are compressed by the `lz4-wasm` block codec; the frame, the
 * xxHash32 checksums and a small decoder for linked blocks are ours. Pure: no I/O.
 *
 * @module
 */
import * as wasm from "lz4-wasm";
import { concat, handOff } from "./internal/bytes.ts";

/** LZ4 frame magic number (little-endian on the wire). */
export const LZ4_FRAME_MAGIC = 0x184d2204;
/** Block size we write: 4 MiB, as pierrec/lz4 does by default. */
export const LZ4_BLOCK_SIZE = 4 << 20;

const FLG_WRITE = 0x64;
const BD_WRITE = 0x70;
const STORED_BIT = 0x80000000;

// ---------------------------------------------------------------------------------------
// xxHash32

const P1 = 2654435761;
const P2 = 2246822519;
const P3 = 3266489917;
const P4 = 668265263;
const P5 = 374761393;

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

/** Incremental xxHash32, as used for LZ4 header and content checksums. */
export class Xxh32 {
  #v1: number;
  #v2: number;
  #v3: number;
  #v4: number;
  #seed: number;
  #total = 0;
  #buf = new Uint8Array(16);
  #bufLen = 0;

  constructor(seed = 0) {
    this.#seed = seed | 0;
    this.#v1 = (this.#seed + P1 + P2) | 0;
    this.#v2 = (this.#seed + P2) | 0;
    this.#v3 = this.#seed;
    this.#v4 = (this.#seed - P1) | 0;
  }

  /** Feeds `data` into the hash. */
  update(data: Uint8Array): this {
    this.#total += data.length;
    let i = 0;
    if (this.#bufLen > 0) {
      const take = Math.min(16 - this.#bufLen, data.length);
      this.#buf.set(data.subarray(0, take), this.#bufLen);
      this.#bufLen += take;
      i = take;
      if (this.#bufLen < 16) return this;
      this.#stripes(this.#buf, 0, 16);
      this.#bufLen = 0;
    }
    const end = i + Math.floor((data.length - i) / 16) * 16;
    if (end > i) this.#stripes(data, i, end);
    if (end < data.length) {
      this.#buf.set(data.subarray(end), 0);
      this.#bufLen = data.length - end;
    }
    return this;
  }

  #stripes(d: Uint8Array, start: number, end: number): void {
    const dv = new DataView(d.buffer, d.byteOffset, d.byteLength);
    let v1 = this.#v1, v2 = this.#v2, v3 = this.#v3, v4 = this.#v4;
    // xxHash32's round, written out: a replicator hashes a few segments a second, too little
    // for V8 to optimize the loop and inline calls (they took a third of its time).
    for (let i = start; i < end; i += 16) {
      v1 = (v1 + Math.imul(dv.getUint32(i, true), P2)) | 0;
      v1 = Math.imul((v1 << 13) | (v1 >>> 19), P1);
      v2 = (v2 + Math.imul(dv.getUint32(i + 4, true), P2)) | 0;
      v2 = Math.imul((v2 << 13) | (v2 >>> 19), P1);
      v3 = (v3 + Math.imul(dv.getUint32(i + 8, true), P2)) | 0;
      v3 = Math.imul((v3 << 13) | (v3 >>> 19), P1);
      v4 = (v4 + Math.imul(dv.getUint32(i + 12, true), P2)) | 0;
      v4 = Math.imul((v4 << 13) | (v4 >>> 19), P1);
    }
    this.#v1 = v1;
    this.#v2 = v2;
    this.#v3 = v3;
    this.#v4 = v4;
  }

  /** Returns the hash of everything fed so far (does not reset). */
  digest(): number {
    let h: number;
    if (this.#total >= 16) {
      h = (rotl(this.#v1, 1) + rotl(this.#v2, 7) + rotl(this.#v3, 12) + rotl(this.#v4, 18)) | 0;
    } else {
      h = (this.#seed + P5) | 0;
    }
    h = (h + this.#total) | 0;
    const b = this.#buf;
    const dv = new DataView(b.buffer);
    let i = 0;
    for (; i + 4 <= this.#bufLen; i += 4) {
      h = Math.imul(rotl((h + Math.imul(dv.getUint32(i, true), P3)) | 0, 17), P4);
    }
    for (; i < this.#bufLen; i++) h = Math.imul(rotl((h + Math.imul(b[i], P5)) | 0, 11), P1);
    h ^= h >>> 15;
    h = Math.imul(h, P2);
    h ^= h >>> 13;
    h = Math.imul(h, P3);
    h ^= h >>> 16;
    return h >>> 0;
  }
}

/** One-shot xxHash32 of `data`. */
export function xxh32(data: Uint8Array, seed = 0): number {
  return new Xxh32(seed).update(data).digest();
}

// ---------------------------------------------------------------------------------------
// Blocks

/**
 * Returns the exact decoded size of a raw LZ4 block, walking its sequences.
 *
 * @throws {SyntaxError} If the block's sequences run past its end.
 */
export function blockDecodedSize(src: Uint8Array): number {
  let i = 0;
  let n = 0;
  const len = src.length;
  while (i < len) {
    const token = src[i++];
    let lit = token >>> 4;
    if (lit === 15) {
      let b: number;
      do {
        if (i >= len) throw new SyntaxError("Cannot decode LZ4 block: truncated literal length");
        b = src[i++];
        lit += b;
      } while (b === 255);
    }
    i += lit;
    n += lit;
    if (i > len) throw new SyntaxError("Cannot decode LZ4 block: literals run past its end");
    if (i === len) break; // the last sequence has literals only
    i += 2;
    let ml = token & 15;
    if (ml === 15) {
      let b: number;
      do {
        if (i >= len) throw new SyntaxError("Cannot decode LZ4 block: truncated match length");
        b = src[i++];
        ml += b;
      } while (b === 255);
    }
    n += ml + 4;
  }
  return n;
}

/** Literal runs and matches shorter than this are copied byte by byte. */
const SHORT_COPY_BYTES = 32;

/**
 * Decodes one LZ4 block into `dst` at `pos`; bytes of `dst` before `pos` serve as history
 * for matches (linked blocks). Returns the new end position.
 *
 * @throws {SyntaxError} If the block is malformed or does not fit in `dst`.
 */
export function decodeBlockInto(src: Uint8Array, dst: Uint8Array, pos: number): number {
  let i = 0;
  let o = pos;
  const len = src.length;
  const bad = (what: string) => new SyntaxError(`Cannot decode LZ4 block: ${what}`);
  while (i < len) {
    const token = src[i++];
    let lit = token >>> 4;
    if (lit === 15) {
      let b: number;
      do {
        if (i >= len) throw bad("truncated literal length");
        b = src[i++];
        lit += b;
      } while (b === 255);
    }
    if (i + lit > len || o + lit > dst.length) throw bad("literals out of bounds");
    // Short runs (most of them in text-like pages) copy faster byte by byte than through
    // a subarray and set().
    if (lit < SHORT_COPY_BYTES) {
      for (const end = i + lit; i < end;) dst[o++] = src[i++];
    } else {
      dst.set(src.subarray(i, i + lit), o);
      i += lit;
      o += lit;
    }
    if (i === len) break;
    if (i + 2 > len) throw bad("truncated match offset");
    const offset = src[i] | (src[i + 1] << 8);
    i += 2;
    if (offset === 0 || offset > o) throw bad(`invalid match offset ${offset}`);
    let ml = token & 15;
    if (ml === 15) {
      let b: number;
      do {
        if (i >= len) throw bad("truncated match length");
        b = src[i++];
        ml += b;
      } while (b === 255);
    }
    ml += 4;
    if (o + ml > dst.length) throw bad("match out of bounds");
    let m = o - offset;
    if (ml < SHORT_COPY_BYTES) {
      for (const end = o + ml; o < end;) dst[o++] = dst[m++];
    } else if (offset >= ml) {
      dst.copyWithin(o, m, m + ml);
      o += ml;
    } else if (offset === 1) {
      // A run of one byte (zeroed space in pages): LZ4's commonest long match.
      dst.fill(dst[m], o, o + ml);
      o += ml;
    } else {
      // A match overlapping its own output repeats the `offset` bytes before it: copy them
      // once, then double what is copied (each copy a whole number of periods).
      dst.copyWithin(o, m, o);
      let have = offset;
      while (have < ml) {
        const n = Math.min(have, ml - have);
        dst.copyWithin(o + have, o, o + n);
        have += n;
      }
      o += ml;
    }
  }
  return o;
}

/**
 * Decodes one independent LZ4 block held in `framed` after 4 spare bytes (which this
 * overwrites with the decoded size, as the `lz4-wasm` codec wants it). With `sizeHint`
 * (the frame's maximum block size for a block that is not the last: encoders fill every
 * block but the last), the block is decoded at once and only a block of another size
 * pays for the {@linkcode blockDecodedSize} pass and a second attempt.
 *
 * @throws {SyntaxError} If the block is malformed or decodes to more than `maxSize` bytes.
 */
export function decodeFramedBlock(
  framed: Uint8Array,
  maxSize: number,
  sizeHint?: number,
): Uint8Array {
  const view = new DataView(framed.buffer, framed.byteOffset, 4);
  if (sizeHint !== undefined && sizeHint <= maxSize) {
    view.setUint32(0, sizeHint, true);
    try {
      return wasm.decompress(framed);
    } catch {
      // Not that size (or corrupt): measure it, then decode once more to tell which.
    }
  }
  const size = blockDecodedSize(framed.subarray(4));
  if (size > maxSize) {
    throw new SyntaxError(`Cannot decode LZ4 block: decodes to ${size} bytes, max is ${maxSize}`);
  }
  view.setUint32(0, size, true);
  try {
    return wasm.decompress(framed);
  } catch (err) {
    throw new SyntaxError("Cannot decode LZ4 block", { cause: err });
  }
}

function decompressIndependentBlock(src: Uint8Array, maxSize: number, last?: boolean): Uint8Array {
  const framed = new Uint8Array(src.length + 4);
  framed.set(src, 4);
  return decodeFramedBlock(framed, maxSize, last === false ? maxSize : undefined);
}

// ---------------------------------------------------------------------------------------
// Frame encoder

/** Streaming LZ4 frame writer producing exactly one frame, the way v0.3.13 writes them. */
export class Lz4FrameEncoder {
  #buf: Uint8Array | undefined; // the partial block; allocated on need, grown by #reserve
  #len = 0;
  #hash = new Xxh32();
  #started = false;

  /** Feeds uncompressed bytes; returns the encoded bytes ready so far. */
  push(data: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (!this.#started) out.push(this.#header());
    this.#hash.update(data);
    let i = 0;
    while (i < data.length) {
      const take = Math.min(LZ4_BLOCK_SIZE - this.#len, data.length - i);
      if (this.#len === 0 && take === LZ4_BLOCK_SIZE) {
        out.push(...encodeBlock(data.subarray(i, i + take)));
      } else {
        this.#reserve(this.#len + take);
        this.#buf!.set(data.subarray(i, i + take), this.#len);
        this.#len += take;
        if (this.#len === LZ4_BLOCK_SIZE) {
          out.push(...encodeBlock(this.#buf!));
          this.#buf = undefined; // encodeBlock copied it; the next partial block starts small
          this.#len = 0;
        }
      }
      i += take;
    }
    return out;
  }

  /**
   * Makes `#buf` hold at least `n` bytes. It grows with need (doubling, up to one block), so
   * the short last block of a frame, or a frame pushed in small pieces, costs what it holds
   * rather than 4 MiB.
   */
  #reserve(n: number): void {
    const cur = this.#buf?.length ?? 0;
    if (n <= cur) return;
    const next = new Uint8Array(Math.min(LZ4_BLOCK_SIZE, Math.max(n, 2 * cur)));
    if (this.#buf) next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
  }

  /** Ends the frame: the last block, the end mark and the content checksum. */
  finish(): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (!this.#started) out.push(this.#header());
    if (this.#len > 0) out.push(...encodeBlock(this.#buf!.subarray(0, this.#len)));
    out.push(frameTrailer(this.#hash.digest()));
    return out;
  }

  #header(): Uint8Array {
    this.#started = true;
    return frameHeader();
  }
}

/**
 * One block as the frame stores it: its 4-byte size word, then its bytes, compressed unless
 * that would not save space. Always a new array, one per block.
 */
function encodeBlock(block: Uint8Array): Uint8Array[] {
  // lz4-wasm puts the decoded size in front of the compressed block: the size word's place.
  const out = wasm.compress(block);
  const size = out.length - 4;
  if (size < block.length) {
    new DataView(out.buffer, out.byteOffset, 4).setUint32(0, size, true);
    return [out];
  }
  const stored = new Uint8Array(4 + block.length);
  new DataView(stored.buffer).setUint32(0, (block.length | STORED_BIT) >>> 0, true);
  stored.set(block, 4);
  return [stored];
}

/** Compresses `data` into one LZ4 frame, encoding blocks straight from `data`. */
export function lz4Compress(data: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [frameHeader()];
  for (let i = 0; i < data.length; i += LZ4_BLOCK_SIZE) {
    parts.push(...encodeBlock(data.subarray(i, Math.min(data.length, i + LZ4_BLOCK_SIZE))));
  }
  parts.push(frameTrailer(xxh32(data)));
  return concat(parts);
}

/**
 * One frame of the contents of `frames`, in order, each made by {@linkcode lz4Compress}: their
 * blocks are copied, not decoded or encoded again. Blocks of separate frames reference
 * nothing before their own frame, so each decodes the same in the joined one (its blocks are
 * then shorter than the block size, which the format allows anywhere). `checksum` is the
 * xxHash32 of the joined contents (the frames' own checksums cannot be combined into it).
 *
 * @throws {SyntaxError} If a part does not start with our frame header or end with an end mark.
 */
export function joinLz4Frames(frames: Uint8Array[], checksum: number): Uint8Array {
  const header = frameHeader();
  const parts = [header];
  for (const f of frames) {
    const ok = f.length >= header.length + 8 && header.every((b, i) => f[i] === b) &&
      new DataView(f.buffer, f.byteOffset, f.byteLength).getUint32(f.length - 8, true) === 0;
    if (!ok) throw new SyntaxError("Cannot join LZ4 frames: a part is not a frame written here");
    parts.push(f.subarray(header.length, f.length - 8));
  }
  parts.push(frameTrailer(checksum));
  return concat(parts);
}

function frameHeader(): Uint8Array {
  const h = new Uint8Array(7);
  new DataView(h.buffer).setUint32(0, LZ4_FRAME_MAGIC, true);
  h[4] = FLG_WRITE;
  h[5] = BD_WRITE;
  h[6] = (xxh32(h.subarray(4, 6)) >>> 8) & 0xff;
  return h;
}

/** End mark and content checksum. */
function frameTrailer(checksum: number): Uint8Array {
  const tail = new Uint8Array(8);
  new DataView(tail.buffer).setUint32(4, checksum, true);
  return tail;
}

/** Options of {@linkcode lz4CompressReader}. */
export interface Lz4CompressReaderOptions {
  /**
   * How many bytes `read` will return in all, when known: an input smaller than a block is
   * then read into a buffer of its size instead of a block-sized one. A wrong hint costs a
   * copy, never a different frame.
   */
  sizeHint?: number;
}

/**
 * One LZ4 frame of everything `read` returns, as a stream. `read` fills the front of the
 * buffer it is given and returns the byte count, short only at the end (0 there). A single
 * buffer serves the whole input, since each block is compressed (into new arrays) before
 * the next read: a 128 MiB snapshot no longer leaves 128 MiB of dead buffers for the
 * garbage collector. The frame is the one {@linkcode lz4Compress} makes of the same bytes.
 */
export function lz4CompressReader(
  read: (buf: Uint8Array) => number,
  options: Lz4CompressReaderOptions = {},
): ReadableStream<Uint8Array> {
  const hint = options.sizeHint;
  const first = hint === undefined ? LZ4_BLOCK_SIZE : Math.min(LZ4_BLOCK_SIZE, hint + 1);
  const hash = new Xxh32();
  let buf: Uint8Array | undefined;
  let started = false;
  return new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (!started) {
        started = true;
        ctl.enqueue(frameHeader());
      }
      let b = buf ??= new Uint8Array(first);
      // One block per pull: read until the block is full or the input ends.
      let len = read(b);
      while (len === b.length && b.length < LZ4_BLOCK_SIZE) {
        // The hint was short: grow to a whole block, so blocks end where lz4Compress ends them.
        const next: Uint8Array = new Uint8Array(Math.min(LZ4_BLOCK_SIZE, 2 * b.length));
        next.set(b);
        b = buf = next;
        const n = read(b.subarray(len));
        if (n === 0) break;
        len += n;
      }
      if (len > 0) {
        const block = b.subarray(0, len);
        hash.update(block);
        // Each part owns its buffer; the consumer may free it once written (see handOff).
        for (const part of encodeBlock(block)) ctl.enqueue(handOff(part));
        return;
      }
      ctl.enqueue(frameTrailer(hash.digest()));
      buf = undefined;
      ctl.close();
    },
    cancel() {
      buf = undefined;
    },
  }, { highWaterMark: 0 });
}

// ---------------------------------------------------------------------------------------
// Frame decoder

/** FIFO of byte chunks from which exact lengths are taken without quadratic copying. */
class ByteQueue {
  #chunks: Uint8Array[] = [];
  #head = 0; // offset into chunks[0]
  length = 0;

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.length += chunk.length;
  }

  /** Takes `n` bytes; with `reserve`, always as a fresh copy after that many spare bytes. */
  take(n: number, reserve = 0): Uint8Array {
    if (n === 0) return reserve ? new Uint8Array(reserve).subarray(reserve) : new Uint8Array(0);
    const first = this.#chunks[0];
    if (!reserve && first.length - this.#head >= n) {
      const out = first.subarray(this.#head, this.#head + n);
      this.#head += n;
      if (this.#head === first.length) {
        this.#chunks.shift();
        this.#head = 0;
      }
      this.length -= n;
      return out;
    }
    const out = new Uint8Array(reserve + n).subarray(reserve);
    let o = 0;
    while (o < n) {
      const c = this.#chunks[0];
      const k = Math.min(n - o, c.length - this.#head);
      out.set(c.subarray(this.#head, this.#head + k), o);
      o += k;
      this.#head += k;
      if (this.#head === c.length) {
        this.#chunks.shift();
        this.#head = 0;
      }
    }
    this.length -= n;
    return out;
  }

  /** Little-endian 32-bit word at `i`; the queue must hold at least `i + 4` bytes. */
  peekUint32(i: number): number {
    return (this.peekByte(i) | (this.peekByte(i + 1) << 8) | (this.peekByte(i + 2) << 16) |
      (this.peekByte(i + 3) << 24)) >>> 0;
  }

  peekByte(i: number): number {
    let idx = this.#head + i;
    for (const c of this.#chunks) {
      if (idx < c.length) return c[idx];
      idx -= c.length;
    }
    return -1;
  }
}

const MAX_BLOCK_SIZES: Record<number, number> = {
  4: 64 << 10,
  5: 256 << 10,
  6: 1 << 20,
  7: 4 << 20,
};

/** One block of a frame as stored, handed out by {@linkcode Lz4FrameReader}. */
export interface Lz4RawBlock {
  /** The block's bytes: LZ4-compressed unless `stored`. */
  data: Uint8Array;
  /** Whether the block is stored uncompressed. */
  stored: boolean;
  /** Whether the frame's end mark follows; `undefined` when those bytes have not arrived. */
  last: boolean | undefined;
}

/** Options of {@linkcode Lz4FrameReader}. */
export interface Lz4FrameReaderOptions {
  /**
   * When set, every block's `data` is a fresh copy preceded by this many spare bytes in
   * its own buffer (which the caller may then transfer or fill). By default `data` may be
   * a view of the input.
   */
  reserve?: number;
}

/** Bytes of a frame header whose FLG byte is `flg`: with a content size, with a dictionary ID. */
function headerLength(flg: number): number {
  return 7 + ((flg & 0x08) ? 8 : 0) + ((flg & 0x01) ? 4 : 0);
}

/**
 * Streaming parser of exactly one LZ4 frame down to its raw blocks: checks the header,
 * block sizes and block checksums, and rejects anything after the frame's end. Decoding
 * the blocks is the caller's, and so is hashing the content for {@linkcode verify}.
 */
export class Lz4FrameReader {
  #q = new ByteQueue();
  #reserve: number;
  #state: "header" | "block" | "checksum" | "done" = "header";
  #flg = 0;
  #maxBlock = 0;
  #contentSize: number | undefined;
  #checksum: number | undefined;

  constructor(options: Lz4FrameReaderOptions = {}) {
    this.#reserve = options.reserve ?? 0;
  }

  /** Whether the header has been read. */
  get started(): boolean {
    return this.#state !== "header";
  }

  /** Whether blocks may refer back into earlier blocks (known once {@linkcode started}). */
  get linked(): boolean {
    return (this.#flg & 0x20) === 0;
  }

  /** The frame's maximum decoded block size (known once {@linkcode started}). */
  get maxBlockSize(): number {
    return this.#maxBlock;
  }

  /**
   * Bytes to feed before the frame's next part (header, block size, block, content checksum)
   * is complete; 0 once the frame has ended. A caller that reads exactly this much each time
   * feeds every block as one piece, which {@linkcode push} hands out without copying it.
   */
  get needed(): number {
    const q = this.#q.length;
    switch (this.#state) {
      case "header":
        return (q < 7 ? 7 : headerLength(this.#q.peekByte(4))) - q;
      case "block":
        return (q < 4 ? 4 : this.#blockEnd(this.#q.peekUint32(0))) - q;
      case "checksum":
        return this.#checksumBytes() - q;
      default:
        return 0;
    }
  }

  /** Bytes of the block whose size word is `word`: the word, the block, its checksum. */
  #blockEnd(word: number): number {
    return 4 + ((word & ~STORED_BIT) >>> 0) + ((this.#flg & 0x10) !== 0 ? 4 : 0);
  }

  /** Bytes of the content checksum after the end mark. */
  #checksumBytes(): number {
    return (this.#flg & 0x04) !== 0 ? 4 : 0;
  }

  /** Feeds encoded bytes; returns the blocks complete so far. */
  push(chunk: Uint8Array): Lz4RawBlock[] {
    if (this.#state === "done") {
      if (chunk.length > 0) throw new SyntaxError("Cannot decode LZ4 frame: data after frame end");
      return [];
    }
    this.#q.push(chunk);
    const out: Lz4RawBlock[] = [];
    for (;;) {
      if (this.#state === "header") {
        if (!this.#parseHeader()) break;
      } else if (this.#state === "block") {
        if (this.#q.length < 4) break;
        const word = this.#q.peekUint32(0);
        if (word === 0) {
          this.#q.take(4);
          this.#state = "checksum";
          continue;
        }
        const size = (word & ~STORED_BIT) >>> 0;
        if (size > this.#maxBlock) {
          throw new SyntaxError(
            `Cannot decode LZ4 frame: block of ${size} bytes exceeds ${this.#maxBlock}`,
          );
        }
        if (this.#q.length < this.#blockEnd(word)) break;
        this.#q.take(4);
        const data = this.#q.take(size, this.#reserve);
        if ((this.#flg & 0x10) !== 0) {
          const want = this.#q.peekUint32(0);
          this.#q.take(4);
          if (xxh32(data) !== want) {
            throw new SyntaxError("Cannot decode LZ4 frame: block checksum mismatch");
          }
        }
        const last = this.#q.length >= 4 ? this.#q.peekUint32(0) === 0 : undefined;
        out.push({ data, stored: (word & STORED_BIT) !== 0, last });
      } else if (this.#state === "checksum") {
        const need = this.#checksumBytes();
        if (this.#q.length < need) break;
        if (need) {
          this.#checksum = this.#q.peekUint32(0);
          this.#q.take(4);
        }
        this.#state = "done";
        if (this.#q.length > 0) {
          throw new SyntaxError("Cannot decode LZ4 frame: data after frame end");
        }
        break;
      } else break;
    }
    return out;
  }

  /**
   * Checks that a whole frame was read and that the decoded content matches its content
   * checksum and size.
   *
   * @param contentHash xxHash32 of the whole decoded content; `undefined` when the caller
   * validates the content by other means and did not hash it.
   * @param contentLength Length of the whole decoded content.
   * @throws {SyntaxError} If the frame is incomplete or the content does not match.
   */
  verify(contentHash: number | undefined, contentLength: number): void {
    if (this.#state !== "done") {
      throw new SyntaxError("Cannot decode LZ4 frame: unexpected end of data");
    }
    if (
      this.#checksum !== undefined && contentHash !== undefined && contentHash !== this.#checksum
    ) {
      throw new SyntaxError("Cannot decode LZ4 frame: content checksum mismatch");
    }
    if (this.#contentSize !== undefined && this.#contentSize !== contentLength) {
      throw new SyntaxError(
        `Cannot decode LZ4 frame: content size is ${contentLength}, header says ${this.#contentSize}`,
      );
    }
  }

  #parseHeader(): boolean {
    if (this.#q.length < 7) return false;
    const magic = this.#q.peekUint32(0);
    if (magic !== LZ4_FRAME_MAGIC) {
      throw new SyntaxError(`Cannot decode LZ4 frame: bad magic 0x${magic.toString(16)}`);
    }
    const flg = this.#q.peekByte(4);
    const len = headerLength(flg);
    if (this.#q.length < len) return false;
    const h = this.#q.take(len);
    if ((flg >>> 6) !== 1) throw new SyntaxError("Cannot decode LZ4 frame: unsupported version");
    if ((flg & 0x02) !== 0 || (h[5] & 0x8f) !== 0) {
      throw new SyntaxError("Cannot decode LZ4 frame: reserved bits set");
    }
    const max = MAX_BLOCK_SIZES[(h[5] >>> 4) & 7];
    if (max === undefined) throw new SyntaxError("Cannot decode LZ4 frame: invalid block size");
    if (((xxh32(h.subarray(4, len - 1)) >>> 8) & 0xff) !== h[len - 1]) {
      throw new SyntaxError("Cannot decode LZ4 frame: header checksum mismatch");
    }
    if (flg & 0x08) {
      const v = new DataView(h.buffer, h.byteOffset + 6, 8);
      this.#contentSize = v.getUint32(0, true) + v.getUint32(4, true) * 2 ** 32;
    }
    this.#flg = flg;
    this.#maxBlock = max;
    this.#state = "block";
    return true;
  }
}

/**
 * Streaming decoder of exactly one LZ4 frame. Accepts every valid frame (independent or
 * linked blocks, stored blocks, block checksums, content size); verifies every checksum
 * present; rejects anything after the frame's end.
 */
export class Lz4FrameDecoder {
  #reader = new Lz4FrameReader();
  #hash = new Xxh32();
  #total = 0;
  #history: Uint8Array | undefined; // linked blocks: last 64 KiB of output

  /** Feeds encoded bytes; returns the decoded bytes ready so far. */
  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (const block of this.#reader.push(chunk)) {
      if (this.#history === undefined && this.#reader.linked) this.#history = new Uint8Array(0);
      const decoded = block.stored ? this.#storedBlock(block.data) : this.#decodeBlock(block);
      this.#hash.update(decoded);
      this.#total += decoded.length;
      out.push(decoded);
    }
    return out;
  }

  /** Checks that a whole, valid frame was read. @throws {SyntaxError} If it was not. */
  finish(): void {
    this.#reader.verify(this.#hash.digest(), this.#total);
  }

  #storedBlock(data: Uint8Array): Uint8Array {
    const out = data.slice();
    // Linked blocks: later blocks may match into a stored block too.
    if (this.#history !== undefined) this.#history = keepHistory(this.#history, out);
    return out;
  }

  #decodeBlock(block: Lz4RawBlock): Uint8Array {
    const max = this.#reader.maxBlockSize;
    if (this.#history === undefined) return decompressIndependentBlock(block.data, max, block.last);
    // Linked blocks: matches may reach up to 64 KiB back into earlier output.
    const hist = this.#history;
    const dst = new Uint8Array(hist.length + max);
    dst.set(hist);
    const end = decodeBlockInto(block.data, dst, hist.length);
    const out = dst.slice(hist.length, end);
    this.#history = dst.slice(Math.max(0, end - 65536), end);
    return out;
  }
}

/** Returns the last 64 KiB of `hist` followed by `out`: the window linked blocks may match into. */
function keepHistory(hist: Uint8Array, out: Uint8Array): Uint8Array {
  if (out.length >= 65536) return out.slice(out.length - 65536);
  const keep = Math.min(hist.length, 65536 - out.length);
  const next = new Uint8Array(keep + out.length);
  next.set(hist.subarray(hist.length - keep));
  next.set(out, keep);
  return next;
}

/** Decompresses one whole LZ4 frame. @throws {SyntaxError} If `data` is not exactly one valid frame. */
export function lz4Decompress(data: Uint8Array): Uint8Array {
  const dec = new Lz4FrameDecoder();
  const out = dec.push(data);
  dec.finish();
  return concat(out.length ? out : [new Uint8Array(0)]);
}

/** A TransformStream that decodes exactly one LZ4 frame; it errors on anything invalid. */
export function lz4DecompressStream(): TransformStream<Uint8Array, Uint8Array> {
  const dec = new Lz4FrameDecoder();
  return new TransformStream({
    transform(chunk, ctl) {
      for (const b of dec.push(chunk)) ctl.enqueue(b);
    },
    flush() {
      dec.finish();
    },
  });
}
