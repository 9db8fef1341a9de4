/**
 * Tests of src/internal/idle_timer.ts: the timeout fails a pending step even when the step
 * itself never notices the abort.
 *
 * @module
 */
import assert from "node:assert/strict";
import { IdleTimeoutError, IdleTimer } from "../src/internal/idle_timer.ts";

Deno.test("IdleTimer.race() rejects with the timeout a promise that never settles", async () => {
  const idle = new IdleTimer(50);
  idle.start();
  await assert.rejects(idle.race(new Promise<never>(() => {})), IdleTimeoutError);
  // Once fired, later steps fail at once.
  await assert.rejects(idle.race(new Promise<never>(() => {})), IdleTimeoutError);
});

Deno.test("IdleTimer.guard() fails a read that never settles, and cancels the source", async () => {
  let cancelled: unknown;
  // A source that sends one chunk and then neither sends, ends nor honours any signal.
  const source = new ReadableStream<Uint8Array>({
    start(c) {
      c.enqueue(new Uint8Array(10));
    },
    pull: () => new Promise<void>(() => {}),
    cancel(reason) {
      cancelled = reason;
    },
  }, { highWaterMark: 0 });
  const idle = new IdleTimer(50);
  const reader = idle.guard(source).getReader();
  assert.equal((await reader.read()).value?.length, 10);
  await assert.rejects(reader.read(), IdleTimeoutError);
  assert.ok(cancelled instanceof IdleTimeoutError, "the source was cancelled with the timeout");
});
