/**
 * Names and paths of the replica layout shared with Litestream v0.3.13:
 * `generations/<gen>/snapshots/<%08x index>.snapshot.lz4` and
 * `generations/<gen>/wal/<%08x index>_<%08x offset>.wal.lz4`, and of the local shadow WAL
 * directory `.<db>-litestream/`. Pure.
 *
 * @module
 */
import { hex8 } from "./pos.ts";

export const SNAPSHOT_EXT = ".snapshot.lz4";
export const WAL_SEGMENT_EXT = ".wal.lz4";
export const GENERATIONS_DIR = "generations";

const GENERATION_REGEXP = /^[0-9a-f]{16}$/;
const SNAPSHOT_NAME_REGEXP = /^([0-9a-f]{8})\.snapshot\.lz4$/;
// v0.3.13 writes %08x, which grows past 8 digits above 4 GiB; read 8 to 16 digits (#1442).
const WAL_SEGMENT_NAME_REGEXP = /^([0-9a-f]{8})_([0-9a-f]{8,16})\.wal\.lz4$/;
const SHADOW_WAL_NAME_REGEXP = /^([0-9a-f]{8})\.wal$/;

/** Returns true if `name` is a generation name: 16 lowercase hex characters. */
export function isGenerationName(name: string): boolean {
  return GENERATION_REGEXP.test(name);
}

/**
 * Returns `generation` if it is a generation name, so that a key built from it cannot leave
 * the replica's layout.
 *
 * @throws {RangeError} If it is not 16 lowercase hex digits.
 */
export function checkGeneration(generation: string): string {
  if (!isGenerationName(generation)) {
    throw new RangeError(`Invalid generation name "${generation}": need 16 lowercase hex digits`);
  }
  return generation;
}

/** The last element of an object key or remote path (a trailing slash ignored). */
export function baseName(key: string): string {
  const trimmed = key.endsWith("/") ? key.slice(0, -1) : key;
  return trimmed.slice(trimmed.lastIndexOf("/") + 1);
}

/** Cleans a key prefix like Go's `path.Clean` and drops leading and trailing slashes. */
export function cleanKeyPath(path: string): string {
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return out.join("/");
}

/**
 * Cleans a slash path like Go's `path.Clean`, keeping it absolute or relative (a relative
 * one keeps its leading `..`), but returns `""` where Go returns `"."`.
 */
export function cleanPath(path: string): string {
  const absolute = path.startsWith("/");
  const out: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part !== "..") out.push(part);
    else if (out.length > 0 && out.at(-1) !== "..") out.pop();
    else if (!absolute) out.push("..");
  }
  return absolute ? `/${out.join("/")}` : out.join("/");
}

/** Returns a new random generation name. */
export function newGenerationName(): string {
  const b = crypto.getRandomValues(new Uint8Array(8));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export function formatSnapshotName(index: number): string {
  return `${hex8(index)}${SNAPSHOT_EXT}`;
}

/** Parses a snapshot file name; returns its index, or `undefined` if it is not one. */
export function parseSnapshotName(name: string): number | undefined {
  const m = SNAPSHOT_NAME_REGEXP.exec(name);
  return m ? parseInt(m[1], 16) : undefined;
}

export function formatWalSegmentName(index: number, offset: number): string {
  return `${hex8(index)}_${hex8(offset)}${WAL_SEGMENT_EXT}`;
}

/** Parses a WAL segment file name; returns index and offset, or `undefined`. */
export function parseWalSegmentName(name: string): { index: number; offset: number } | undefined {
  const m = WAL_SEGMENT_NAME_REGEXP.exec(name);
  return m ? { index: parseInt(m[1], 16), offset: parseInt(m[2], 16) } : undefined;
}

export function formatShadowWalName(index: number): string {
  return `${hex8(index)}.wal`;
}

export function parseShadowWalName(name: string): number | undefined {
  const m = SHADOW_WAL_NAME_REGEXP.exec(name);
  return m ? parseInt(m[1], 16) : undefined;
}

/** Joins key or path parts with "/", skipping empty parts (like Go's path.Join for keys). */
export function joinKey(...parts: string[]): string {
  return parts.filter((p) => p !== "").join("/").replace(/\/{2,}/g, "/");
}

/** Relative key of a generation's directory. */
export function generationKey(generation: string): string {
  return joinKey(GENERATIONS_DIR, generation);
}

export function snapshotsKey(generation: string): string {
  return joinKey(GENERATIONS_DIR, generation, "snapshots");
}

export function snapshotKey(generation: string, index: number): string {
  return joinKey(snapshotsKey(generation), formatSnapshotName(index));
}

export function walSegmentsKey(generation: string): string {
  return joinKey(GENERATIONS_DIR, generation, "wal");
}

export function walSegmentKey(generation: string, index: number, offset: number): string {
  return joinKey(walSegmentsKey(generation), formatWalSegmentName(index, offset));
}

/** Default local meta directory of a database: `<dir>/.<file>-litestream`. */
export function defaultMetaPath(dbPath: string): string {
  const i = dbPath.lastIndexOf("/");
  const dir = i >= 0 ? dbPath.slice(0, i) || "/" : ".";
  const file = i >= 0 ? dbPath.slice(i + 1) : dbPath;
  return `${dir === "/" ? "" : dir}/.${file}-litestream`;
}
