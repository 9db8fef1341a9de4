/**
 * A one-shot file-system watch (inotify) on a database's `-wal` file, which wakes the
 * monitor loop as soon as the application commits, and the process-wide cap on how many
 * such watches are armed at once.
 *
 * @module
 */
import { describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { closeQuietly } from "./internal/fs.ts";

/** Watches armed at once in one process, by default (see {@linkcode WatchSlots}). */
export const DEFAULT_MAX_WATCHES = 16;
/** Least time a watch stays armed before a database that just synced may take its slot. */
export const DEFAULT_MIN_WATCH_AGE_MS = 10_000;

/**
 * Caps the watches armed at once across all databases of a process. Deno runs every
 * `Deno.watchFs` of a process on one inotify instance and one thread, which hands each
 * event to every open watcher in turn, and each one tests the event's path with about ten
 * system calls (opening both files, canonicalizing paths): an event costs time in
 * proportion to the open watchers, ~2 ms with 200 of them, which made the events of 200
 * databases cost more CPU than replicating their commits. Closing a watcher also waits for
 * that thread. So only `max` databases hold a watch: the ones that synced most recently,
 * since a database that just synced re-arms, and may take the slot of the watch armed
 * longest ago once that one is `minAgeMs` old. The others notice a commit by the monitor's
 * poll (a `stat`), as Litestream v0.3.13 notices every commit.
 */
export class WatchSlots {
  readonly max: number;
  readonly minAgeMs: number;
  // Armed watchers by arming time; a Map iterates in insertion order, oldest first.
  readonly #armed = new Map<WalWatcher, number>();

  constructor(options: { max?: number; minAgeMs?: number } = {}) {
    this.max = options.max ?? DEFAULT_MAX_WATCHES;
    this.minAgeMs = options.minAgeMs ?? DEFAULT_MIN_WATCH_AGE_MS;
  }

  /** Watches armed now. */
  get size(): number {
    return this.#armed.size;
  }

  /**
   * Takes a slot for `w`, ending the oldest watch if every slot is taken and that watch
   * is at least `minAgeMs` old. Returns false if no slot is free.
   */
  acquire(w: WalWatcher): boolean {
    if (this.#armed.has(w)) return true;
    if (this.#armed.size >= this.max) {
      const oldest = this.#armed.entries().next().value;
      if (!oldest || performance.now() - oldest[1] < this.minAgeMs) return false;
      oldest[0].disarm(); // releases its slot
      if (this.#armed.size >= this.max) return false;
    }
    this.#armed.set(w, performance.now());
    return true;
  }

  /** Gives `w`'s slot back (no-op if it holds none). */
  release(w: WalWatcher): void {
    this.#armed.delete(w);
  }
}

/** The slots shared by every {@linkcode WalWatcher} of this process unless given others. */
export const sharedWatchSlots: WatchSlots = new WatchSlots();

/** Options of {@linkcode WalWatcher}. */
export interface WalWatcherOptions {
  /** Where the watch takes its slot. @default {sharedWatchSlots} */
  slots?: WatchSlots;
}

/**
 * Arms one watch at a time on the `-wal` file: the first write after {@linkcode arm} calls
 * `onChange` and ends the watch, which the monitor arms again before its next sync. A
 * standing watch delivers an event for every write SQLite makes, thousands a second under
 * a burst of commits, and handling them cost more CPU than copying the frames.
 *
 * Only the `-wal` file is watched, never the directory: on directory events Deno's watcher
 * opens and closes the changed file, and closing a descriptor of the database file drops
 * SQLite's locks in this process (see `Db`).
 */
export class WalWatcher {
  readonly #path: string;
  readonly #onChange: () => void;
  readonly #log: Logger;
  readonly #slots: WatchSlots;
  #watcher?: Deno.FsWatcher;
  #end?: () => void;
  #failed = false;

  constructor(
    walPath: string,
    onChange: () => void,
    log: Logger,
    options: WalWatcherOptions = {},
  ) {
    this.#path = walPath;
    this.#onChange = onChange;
    this.#log = log;
    this.#slots = options.slots ?? sharedWatchSlots;
  }

  /** True while a watch is armed (so a poll may stat the WAL instead of syncing). */
  get armed(): boolean {
    return this.#watcher !== undefined;
  }

  /**
   * Arms the watch unless one is armed, watching failed for good, `signal` aborted, or
   * no slot is free (see {@linkcode WatchSlots}).
   */
  arm(signal: AbortSignal): void {
    if (this.#watcher || this.#failed || signal.aborted) return;
    if (!this.#slots.acquire(this)) return;
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(this.#path, { recursive: false });
    } catch (err) {
      this.#slots.release(this);
      // No WAL yet: the next pass tries again (the poll covers the gap).
      if (!(err instanceof Deno.errors.NotFound)) {
        this.#failed = true;
        this.#log.warn("file watch failed, polling only", { error: describeError(err) });
      }
      return;
    }
    this.#watcher = watcher;
    const end = () => {
      signal.removeEventListener("abort", end);
      if (this.#watcher === watcher) {
        this.#watcher = undefined;
        this.#end = undefined;
        this.#slots.release(this);
      }
      closeQuietly(watcher);
    };
    this.#end = end;
    signal.addEventListener("abort", end, { once: true });
    (async () => {
      try {
        for await (const _ of watcher) {
          this.#onChange();
          break;
        }
      } catch {
        /* closed; the poll still runs */
      } finally {
        end();
      }
    })();
  }

  /** Ends the armed watch, if any, without calling `onChange`; the poll covers the WAL. */
  disarm(): void {
    this.#end?.();
  }
}
