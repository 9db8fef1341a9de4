/**
 * Bad input, catalogued: configs, URLs, flags, timestamps, paths, permissions and damaged
 * replicas, each run through the real CLI (`main.ts` in a subprocess) in a fresh copy of
 * one real database and its file replica. Every case asserts the exit code, that stderr
 * holds exactly ONE error line (after any progress log lines) naming what is wrong, that
 * stdout is empty, and that no file under the case's directory was created, changed or
 * removed: restores never write their output, nothing is overwritten, and `TMPDIR` points
 * inside the directory, so a temporary directory left behind counts too. SQLite's `-shm`
 * files are left out of the comparison: every reader writes its read mark there.
 *
 * Cases that show a defect outside this file's reach are registered as ignored, with the
 * evidence in their name and `defect`. The last test prints `bad input cases: N`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { blobs, openTestDb, REPO, tempDir, Writer } from "./_helpers.ts";
import { lz4Compress, lz4Decompress } from "../src/lz4.ts";
import {
  decodeWalHeader,
  encodeWalHeader,
  WAL_FRAME_HEADER_SIZE,
  WAL_HEADER_SIZE,
  walFrameSize,
} from "../src/wal.ts";

const MAIN = `${REPO}/main.ts`;
const dec = new TextDecoder();
/** The permissions of the `litestream` task in deno.json. */
const TASK_PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-env",
  "--allow-net",
  "--allow-sys=osRelease",
];
/** A progress line of our logger, which may precede the error line. */
const LOG_LINE_REGEXP = /^time=\S+ level=(DEBUG|INFO) /;

/** What a case works on: a copy of the base database and replica in `dir`. */
interface Fixture {
  /** The case's directory, also the working directory of the CLI. */
  dir: string;
  /** `dir/replica`, the file replica. */
  replica: string;
  /** `file://` URL of the replica. */
  url: string;
  /** The replica's generation. */
  gen: string;
  /** `dir/replica/generations/<gen>`. */
  genDir: string;
  /** Writes `dir/c.yml` with `yaml` and returns its name. */
  config(yaml: string): Promise<string>;
}

interface Case {
  /** What is wrong, as a sentence fragment ("a truncated snapshot"). */
  name: string;
  /** Prepares the fixture (damages the replica, writes a config, …) and returns the args. */
  args: (fx: Fixture) => string[] | Promise<string[]>;
  code: number;
  /** What the error line must contain; `DIR` and `GEN` are replaced. */
  names: string[];
  env?: Record<string, string>;
  /** Deno flags instead of the task's; `DIR` is replaced. */
  permissions?: string[];
  /** A defect this case shows that this file cannot fix: the case is ignored until fixed. */
  defect?: string;
}

// ---------------------------------------------------------------------------------------
// Damage helpers: each rewrites one object of the replica in place.

function seg(fx: Fixture, index: number, offset = 0): string {
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  return `${fx.genDir}/wal/${hex(index)}_${hex(offset)}.wal.lz4`;
}

function snap(fx: Fixture, index = 0): string {
  return `${fx.genDir}/snapshots/${index.toString(16).padStart(8, "0")}.snapshot.lz4`;
}

/** The WAL segment files of `index`, or of every index, sorted by name (index, offset). */
async function segmentsOf(fx: Fixture, index?: number): Promise<string[]> {
  const prefix = index === undefined ? "" : `${index.toString(16).padStart(8, "0")}_`;
  return (await Array.fromAsync(Deno.readDir(`${fx.genDir}/wal`)))
    .map((e) => e.name).filter((n) => n.startsWith(prefix)).sort()
    .map((n) => `${fx.genDir}/wal/${n}`);
}

/** The replica's newest WAL segment: the end of its last transaction. */
async function lastSegment(fx: Fixture): Promise<string> {
  return (await segmentsOf(fx)).at(-1)!;
}

/** The page size of the base database's WAL. */
async function pageSizeOf(fx: Fixture): Promise<number> {
  const raw = lz4Decompress(await Deno.readFile(seg(fx, 0)));
  return decodeWalHeader(raw.subarray(0, WAL_HEADER_SIZE)).pageSize;
}

async function truncateFile(path: string, keep: (size: number) => number): Promise<void> {
  const bytes = await Deno.readFile(path);
  await Deno.writeFile(path, bytes.subarray(0, keep(bytes.length)));
}

async function flipByte(path: string, at: (size: number) => number): Promise<void> {
  const bytes = await Deno.readFile(path);
  bytes[at(bytes.length)] ^= 0xff;
  await Deno.writeFile(path, bytes);
}

