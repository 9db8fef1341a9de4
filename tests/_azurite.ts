/**
 * Azurite, Microsoft's Azure Storage emulator, as a real Blob service on 127.0.0.1 for tests:
 * the version `scripts/setup_azurite.sh` pins, run with `node` from the directory it installs
 * into (never an `azurite` found on PATH), in-memory, on a free port, with the well-known
 * development account `devstoreaccount1`. Azurite checks SharedKey signatures, so wrong
 * keys are rejected as Azure rejects them.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { signAbsRequest } from "../src/clients/abs.ts";

/** Azurite's development account. */
export const AZURITE_ACCOUNT = "devstoreaccount1";
/** The development account's published key (not a secret). */
export const AZURITE_KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/** A running Azurite Blob service, stopped on dispose. */
export interface AzuriteServer extends AsyncDisposable {
  /** Version of the Azurite package that runs (the pinned one, checked before start). */
  readonly version: string;
  /** Blob endpoint of the development account: `http://127.0.0.1:PORT/devstoreaccount1`. */
  readonly endpoint: string;
  readonly accountName: string;
  readonly accountKey: string;
  /** Milliseconds from spawning Azurite to it listening. */
  readonly startMs: number;
  /** Creates a container (Create Container, signed with the account key). */
  createContainer(name: string): Promise<void>;
  stop(): Promise<void>;
}

const SETUP_SCRIPT = fileURLToPath(new URL("../scripts/setup_azurite.sh", import.meta.url));
const ENTRY = "node_modules/azurite/dist/src/blob/main.js";
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 5_000;

/** Where `scripts/setup_azurite.sh` installs Azurite: `$LITESTREAM_AZURITE_DIR` or `<repo>/.bench/azurite`. */
export function azuriteDir(): string {
  return Deno.env.get("LITESTREAM_AZURITE_DIR") ??
    fileURLToPath(new URL("../.bench/azurite", import.meta.url));
}

/** The Azurite version `scripts/setup_azurite.sh` pins (its `AZURITE_VERSION=` line). */
export async function pinnedAzuriteVersion(): Promise<string> {
  const script = await Deno.readTextFile(SETUP_SCRIPT);
  const m = /^AZURITE_VERSION="([^"]+)"$/m.exec(script);
  if (!m) throw new Error(`No AZURITE_VERSION="..." line in ${SETUP_SCRIPT}`);
  return m[1];
}

/**
 * Returns why Azurite cannot be started here, or `undefined` if it can: node must run, and
 * {@linkcode azuriteDir} must hold the pinned version. Nothing is installed here; CI runs
 * `scripts/setup_azurite.sh` first.
 */
export async function azuriteUnavailable(): Promise<string | undefined> {
  const want = await pinnedAzuriteVersion();
  const dir = azuriteDir();
  const fix = "run scripts/setup_azurite.sh";
  try {
    const out = await new Deno.Command("node", { args: ["--version"], stdout: "null" }).output();
    if (!out.success) return "node does not run";
  } catch {
    return "node is not installed";
  }
  let version: string;
  try {
    await Deno.stat(`${dir}/${ENTRY}`);
    const pkg = JSON.parse(
      await Deno.readTextFile(`${dir}/node_modules/azurite/package.json`),
    ) as { version?: string };
    version = pkg.version ?? "unknown";
  } catch {
    return `Azurite ${want} is not installed in ${dir} (${fix})`;
  }
  if (version !== want) return `${dir} holds Azurite ${version}, the project pins ${want} (${fix})`;
  return undefined;
}

/** Starts Azurite's Blob service on a free loopback port, in memory. */
export async function startAzurite(): Promise<AzuriteServer> {
  const t0 = performance.now();
  const unavailable = await azuriteUnavailable();
  if (unavailable) throw new Error(`Cannot start Azurite: ${unavailable}`);
  const version = await pinnedAzuriteVersion();
  // Azurite writes nothing in memory mode; a scratch working directory makes sure of it.
  const cwd = await Deno.makeTempDir({ prefix: "azurite-" });
  const child = new Deno.Command("node", {
    args: [
      `${azuriteDir()}/${ENTRY}`,
      "--blobHost",
      "127.0.0.1",
      "--blobPort",
      "0",
      "--inMemoryPersistence",
      "--extentMemoryLimit",
      "512",
      "--disableTelemetry",
      "--silent",
    ],
    cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  // Azurite prints "... successfully listens on http://127.0.0.1:PORT" once it listens;
  // keep draining both pipes afterwards so a full pipe never blocks it.
  const tail: string[] = [];
  const { promise: portFound, resolve: resolvePort } = Promise.withResolvers<number>();
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    let pending = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (pending + text).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 40) tail.shift();
        const m = /successfully listens on https?:\/\/127\.0\.0\.1:(\d+)/.exec(line);
        if (m) resolvePort(Number(m[1]));
      }
    }
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);

  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped: Promise<void> | undefined;
  const stop = () =>
    stopped ??= (async () => {
      clearTimeout(timer);
      try {
        child.kill("SIGTERM");
      } catch {
        // already exited
      }
      let killTimer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        child.status,
        new Promise<void>((resolve) => {
          killTimer = setTimeout(() => {
            try {
              child.kill("SIGKILL");
            } catch {
              // exited meanwhile
            }
            resolve();
          }, STOP_TIMEOUT_MS);
        }),
      ]);
      clearTimeout(killTimer);
      await child.status;
      await drained;
      await Deno.remove(cwd, { recursive: true }).catch(() => {});
    })();

  try {
    const port = await Promise.race([
      portFound,
      child.status.then((s) => {
        throw new Error(`Azurite exited with code ${s.code} before listening`);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`Azurite did not listen within ${START_TIMEOUT_MS} ms`)),
          START_TIMEOUT_MS,
        );
      }),
    ]);
    clearTimeout(timer);
    const endpoint = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
    return {
      version,
      endpoint,
      accountName: AZURITE_ACCOUNT,
      accountKey: AZURITE_KEY,
      startMs: performance.now() - t0,
      createContainer: (name) => createContainer(endpoint, name),
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (err) {
    await stop();
    throw new Error(`Cannot start Azurite: ${(err as Error).message}\n${tail.join("\n")}`, {
      cause: err,
    });
  }
}

async function createContainer(endpoint: string, name: string): Promise<void> {
  const url = `${endpoint}/${encodeURIComponent(name)}?restype=container`;
  const headers = new Headers();
  await signAbsRequest(AZURITE_ACCOUNT, AZURITE_KEY, "PUT", url, headers);
  const res = await fetch(url, { method: "PUT", headers, body: new Uint8Array() });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`Create Container ${name} failed: ${res.status} ${text}`);
}
