/**
 * `litestream replicate`: the daemon.
 *
 * @module
 */
import { formatUsage, parseFlags } from "./flags.ts";
import { CONFIG_FLAGS, isUrl, readConfig } from "./common.ts";
import type { Config } from "../config.ts";
import { replicaConfigFromUrl } from "../replica_url.ts";
import { Store } from "../store.ts";
import { consoleSink, Logger } from "../log.ts";
import { describeError, UsageError } from "../errors.ts";
import { absPath, dirname, exists } from "../internal/fs.ts";

export const FLAGS = {
  ...CONFIG_FLAGS,
  exec: {
    type: "string",
    valueName: "CMD",
    description: "Run CMD as a child process; stop replicating when it exits",
  },
} as const;

export const usage = formatUsage(
  "replicate",
  "litestream replicate [arguments] [DB_PATH REPLICA_URL [REPLICA_URL...]]\n\nReplicates the databases of the config file, or one database to the given replica URLs,\nuntil SIGINT or SIGTERM (a final sync runs before exit).",
  FLAGS,
);

/** Splits a command line into words: quotes and backslashes as a POSIX shell, no expansion. */
export function splitCommandLine(line: string): string[] {
  const out: string[] = [];
  let cur = "";
  let has = false;
  let quote: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) quote = undefined;
      else if (c === "\\" && quote === '"' && i + 1 < line.length) cur += line[++i];
      else cur += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      has = true;
    } else if (c === "\\" && i + 1 < line.length) {
      cur += line[++i];
      has = true;
    } else if (/\s/.test(c)) {
      if (has || cur) out.push(cur);
      cur = "";
      has = false;
    } else cur += c;
  }
  if (quote) throw new UsageError(`Unterminated quote in -exec "${line}"`);
  if (has || cur) out.push(cur);
  return out;
}

export async function run(args: string[], baseLog: Logger): Promise<number> {
  const { values, positionals } = parseFlags(args, FLAGS, "replicate");
  let config: Config;
  if (positionals.length > 0) {
    if (values.config !== undefined) {
      throw new UsageError("Cannot specify a replica URL and the -config flag");
    }
    const [dbPath, ...urls] = positionals;
    if (isUrl(dbPath)) {
      throw new UsageError(`First argument must be a database path, got URL "${dbPath}"`);
    }
    if (urls.length === 0) {
      throw new UsageError(`Must specify at least one replica URL for "${dbPath}"`);
    }
    config = {
      dbs: [{ path: absPath(dbPath), replicas: urls.map((u) => replicaConfigFromUrl(u)) }],
      logging: { level: "info", type: "text", stderr: false },
    };
  } else {
    config = await readConfig(values);
  }
  const execLine = values.exec ?? config.exec;
  const execArgv = execLine ? splitCommandLine(execLine) : undefined;
  if (execArgv && execArgv.length === 0) throw new UsageError("-exec command is empty");

  const log = positionals.length > 0 ? baseLog : new Logger(
    consoleSink({
      level: config.logging.level,
      format: config.logging.type,
      stderr: config.logging.stderr,
    }),
  );
  if (config.dbs.length === 0) log.warn("no databases specified in configuration");
  // A database may be created after we start, but not in a directory that does not exist:
  // that is a typo, and waiting for it would retry forever.
  for (const db of config.dbs) {
    if (!(await exists(dirname(db.path)))) {
      throw new Deno.errors.NotFound(
        `Cannot replicate "${db.path}": directory "${dirname(db.path)}" does not exist`,
      );
    }
  }

  // A bad metrics address is a usage error: report it before opening anything.
  const listen = config.addr ? parseAddr(config.addr) : undefined;

  // Listen before opening anything: a signal during startup (the first sync can take a
  // while) must still end in a final sync and exit 0, as in v0.3.13, not in the default kill.
  using signals = new StopSignals(log);
  const store = await Store.fromConfig(config, log);
  await store.open();

  const ac = new AbortController();
  let server: Deno.HttpServer | undefined;
  let child: Deno.ChildProcess | undefined;
  let childStatus: Deno.CommandStatus | undefined;
  try {
    if (listen) {
      server = Deno.serve({
        ...listen,
        signal: ac.signal,
        onListen: ({ hostname, port }) =>
          log.info("serving metrics", { addr: `${hostname}:${port}` }),
      }, (req) => {
        const url = new URL(req.url);
        if (url.pathname === "/metrics") {
          return new Response(store.metricsText(), {
            headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
          });
        }
        return new Response("not found\n", { status: 404 });
      });
    }
    // A signal received during startup already began the shutdown: no child to start.
    if (execArgv && !signals.received) {
      try {
        child = new Deno.Command(execArgv[0], {
          args: execArgv.slice(1),
          stdin: "null",
          stdout: "inherit",
          stderr: "inherit",
        }).spawn();
      } catch (err) {
        throw new Error(`Cannot run -exec command "${execArgv[0]}"`, { cause: err });
      }
    }

    // Wait for a signal or for the child to exit.
    const first = await Promise.race([
      signals.first.then((signal) => ({ signal, status: undefined })),
      ...(child ? [child.status.then((status) => ({ signal: undefined, status }))] : []),
    ]);
    if (first.signal) {
      // Forward the signal, as v0.3.13 does, and let the child finish first.
      if (child) {
        try {
          child.kill(first.signal);
        } catch { /* already gone */ }
        childStatus = await child.status;
      }
    } else {
      signals.shutdown();
      childStatus = first.status;
      const { code, signal } = childStatus;
      log.info("subprocess exited, litestream shutting down", signal ? { code, signal } : { code });
    }
  } catch (err) {
    ac.abort();
    await server?.finished;
    await store.close().catch((e) => log.error("close failed", { error: describeError(e) }));
    throw err;
  }
  ac.abort();
  await server?.finished;
  await store.close();
  log.info("litestream shut down");
  // Decided after the final sync, so that a signal of the same Ctrl-C as the child's has
  // arrived by now, and so that the exit code is the only thing a child's failure changes.
  if (childStatus && !childSucceeded(childStatus, signals.received)) {
    const how = childStatus.signal
      ? `was killed by ${childStatus.signal}`
      : `exited with code ${childStatus.code}`;
    throw new Error(`-exec command "${execLine}" ${how}`);
  }
  return 0;
}