/** Decodes an LZ4 object, lets `edit` change the raw bytes, and stores it re-encoded. */
async function recode(path: string, edit: (raw: Uint8Array) => Uint8Array): Promise<void> {
  const raw = lz4Decompress(await Deno.readFile(path)).slice();
  await Deno.writeFile(path, lz4Compress(edit(raw)));
}

function yamlDb(fx: Fixture, extra = "", replica = `      - url: ${fx.url}\n`): string {
  return `dbs:\n  - path: ${fx.dir}/app.db\n${extra}    replicas:\n${replica}`;
}

// ---------------------------------------------------------------------------------------
// The catalogue.

const OUT = ["-o", "out.db"];

const FLAGS: Case[] = [
  {
    name: "restore without a database or URL",
    args: () => ["restore", ...OUT],
    code: 2,
    names: ["Database path or replica URL required"],
  },
  {
    name: "restore with a second positional argument",
    args: (fx) => ["restore", ...OUT, fx.url, "extra"],
    code: 2,
    names: ["Too many arguments", "extra"],
  },
  {
    name: "restore with an unknown flag",
    args: (fx) => ["restore", ...OUT, "-foo", fx.url],
    code: 2,
    names: ['"-foo"'],
  },
  {
    name: "restore with -o missing its value",
    args: (fx) => ["restore", fx.url, "-o"],
    code: 2,
    names: ['"-o"', "needs a value"],
  },
  {
    name: "restore with three dashes",
    args: (fx) => ["restore", "---o", "out.db", fx.url],
    code: 2,
    names: ['"---o"'],
  },
  {
    name: "restore with a boolean flag set to maybe",
    args: (fx) => ["restore", ...OUT, "-if-db-not-exists=maybe", fx.url],
    code: 2,
    names: ['"-if-db-not-exists"', '"maybe"'],
  },
  {
    name: "restore -index that is not hexadecimal",
    args: (fx) => ["restore", ...OUT, "-index", "zz", fx.url],
    code: 2,
    names: ['-index "zz"'],
  },
  {
    name: "restore -index above the highest WAL index possible",
    args: (fx) => ["restore", ...OUT, "-index", "100000000", fx.url],
    code: 2,
    names: ['-index "100000000"'],
  },
  {
    name: "restore -parallelism 0",
    args: (fx) => ["restore", ...OUT, "-parallelism", "0", fx.url],
    code: 2,
    names: ['-parallelism "0"'],
  },
  {
    name: "restore -parallelism that is not a number",
    args: (fx) => ["restore", ...OUT, "-parallelism", "many", fx.url],
    code: 2,
    names: ['-parallelism "many"'],
  },
  {
    name: "restore with both -index and -timestamp",
    args: (fx) => ["restore", ...OUT, "-index", "1", "-timestamp", "2020-01-01T00:00:00Z", fx.url],
    code: 2,
    names: ["-index", "-timestamp"],
  },
  {
    name: "restore -index above the replica's highest index",
    args: (fx) => ["restore", ...OUT, "-index", "ff", fx.url],
    code: 1,
    names: ["000000ff", "GEN", "highest is 00000003"],
  },
  {
    name: "generations with two positional arguments",
    args: (fx) => ["generations", fx.url, "b"],
    code: 2,
    names: ["Too many arguments: b"],
  },
  {
    name: "wal -generation missing its value",
    args: () => ["wal", "-generation"],
    code: 2,
    names: ['"-generation"', "needs a value"],
  },
  {
    name: "snapshots -replica naming no replica of the URL",
    args: (fx) => ["snapshots", "-replica", "nope", fx.url],
    code: 2,
    names: ['"nope"'],
  },
  {
    name: "databases with a positional argument",
    args: () => ["databases", "extra"],
    code: 2,
    names: ["Too many arguments: extra"],
  },
  {
    name: "verify without a database or URL",
    args: () => ["verify"],
    code: 2,
    names: ["Database path or replica URL required"],
  },
  {
    name: "verify -timeout that is not a duration",
    args: (fx) => ["verify", "-timeout", "soon", fx.url],
    code: 2,
    names: ['-timeout "soon"'],
  },
  {
    name: "verify with a negative -timeout",
    args: (fx) => ["verify", "-timeout", "-1s", fx.url],
    code: 2,
    names: ['-timeout "-1s"'],
  },
  {
    name: "verify with restore's -o flag",
    args: (fx) => ["verify", ...OUT, fx.url],
    code: 2,
    names: ['"-o"', '"verify"'],
  },
];

