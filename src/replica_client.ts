/**
 * The storage seam: a {@linkcode ReplicaClient} stores snapshots and WAL segments (opaque,
 * already-compressed bytes) in the v0.3.13 layout and knows nothing about SQLite.
 *
 * @module
 */
import type { Pos } from "./pos.ts";
import type { ReplicaOperationMetrics } from "./metrics.ts";
import { concat } from "./internal/bytes.ts";

/** Options accepted by every {@linkcode ReplicaClient} call. */
export interface CallOptions {
  /** Aborts the call; the promise rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Names one snapshot. */
export interface SnapshotKey {
  generation: string;
  index: number;
}

/** A stored snapshot. */
export interface SnapshotInfo extends SnapshotKey {
  /** Stored (compressed) size in bytes. */
  size: number;
  /** When the store says the object was written (file mtime, S3 LastModified). */
  createdAt: Date;
}

/** A stored WAL segment. */
export interface WalSegmentInfo extends Pos {
  /** Stored (compressed) size in bytes. */
  size: number;
  createdAt: Date;
}

/** Bytes to store: whole, or streamed when large. */
export type Body = Uint8Array | ReadableStream<Uint8Array>;

/** Storage for snapshots and WAL segments under one replica root. */
export interface ReplicaClient {
  /** Backend name used in logs and as the default replica name, e.g. `"file"`, `"s3"`. */
  readonly type: string;
  /** Where the replica lives, for messages (never includes credentials). */
  readonly location: string;
  /** Request counters (`litestream_replica_operation_*`) of a remote backend; none for files. */
  readonly operations?: ReplicaOperationMetrics;
  /** Lists generation names (16 hex characters), sorted. Others are ignored. */
  generations(options?: CallOptions): Promise<string[]>;
  /** Lists the snapshots of a generation, in no particular order. */
  snapshots(generation: string, options?: CallOptions): AsyncIterable<SnapshotInfo>;
  /** Stores a snapshot atomically: readers see the whole object or nothing. */
  writeSnapshot(key: SnapshotKey, data: Body, options?: CallOptions): Promise<SnapshotInfo>;
  /** @throws {Deno.errors.NotFound} If no snapshot exists at `key`. */
  openSnapshot(key: SnapshotKey, options?: CallOptions): Promise<ReadableStream<Uint8Array>>;
  deleteSnapshot(key: SnapshotKey, options?: CallOptions): Promise<void>;
  /** Lists the WAL segments of a generation, in no particular order. */
  walSegments(generation: string, options?: CallOptions): AsyncIterable<WalSegmentInfo>;
  /** Stores a WAL segment atomically. */
  writeWalSegment(pos: Pos, data: Body, options?: CallOptions): Promise<WalSegmentInfo>;
  /** @throws {Deno.errors.NotFound} If no segment exists at `pos`. */
  openWalSegment(pos: Pos, options?: CallOptions): Promise<ReadableStream<Uint8Array>>;
  /** Deletes the given segments; missing ones are not an error. */
  deleteWalSegments(positions: Pos[], options?: CallOptions): Promise<void>;
  /** Deletes a whole generation; a missing one is not an error. */
  deleteGeneration(generation: string, options?: CallOptions): Promise<void>;
  /** Releases connections and timers, if the client holds any. */
  close?(): Promise<void>;
}

/** Collects an async iterable into an array. */
export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

/** Lists a generation's snapshots sorted by index (never trusting the store's order). */
export async function sortedSnapshots(
  client: ReplicaClient,
  generation: string,
  options?: CallOptions,
): Promise<SnapshotInfo[]> {
  return (await collect(client.snapshots(generation, options))).sort((a, b) => a.index - b.index);
}

/** Lists a generation's WAL segments sorted by index, then offset. */
export async function sortedWalSegments(
  client: ReplicaClient,
  generation: string,
  options?: CallOptions,
): Promise<WalSegmentInfo[]> {
  return (await collect(client.walSegments(generation, options)))
    .sort((a, b) => a.index - b.index || a.offset - b.offset);
}

/** Reads a whole stream into one array. */
export async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const p of stream) parts.push(p);
  return parts.length === 0 ? new Uint8Array(0) : concat(parts);
}
