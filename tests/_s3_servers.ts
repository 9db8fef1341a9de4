/**
 * Real S3 servers on 127.0.0.1 for tests, each with a bucket ready:
 *
 * - `moto`: moto's server (Python, `scripts/setup_test_deps.sh` installs it) as a child
 *   process, with IAM authentication switched on so wrong credentials are rejected;
 * - `fauxqs`: fauxqs in this process (Node-style npm package that runs under Deno); it
 *   accepts any credentials.
 *
 * moto is always the version `scripts/setup_test_deps.sh` pins, run from the directory it
 * installs it into; a `moto_server` on PATH is never used.
 *
 * Plus {@linkcode startS3Proxy}: an HTTP proxy in front of either that records requests,
 * enforces S3's 1000-key DeleteObjects limit (neither server does) and injects failures:
 * the next few requests ({@linkcode S3Proxy.inject}), or a fault mode switched at run time
 * ({@linkcode S3Proxy.setFaultMode}): 5xx answers, connection resets, stalls, at a rate.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as http from "node:http";
import * as https from "node:https";
import { fileURLToPath } from "node:url";
// A test-only package: imported here by its full specifier, and locked in tests/deno.lock
// (the test and check tasks' lock file), so that `deno task replicate` never downloads it.
// deno-lint-ignore no-import-prefix
import { startFauxqs } from "npm:fauxqs@2.4.1";
import type { S3ReplicaClientOptions } from "../src/clients/s3.ts";
import { closedPort, isCi } from "./_helpers.ts";

export { closedPort, isCi };

/** S3 server implementations the tests can start. */
export type S3ServerKind = "moto" | "fauxqs";

/** A running S3 server with one bucket, stopped on dispose. */
export interface S3TestServer extends AsyncDisposable {
  readonly kind: S3ServerKind;
  /** Version of the server package, e.g. `"5.2.5"` for moto (the pinned one, checked at start). */
  readonly version: string;
  /** `http://127.0.0.1:PORT` */
  readonly endpoint: string;
  /** A bucket that exists, in us-east-1. */
  readonly bucket: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** True if the server rejects bad signatures and unknown access keys. */
  readonly checksCredentials: boolean;
  /** A bucket in eu-west-2 whose region GetBucketLocation reports, if the server supports it. */
  readonly otherRegionBucket?: { name: string; region: string };
  /** Milliseconds from spawning the server to its bucket being ready. */
  readonly startMs: number;
  /** Client options for this server's bucket under `path`, with valid credentials. */
  clientOptions(path: string): S3ReplicaClientOptions;
  stop(): Promise<void>;
}

const BUCKET = "litestream-test";
const OTHER_REGION = "eu-west-2";
const OTHER_REGION_BUCKET = "litestream-test-eu";
const START_TIMEOUT_MS = 30_000;
/** The fauxqs version imported above. */
const FAUXQS_VERSION = "2.4.1";
const enc = new TextEncoder();

/** All server kinds, in the order tests run them. */
export function s3ServerKinds(): S3ServerKind[] {
  return ["moto", "fauxqs"];
}

/**
 * Returns why `kind` cannot be started here, or `undefined` if it can. Only moto can be
 * missing (a Python package): the first call installs the pinned version with
 * `scripts/setup_test_deps.sh` if needed (about 30 s, needs pip and PyPI).
 */
export async function s3ServerUnavailable(kind: S3ServerKind): Promise<string | undefined> {
  if (kind !== "moto") return undefined;
  const found = await findMoto();
  return "unavailable" in found ? found.unavailable : undefined;
}

/** Options of {@linkcode startS3Server}. */
export interface StartS3ServerOptions {
  /** Serve https with a self-signed certificate (moto only). @default {false} */
  tls?: boolean;
}

/** Starts a server of `kind` on a free loopback port and creates its bucket. */
export function startS3Server(
  kind: S3ServerKind,
  options: StartS3ServerOptions = {},
): Promise<S3TestServer> {
  switch (kind) {
    case "moto":
      return startMoto(options.tls ?? false);
    case "fauxqs":
      if (options.tls) throw new RangeError("fauxqs cannot serve https");
      return startFauxqsServer();
  }
}

/** Where `scripts/setup_test_deps.sh` installs moto: `$LITESTREAM_MOTO_DIR` or `<repo>/.bench/moto`. */
export function motoDir(): string {
  return Deno.env.get("LITESTREAM_MOTO_DIR") ??
    fileURLToPath(new URL("../.bench/moto", import.meta.url));
}