const TIMESTAMPS: Case[] = [
  {
    name: "restore -timestamp in words",
    args: (fx) => ["restore", ...OUT, "-timestamp", "yesterday", fx.url],
    code: 2,
    names: ['-timestamp "yesterday"', "RFC 3339"],
  },
  {
    name: "restore -timestamp with month 13",
    args: (fx) => ["restore", ...OUT, "-timestamp", "2020-13-45T00:00:00Z", fx.url],
    code: 2,
    names: ['"2020-13-45T00:00:00Z"'],
  },
  {
    name: "restore -timestamp without a time",
    args: (fx) => ["restore", ...OUT, "-timestamp", "2020-01-01", fx.url],
    code: 2,
    names: ['"2020-01-01"'],
  },
  {
    name: "restore -timestamp before every backup",
    args: (fx) => ["restore", ...OUT, "-timestamp", "2000-01-01T00:00:00Z", fx.url],
    code: 1,
    names: ["2000-01-01T00:00:00", "DIR/replica", "GEN"],
  },
  {
    name: "restore -timestamp after every backup",
    args: (fx) => ["restore", ...OUT, "-timestamp", "2999-01-01T00:00:00Z", fx.url],
    code: 1,
    names: ["2999-01-01T00:00:00", "GEN"],
  },
];

const URLS: Case[] = [
  {
    name: "a replica URL with an unknown scheme",
    args: () => ["restore", ...OUT, "ftp://host/backups"],
    code: 2,
    names: ['"ftp"'],
  },
  {
    name: "an s3 URL without a bucket",
    args: () => ["restore", ...OUT, "s3://"],
    code: 2,
    names: ['"s3://"', "bucket"],
  },
  {
    name: "an s3 URL with a malformed %-escape",
    args: () => ["restore", ...OUT, "s3://bucket/x%zz"],
    code: 2,
    names: ['"s3://bucket/x%zz"', "escape"],
  },
  {
    name: "a file URL without a path",
    args: () => ["restore", ...OUT, "file://"],
    code: 2,
    names: ['"file://"'],
  },
  {
    name: "a file URL with a relative path",
    args: () => ["restore", ...OUT, "file://relative/dir"],
    code: 2,
    names: ['"file://relative/dir"', "absolute"],
  },
  {
    name: "a file replica that does not exist",
    args: (fx) => ["restore", ...OUT, `file://${fx.dir}/nowhere`],
    code: 1,
    names: ["DIR/nowhere", "No backups"],
  },
  {
    name: "a file replica URL naming a file",
    args: (fx) => ["restore", ...OUT, `file://${fx.dir}/app.db`],
    code: 1,
    names: ["DIR/app.db"],
  },
  {
    name: "a replica URL together with -config",
    args: async (fx) => ["restore", ...OUT, "-config", await fx.config(yamlDb(fx)), fx.url],
    code: 2,
    names: ["-config"],
  },
  {
    name: "verify of a URL with an unknown scheme",
    args: () => ["verify", "ftp://host/backups"],
    code: 2,
    names: ['"ftp"'],
  },
];

/** A config case: `yaml(fx)` is the file; the CLI runs `databases -config c.yml`. */
function configCase(name: string, yaml: (fx: Fixture) => string, names: string[]): Case {
  return {
    name,
    args: async (fx) => ["databases", "-config", await fx.config(yaml(fx))],
    code: 2,
    names: ["DIR/c.yml", ...names],
  };
}

