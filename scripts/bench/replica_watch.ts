/**
 * Looking into a file replica from the benchmark's own process, the same way for both tools:
 * which snapshots and WAL segments exist, and when the row carrying marker `k` became
 * restorable.
 *
 * Both tools write every replica file to `<name>.tmp`, fsync it and rename it, so a file that
 * is listed is complete; a WAL segment holds only committed frames and segments are written
 * in order, so the first segment whose pages hold row `k`'s marker makes row `k` restorable.
 *
 * @module
 */
import { lz4Decompress } from "../../src/lz4.ts";
import { sleep } from "./util.ts";

const MARKER_HEAD = [0x4c, 0x53, 0x42, 0x3a]; // "LSB:"
const MARKER_DIGITS = 7;

/** The unique text stored in the row of commit `k`: `LSB:0000042;`. */
export function marker(k: number): string {
  return `LSB:${String(k).padStart(MARKER_DIGITS, "0")};`;
}

/** Every marker number found in `bytes` (page images hold row text uncompressed). */
export function findMarkers(bytes: Uint8Array): number[] {
  const out: number[] = [];
  const end = bytes.length - (MARKER_HEAD.length + MARKER_DIGITS + 1);
  let i = bytes.indexOf(MARKER_HEAD[0]);
  while (i >= 0 && i <= end) {
    if (
      bytes[i + 1] === MARKER_HEAD[1] && bytes[i + 2] === MARKER_HEAD[2] &&
      bytes[i + 3] === MARKER_HEAD[3] && bytes[i + 4 + MARKER_DIGITS] === 0x3b
    ) {
      let n = 0;
      let ok = true;
      for (let d = 0; d < MARKER_DIGITS; d++) {
        const c = bytes[i + 4 + d] - 0x30;
        if (c < 0 || c > 9) {
          ok = false;
          break;
        }
        n = n * 10 + c;
      }
      if (ok) out.push(n);
    }
    i = bytes.indexOf(MARKER_HEAD[0], i + 1);
  }
  return out;
}

/** Complete (renamed into place) files of a file replica, sorted by name. */
export interface ReplicaFiles {
  snapshots: string[];
  segments: string[];
}

/** Lists the snapshots and WAL segments of every generation under `root`. */
export async function listReplica(root: string): Promise<ReplicaFiles> {
  const out: ReplicaFiles = { snapshots: [], segments: [] };
  for (const gen of await names(`${root}/generations`)) {
    for (const s of await names(`${root}/generations/${gen}/snapshots`)) {
      if (s.endsWith(".snapshot.lz4")) {
        out.snapshots.push(`${root}/generations/${gen}/snapshots/${s}`);
      }
    }
    await walk(`${root}/generations/${gen}/wal`, out.segments);
  }
  out.snapshots.sort();
  out.segments.sort();
  return out;
}

/** The WAL index a segment's path names (`…/<gen>/wal/<index>_<offset>.wal.lz4`), with its generation. */
function indexOf(path: string): string {
  return path.slice(0, path.lastIndexOf("_"));
}

async function walk(dir: string, into: string[]): Promise<void> {
  for (const e of await entries(dir)) {
    if (e.isDirectory) await walk(`${dir}/${e.name}`, into);
    else if (e.name.endsWith(".wal.lz4")) into.push(`${dir}/${e.name}`);
  }
}

async function entries(dir: string): Promise<Deno.DirEntry[]> {
  try {
    return await Array.fromAsync(Deno.readDir(dir));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

async function names(dir: string): Promise<string[]> {
  return (await entries(dir)).map((e) => e.name);
}

/**
 * Records, for every marker, the first moment a WAL segment containing it was listed in the
 * replica. Runs in this process: woken by file-system events on the replica, with a short
 * poll as fallback, so a restoring process's start-up is never counted.
 */
export class MarkerWatcher {
  readonly root: string;
  /** Marker number → `performance.now()` when it was first seen in the replica. */
  readonly found = new Map<number, number>();
  /** Passes over the replica so far. */
  scans = 0;
  readonly #seen = new Set<string>();
  readonly #pollMs: number;
  #stopped = false;
  #loop?: Promise<void>;
  #watcher?: Deno.FsWatcher;
  #wake?: () => void;

  constructor(root: string, pollMs = 5) {
    this.root = root;
    this.#pollMs = pollMs;
  }

  /**
   * Reads the WAL segments not read before and records their markers. Our replicator merges
   * a run of segments into the first of them (same name) and deletes the others: when a
   * segment read before is gone, the others of its WAL index are read again.
   */
  async scan(): Promise<void> {
    const { segments } = await listReplica(this.root);
    const t = performance.now();
    this.scans++;
    const listed = new Set(segments);
    for (const path of [...this.#seen]) {
      if (listed.has(path)) continue;
      this.#seen.delete(path);
      const index = indexOf(path);
      for (const other of this.#seen) if (indexOf(other) === index) this.#seen.delete(other);
    }
    for (const path of segments) {
      if (this.#seen.has(path)) continue;
      let data: Uint8Array;
      try {
        data = lz4Decompress(await Deno.readFile(path));
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) continue; // removed by retention meanwhile
        throw new Error(`Cannot read WAL segment "${path}"`, { cause: err });
      }
      this.#seen.add(path);
      for (const k of findMarkers(data)) if (!this.found.has(k)) this.found.set(k, t);
    }
  }

  /** Starts watching in the background. */
  start(): void {
    try {
      this.#watcher = Deno.watchFs(this.root, { recursive: true });
      (async () => {
        for await (const _ of this.#watcher!) this.#wake?.();
      })().catch(() => {});
    } catch {
      // polling alone still works
    }
    this.#loop = (async () => {
      while (!this.#stopped) {
        await this.scan();
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
          sleep(this.#pollMs).then(resolve);
        });
        this.#wake = undefined;
      }
    })();
  }

  /** Waits until every marker in `ks` was seen, or `timeoutMs` passed; returns the missing. */
  async waitFor(ks: number[], timeoutMs: number): Promise<number[]> {
    const end = performance.now() + timeoutMs;
    for (;;) {
      const missing = ks.filter((k) => !this.found.has(k));
      if (missing.length === 0 || performance.now() > end) return missing;
      await sleep(20);
    }
  }

  /** Stops the background loop and the file-system watch. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    try {
      this.#watcher?.close();
    } catch {
      // already closed
    }
    await this.#loop;
  }
}

/**
 * Returns true once the replica holds marker `k` in one of its newest `newest` WAL segments
 * (a cheap catch-up check after a burst of writes, which always ends with marker `k`).
 */
export async function newestSegmentsHold(root: string, k: number, newest = 20): Promise<boolean> {
  const { segments } = await listReplica(root);
  for (const path of segments.slice(-newest).reverse()) {
    try {
      if (findMarkers(lz4Decompress(await Deno.readFile(path))).includes(k)) return true;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return false;
}
