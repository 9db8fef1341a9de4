/**
 * The idle timeout of one HTTP request made with `fetch` (the GCS and Azure clients, and the
 * S3 client's GETs): the request fails when no byte moves for a while, rather than when it
 * runs long, so a large download from a slow reader is never cut off.
 *
 * @module
 */

/** A request moved no byte for the idle timeout. */
export class IdleTimeoutError extends Error {
  constructor(ms: number) {
    super(`no data for ${ms} ms`);
    this.name = "IdleTimeoutError";
  }
}

/**
 * Aborts {@linkcode IdleTimer.signal} when it runs for `ms` without a restart. It runs only
 * while a network step is pending ({@linkcode IdleTimer.start} … {@linkcode IdleTimer.stop}),
 * so a slow reader of a download is not mistaken for a stalled server.
 */
export class IdleTimer {
  readonly #ms: number;
  readonly #timeout: (ms: number) => Error;
  readonly #controller = new AbortController();
  #timer?: ReturnType<typeof setTimeout>;
  /** The error the signal was aborted with, once it fired. */
  fired?: Error;

  /** @param timeout the error to abort with (default {@linkcode IdleTimeoutError}) */
  constructor(ms: number, timeout: (ms: number) => Error = (n) => new IdleTimeoutError(n)) {
    this.#ms = ms;
    this.#timeout = timeout;
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** (Re)starts the countdown, unless it already fired. */
  start(): void {
    this.stop();
    if (this.#controller.signal.aborted) return;
    this.#timer = setTimeout(() => {
      this.fired = this.#timeout(this.#ms);
      this.#controller.abort(this.fired);
    }, this.#ms);
  }

  stop(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * `p`, or a rejection with the timeout as soon as it fires (for a `fetch` or a read that
   * the abort of {@linkcode signal} may not reach). A `Response` that arrives after that has
   * its body cancelled.
   */
  race<T>(p: Promise<T>): Promise<T> {
    const signal = this.#controller.signal;
    let onAbort!: () => void;
    const fired = new Promise<never>((_, reject) => {
      onAbort = () => {
        reject(signal.reason);
        p.then((late) => {
          if (late instanceof Response) late.body?.cancel().catch(() => {});
        }, () => {});
      };
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    });
    return Promise.race([p, fired]).finally(() => signal.removeEventListener("abort", onAbort));
  }

  /**
   * Passes `body` through, the countdown running during each read only. A read that fails
   * fails the stream with the timeout if it fired, else with `mapError(err)`. A read still
   * pending when the timeout fires fails at once: the abort reaches a `fetch` body through
   * the request's signal, but not always (a CI run waited forever on such a read, with no
   * timer left to wake it), so the read is raced against the timer as well.
   */
  guard(
    body: ReadableStream<Uint8Array>,
    mapError: (err: unknown) => unknown = (err) => err,
  ): ReadableStream<Uint8Array> {
    const reader = body.getReader();
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        this.start();
        try {
          const { done, value } = await this.race(reader.read());
          if (done) controller.close();
          else controller.enqueue(value);
        } catch (err) {
          if (this.fired) reader.cancel(this.fired).catch(() => {});
          controller.error(this.fired ?? mapError(err));
        } finally {
          this.stop();
        }
      },
      cancel: (reason) => {
        this.stop();
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }
}