/** The moto version `scripts/setup_test_deps.sh` pins (its `MOTO_VERSION=` line). */
export async function pinnedMotoVersion(): Promise<string> {
  const script = await Deno.readTextFile(SETUP_SCRIPT);
  const m = /^MOTO_VERSION="([^"]+)"$/m.exec(script);
  if (!m) throw new Error(`No MOTO_VERSION="..." line in ${SETUP_SCRIPT}`);
  return m[1];
}

const SETUP_SCRIPT = fileURLToPath(new URL("../scripts/setup_test_deps.sh", import.meta.url));

/** How to run the pinned moto, or why it cannot run. */
type MotoInstall =
  | { command: string[]; env: Record<string, string>; version: string }
  | { unavailable: string };

let motoInstall: Promise<MotoInstall> | undefined;

/**
 * Finds the pinned moto in {@linkcode motoDir}, running `scripts/setup_test_deps.sh` once
 * per process if it is missing or another version (as `_oracle.ts` installs Litestream on
 * first use). A `moto_server` on PATH is never used: its version is whatever the machine has.
 */
function findMoto(): Promise<MotoInstall> {
  return motoInstall ??= (async (): Promise<MotoInstall> => {
    const want = await pinnedMotoVersion();
    let found = await probeMoto(want);
    if ("unavailable" in found) {
      const out = await new Deno.Command("bash", {
        args: [SETUP_SCRIPT],
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output().catch((err: Error) => ({ success: false, stderr: enc.encode(err.message) }));
      if (!out.success) {
        const why = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
        return {
          unavailable: `${found.unavailable}, and scripts/setup_test_deps.sh failed: ${why}`,
        };
      }
      found = await probeMoto(want);
    }
    return found;
  })();
}

/** Checks that `python3 -m moto.server` with PYTHONPATH={@linkcode motoDir} runs moto `want`. */
async function probeMoto(want: string): Promise<MotoInstall> {
  const dir = motoDir();
  const env = { PYTHONPATH: dir };
  const code = "import os, sys, flask, flask_cors, moto, moto.server; " +
    "print(moto.__version__, os.path.realpath(moto.__file__))";
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command("python3", {
      args: ["-c", code],
      env,
      stdout: "piped",
      stderr: "piped",
    })
      .output();
  } catch {
    return { unavailable: "python3 is not installed (apt-get install python3 python3-pip)" };
  }
  const [version = "", file = ""] = new TextDecoder().decode(out.stdout).trim().split(" ");
  const real = await Deno.realPath(dir).catch(() => dir);
  if (!out.success || !file.startsWith(`${real}/`)) {
    return { unavailable: `moto ${want} is not installed in ${dir}` };
  }
  if (version !== want) {
    return { unavailable: `${dir} holds moto ${version}, the project pins ${want}` };
  }
  return { command: ["python3", "-m", "moto.server"], env, version };
}

async function startMoto(tls: boolean): Promise<S3TestServer> {
  const t0 = performance.now();
  const moto = await findMoto();
  if ("unavailable" in moto) throw new Error(`Cannot start moto: ${moto.unavailable}`);
  const [program, ...args] = moto.command;

  const child = new Deno.Command(program, {
    args: [...args, "-H", "127.0.0.1", "-p", "0", ...(tls ? ["--ssl"] : [])],
    env: moto.env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  // moto prints " * Running on http://127.0.0.1:PORT" once it listens; keep draining its
  // request log afterwards so a full pipe never blocks it.
  const tail: string[] = [];
  const { promise: portFound, resolve: resolvePort } = Promise.withResolvers<number>();
  const drained = (async () => {
    let pending = "";
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      const lines = (pending + text).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 40) tail.shift();
        const m = /Running on https?:\/\/127\.0\.0\.1:(\d+)/.exec(line);
        if (m) resolvePort(Number(m[1]));
      }
    }
  })();

  let timer: ReturnType<typeof setTimeout> | undefined;
  const stop = async () => {
    clearTimeout(timer);
    try {
      child.kill("SIGTERM");
    } catch {
      // already exited
    }
    await child.status;
    await drained;
  };
  try {
    const port = await Promise.race([
      portFound,
      child.status.then((s) => {
        throw new Error(`moto exited with code ${s.code} before listening`);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`moto did not listen within ${START_TIMEOUT_MS} ms`)),
          START_TIMEOUT_MS,
        );
      }),
    ]);
    clearTimeout(timer);
    const endpoint = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
    const { accessKeyId, secretAccessKey } = await setUpMotoAuth(endpoint);
    return makeServer({
      kind: "moto",
      version: moto.version,
      endpoint,
      accessKeyId,
      secretAccessKey,
      checksCredentials: true,
      otherRegionBucket: { name: OTHER_REGION_BUCKET, region: OTHER_REGION },
      startMs: performance.now() - t0,
      stop,
    });
  } catch (err) {
    await stop();
    throw new Error(`Cannot start moto: ${(err as Error).message}\n${tail.join("\n")}`, {
      cause: err,
    });
  }
}

