/**
 * Logging for a loop that retries a failing step: one error line per distinct error (the
 * same one again only at debug level, and as an error again at most every
 * `repeatMs`), and one line when the step works again.
 *
 * @module
 */
import { describeError } from "../errors.ts";
import type { Logger } from "../log.ts";

/** While the same error repeats, it is logged as an error again at most this often. */
export const REPEAT_ERROR_LOG_MS = 10 * 60_000;

/** Remembers the failures of one retried step (`what`, e.g. "sync") and logs them sparingly. */
export class FailureLog {
  readonly #log: Logger;
  readonly #what: string;
  readonly #repeatMs: number;
  #failures = 0; // failed in a row
  #since = 0;
  #logged?: { error: string; at: number };

  constructor(log: Logger, what: string, repeatMs = REPEAT_ERROR_LOG_MS) {
    this.#log = log;
    this.#what = what;
    this.#repeatMs = repeatMs;
  }

  /** Failures in a row so far. */
  get failures(): number {
    return this.#failures;
  }

  /** Records a failure: `<what> failed` (error) or `<what> failed again` (debug). */
  failed(err: unknown, fields: Record<string, unknown> = {}): void {
    if (this.#failures++ === 0) this.#since = performance.now();
    const error = describeError(err);
    const now = performance.now();
    const f = { error, failures: this.#failures, ...fields };
    if (this.#logged?.error === error && now - this.#logged.at < this.#repeatMs) {
      this.#log.debug(`${this.#what} failed again`, f);
    } else {
      this.#log.error(`${this.#what} failed`, f);
      this.#logged = { error, at: now };
    }
  }

  /** Records a success: `<what> resumed` (info) after failures. */
  succeeded(): void {
    if (this.#failures > 0) {
      this.#log.info(`${this.#what} resumed`, {
        failures: this.#failures,
        downMs: Math.round(performance.now() - this.#since),
      });
    }
    this.#failures = 0;
    this.#logged = undefined;
  }
}