const CONFIGS: Case[] = [
  configCase(
    "a config with malformed YAML",
    (fx) => `dbs:\n  - path: ${fx.dir}/app.db\n   replicas: [\n`,
    ["line 3"],
  ),
  configCase(
    "a config with an unknown key",
    (fx) => yamlDb(fx, "", `      - url: ${fx.url}\n        colour: blue\n`),
    ["line 5", '"colour"'],
  ),
  configCase(
    "a config with a sync-interval that is not a duration",
    (fx) => yamlDb(fx, "", `      - url: ${fx.url}\n        sync-interval: fast\n`),
    ["line 5", "sync-interval", '"fast"'],
  ),
  configCase(
    "a config with a negative retention",
    (fx) => yamlDb(fx, "", `      - url: ${fx.url}\n        retention: -1h\n`),
    ["line 5", "retention", '"-1h"'],
  ),
  configCase(
    "a config with two replicas of the same name",
    (fx) =>
      yamlDb(
        fx,
        "",
        `      - url: ${fx.url}\n        name: a\n      - path: /x\n        name: a\n`,
      ),
    ["line 7", '"a"'],
  ),
  configCase(
    "a config with the same database twice",
    (fx) => `dbs:\n  - path: ${fx.dir}/app.db\n  - path: ${fx.dir}/app.db\n`,
    ["line 3", "already used"],
  ),
  configCase(
    "a config with a database without a path",
    (fx) => `dbs:\n  - replicas:\n      - url: ${fx.url}\n`,
    ["line 2", "no path"],
  ),
  configCase("a config whose dbs is not a list", () => "dbs: 5\n", ["line 1", "dbs"]),
  configCase(
    "a config with an unknown replica type",
    (fx) => yamlDb(fx, "", "      - type: nope\n        path: /x\n"),
    ["line 4", '"nope"'],
  ),
  configCase(
    "a config with an s3 replica without a bucket",
    (fx) => yamlDb(fx, "", "      - type: s3\n"),
    ["line 4", "bucket"],
  ),
  configCase(
    "a config with min-checkpoint-page-count 0",
    (fx) => yamlDb(fx, "    min-checkpoint-page-count: 0\n"),
    ["line 3", "min-checkpoint-page-count"],
  ),
  configCase(
    "a config with an addr that is not HOST:PORT",
    (fx) => `addr: nonsense\n${yamlDb(fx)}`,
    ["line 1", "addr", '"nonsense"'],
  ),
  configCase(
    "a config with an unknown log level",
    () => "logging:\n  level: loud\ndbs: []\n",
    ["line 2", '"loud"'],
  ),
  configCase("a config of binary garbage", () => "\x00\x01\x02binary", ["line 1"]),
  configCase(
    "a config with a file URL without a path",
    (fx) => yamlDb(fx, "", '      - url: "file://"\n'),
    ["line 4", '"file://"'],
  ),
  {
    name: "a -config file that does not exist",
    args: () => ["databases", "-config", "nowhere.yml"],
    code: 2,
    names: ["DIR/nowhere.yml", "not found"],
  },
  {
    name: "a $LITESTREAM_CONFIG naming a directory",
    args: () => ["databases"],
    env: { LITESTREAM_CONFIG: "replica" },
    code: 2,
    names: ["DIR/replica", "directory"],
  },
  {
    name: "a database path that the config does not list",
    args: async (fx) => ["restore", ...OUT, "-config", await fx.config(yamlDb(fx)), "other.db"],
    code: 2,
    names: ["DIR/other.db", "DIR/c.yml"],
  },
  {
    name: "verify of a database that has no replica in the config",
    args: async (fx) => [
      "verify",
      "-config",
      await fx.config(`dbs:\n  - path: ${fx.dir}/app.db\n    replicas: []\n`),
      "app.db",
    ],
    code: 2,
    names: ["DIR/app.db", "no replica"],
  },
];

const PATHS: Case[] = [
  {
    name: "a restore onto the live database",
    args: (fx) => ["restore", "-o", "app.db", fx.url],
    code: 2,
    names: ["DIR/app.db", "already exists"],
  },
  {
    name: "a restore onto an existing directory",
    args: (fx) => ["restore", "-o", "replica", fx.url],
    code: 2,
    names: ["DIR/replica", "already exists"],
  },
  {
    name: "a restore into a directory that does not exist",
    args: (fx) => ["restore", "-o", "missing/out.db", fx.url],
    code: 1,
    names: ["DIR/missing", "does not exist"],
  },
  {
    name: "a restore to the config's database path, which exists",
    args: async (fx) => ["restore", "-config", await fx.config(yamlDb(fx)), "app.db"],
    code: 2,
    names: ["DIR/app.db", "already exists"],
  },
  {
    name: "verify of a database that is not SQLite",
    args: async (fx) => {
      await Deno.writeTextFile(`${fx.dir}/notes.db`, "these are notes\n".repeat(20));
      return [
        "verify",
        "-config",
        await fx.config(yamlDb(fx).replace("app.db", "notes.db")),
        "notes.db",
      ];
    },
    code: 1,
    names: ["DIR/notes.db", "not a SQLite database"],
  },
  {
    name: "verify of a database path that is a directory",
    args: async (fx) => {
      await Deno.mkdir(`${fx.dir}/dir.db`);
      return [
        "verify",
        "-config",
        await fx.config(yamlDb(fx).replace("app.db", "dir.db")),
        "dir.db",
      ];
    },
    code: 1,
    names: ["DIR/dir.db", "directory"],
  },
];