/**
 * Creates an IAM user with full access and the buckets, then turns on moto's IAM checks
 * (`/moto-api/reset-auth` 0, the server form of INITIAL_NO_AUTH_ACTION_COUNT=0): from then on
 * every request must be signed with the returned key.
 */
async function setUpMotoAuth(
  endpoint: string,
): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  // Unsigned requests; the Authorization header only tells moto which service is meant.
  const fakeAuth = (service: string, region: string) =>
    `AWS4-HMAC-SHA256 Credential=AKIASETUP/20240101/${region}/${service}/aws4_request, ` +
    "SignedHeaders=host, Signature=0";
  const iam = async (params: Record<string, string>) => {
    const res = await request(`${endpoint}/`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        authorization: fakeAuth("iam", "us-east-1"),
      },
      body: new URLSearchParams({ Version: "2010-05-08", ...params }).toString(),
    });
    if (res.status !== 200) {
      throw new Error(`IAM ${params.Action} failed: ${res.status} ${res.body}`);
    }
    return res.body;
  };
  const createBucket = async (name: string, region: string) => {
    const body = region === "us-east-1" ? "" : '<CreateBucketConfiguration xmlns="' +
      'http://s3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>' + region +
      "</LocationConstraint></CreateBucketConfiguration>";
    const res = await request(`${endpoint}/${name}`, {
      method: "PUT",
      headers: { authorization: fakeAuth("s3", region) },
      body,
    });
    if (res.status !== 200) {
      throw new Error(`CreateBucket ${name} failed: ${res.status} ${res.body}`);
    }
  };

  await iam({ Action: "CreateUser", UserName: "litestream" });
  const key = await iam({ Action: "CreateAccessKey", UserName: "litestream" });
  await iam({
    Action: "PutUserPolicy",
    UserName: "litestream",
    PolicyName: "all",
    PolicyDocument: JSON.stringify({
      Version: "2012-10-17",
      Statement: [{ Effect: "Allow", Action: "*", Resource: "*" }],
    }),
  });
  await createBucket(BUCKET, "us-east-1");
  await createBucket(OTHER_REGION_BUCKET, OTHER_REGION);
  const res = await request(`${endpoint}/moto-api/reset-auth`, { method: "POST", body: "0" });
  if (res.status !== 200) throw new Error(`moto-api/reset-auth failed: ${res.status}`);

  const accessKeyId = /<AccessKeyId>([^<]+)<\/AccessKeyId>/.exec(key)?.[1];
  const secretAccessKey = /<SecretAccessKey>([^<]+)<\/SecretAccessKey>/.exec(key)?.[1];
  if (!accessKeyId || !secretAccessKey) throw new Error(`No access key in ${key}`);
  return { accessKeyId, secretAccessKey };
}

/**
 * Sends one request with node:http(s), which (unlike fetch) accepts moto's self-signed
 * certificate when asked.
 */
