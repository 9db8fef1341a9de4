/**
 * Tests of src/cli/flags.ts: Go `flag` spellings, flags after positionals, `--`, help,
 * and the one-line usage errors.
 */
import assert from "node:assert/strict";
import { type FlagSpec, formatUsage, HelpRequested, parseFlags } from "../src/cli/flags.ts";
import { UsageError } from "../src/errors.ts";

const RESTORE = {
  config: { type: "string", valueName: "PATH", description: "Config file path" },
  "no-expand-env": { type: "boolean", description: "Do not expand $ENV in the config file" },
  o: { type: "string", valueName: "PATH", description: "Output path" },
  parallelism: {
    type: "string",
    default: "8",
    valueName: "N",
    description: "WAL downloads at once",
  },
  "if-db-not-exists": { type: "boolean", description: "Do nothing if the database exists" },
} as const satisfies FlagSpec;

Deno.test("parseFlags() accepts -name value, --name value, -name=value and --name=value", () => {
  for (
    const args of [
      ["-o", "out.db", "s3://b/a"],
      ["--o", "out.db", "s3://b/a"],
      ["-o=out.db", "s3://b/a"],
      ["--o=out.db", "s3://b/a"],
    ]
  ) {
    const { values, positionals } = parseFlags(args, RESTORE, "restore");
    assert.equal(values.o, "out.db", args.join(" "));
    assert.deepEqual(positionals, ["s3://b/a"]);
  }
});

Deno.test("parseFlags() fills defaults: false for booleans, undefined for strings", () => {
  const { values, positionals } = parseFlags([], RESTORE, "restore");
  assert.deepEqual(values, {
    config: undefined,
    "no-expand-env": false,
    o: undefined,
    parallelism: "8",
    "if-db-not-exists": false,
  });
  assert.deepEqual(positionals, []);
  // The types follow the spec.
  const parallelism: string = values.parallelism;
  const expand: boolean = values["no-expand-env"];
  // @ts-expect-error: a string flag without a default may be undefined.
  const output: string = values.o;
  assert.deepEqual([parallelism, expand, output], ["8", false, undefined]);
});

Deno.test("parseFlags() reads booleans by presence or with =true|false", () => {
  const cases: [string, boolean][] = [
    ["-if-db-not-exists", true],
    ["--if-db-not-exists", true],
    ["-if-db-not-exists=true", true],
    ["-if-db-not-exists=false", false],
    ["-if-db-not-exists=1", true],
    ["-if-db-not-exists=F", false],
  ];
  for (const [arg, expected] of cases) {
    assert.equal(parseFlags([arg], RESTORE, "restore").values["if-db-not-exists"], expected, arg);
  }
  // A boolean never takes the next argument as its value.
  const { values, positionals } = parseFlags(["-if-db-not-exists", "false"], RESTORE, "restore");
  assert.equal(values["if-db-not-exists"], true);
  assert.deepEqual(positionals, ["false"]);
});

Deno.test("parseFlags() rejects a boolean flag with a value that is not true or false", () => {
  assert.throws(
    () => parseFlags(["-if-db-not-exists=yes"], RESTORE, "restore"),
    new UsageError('flag "-if-db-not-exists" takes true or false, got "yes"'),
  );
});

Deno.test("parseFlags() accepts flags after positionals, unlike v0.3.13", () => {
  const { values, positionals } = parseFlags(
    ["/data/app.db", "-o", "/tmp/out.db", "-if-db-not-exists", "--config=/etc/ls.yml"],
    RESTORE,
    "restore",
  );
  assert.deepEqual(positionals, ["/data/app.db"]);
  assert.equal(values.o, "/tmp/out.db");
  assert.equal(values["if-db-not-exists"], true);
  assert.equal(values.config, "/etc/ls.yml");
});

Deno.test("parseFlags() stops at -- and keeps a lone - as a positional", () => {
  const { values, positionals } = parseFlags(
    ["-", "-o", "x", "--", "-o", "--help"],
    RESTORE,
    "restore",
  );
  assert.equal(values.o, "x");
  assert.deepEqual(positionals, ["-", "-o", "--help"]);
});