/** Splits `HOST:PORT` of the `addr` setting into `Deno.serve` options; empty host = all. */
function parseAddr(addr: string): { hostname: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(addr);
  if (!m) throw new UsageError(`Invalid addr "${addr}": must be HOST:PORT`);
  return { hostname: m[1] || "0.0.0.0", port: Number(m[2]) };
}

/** The signals that stop `replicate`. */
const STOP_SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

/** Exit codes of a shell-like child that a stop signal ended: 128 + SIGINT, 128 + SIGTERM. */
const STOPPED_CODES: readonly number[] = [130, 143];

/**
 * Whether the `-exec` child ended well: exit code 0, or ended by SIGINT or SIGTERM (killed,
 * or exit code 130 or 143 as shells report it) when we received a stop signal too. That
 * signal is either ours, forwarded to it, or the same Ctrl-C reaching its process group.
 */
function childSucceeded(status: Deno.CommandStatus, signalled: boolean): boolean {
  if (status.code === 0) return true;
  const stopped = (status.signal !== null && STOP_SIGNALS.includes(status.signal)) ||
    (status.signal === null && STOPPED_CODES.includes(status.code));
  return signalled && stopped;
}

/**
 * Catches SIGINT and SIGTERM from construction until disposal, so that none of them ends
 * the process with its default action. The first one begins the shutdown
 * ({@linkcode StopSignals.first} resolves); later ones are only logged.
 *
 * Later ones are common: one Ctrl-C reaches us from the terminal and again from every task
 * runner in between (`npx`, `deno task`) that forwards it, and SIGTERM may follow SIGINT.
 * Their default action would kill the process in the middle of the final sync.
 */
class StopSignals implements Disposable {
  readonly #log: Logger;
  readonly #first = Promise.withResolvers<Deno.Signal>();
  readonly #listeners: [Deno.Signal, () => void][] = [];
  #received = 0;
  #shuttingDown = false;

  constructor(log: Logger) {
    this.#log = log;
    for (const signal of STOP_SIGNALS) {
      const listener = () => this.#receive(signal);
      Deno.addSignalListener(signal, listener);
      this.#listeners.push([signal, listener]);
    }
  }

  /** Resolves with the first signal, unless {@linkcode shutdown} was called before it. */
  get first(): Promise<Deno.Signal> {
    return this.#first.promise;
  }

  /** Whether any stop signal arrived. */
  get received(): boolean {
    return this.#received > 0;
  }

  /** Records that the shutdown began for another reason: signals are only logged from now. */
  shutdown(): void {
    this.#shuttingDown = true;
  }

  #receive(signal: Deno.Signal): void {
    this.#received++;
    if (!this.#shuttingDown) {
      this.#shuttingDown = true;
      this.#log.info("signal received, litestream shutting down", { signal });
      this.#first.resolve(signal);
    } else if (this.#received > 1) {
      this.#log.info("signal received again, still shutting down", { signal });
    } else {
      this.#log.info("signal received, already shutting down", { signal });
    }
  }

  [Symbol.dispose](): void {
    for (const [signal, listener] of this.#listeners) {
      Deno.removeSignalListener(signal, listener);
    }
  }
}
