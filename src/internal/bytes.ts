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
      this.#buf = new Uint8Array(Math.max(n, 2 * this.#buf.length, 65536));
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
