/**
 * Tests of src/layout.ts: names and keys round trip, including the names the real
 * Litestream v0.3.13 wrote (tests/_oracle.ts); offsets of 9+ hex digits parse; anything
 * else is ignored.
 */
import assert from "node:assert/strict";
import {
  defaultMetaPath,
  formatShadowWalName,
  formatSnapshotName,
  formatWalSegmentName,
  generationKey,
  isGenerationName,
  joinKey,
  newGenerationName,
  parseShadowWalName,
  parseSnapshotName,
  parseWalSegmentName,
  snapshotKey,
  snapshotsKey,
  walSegmentKey,
  walSegmentsKey,
} from "../src/layout.ts";
import { MAX_INDEX } from "../src/pos.ts";
import { oracleSample } from "./_oracle.ts";

/** Lists every file under `root` as a relative "/"-joined path. */
async function listFiles(root: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(`${root}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory) out.push(...await listFiles(root, rel));
    else out.push(rel);
  }
  return out.sort();
}

Deno.test("layout names and keys match the replica files Litestream v0.3.13 wrote", async () => {
  const sample = await oracleSample();
  const files = await listFiles(sample.replicaPath);
  const snapshots = files.filter((f) => f.includes("/snapshots/"));
  const segments = files.filter((f) => f.includes("/wal/"));
  assert.equal(snapshots.length + segments.length, files.length, files.join(", "));
  assert.equal(snapshots.length, 1);
  assert.ok(segments.length >= 3);
  let offsets = 0;
  for (const file of files) {
    const [generations, generation, , name] = file.split("/");
    assert.equal(generations, "generations");
    assert.ok(isGenerationName(generation), generation);
    assert.equal(joinKey(generationKey(generation), file.split("/").slice(2).join("/")), file);
    const index = parseSnapshotName(name);
    const seg = parseWalSegmentName(name);
    if (file.includes("/snapshots/")) {
      assert.notEqual(index, undefined, name);
      assert.equal(seg, undefined);
      assert.equal(formatSnapshotName(index!), name);
      assert.equal(snapshotKey(generation, index!), file);
      assert.equal(joinKey(snapshotsKey(generation), name), file);
    } else {
      assert.notEqual(seg, undefined, name);
      assert.equal(index, undefined);
      assert.equal(formatWalSegmentName(seg!.index, seg!.offset), name);
      assert.equal(walSegmentKey(generation, seg!.index, seg!.offset), file);
      assert.equal(joinKey(walSegmentsKey(generation), name), file);
      if (seg!.offset > 0) offsets++;
    }
  }
  assert.ok(offsets >= 2, "the sample has segments at non-zero offsets");
});

Deno.test("defaultMetaPath() and shadow WAL names match the meta dir Litestream v0.3.13 made", async () => {
  const sample = await oracleSample();
  const meta = defaultMetaPath(sample.dbPath);
  assert.equal(meta, `${sample.dir}/.db-litestream`);
  const generation = (await Deno.readTextFile(`${meta}/generation`)).trim();
  assert.ok(isGenerationName(generation), generation);
  const names = [];
  for await (const e of Deno.readDir(`${meta}/generations/${generation}/wal`)) names.push(e.name);
  assert.ok(names.length > 0);
  for (const name of names) {
    const index = parseShadowWalName(name);
    assert.notEqual(index, undefined, name);
    assert.equal(formatShadowWalName(index!), name);
  }
});

Deno.test("defaultMetaPath() puts the meta dir next to the database", () => {
  assert.equal(defaultMetaPath("/var/lib/app/data.db"), "/var/lib/app/.data.db-litestream");
  assert.equal(defaultMetaPath("/data.db"), "/.data.db-litestream");
  assert.equal(defaultMetaPath("rel/dir/x.sqlite"), "rel/dir/.x.sqlite-litestream");
});

Deno.test("formatSnapshotName() and parseSnapshotName() round trip every index width", () => {
  for (const index of [0, 1, 0xf, 0x10, 0xabcdef, 0x1000000, MAX_INDEX]) {
    const name = formatSnapshotName(index);
    assert.match(name, /^[0-9a-f]{8}\.snapshot\.lz4$/);
    assert.equal(parseSnapshotName(name), index, name);
  }
});

Deno.test("formatWalSegmentName() and parseWalSegmentName() round trip offsets past 32 bits", () => {
  for (const index of [0, 7, MAX_INDEX]) {
    const offsets = [0, 32, 0x4080, 0xffffffff, 2 ** 32, 2 ** 40 + 4152, Number.MAX_SAFE_INTEGER];
    for (const offset of offsets) {
      const name = formatWalSegmentName(index, offset);
      assert.deepEqual(parseWalSegmentName(name), { index, offset }, name);
    }
  }
  // Go's %08x grows past 8 digits; such names must parse (v0.3.13 itself skipped them).
  assert.equal(formatWalSegmentName(1, 2 ** 32), "00000001_100000000.wal.lz4");
  assert.deepEqual(parseWalSegmentName("00000001_100000000.wal.lz4"), {
    index: 1,
    offset: 2 ** 32,
  });
  assert.deepEqual(parseWalSegmentName("0000000a_0123456789ab.wal.lz4"), {
    index: 10,
    offset: 0x0123456789ab,
  });
});

Deno.test("formatShadowWalName() and parseShadowWalName() round trip", () => {
  for (const index of [0, 1, 0x1234, MAX_INDEX]) {
    assert.equal(parseShadowWalName(formatShadowWalName(index)), index);
  }
  assert.equal(formatShadowWalName(3), "00000003.wal");
});

Deno.test("parse*Name() ignore names that are not exactly snapshots or segments", () => {
  const notSnapshots = [
    "",
    "0000000.snapshot.lz4", // 7 digits
    "000000000.snapshot.lz4", // 9 digits
    "0000000A.snapshot.lz4", // uppercase
    "0000000g.snapshot.lz4",
    "00000000.snapshot.lz4.tmp",
    "00000000.snapshot",
    "00000000.snapshot.lz4 ",
    "x00000000.snapshot.lz4",
    "snapshots/00000000.snapshot.lz4",
    "00000000_00000000.wal.lz4",
  ];
  for (const name of notSnapshots) assert.equal(parseSnapshotName(name), undefined, name);

  const notSegments = [
    "",
    "00000000.wal.lz4", // no offset
    "00000000_.wal.lz4",
    "00000000_0000000.wal.lz4", // 7-digit offset
    "0000000_00000000.wal.lz4", // 7-digit index
    "000000000_00000000.wal.lz4", // 9-digit index
    "00000000_00000000000000000.wal.lz4", // 17-digit offset
    "00000000_0000000A.wal.lz4", // uppercase
    "00000000-00000000.wal.lz4",
    "00000000_00000000.wal.lz4.tmp",
    "00000000_00000000.wal",
    "wal/00000000_00000000.wal.lz4",
    "00000000.snapshot.lz4",
  ];
  for (const name of notSegments) assert.equal(parseWalSegmentName(name), undefined, name);

  for (const name of ["", "0000000.wal", "00000000.wal.tmp", "00000000.wal.lz4", "0000000A.wal"]) {
    assert.equal(parseShadowWalName(name), undefined, name);
  }
});

Deno.test("isGenerationName() accepts only 16 lowercase hex characters", () => {
  assert.equal(isGenerationName("0123456789abcdef"), true);
  const bad = ["", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg"];
  for (const name of [...bad, "0123456789abcdef.tmp", "generations/0123456789abcdef"]) {
    assert.equal(isGenerationName(name), false, name);
  }
});

Deno.test("newGenerationName() returns distinct valid generation names", () => {
  const names = new Set<string>();
  for (let i = 0; i < 100; i++) {
    const name = newGenerationName();
    assert.ok(isGenerationName(name), name);
    names.add(name);
  }
  assert.equal(names.size, 100);
});

Deno.test("joinKey() joins like Go's path.Join for keys: no empty parts, no double slashes", () => {
  assert.equal(joinKey("", "generations", "g"), "generations/g");
  assert.equal(joinKey("prefix", "generations"), "prefix/generations");
  assert.equal(joinKey("prefix/", "generations"), "prefix/generations");
  assert.equal(joinKey("a//b", "", "c"), "a/b/c");
  assert.equal(
    walSegmentKey("0123456789abcdef", 1, 4152),
    "generations/0123456789abcdef/wal/00000001_00001038.wal.lz4",
  );
  assert.equal(
    snapshotKey("0123456789abcdef", 0x7fffffff),
    "generations/0123456789abcdef/snapshots/7fffffff.snapshot.lz4",
  );
});
