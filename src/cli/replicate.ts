/**
 * `litestream replicate`: the daemon.
 *
 * @module
 */
import { formatUsage, parseFlags } from "./flags.ts";
import { CONFIG_FLAGS, isUrl, readConfig } from "./common.ts";
import { type Config, replicaConfigFromUrl } from "../config.ts";
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

  // Listen before opening anything: a signal during startup (the first sync can take a
  // while) must still end in a final sync and exit 0, as in v0.3.13, not in the default kill.
  const stop = Promise.withResolvers<{ signal?: Deno.Signal; childCode?: number }>();
  const handlers: [Deno.Signal, () => void][] = [];
  for (const sig of ["SIGINT", "SIGTERM"] as Deno.Signal[]) {
    const h = () => stop.resolve({ signal: sig });
    Deno.addSignalListener(sig, h);
    handlers.push([sig, h]);
  }
  const removeHandlers = () => {
    for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  };

  let store: Store;
  try {
    store = await Store.fromConfig(config, log);
    await store.open();
  } catch (err) {
    removeHandlers();
    throw err;
  }

  const ac = new AbortController();
  let server: Deno.HttpServer | undefined;
  if (config.addr) {
    const m = /^(.*):(\d+)$/.exec(config.addr);
    if (!m) throw new UsageError(`Invalid addr "${config.addr}": must be HOST:PORT`);
    server = Deno.serve({
      hostname: m[1] || "0.0.0.0",
      port: Number(m[2]),
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

  let child: Deno.ChildProcess | undefined;
  if (execArgv) {
    try {
      child = new Deno.Command(execArgv[0], {
        args: execArgv.slice(1),
        stdin: "null",
        stdout: "inherit",
        stderr: "inherit",
      }).spawn();
    } catch (err) {
      removeHandlers();
      ac.abort();
      await server?.finished;
      await store.close().catch((e) => log.error("close failed", { error: describeError(e) }));
      throw new Error(`Cannot run -exec command "${execArgv[0]}"`, { cause: err });
    }
  }

  // Wait for a signal or for the child to exit.
  child?.status.then((s) => stop.resolve({ childCode: s.code }));
  const why = await stop.promise;
  removeHandlers();

  let code = 0;
  if (why.signal) {
    log.info("signal received, litestream shutting down", { signal: why.signal });
    if (child) {
      try {
        child.kill(why.signal);
      } catch { /* already gone */ }
      await child.status;
    }
  } else {
    log.info("subprocess exited, litestream shutting down", { code: why.childCode });
    if (why.childCode !== 0) code = 1;
  }
  ac.abort();
  await server?.finished;
  await store.close();
  log.info("litestream shut down");
  if (code !== 0) {
    // After the final sync, so the exit code is the only thing the child's failure changes.
    throw new Error(`-exec command "${execLine}" exited with code ${why.childCode}`);
  }
  return code;
}
