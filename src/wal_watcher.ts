/**
 * A one-shot file-system watch (inotify) on a database's `-wal` file, which wakes the
 * monitor loop as soon as the application commits.
 *
 * @module
 */
import { describeError } from "./errors.ts";
import type { Logger } from "./log.ts";

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
  #watcher?: Deno.FsWatcher;
  #failed = false;

  constructor(walPath: string, onChange: () => void, log: Logger) {
    this.#path = walPath;
    this.#onChange = onChange;
    this.#log = log;
  }

  /** True while a watch is armed (so a poll may stat the WAL instead of syncing). */
  get armed(): boolean {
    return this.#watcher !== undefined;
  }

  /** Arms the watch unless one is armed, watching failed for good, or `signal` aborted. */
  arm(signal: AbortSignal): void {
    if (this.#watcher || this.#failed || signal.aborted) return;
    let watcher: Deno.FsWatcher;
    try {
      watcher = Deno.watchFs(this.#path, { recursive: false });
    } catch (err) {
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
      if (this.#watcher === watcher) this.#watcher = undefined;
      try {
        watcher.close();
      } catch { /* already closed */ }
    };
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
}
