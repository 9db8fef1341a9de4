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
import { applyLitestreamEnv } from "../clients/env.ts";

/** A subcommand: its usage text and what runs it. */
interface Command {
  usage: string;
  run: (args: string[], log: Logger) => Promise<number> | number;
}

/**
 * Subcommands, each loaded when run: `version` or `restore` need not load the replicator
 * (SQLite connections, watchers, the metrics server), which was most of their start-up.
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  databases: async () => {
    const m = await import("./databases.ts");
    return { usage: m.usage, run: (a) => m.run(a) };
  },
  generations: async () => {
    const m = await import("./listing.ts");
    return { usage: m.generationsUsage, run: (a) => m.runGenerations(a) };
  },
  replicate: async () => {
    const m = await import("./replicate.ts");
    return { usage: m.usage, run: m.run };
  },
  restore: async () => {
    const m = await import("./restore.ts");
    return { usage: m.usage, run: m.run };
  },
  snapshots: async () => {
    const m = await import("./listing.ts");
    return { usage: m.snapshotsUsage, run: (a) => m.runSnapshots(a) };
  },
  verify: async () => {
    const m = await import("./verify.ts");
    return { usage: m.usage, run: m.run };
  },
  version: async () => {
    const m = await import("./version.ts");
    return { usage: m.usage, run: m.run };
  },
  wal: async () => {
    const m = await import("./listing.ts");
    return { usage: m.walUsage, run: (a) => m.runWal(a) };
  },
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
    if (cmd === "help" && rest[0] && Object.hasOwn(COMMANDS, rest[0])) {
      print((await COMMANDS[rest[0]]()).usage);
      return 0;
    }
    print(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  if (!Object.hasOwn(COMMANDS, cmd)) {
    printError(`litestream: unknown command "${cmd}" (run 'litestream help' for usage)`);
    return 2;
  }
  const command = await COMMANDS[cmd]();
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