Deno.test("parseFlags() gives a string flag the next argument even if it starts with -", () => {
  assert.equal(parseFlags(["-o", "-weird.db"], RESTORE, "restore").values.o, "-weird.db");
  assert.equal(parseFlags(["-o="], RESTORE, "restore").values.o, "");
});

Deno.test("parseFlags() lets the last occurrence win, as Go does", () => {
  assert.equal(parseFlags(["-o", "a", "-o", "b"], RESTORE, "restore").values.o, "b");
});

Deno.test("parseFlags() throws HelpRequested for -h, -help and --help", () => {
  for (const arg of ["-h", "-help", "--help", "--h"]) {
    assert.throws(() => parseFlags(["/a.db", arg], RESTORE, "restore"), (err: unknown) => {
      assert.ok(err instanceof HelpRequested, arg);
      assert.ok(!(err instanceof UsageError));
      assert.equal(err.command, "restore");
      return true;
    });
  }
});

Deno.test("parseFlags() rejects an unknown flag naming it and the command", () => {
  assert.throws(
    () => parseFlags(["-foo"], RESTORE, "restore"),
    new UsageError('unknown flag "-foo" for "restore"'),
  );
  assert.throws(
    () => parseFlags(["--token=s3cr3t"], RESTORE, "restore"),
    new UsageError('unknown flag "--token" for "restore"'),
  );
  // v0.3.13's usage text documents -v, but no such flag exists.
  assert.throws(() => parseFlags(["-v"], RESTORE, "restore"), UsageError);
  assert.throws(
    () => parseFlags(["---o", "x"], RESTORE, "restore"),
    new UsageError('bad flag syntax "---o"'),
  );
  assert.throws(
    () => parseFlags(["-=x"], RESTORE, "restore"),
    new UsageError('bad flag syntax "-=x"'),
  );
});

Deno.test("parseFlags() rejects a string flag without a value", () => {
  assert.throws(
    () => parseFlags(["s3://b/a", "-o"], RESTORE, "restore"),
    new UsageError('flag "-o" needs a value'),
  );
  assert.throws(
    () => parseFlags(["--config"], RESTORE, "restore"),
    new UsageError('flag "--config" needs a value'),
  );
});

Deno.test("parseFlags() does not treat inherited object keys as flags", () => {
  assert.throws(() => parseFlags(["-toString"], RESTORE, "restore"), UsageError);
  assert.throws(() => parseFlags(["-__proto__"], RESTORE, "restore"), UsageError);
});

Deno.test("formatUsage() lists each flag with its description and default", () => {
  assert.equal(
    formatUsage(
      "restore",
      "[flags] DB_PATH | REPLICA_URL\nRecovers a database from a replica.",
      RESTORE,
    ),
    [
      "Usage: litestream restore [flags] DB_PATH | REPLICA_URL",
      "",
      "Recovers a database from a replica.",
      "",
      "Flags:",
      "  -config PATH       Config file path",
      "  -no-expand-env     Do not expand $ENV in the config file",
      "  -o PATH            Output path",
      '  -parallelism N     WAL downloads at once (default "8")',
      "  -if-db-not-exists  Do nothing if the database exists",
      "  -h, -help          Show this help",
      "",
    ].join("\n"),
  );
});

Deno.test("formatUsage() accepts a synopsis that is the whole command line", () => {
  const text = formatUsage("databases", "litestream databases [flags]\n\nLists databases.", {});
  assert.equal(
    text,
    "Usage: litestream databases [flags]\n\nLists databases.\n\nFlags:\n  -h, -help  Show this help\n",
  );
});

Deno.test("formatUsage() wraps long flag names and indents multi-line descriptions", () => {
  const text = formatUsage("x", "", {
    "a-very-long-flag-name-for-testing": { type: "string", description: "Long one" },
    b: { type: "boolean", default: true, description: "First line\nsecond line" },
    c: { type: "boolean" },
  });
  assert.equal(
    text,
    [
      "Usage: litestream x",
      "",
      "Flags:",
      "  -a-very-long-flag-name-for-testing VALUE",
      "                                Long one",
      "  -b                            First line",
      "                                second line (default true)",
      "  -c",
      "  -h, -help                     Show this help",
      "",
    ].join("\n"),
  );
});
