/**
 * Parallel LZ4 frame decoding: independent blocks are decoded by a pool of Workers while
 * the calling thread parses the frame, hashes the decoded blocks in order for the content
 * checksum and hands them on. Worth it for large objects only (a Worker takes ~20 ms to
 * start); frames with linked blocks are decoded serially.
 *
 * @module
 */
import { Lz4FrameDecoder, Lz4FrameReader, type Lz4RawBlock, Xxh32 } from "../lz4.ts";
import type { Lz4WorkerRequest, Lz4WorkerResponse } from "./lz4_worker.ts";

/**
 * Workers a pool starts by default: one per logical CPU but one, at most 8. The calling
 * thread keeps a CPU busy reading, hashing and writing (on 2 CPUs, 1 Worker beats 2).
 */
export function defaultLz4Workers(): number {
  return Math.max(1, Math.min(8, (navigator.hardwareConcurrency || 1) - 1));
}

interface Pending {
  resolve(out: Uint8Array): void;
  reject(err: Error): void;
}

/** A fixed set of Workers decoding independent LZ4 blocks; {@linkcode terminate} it after use. */
export class Lz4Pool implements Disposable {
  #workers: Worker[] = [];
  #load: number[] = [];
  #pending = new Map<number, { pending: Pending; worker: number }>();
  #nextId = 0;
  #closed = false;

  /** Starts `size` Workers. */
  constructor(size: number = defaultLz4Workers()) {
    for (let i = 0; i < Math.max(1, size); i++) {
      const w = new Worker(new URL("./lz4_worker.ts", import.meta.url).href, { type: "module" });
      w.onmessage = (e: MessageEvent<Lz4WorkerResponse>) => this.#onMessage(i, e.data);
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        this.#fail(new Error(`LZ4 worker failed: ${e.message}`));
      };
      this.#workers.push(w);
      this.#load.push(0);
    }
  }

  /** Number of Workers. */
  get size(): number {
    return this.#workers.length;
  }

  /**
   * Decodes one independent block held in `framed` after 4 spare bytes; `framed` must span
   * its whole buffer, which is transferred (unusable afterwards).
   *
   * @throws {SyntaxError} If the block is malformed or decodes to more than `maxSize` bytes.
   */
  decode(framed: Uint8Array, maxSize: number, sizeHint?: number): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new Error("LZ4 worker pool is terminated"));
    if (framed.byteOffset !== 0 || framed.byteLength !== framed.buffer.byteLength) {
      framed = framed.slice();
    }
    let worker = 0;
    for (let i = 1; i < this.#load.length; i++) if (this.#load[i] < this.#load[worker]) worker = i;
    const id = this.#nextId++;
    const buffer = framed.buffer as ArrayBuffer;
    const req: Lz4WorkerRequest = { id, buffer, maxSize, sizeHint };
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#pending.set(id, { pending: { resolve, reject }, worker });
      this.#load[worker]++;
      this.#workers[worker].postMessage(req, [buffer]);
    });
  }

  #onMessage(worker: number, res: Lz4WorkerResponse): void {
    const entry = this.#pending.get(res.id);
    if (!entry) return;
    this.#pending.delete(res.id);
    this.#load[worker]--;
    if (res.ok) {
      entry.pending.resolve(new Uint8Array(res.buffer, res.byteOffset, res.byteLength));
    } else {
      const options = res.cause !== undefined ? { cause: res.cause } : undefined;
      entry.pending.reject(
        res.name === "SyntaxError"
          ? new SyntaxError(res.message, options)
          : new Error(res.message, options),
      );
    }
  }

  #fail(err: Error): void {
    for (const { pending } of this.#pending.values()) pending.reject(err);
    this.#pending.clear();
    this.#load.fill(0);
  }

  /** Stops every Worker; blocks still being decoded are rejected. */
  terminate(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#workers) w.terminate();
    this.#fail(new Error("LZ4 worker pool is terminated"));
  }

  [Symbol.dispose](): void {
    this.terminate();
  }
}

/** Options of {@linkcode lz4DecompressParallel}. */
export interface Lz4ParallelOptions {
  /** Workers to start. @default {defaultLz4Workers()} */
  workers?: number;
}

/**
 * Decodes exactly one LZ4 frame from `source`, yielding its decoded blocks in order. It
 * checks everything {@linkcode Lz4FrameDecoder} checks (the content checksum included);
 * the Workers it starts are terminated when the iteration ends, however it ends.
 *
 * @throws {SyntaxError} If the source is not exactly one valid frame.
 */
export async function* lz4DecompressParallel(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  options: Lz4ParallelOptions = {},
): AsyncGenerator<Uint8Array, void, undefined> {
  const reader = new Lz4FrameReader({ reserve: 4 });
  const hash = new Xxh32();
  let total = 0;
  let pool: Lz4Pool | undefined;
  const inflight: Promise<Uint8Array>[] = [];
  const seen: Uint8Array[] = []; // chunks fed before the header was read
  let serial: Lz4FrameDecoder | undefined;
  const take = async (): Promise<Uint8Array> => {
    const out = await inflight.shift()!;
    hash.update(out);
    total += out.length;
    return out;
  };
  try {
    for await (const chunk of source) {
      if (serial) {
        yield* serial.push(chunk);
        continue;
      }
      if (!reader.started) seen.push(chunk.slice());
      const blocks: Lz4RawBlock[] = reader.push(chunk);
      if (reader.started && seen.length > 0) {
        if (reader.linked) {
          serial = new Lz4FrameDecoder();
          for (const c of seen) yield* serial.push(c);
        }
        seen.length = 0;
        if (serial) continue;
      }
      for (const block of blocks) {
        if (block.stored) {
          inflight.push(Promise.resolve(block.data));
        } else {
          pool ??= new Lz4Pool(options.workers);
          const max = reader.maxBlockSize;
          const framed = new Uint8Array(block.data.buffer, 0, block.data.length + 4);
          const p = pool.decode(framed, max, block.last === false ? max : undefined);
          p.catch(() => {}); // awaited in order below; do not report it unhandled meanwhile
          inflight.push(p);
        }
        // Keep every Worker busy, with a bounded number of decoded blocks held in memory.
        while (inflight.length > 2 * (pool?.size ?? 1)) yield await take();
      }
    }
    if (serial) {
      serial.finish();
      return;
    }
    while (inflight.length > 0) yield await take();
    reader.verify(hash.digest(), total);
  } finally {
    pool?.terminate();
  }
}
