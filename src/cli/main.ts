/**
 * Subcommand dispatch, and the single place where errors become output and exit codes:
 * usage and configuration errors exit 2, every other failure exits 1 (v0.3.13 exits 1 for
 * both), always with one line on stderr.
 *
 * @module
 */
import { print, printError } from "./output.ts";
import { HelpRequested } from "./flags.ts";
import { describeError, findCause, UsageError } from "../errors.ts";
import { consoleSink, Logger } from "../log.ts";
import * as replicate from "./replicate.ts";
import * as restore from "./restore.ts";
import * as listing from "./listing.ts";
import * as databases from "./databases.ts";
import * as verify from "./verify.ts";
import * as version from "./version.ts";
import { applyLitestreamEnv } from "../clients/env.ts";

const COMMANDS: Record<
  string,
  { usage: string; run: (args: string[], log: Logger) => Promise<number> | number }
> = {
  databases: { usage: databases.usage, run: (a) => databases.run(a) },
  generations: { usage: listing.generationsUsage, run: (a) => listing.runGenerations(a) },
  replicate: { usage: replicate.usage, run: replicate.run },
  restore: { usage: restore.usage, run: restore.run },
  snapshots: { usage: listing.snapshotsUsage, run: (a) => listing.runSnapshots(a) },
  verify: { usage: verify.usage, run: verify.run },
  version: { usage: version.usage, run: version.run },
  wal: { usage: listing.walUsage, run: (a) => listing.runWal(a) },
};

export const USAGE = `litestream is a tool for replicating SQLite databases.

Usage:

	litestream <command> [arguments]

The commands are:

	databases    list databases specified in config file
	generations  list available generations for a database
	replicate    runs a server to replicate databases
	restore      recovers database backup from a replica
	snapshots    list available snapshots for a database
	verify       checks that a replica restores and matches its database
	version      prints the binary version
	wal          list available WAL files for a database
`;

/** Runs the CLI with `args` and returns the process exit code. */
export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (cmd === undefined || cmd === "help" || cmd === "-h" || cmd === "--help" || cmd === "-help") {
    if (cmd === "help" && rest[0] && COMMANDS[rest[0]]) {
      print(COMMANDS[rest[0]].usage);
      return 0;
    }
    print(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  const command = COMMANDS[cmd];
  if (!command) {
    printError(`litestream: unknown command "${cmd}" (run 'litestream help' for usage)`);
    return 2;
  }
  // Only with permission to all four variables: asking would interrupt a run that has no
  // use for them (a file replica), and the S3 client applies the same rule by itself.
  if (LITESTREAM_ENV.every(mayUseEnv)) applyLitestreamEnv();
  // Commands other than replicate log to stderr, so their stdout stays machine-readable.
  const log = new Logger(consoleSink({ level: "info", stderr: cmd !== "replicate" }));
  try {
    return await command.run(rest, log);
  } catch (err) {
    if (err instanceof HelpRequested) {
      print(command.usage);
      return 0;
    }
    printError(`litestream: ${describeAll(err)}`);
    return findCause(err, UsageError) ? 2 : 1;
  }
}

/** The variables {@linkcode applyLitestreamEnv} reads and writes. */
const LITESTREAM_ENV = [
  "LITESTREAM_ACCESS_KEY_ID",
  "LITESTREAM_SECRET_ACCESS_KEY",
  "AWS_ACCESS_KEY_ID",
  "AWS_SECRET_ACCESS_KEY",
];

/** True if the process may read and set `name`; asks nothing. */
function mayUseEnv(name: string): boolean {
  return Deno.permissions.querySync({ name: "env", variable: name }).state === "granted";
}

/**
 * {@linkcode describeError}, plus the errors an `AggregateError` holds (a shutdown that
 * failed in several steps), all on one line.
 */
function describeAll(err: unknown): string {
  const head = describeError(err);
  if (!(err instanceof AggregateError) || err.errors.length === 0) return head;
  return `${head}: ${err.errors.map(describeError).join("; ")}`;
}
