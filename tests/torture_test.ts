/**
 * A short run of `scripts/torture.ts` (the long one is run by hand, see its module doc).
 *
 * @module
 */
import assert from "node:assert/strict";
import { CHECKPOINT_MODES, formatReport, torture } from "../scripts/torture.ts";

Deno.test("replicate survives 50 cycles of kill -9, foreign checkpoints and restarts", async () => {
  const report = await torture({ cycles: 50 });
  const line = formatReport(report);
  const detail = [line, ...report.problems, report.dir ? `kept ${report.dir}` : ""].join("\n");
  assert.equal(report.cycles, 50, detail);
  assert.equal(report.corrupt, 0, detail);
  assert.equal(report.lost, 0, detail);
  assert.equal(report.errors, 0, detail);
  // It exercised what it claims.
  assert.equal(report.restores, 50, detail);
  assert.ok(report.restores - report.emptyRestores >= 25, detail);
  assert.ok(report.kills > 0 && report.stops.clean > 0, detail);
  assert.ok(report.stops.snapshot > 0 && report.snapshotHits > 0, detail);
  assert.ok(report.stops.checkpoint > 0, detail);
  for (const mode of CHECKPOINT_MODES) assert.ok(report.foreignCheckpoints[mode] > 0, detail);
  assert.ok(report.generations > 1, detail);
});
