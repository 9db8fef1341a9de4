/**
 * Byte-array helpers.
 *
 * @module
 */

/** Joins byte arrays into one. */
export function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * Smallest buffer a {@linkcode Scratch} allocates. Every database and replica of a daemon
 * keeps one, so this is memory per database: a commit of a frame or two fits in 8 KiB, which
 * the buffer reaches on its first growth (64 KiB buffers cost ~9 MiB of RSS at 200 databases).
 */
const MIN_BYTES = 4096;

/** The least power of two that is at least `n` (n ≥ 1). */
function nextPowerOfTwo(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, n)));
}

/**
 * A reusable buffer handed out as views, so that reads repeated every few milliseconds (the
 * WAL bytes of each sync) do not leave a trail of dead buffers: V8 frees those only at its
 * next garbage collection, which a small JS heap rarely needs, and they added up to ~35 MiB
 * of RSS under a burst of commits.
 *
 * Views taken since the last {@linkcode Scratch.reset} never overlap; a reset allows the
 * next takes to reuse the memory, so the caller must be done with the earlier views.
 */
export class Scratch {
  #buf = new Uint8Array(0);
  #used = 0;

  /** @param keep the largest buffer kept across resets; a larger one is dropped. */
  constructor(readonly keep: number) {}

  /** A view of `n` bytes (contents unspecified), valid until the caller's next reset. */
  take(n: number): Uint8Array {
    if (this.#used + n > this.#buf.length) {
      // Earlier views keep the old buffer alive for as long as they need it.
      this.#buf = new Uint8Array(Math.max(nextPowerOfTwo(n), 2 * this.#buf.length, MIN_BYTES));
      this.#used = 0;
    }
    const view = this.#buf.subarray(this.#used, this.#used + n);
    this.#used += n;
    return view;
  }

  /** Lets the next takes reuse the memory of all earlier views. */
  reset(): void {
    this.#used = 0;
    if (this.#buf.length > this.keep) this.#buf = new Uint8Array(0);
  }
}

/** Buffers a producer handed off whole: the consumer frees each once it has written it. */
const handedOff = new WeakSet<ArrayBufferLike>();

/**
 * Marks `chunk` (which must be the only view of its whole buffer, and which the producer
 * keeps no reference to) as one its consumer may free as soon as it is done with it. A
 * stream's chunks otherwise live until V8's next collection, which large external buffers
 * do not hasten much: a 256 MiB segment streamed through LZ4 left ~50 MiB of dead blocks.
 */
export function handOff(chunk: Uint8Array): Uint8Array {
  if (chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength) {
    handedOff.add(chunk.buffer);
  }
  return chunk;
}

/** Frees `chunk`'s memory now if its producer handed it off (see {@linkcode handOff}). */
export function releaseHandedOff(chunk: Uint8Array): void {
  const buffer = chunk.buffer;
  if (!handedOff.delete(buffer)) return;
  (buffer as ArrayBuffer).transfer(0);
}
