/**
 * Abortable sleeping and a small wake-up signal.
 *
 * @module
 */

/** Resolves after `ms`, or rejects with `signal.reason` when aborted first. */
export function delay(ms: number, options: { signal?: AbortSignal } = {}): Promise<void> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const abort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/**
 * A level-triggered wake-up: `notify()` sets it, `wait()` resolves once it is set (now or
 * later) and clears it. Many notifies before a wait count as one.
 */
export class Wakeup {
  #set = false;
  #waiters: (() => void)[] = [];

  notify(): void {
    this.#set = true;
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w();
  }

  /** Waits for a notify, at most `timeoutMs` (if given), or until `signal` aborts. */
  async wait(timeoutMs?: number, signal?: AbortSignal): Promise<boolean> {
    if (this.#set) {
      this.#set = false;
      return true;
    }
    if (signal?.aborted) return false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort: (() => void) | undefined;
    let waiter: (() => void) | undefined;
    const woke = await new Promise<boolean>((resolve) => {
      waiter = () => resolve(true);
      this.#waiters.push(waiter);
      if (timeoutMs !== undefined) timer = setTimeout(() => resolve(false), timeoutMs);
      if (signal) {
        onAbort = () => resolve(false);
        signal.addEventListener("abort", onAbort, { once: true });
      }
    });
    if (timer !== undefined) clearTimeout(timer);
    if (onAbort) signal?.removeEventListener("abort", onAbort);
    this.#waiters = this.#waiters.filter((w) => w !== waiter);
    if (woke) this.#set = false;
    return woke;
  }
}

/** A mutual-exclusion lock for async code. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();
  #locked = false;
  #holders = 0; // the one running and those waiting

  get locked(): boolean {
    return this.#locked;
  }

  /** Runs `fn` when no other holder runs, and returns its result. */
  async run<T>(fn: () => T | Promise<T>): Promise<T> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const prev = this.#tail;
    this.#tail = prev.then(() => next);
    this.#holders++;
    try {
      await prev;
      this.#locked = true;
      return await fn();
    } finally {
      this.#locked = false;
      this.#holders--;
      release();
    }
  }

  /**
   * Runs `fn` only if nobody holds the mutex or waits for it (a waiter may be about to run
   * while `locked` is still false): for a holder of another lock, which must not wait here
   * for someone who may be waiting for that other lock.
   */
  async tryRun<T>(fn: () => T | Promise<T>): Promise<{ ran: true; value: T } | { ran: false }> {
    if (this.#holders > 0) return { ran: false };
    return { ran: true, value: await this.run(fn) };
  }
}
