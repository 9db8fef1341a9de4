/**
 * A replica in a local directory, laid out exactly as Litestream v0.3.13 lays it out.
 * Every write goes to `<name>.tmp`, is fsynced, then renamed; the file's mtime is its
 * creation time (v0.3.13 reads point-in-time history from it, so we never touch mtimes).
 *
 * @module
 */
import {
  generationKey,
  GENERATIONS_DIR,
  isGenerationName,
  parseSnapshotName,
  parseWalSegmentName,
  snapshotKey,
  snapshotsKey,
  walSegmentKey,
  walSegmentsKey,
} from "../layout.ts";
import { formatPos, type Pos } from "../pos.ts";
import type {
  Body,
  CallOptions,
  ReplicaClient,
  SnapshotInfo,
  SnapshotKey,
  WalSegmentInfo,
} from "../replica_client.ts";
import { absPath, dirname, fsyncDir, mkdirp, writeFileAtomic } from "../internal/fs.ts";

/** Replica client for a directory on a local (or mounted) file system. */
export class FileReplicaClient implements ReplicaClient {
  readonly type = "file";
  /** Absolute root directory of the replica. */
  readonly root: string;
  #dirs = new Map<string, Promise<void>>();

  constructor(root: string) {
    this.root = absPath(root);
  }

  get location(): string {
    return this.root;
  }

  #path(key: string): string {
    return `${this.root}/${key}`;
  }

  async generations(options: CallOptions = {}): Promise<string[]> {
    options.signal?.throwIfAborted();
    const out: string[] = [];
    try {
      for await (const e of Deno.readDir(this.#path(GENERATIONS_DIR))) {
        if (e.isDirectory && isGenerationName(e.name)) out.push(e.name);
      }
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return [];
      throw new Error(`Cannot list generations in "${this.root}"`, { cause: err });
    }
    return out.sort();
  }

  async *snapshots(generation: string, options: CallOptions = {}): AsyncIterable<SnapshotInfo> {
    options.signal?.throwIfAborted();
    const dir = this.#path(snapshotsKey(generation));
    for await (const { name, info } of listDir(dir, options)) {
      const index = parseSnapshotName(name);
      if (index === undefined) continue;
      yield { generation, index, size: info.size, createdAt: info.mtime ?? new Date(0) };
    }
  }

  async writeSnapshot(
    key: SnapshotKey,
    data: Body,
    options: CallOptions = {},
  ): Promise<SnapshotInfo> {
    options.signal?.throwIfAborted();
    const name = snapshotKey(key.generation, key.index);
    const path = this.#path(name);
    const size = await this.#write(`snapshot "${name}"`, path, data, options.signal);
    return { ...key, size, createdAt: mtime(path) };
  }

  async openSnapshot(
    key: SnapshotKey,
    options: CallOptions = {},
  ): Promise<ReadableStream<Uint8Array>> {
    options.signal?.throwIfAborted();
    return await openReadable(this.#path(snapshotKey(key.generation, key.index)), "snapshot");
  }

  async deleteSnapshot(key: SnapshotKey, options: CallOptions = {}): Promise<void> {
    options.signal?.throwIfAborted();
    await removeIfExists(this.#path(snapshotKey(key.generation, key.index)));
  }

  async *walSegments(generation: string, options: CallOptions = {}): AsyncIterable<WalSegmentInfo> {
    options.signal?.throwIfAborted();
    const dir = this.#path(walSegmentsKey(generation));
    for await (const { name, info } of listDir(dir, options)) {
      const p = parseWalSegmentName(name);
      if (p === undefined) continue;
      yield { generation, ...p, size: info.size, createdAt: info.mtime ?? new Date(0) };
    }
  }

  async writeWalSegment(pos: Pos, data: Body, options: CallOptions = {}): Promise<WalSegmentInfo> {
    options.signal?.throwIfAborted();
    const path = this.#path(walSegmentKey(pos.generation, pos.index, pos.offset));
    const size = await this.#write(`WAL segment ${formatPos(pos)}`, path, data, options.signal);
    return { ...pos, size, createdAt: mtime(path) };
  }

  async openWalSegment(pos: Pos, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    options.signal?.throwIfAborted();
    return await openReadable(
      this.#path(walSegmentKey(pos.generation, pos.index, pos.offset)),
      "WAL segment",
    );
  }

  async deleteWalSegments(positions: Pos[], options: CallOptions = {}): Promise<void> {
    for (const pos of positions) {
      options.signal?.throwIfAborted();
      await removeIfExists(this.#path(walSegmentKey(pos.generation, pos.index, pos.offset)));
    }
  }

  async deleteGeneration(generation: string, options: CallOptions = {}): Promise<void> {
    options.signal?.throwIfAborted();
    if (!isGenerationName(generation)) {
      throw new RangeError(`Cannot delete generation "${generation}": not a generation name`);
    }
    try {
      await Deno.remove(this.#path(generationKey(generation)), { recursive: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }

  /**
   * Writes `data` to `path` atomically. File-system errors (a full disk, a read-only mount)
   * are wrapped to name what was written and where; NotFound and aborts pass through, as
   * they may come from the source stream.
   */
  async #write(what: string, path: string, data: Body, signal?: AbortSignal): Promise<number> {
    const dir = dirname(path);
    try {
      let ready = this.#dirs.get(dir);
      if (!ready) {
        // Once per directory, before any write into it (concurrent writers share this).
        ready = prepareDir(dir);
        this.#dirs.set(dir, ready);
        ready.catch(() => this.#dirs.delete(dir));
      }
      await ready;
      return await writeFileAtomic(path, data, { signal });
    } catch (err) {
      if (signal?.aborted || err instanceof Deno.errors.NotFound) throw err;
      throw new Error(`Cannot write ${what} in "${this.root}"`, { cause: err });
    }
  }
}

async function prepareDir(dir: string): Promise<void> {
  await mkdirp(dir);
  // New directories must themselves be durable before files in them are.
  await fsyncDir(dirname(dir));
  // A process killed mid-write leaves `<name>.tmp` behind: remove such leftovers.
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile && e.name.endsWith(".tmp")) await removeIfExists(`${dir}/${e.name}`);
  }
}

async function* listDir(
  dir: string,
  options: CallOptions,
): AsyncIterable<{ name: string; info: Deno.FileInfo }> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw new Error(`Cannot list "${dir}"`, { cause: err });
  }
  for (const e of entries) {
    options.signal?.throwIfAborted();
    if (!e.isFile) continue;
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(`${dir}/${e.name}`);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue; // deleted while listing
      throw err;
    }
    yield { name: e.name, info };
  }
}

function mtime(path: string): Date {
  return Deno.statSync(path).mtime ?? new Date();
}

async function openReadable(path: string, what: string): Promise<ReadableStream<Uint8Array>> {
  try {
    const file = await Deno.open(path, { read: true });
    return file.readable;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new Deno.errors.NotFound(`No ${what} at "${path}"`);
    }
    throw err;
  }
}

async function removeIfExists(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}