const PERMISSIONS: Case[] = [
  {
    name: "a restore allowed to write only the replica",
    args: (fx) => ["restore", ...OUT, fx.url],
    permissions: ["--allow-read=DIR", "--allow-write=DIR/replica"],
    code: 1,
    names: ["DIR/", "--allow-write"],
  },
  {
    name: "generations not allowed to read the replica",
    args: (fx) => ["generations", fx.url],
    permissions: ["--allow-read=DIR/app.db"],
    code: 1,
    names: ["DIR/replica", "--allow-read"],
  },
  {
    name: "a config not allowed to be read",
    args: async (fx) => ["databases", "-config", await fx.config(yamlDb(fx))],
    permissions: ["--allow-read=DIR/replica", "--allow-env"],
    code: 2,
    names: ["DIR/c.yml", "--allow-read"],
  },
  {
    name: "a config read without env permission",
    args: async (fx) => ["databases", "-config", await fx.config(yamlDb(fx))],
    permissions: ["--allow-read=DIR"],
    code: 2,
    names: ["DIR/c.yml", "--allow-env"],
  },
  {
    name: "verify not allowed to create its temporary directory",
    args: (fx) => ["verify", fx.url],
    permissions: ["--allow-read=DIR"],
    code: 1,
    names: ["DIR/replica", "temporary directory"],
  },
];

/** Restores `fx.url` into out.db after `damage`; must fail and write nothing. */
function damaged(
  name: string,
  damage: (fx: Fixture) => Promise<void>,
  names: string[],
  extra: Partial<Case> = {},
): Case {
  return {
    name,
    args: async (fx) => {
      await damage(fx);
      return ["restore", ...OUT, fx.url];
    },
    code: 1,
    names,
    ...extra,
  };
}

/** Removes every segment of WAL index `index`. */
function removeIndex(index: number): (fx: Fixture) => Promise<void> {
  return async (fx) => {
    for (const path of await segmentsOf(fx, index)) await Deno.remove(path);
  };
}

