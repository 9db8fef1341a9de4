/**
 * Tests of the Mutex in src/internal/delay.ts.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Mutex } from "../src/internal/delay.ts";

Deno.test("Mutex.tryRun() runs only when nobody holds or waits for the mutex", async () => {
  const m = new Mutex();
  assert.deepEqual(await m.tryRun(() => 1), { ran: true, value: 1 });
  let release!: () => void;
  const held = m.run(() => new Promise<void>((r) => (release = r)));
  await Promise.resolve();
  assert.equal((await m.tryRun(() => 2)).ran, false, "held");
  const order: string[] = [];
  const waiter = m.run(() => order.push("waiter"));
  release();
  await held;
  // The holder is gone and the waiter has not started yet (`locked` is false): a lock holder
  // elsewhere calling tryRun here must not queue behind the waiter.
  assert.equal(m.locked, false);
  assert.equal((await m.tryRun(() => order.push("tryRun"))).ran, false, "a waiter is queued");
  await waiter;
  assert.deepEqual(order, ["waiter"]);
  assert.deepEqual(await m.tryRun(() => 3), { ran: true, value: 3 });
});
