/**
 * Replication positions: a generation, a shadow WAL index and a byte offset in that WAL
 * file. Pure.
 *
 * @module
 */

/** A position in the shadow WAL of one generation. */
export interface Pos {
  /** 16 lowercase hex characters. */
  generation: string;
  /** Shadow WAL index (one per WAL life), at most {@linkcode MAX_INDEX}. */
  index: number;
  /** Byte offset within that WAL file, header included. */
  offset: number;
}

/** Highest WAL index v0.3.13 allows; reaching it forces a new generation. */
export const MAX_INDEX = 0x7fffffff;

/** Formats `pos` as Litestream logs it: `gen/%08x:offset` (offset in decimal). */
export function formatPos(pos: Pos): string {
  return `${pos.generation}/${hex8(pos.index)}:${pos.offset}`;
}

/** Whether `a` and `b` are both given and the same position. */
export function samePos(a: Pos | undefined, b: Pos | undefined): boolean {
  return !!a && !!b && a.generation === b.generation && a.index === b.index &&
    a.offset === b.offset;
}

/** Compares two positions of the same generation by index, then offset. */
export function comparePos(a: Pos, b: Pos): number {
  return a.index - b.index || a.offset - b.offset;
}

/** Formats `n` as lowercase hex, zero-padded to at least 8 digits (Go's `%08x`). */
export function hex8(n: number): string {
  return n.toString(16).padStart(8, "0");
}