const DAMAGED: Case[] = [
  damaged("a truncated snapshot", (fx) => truncateFile(snap(fx), (n) => n >> 1), [
    "Snapshot GEN/00000000",
    "corrupt",
    "LZ4",
  ]),
  damaged("an empty snapshot", (fx) => truncateFile(snap(fx), () => 0), [
    "Snapshot GEN/00000000",
    "corrupt",
  ]),
  damaged("a snapshot with a flipped byte", (fx) => flipByte(snap(fx), (n) => n >> 1), [
    "Snapshot GEN/00000000",
    "corrupt",
  ]),
  damaged(
    "a snapshot that is not LZ4",
    (fx) => Deno.writeTextFile(snap(fx), "hello, not lz4\n"),
    ["Snapshot GEN/00000000", "corrupt"],
  ),
  damaged(
    "a snapshot that is valid LZ4 but not a database",
    (fx) => recode(snap(fx), (raw) => raw.fill(0x41)),
    ["Snapshot GEN/00000000", "not a SQLite database"],
  ),
  damaged(
    "a snapshot whose header names an invalid page size",
    (fx) =>
      recode(snap(fx), (raw) => {
        new DataView(raw.buffer).setUint16(16, 3000);
        return raw;
      }),
    ["Snapshot GEN/00000000", "page size 3000"],
  ),
  damaged(
    "a snapshot that is not a whole number of pages",
    (fx) => recode(snap(fx), (raw) => raw.subarray(0, raw.length - 100)),
    ["Snapshot GEN/00000000", "whole number"],
  ),
  damaged(
    "a WAL index whose header names another page size",
    (fx) =>
      recode(seg(fx, 1), (raw) => {
        const h = decodeWalHeader(raw.subarray(0, WAL_HEADER_SIZE));
        raw.set(encodeWalHeader({ ...h, pageSize: 1024 }), 0);
        return raw;
      }),
    ["WAL index 00000001", "GEN", "page size 1024"],
  ),
  damaged("a truncated WAL segment", (fx) => truncateFile(seg(fx, 2), (n) => n >> 1), [
    "GEN/00000002_00000000.wal.lz4",
    "corrupt",
  ]),
  damaged("an empty WAL segment", (fx) => truncateFile(seg(fx, 2), () => 0), [
    "GEN/00000002_00000000.wal.lz4",
    "corrupt",
  ]),
  damaged("a WAL segment with a flipped byte", (fx) => flipByte(seg(fx, 2), (n) => n - 8), [
    "GEN/00000002_00000000.wal.lz4",
  ]),
  damaged(
    "a WAL frame with a flipped byte (re-encoded: only its checksum tells)",
    (fx) =>
      recode(seg(fx, 2), (raw) => {
        raw[WAL_HEADER_SIZE + WAL_FRAME_HEADER_SIZE + 100] ^= 0xff;
        return raw;
      }),
    ["WAL index 00000002", "GEN", "checksum", "frame 1"],
  ),
  damaged(
    "a WAL segment cut inside a frame",
    async (fx) => await recode(await lastSegment(fx), (raw) => raw.subarray(0, raw.length - 100)),
    ["WAL index 00000003", "GEN", "inside a frame"],
  ),
  damaged(
    "a WAL segment whose last transaction lost its commit frame",
    async (fx) => {
      const fs = walFrameSize(await pageSizeOf(fx));
      await recode(await lastSegment(fx), (raw) => raw.subarray(0, raw.length - fs));
    },
    ["WAL index 00000003", "GEN", "does not end on a commit"],
  ),
  damaged("a missing WAL index", removeIndex(2), ["missing WAL index 00000002", "GEN"]),
  damaged("a missing first segment of a WAL index", (fx) => Deno.remove(seg(fx, 2)), [
    "missing WAL segment GEN/00000002_00000000.wal.lz4",
  ]),
  damaged(
    "a WAL segment that starts after a gap",
    (fx) => Deno.rename(seg(fx, 2), seg(fx, 2, 0x20)),
    ["GEN/00000002_00000000.wal.lz4", "missing"],
  ),
  damaged(
    "a WAL segment that overlaps the previous one",
    (fx) => Deno.copyFile(seg(fx, 2), seg(fx, 2, 0x10)),
    ["GEN/00000002_00000010.wal.lz4", "overlaps"],
  ),
  damaged(
    "a WAL segment whose name has no valid offset",
    (fx) => Deno.rename(seg(fx, 2), `${fx.genDir}/wal/00000002_zz.wal.lz4`),
    ["missing WAL segment GEN/00000002_00000000.wal.lz4"],
  ),
  damaged(
    "a snapshot whose index is above the last WAL segment",
    (fx) => Deno.copyFile(snap(fx), snap(fx, 9)),
    ["GEN", "snapshot 00000009", "00000004"],
  ),
  damaged(
    "a snapshot path that is a directory",
    async (fx) => {
      await Deno.remove(snap(fx));
      await Deno.mkdir(snap(fx));
    },
    ["No snapshot", "DIR/replica"],
  ),
  damaged(
    "a generation name of 15 hex characters",
    (fx) => Deno.rename(fx.genDir, fx.genDir.slice(0, -1)),
    ["No backups", "DIR/replica"],
  ),
  damaged(
    "a generation name in upper case",
    (fx) => Deno.rename(fx.genDir, fx.genDir.replace(/[0-9a-f]{16}$/, (g) => g.toUpperCase())),
    ["No backups", "DIR/replica"],
  ),
  {
    name: "restore -generation that tries path traversal",
    args: (fx) => ["restore", ...OUT, "-generation", "../../escape", fx.url],
    code: 1,
    names: ['"../../escape"', "DIR/replica"],
  },
  {
    name: "wal -generation that tries path traversal",
    args: (fx) => ["wal", "-generation", `../${"0".repeat(16)}`, fx.url],
    code: 1,
    names: [`"../${"0".repeat(16)}"`],
  },
  {
    name: "verify of a replica with a truncated WAL segment",
    args: async (fx) => {
      await truncateFile(seg(fx, 3), (n) => n >> 1);
      return ["verify", fx.url];
    },
    code: 1,
    names: ["DIR/replica", "GEN/00000003_00000000.wal.lz4", "corrupt"],
  },
  {
    name: "verify of the live database against a replica missing a WAL index",
    args: async (fx) => {
      await removeIndex(1)(fx);
      return ["verify", "-config", await fx.config(yamlDb(fx)), "app.db"];
    },
    code: 1,
    names: ["DIR/replica", "missing WAL index 00000001"],
  },
];

// ---------------------------------------------------------------------------------------
// An S3 replica whose object keys try path traversal, on a tiny S3 endpoint in this process
// that stores keys verbatim (as S3 does; the loopback test servers normalize "..").

interface FakeS3 extends AsyncDisposable {
  endpoint: string;
  /** Keys of every request received (decoded). */
  requested: string[];
}