function request(
  url: string,
  init: { method: string; headers?: Record<string, string>; body?: string },
): Promise<{ status: number; body: string }> {
  const u = new URL(url);
  const body = Buffer.from(init.body ?? "");
  const options = {
    method: init.method,
    headers: { ...init.headers, "content-length": String(body.length) },
    agent: false as const,
    rejectUnauthorized: false,
  };
  return new Promise((resolve, reject) => {
    const req = (u.protocol === "https:" ? https : http).request(u, options, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on(
        "end",
        () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function startFauxqsServer(): Promise<S3TestServer> {
  const t0 = performance.now();
  const server = await startFauxqs({ port: 0, logger: false });
  server.createBucket(BUCKET);
  return makeServer({
    kind: "fauxqs",
    version: FAUXQS_VERSION,
    endpoint: `http://127.0.0.1:${server.port}`,
    accessKeyId: "AKIAFAUXQSTEST",
    secretAccessKey: "fauxqs-secret-not-checked",
    checksCredentials: false,
    startMs: performance.now() - t0,
    stop: () => server.stop(),
  });
}

function makeServer(
  s: Omit<S3TestServer, "bucket" | "clientOptions" | typeof Symbol.asyncDispose>,
): S3TestServer {
  let stopped: Promise<void> | undefined;
  const stop = () => stopped ??= s.stop();
  return {
    ...s,
    bucket: BUCKET,
    clientOptions(path: string): S3ReplicaClientOptions {
      return {
        bucket: BUCKET,
        path,
        endpoint: s.endpoint,
        accessKeyId: s.accessKeyId,
        secretAccessKey: s.secretAccessKey,
      };
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** One request seen by {@linkcode S3Proxy}. */
export interface ProxiedRequest {
  method: string;
  /** Path and query, e.g. `/bkt?delete=`. */
  url: string;
  /**
   * What the request is about, to count retries of the same thing: method and path, plus the
   * `prefix` of a listing and the `partNumber` of a part.
   */
  key: string;
  /** The SDK's attempt number (`amz-sdk-request: attempt=N`): 2 and up are its retries. */
  attempt?: number;
  /** Keys named in a DeleteObjects body. */
  deleteKeys?: number;
  /** True if a DeleteObjects body asked for a quiet response. */
  deleteQuiet?: boolean;
  /** Region of the SigV4 credential scope the request was signed for. */
  signedRegion?: string;
  /** The fault injected instead of (or in the middle of) the answer, if any. */
  fault?: ProxyFault["kind"];
  /**
   * Status returned to the client: -1 if the connection was closed before an answer, 0 while
   * none was sent (in flight, or stalled).
   */
  status: number;
}

/**
 * What the proxy does instead of forwarding a request normally:
 * - `status`: answers `status` with an S3 XML error `code` (500 InternalError, 503 SlowDown…);
 * - `reset`: closes the connection once the request arrived, or with `midResponse` after the
 *   server's status line, headers and half its body;
 * - `stall`: never answers (or with `midResponse`, stops after half the body) and holds the
 *   connection open until the client gives up or the proxy stops, as a black-holed network
 *   path does. Switching the fault mode off does not release requests already stalled.
 */
export type ProxyFault =
  | { kind: "status"; status: number; code: string }
  | { kind: "reset"; midResponse?: boolean }
  | { kind: "stall"; midResponse?: boolean };

/** A fault mode that applies to every request until it is changed. */
export interface FaultMode {
  /** Faults to inject, one picked at random per failing request. */
  faults: ProxyFault[];
  /** Share of requests that fail, from 0 to 1. @default {1} */
  rate?: number;
  /** Only requests with this method fail. @default {any method} */
  method?: string;
  /** Only requests whose path and query match fail. @default {any request} */
  url?: RegExp;
  /** Seed of the random choices, so that a failing run can be replayed. @default {1} */
  seed?: number;
}

/** Counts over some of the proxy's requests (see {@linkcode S3Proxy.stats}). */
export interface ProxyStats {
  /** Requests the client sent. */
  requests: number;
  /** Requests that got a fault instead of (or in the middle of) the server's answer. */
  faults: number;
  /** Requests the SDK sent as a retry of a failed attempt (attempt 2 and up). */
  sdkRetries: number;
  /** Requests beyond the first for the same key: SDK retries plus the replica's own. */
  repeats: number;
  /** Most requests sent for one key. */
  maxPerKey: number;
}

/** A recording, fault-injecting HTTP proxy in front of an S3 server. */
export interface S3Proxy extends AsyncDisposable {
  /** `http://127.0.0.1:PORT`: use as the client's endpoint. */
  readonly endpoint: string;
  readonly requests: ProxiedRequest[];
  /** Requests being held by a `stall` fault right now. */
  readonly stalled: number;
  /** Makes the next `count` requests whose method matches fail with `fault`. */
  inject(fault: ProxyFault, count: number, method?: string): void;
  /**
   * Applies `mode` to every request from now on (after the ones queued by `inject`);
   * `undefined` forwards everything again.
   */
  setFaultMode(mode: FaultMode | undefined): void;
  /** Counts over the requests from index `from` of {@linkcode requests} on. */
  stats(from?: number): ProxyStats;
  stop(): Promise<void>;
}

/**
 * Starts a proxy forwarding to `upstream`, keeping the Host header so signatures stay valid.
 * Like AWS, it rejects DeleteObjects with more than 1000 keys (400 MalformedXML).
 */
export async function startS3Proxy(upstream: string): Promise<S3Proxy> {
  const target = new URL(upstream);
  const requests: ProxiedRequest[] = [];
  const queued: { fault: ProxyFault; method?: string }[] = [];
  let mode: (FaultMode & { rate: number; random: () => number }) | undefined;
  const agent = new http.Agent({ keepAlive: false });
  const stalled = new Set<http.ServerResponse>();

  /** The fault for `record`, if it gets one. */
  const pick = (record: ProxiedRequest): ProxyFault | undefined => {
    const i = queued.findIndex((f) => !f.method || f.method === record.method);
    if (i >= 0) return queued.splice(i, 1)[0].fault;
    if (!mode || mode.faults.length === 0) return undefined;
    if (mode.method && mode.method !== record.method) return undefined;
    if (mode.url && !mode.url.test(record.url)) return undefined;
    if (mode.random() >= mode.rate) return undefined;
    return mode.faults[Math.floor(mode.random() * mode.faults.length)];
  };

  const stall = (res: http.ServerResponse) => {
    stalled.add(res);
    res.on("close", () => stalled.delete(res));
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const url = req.url ?? "";
      const record: ProxiedRequest = {
        method: req.method ?? "",
        url,
        key: requestKey(req.method ?? "", url),
        status: 0,
      };
      const attempt = /attempt=(\d+)/.exec(String(req.headers["amz-sdk-request"] ?? ""));
      if (attempt) record.attempt = Number(attempt[1]);
      const scope = /Credential=[^/]+\/\d+\/([^/]+)\//.exec(req.headers.authorization ?? "");
      if (scope) record.signedRegion = scope[1];
      requests.push(record);
      if (record.method === "POST" && /[?&]delete(=|&|$)/.test(record.url)) {
        const xml = body.toString("utf8");
        record.deleteKeys = xml.split("<Key>").length - 1;
        record.deleteQuiet = /<Quiet>true<\/Quiet>/.test(xml);
      }

      const fault = pick(record);
      if (fault) record.fault = fault.kind;
      if (fault?.kind === "status") {
        record.status = fault.status;
        reply(res, fault.status, fault.code);
        return;
      }
      if (fault && !fault.midResponse) {
        if (fault.kind === "reset") {
          record.status = -1;
          req.socket.destroy();
        } else {
          stall(res);
        }
        return;
      }
      if ((record.deleteKeys ?? 0) > 1000) {
        record.status = 400;
        reply(res, 400, "MalformedXML");
        return;
      }

      const out = http.request({
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent,
      }, (up) => {
        record.status = up.statusCode ?? 0;
        if (!fault) {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
          return;
        }
        // A fault in the middle of the answer: the status line, headers and half the body.
        const parts: Buffer[] = [];
        up.on("data", (c: Buffer) => parts.push(c));
        up.on("end", () => {
          const whole = Buffer.concat(parts);
          res.writeHead(up.statusCode ?? 502, up.headers);
          res.write(whole.subarray(0, Math.floor(whole.length / 2)));
          if (fault.kind === "reset") res.destroy();
          else stall(res);
        });
      });
      out.on("error", () => {
        record.status = 502;
        if (!res.headersSent) reply(res, 502, "BadGateway");
        else res.destroy();
      });
      out.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };

  let stopped: Promise<void> | undefined;
  const stop = () =>
    stopped ??= new Promise<void>((resolve) => {
      server.closeAllConnections();
      for (const res of stalled) res.destroy();
      server.close(() => resolve());
      agent.destroy();
    });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    get stalled() {
      return stalled.size;
    },
    inject(fault, count, method) {
      for (let i = 0; i < count; i++) queued.push({ fault, method });
    },
    setFaultMode(m) {
      mode = m && { ...m, rate: m.rate ?? 1, random: mulberry32(m.seed ?? 1) };
    },
    stats(from = 0) {
      const rs = requests.slice(from);
      const perKey = new Map<string, number>();
      for (const r of rs) perKey.set(r.key, (perKey.get(r.key) ?? 0) + 1);
      return {
        requests: rs.length,
        faults: rs.filter((r) => r.fault !== undefined).length,
        sdkRetries: rs.filter((r) => (r.attempt ?? 1) > 1).length,
        repeats: rs.length - perKey.size,
        maxPerKey: Math.max(0, ...perKey.values()),
      };
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** Method and path of a request, plus the listing prefix or part number it names. */
function requestKey(method: string, url: string): string {
  const u = new URL(url, "http://proxy");
  const extra = ["prefix", "partNumber"].filter((p) => u.searchParams.has(p))
    .map((p) => `${p}=${u.searchParams.get(p)}`);
  return `${method} ${u.pathname}${extra.length ? `?${extra.join("&")}` : ""}`;
}

/** A small seeded generator of numbers in [0, 1) (mulberry32). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function reply(res: http.ServerResponse, status: number, code: string): void {
  const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code>` +
    `<Message>Injected by the test proxy</Message><RequestId>proxy</RequestId></Error>`;
  res.writeHead(status, {
    "content-type": "application/xml",
    "content-length": Buffer.byteLength(xml),
    connection: "close",
  });
  res.end(xml);
}
