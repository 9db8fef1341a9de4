/**
 * File-system helpers: atomic writes, directory fsync, existence checks.
 *
 * @module
 */
import type { Body } from "../replica_client.ts";
import { releaseHandedOff, type Scratch } from "./bytes.ts";

/** Returns the directory part of a path ("." when there is none). */
export function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  if (i < 0) return ".";
  return i === 0 ? "/" : path.slice(0, i);
}

/** Returns the last part of a path. */
export function basename(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Returns true if `path` exists (following links); false only for NotFound. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Flushes a directory's entries to disk so that a rename in it survives a crash. */
export async function fsyncDir(path: string): Promise<void> {
  using dir = Deno.openSync(path, { read: true });
  try {
    await dir.sync();
  } catch (err) {
    // Some file systems refuse fsync on directories; the rename is still atomic there.
    if (
      !(err instanceof Deno.errors.InvalidData) && !(err instanceof Deno.errors.PermissionDenied)
    ) {
      throw err;
    }
  }
}

/** Writes all of `data` to `file` at its current position. */
export async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  let o = 0;
  while (o < data.length) o += await file.write(data.subarray(o));
}

/**
 * Writes `data` to `file` and returns the number of bytes written. An abort cancels the
 * source stream (ending a pending read) and rejects with `signal.reason`.
 */
export async function writeBody(
  file: Deno.FsFile,
  data: Body,
  signal?: AbortSignal,
): Promise<number> {
  signal?.throwIfAborted();
  if (data instanceof Uint8Array) {
    writeAllSync(file, data); // see readAtSync
    return data.length;
  }
  const reader = data.getReader();
  const onAbort = () => void reader.cancel(signal!.reason).catch(() => {});
  signal?.addEventListener("abort", onAbort, { once: true });
  let n = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      signal?.throwIfAborted();
      if (done) break;
      await writeAll(file, value);
      n += value.length;
      releaseHandedOff(value);
    }
  } catch (err) {
    await reader.cancel(err).catch(() => {});
    throw err;
  } finally {
    signal?.removeEventListener("abort", onAbort);
    reader.releaseLock();
  }
  return n;
}

/**
 * Writes `data` to `path` atomically: into `path.tmp`, fsync, rename, fsync the directory.
 * A crash leaves either the old file or the new one, never a partial one.
 *
 * @returns the number of bytes written
 */
export async function writeFileAtomic(
  path: string,
  data: Body,
  options: { mode?: number; syncDir?: boolean; signal?: AbortSignal } = {},
): Promise<number> {
  const tmp = `${path}.tmp`;
  let n: number;
  try {
    // Synchronous calls but for the fsyncs (see readAtSync).
    using file = Deno.openSync(tmp, {
      write: true,
      create: true,
      truncate: true,
      mode: options.mode ?? 0o644,
    });
    n = await writeBody(file, data, options.signal);
    await file.sync();
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  Deno.renameSync(tmp, path);
  if (options.syncDir !== false) await fsyncDir(dirname(path));
  return n;
}

/** Reads exactly `length` bytes at `offset` (fewer only at end of file). */
export async function readAt(
  file: Deno.FsFile,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await file.seek(offset, Deno.SeekMode.Start);
  let n = 0;
  while (n < length) {
    const r = await file.read(buf.subarray(n));
    if (r === null) break;
    n += r;
  }
  return n === length ? buf : buf.subarray(0, n);
}

/**
 * {@linkcode readAt} with synchronous calls: a few microseconds of syscalls instead of
 * round trips through Deno's thread pool, which cost more CPU than small reads themselves.
 * With `scratch`, the bytes land in a view taken from it instead of a new array.
 */
export function readAtSync(
  file: Deno.FsFile,
  offset: number,
  length: number,
  scratch?: Scratch,
): Uint8Array {
  const buf = scratch ? scratch.take(length) : new Uint8Array(length);
  const n = readIntoSync(file, offset, buf);
  return n === length ? buf : buf.subarray(0, n);
}

/**
 * Fills `buf` with the bytes of `file` at `offset` (synchronous calls, see
 * {@linkcode readAtSync}); returns the count, short only at the end of the file.
 */
export function readIntoSync(file: Deno.FsFile, offset: number, buf: Uint8Array): number {
  file.seekSync(offset, Deno.SeekMode.Start);
  let n = 0;
  while (n < buf.length) {
    const r = file.readSync(buf.subarray(n));
    if (r === null) break;
    n += r;
  }
  return n;
}

/**
 * The size of an open file, from a seek to its end. `FsFile.statSync()` costs ~9 µs where this
 * costs ~1: under any permission flags but `-A`, Deno resolves the descriptor's path first (8
 * `readlink` calls here). Leaves the file offset at the end, which {@linkcode readIntoSync}
 * (and every positional helper here) does not rely on.
 */
export function fileSizeSync(file: Deno.FsFile): number {
  return file.seekSync(0, Deno.SeekMode.End);
}

/** Closes `file` if given, ignoring that it may be closed already. */
export function closeQuietly(file: { close(): void } | undefined): void {
  try {
    file?.close();
  } catch { /* closed */ }
}

/** {@linkcode writeAll} with synchronous calls (see {@linkcode readAtSync}). */
export function writeAllSync(file: Deno.FsFile, data: Uint8Array): void {
  let o = 0;
  while (o < data.length) o += file.writeSync(data.subarray(o));
}

/** Creates `path` and its parents; no error if it exists. */
export async function mkdirp(path: string, mode?: number): Promise<void> {
  await Deno.mkdir(path, { recursive: true, mode });
}

/** Makes `path` absolute against the current directory and removes `.`/`..`/`//`. */
export function absPath(path: string, cwd = Deno.cwd()): string {
  const full = path.startsWith("/") ? path : `${cwd}/${path}`;
  const out: string[] = [];
  for (const part of full.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") out.pop();
    else out.push(part);
  }
  return "/" + out.join("/");
}