const BUCKET = "bkt";

function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function startFakeS3(objects: Map<string, Uint8Array<ArrayBuffer>>): FakeS3 {
  const requested: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const url = new URL(req.url);
    const path = decodeURIComponent(url.pathname);
    if (path === `/${BUCKET}` || path === `/${BUCKET}/`) {
      const prefix = url.searchParams.get("prefix") ?? "";
      const delimiter = url.searchParams.get("delimiter") ?? "";
      requested.push(`LIST ${prefix}`);
      const contents: string[] = [];
      const prefixes = new Set<string>();
      for (const [key, body] of [...objects].sort(([a], [b]) => a < b ? -1 : 1)) {
        if (!key.startsWith(prefix)) continue;
        const cut = delimiter ? key.indexOf(delimiter, prefix.length) : -1;
        if (cut >= 0) prefixes.add(key.slice(0, cut + delimiter.length));
        else {
          contents.push(
            `<Contents><Key>${xmlEscape(key)}</Key><Size>${body.length}</Size>` +
              `<LastModified>${new Date().toISOString()}</LastModified><ETag>"x"</ETag></Contents>`,
          );
        }
      }
      const common = [...prefixes].map((p) =>
        `<CommonPrefixes><Prefix>${xmlEscape(p)}</Prefix></CommonPrefixes>`
      );
      return new Response(
        `<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>${BUCKET}</Name>` +
          `<Prefix>${xmlEscape(prefix)}</Prefix><KeyCount>${contents.length}</KeyCount>` +
          `<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>${contents.join("")}${
            common.join("")
          }</ListBucketResult>`,
        { headers: { "content-type": "application/xml" } },
      );
    }
    const key = path.slice(BUCKET.length + 2);
    requested.push(`${req.method} ${key}`);
    const body = objects.get(key);
    if (!body) {
      return new Response(
        `<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code>` +
          `<Message>The specified key does not exist.</Message><Key>${
            xmlEscape(key)
          }</Key></Error>`,
        { status: 404, headers: { "content-type": "application/xml" } },
      );
    }
    return new Response(body.slice(), {
      headers: { "content-length": String(body.length), "last-modified": new Date().toUTCString() },
    });
  });
  return {
    endpoint: `http://127.0.0.1:${server.addr.port}`,
    requested,
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

let fakeS3: FakeS3 | undefined;

const TRAVERSAL: Case[] = [
  {
    name: "an S3 replica whose object keys try path traversal",
    args: async (fx) => {
      const snapshot = await Deno.readFile(snap(fx));
      const wal = await Deno.readFile(seg(fx, 0));
      const g = "0123456789abcdef";
      fakeS3 = startFakeS3(
        new Map([
          [
            `app/generations/../../../escape/generations/${g}/snapshots/00000000.snapshot.lz4`,
            snapshot,
          ],
          [`app/generations/${g}/../../../escape/wal/00000000_00000000.wal.lz4`, wal],
          [`app/generations/..%2f..%2fescape/snapshots/00000000.snapshot.lz4`, snapshot],
          [`app/../escape/generations/${g}/snapshots/00000000.snapshot.lz4`, snapshot],
        ]),
      );
      const yaml = `dbs:\n  - path: ${fx.dir}/app.db\n    replicas:\n      - type: s3\n` +
        `        bucket: ${BUCKET}\n        path: app\n        endpoint: ${fakeS3.endpoint}\n` +
        "        access-key-id: x\n        secret-access-key: y\n";
      return ["restore", ...OUT, "-config", await fx.config(yaml), "app.db"];
    },
    code: 1,
    names: [`s3://${BUCKET}/app`, "No backups"],
  },
];

const CASES: [string, Case[]][] = [
  ["flags", FLAGS],
  ["timestamps", TIMESTAMPS],
  ["URLs", URLS],
  ["configs", CONFIGS],
  ["paths", PATHS],
  ["permissions", PERMISSIONS],
  ["damaged replicas", DAMAGED],
  ["path traversal", TRAVERSAL],
];

// ---------------------------------------------------------------------------------------
// The base: one database with a file replica holding a snapshot and WAL indexes 0 to 3,
// made once per run and copied for each case.

let base: Promise<{ dir: string; gen: string }> | undefined;

function makeBase(): Promise<{ dir: string; gen: string }> {
  return base ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "litestream-bad-input-" });
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch { /* gone */ }
    });
    // Several segments per index (unmerged), as v0.3.13 leaves them.
    await using fx = await openTestDb(dir, { minCheckpointPageCount: 20 }, { mergeWindowMs: 0 });
    await using w = new Writer(fx.path);
    await fx.sync();
    for (let i = 0; fx.db.pos()!.index < 3; i++) {
      await w.exec(blobs(10));
      await fx.sync();
      assert.ok(i < 100, "checkpoints advanced the WAL index");
    }
    await w.exec(blobs(5)); // a last transaction of several frames
    await fx.sync();
    const gen = fx.db.generation!;
    await fx.stop();
    return { dir, gen };
  })();
}

async function fixture(dir: string): Promise<Fixture> {
  const { dir: from, gen } = await makeBase();
  const cp = await new Deno.Command("cp", { args: ["-a", `${from}/.`, dir] }).output();
  assert.ok(cp.success, dec.decode(cp.stderr));
  await Deno.mkdir(`${dir}/tmp`);
  const replica = `${dir}/replica`;
  return {
    dir,
    replica,
    url: `file://${replica}`,
    gen,
    genDir: `${replica}/generations/${gen}`,
    async config(yaml: string) {
      await Deno.writeTextFile(`${dir}/c.yml`, yaml);
      return "c.yml";
    },
  };
}

/** Every file and directory under `root` (except SQLite's `-shm`) with a digest of its bytes. */
async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (rel: string) => {
    for await (const e of Deno.readDir(`${root}/${rel}`)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory) {
        out[`${path}/`] = "dir";
        await walk(path);
      } else if (!e.name.endsWith("-shm")) {
        const bytes = await Deno.readFile(`${root}/${path}`);
        const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
        out[path] = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
      }
    }
  };
  await walk("");
  return out;
}

/** Runs `main.ts <args>` in `fx.dir` to completion (killed after 20 s: a hang fails). */
async function runCli(
  fx: Fixture,
  args: string[],
  c: Case,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const env = Deno.env.toObject();
  for (const key of Object.keys(env)) if (/^(LITESTREAM_|AWS_)/.test(key)) delete env[key];
  const perms = (c.permissions ?? TASK_PERMISSIONS).map((p) => p.replaceAll("DIR", fx.dir));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", ...perms, MAIN, ...args],
    cwd: fx.dir,
    env: { ...env, ...c.env, NO_COLOR: "1", TMPDIR: `${fx.dir}/tmp` },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    const out = await child.output();
    return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

let count = 0;
for (const [group, cases] of CASES) {
  for (const c of cases) {
    count++;
    Deno.test({
      name: `bad input (${group}): ${c.name}${c.defect ? ` [known defect: ${c.defect}]` : ""}`,
      ignore: c.defect !== undefined,
      async fn() {
        await using tmp = await tempDir();
        const fx = await fixture(tmp.path);
        try {
          const args = await c.args(fx);
          const before = await tree(fx.dir);
          const r = await runCli(fx, args, c);
          const lines = r.stderr.split("\n").filter((l) => l !== "");
          const errors = lines.filter((l) => !LOG_LINE_REGEXP.test(l));
          const shown = `exit ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
          assert.equal(r.code, c.code, `exit code; ${shown}`);
          assert.equal(errors.length, 1, `exactly one error line; ${shown}`);
          assert.equal(lines.at(-1), errors[0], `the error line comes last; ${shown}`);
          assert.match(errors[0], /^litestream: \S/, shown);
          for (const name of c.names) {
            const want = name.replaceAll("DIR", fx.dir).replaceAll("GEN", fx.gen);
            assert.ok(errors[0].includes(want), `"${errors[0]}" does not name ${want}`);
          }
          assert.equal(r.stdout, "", `nothing on stdout; ${shown}`);
          assert.deepEqual(await tree(fx.dir), before, "files were created, changed or removed");
          if (fakeS3) {
            const followed = fakeS3.requested.filter((k) =>
              !k.startsWith("LIST") && k.includes("..")
            );
            assert.deepEqual(followed, [], "a key with .. was requested");
          }
        } finally {
          await fakeS3?.[Symbol.asyncDispose]();
          fakeS3 = undefined;
        }
      },
    });
  }
}

Deno.test("bad input: the catalogue holds at least 50 cases", () => {
  const ignored = CASES.flatMap(([, cases]) => cases).filter((c) => c.defect).length;
  // deno-lint-ignore no-console
  console.log(
    `bad input cases: ${count}${ignored ? ` (${ignored} ignored as known defects)` : ""}`,
  );
  assert.ok(count >= 50, `only ${count} cases`);
});
