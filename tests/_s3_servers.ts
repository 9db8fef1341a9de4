/**
 * Real S3 servers on 127.0.0.1 for tests, each with a bucket ready:
 *
 * - `moto`: moto's server (Python, `scripts/setup_test_deps.sh` installs it) as a child
 *   process, with IAM authentication switched on so wrong credentials are rejected;
 * - `fauxqs`: fauxqs in this process (Node-style npm package that runs under Deno); it
 *   accepts any credentials.
 *
 * Plus {@linkcode startS3Proxy}: an HTTP proxy in front of either that records requests,
 * enforces S3's 1000-key DeleteObjects limit (neither server does) and injects failures.
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as http from "node:http";
import * as https from "node:https";
import { startFauxqs } from "fauxqs";
import type { S3ReplicaClientOptions } from "../src/clients/s3.ts";

/** S3 server implementations the tests can start. */
export type S3ServerKind = "moto" | "fauxqs";

/** A running S3 server with one bucket, stopped on dispose. */
export interface S3TestServer extends AsyncDisposable {
  readonly kind: S3ServerKind;
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

/** All server kinds, in the order tests run them. */
export function s3ServerKinds(): S3ServerKind[] {
  return ["moto", "fauxqs"];
}

/** True when running under CI, where a missing server must fail the tests rather than skip. */
export function isCi(): boolean {
  return Deno.env.get("CI") === "true";
}

/**
 * Returns why `kind` cannot be started here, or `undefined` if it can. Only moto can be
 * missing (it is a Python package): run `scripts/setup_test_deps.sh`.
 */
export async function s3ServerUnavailable(kind: S3ServerKind): Promise<string | undefined> {
  if (kind !== "moto") return undefined;
  if (await motoCommand() !== undefined) return undefined;
  return "moto is not installed (no moto_server on PATH and `python3 -m moto.server` " +
    "is unavailable): run scripts/setup_test_deps.sh";
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

/** Finds how to run moto's server: `moto_server` on PATH, else `python3 -m moto.server`. */
async function motoCommand(): Promise<string[] | undefined> {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      const info = await Deno.stat(`${dir}/moto_server`);
      if (info.isFile && (info.mode ?? 0o111) & 0o111) return [`${dir}/moto_server`];
    } catch {
      // not in this directory
    }
  }
  try {
    const out = await new Deno.Command("python3", {
      args: ["-c", "import moto.server, flask, flask_cors"],
      stdout: "null",
      stderr: "null",
    }).output();
    if (out.success) return ["python3", "-m", "moto.server"];
  } catch {
    // no python3
  }
  return undefined;
}

async function startMoto(tls: boolean): Promise<S3TestServer> {
  const t0 = performance.now();
  const command = await motoCommand();
  if (!command) throw new Error(`Cannot start moto: ${await s3ServerUnavailable("moto")}`);

  const child = new Deno.Command(command[0], {
    args: [...command.slice(1), "-H", "127.0.0.1", "-p", "0", ...(tls ? ["--ssl"] : [])],
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

/** Returns a loopback port nothing listens on (it was free a moment ago). */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** One request seen by {@linkcode S3Proxy}. */
export interface ProxiedRequest {
  method: string;
  /** Path and query, e.g. `/bkt?delete=`. */
  url: string;
  /** Keys named in a DeleteObjects body. */
  deleteKeys?: number;
  /** True if a DeleteObjects body asked for a quiet response. */
  deleteQuiet?: boolean;
  /** Region of the SigV4 credential scope the request was signed for. */
  signedRegion?: string;
  /** Status returned to the client. */
  status: number;
}

/** What the proxy does instead of forwarding the next matching request. */
export type ProxyFault =
  | { kind: "status"; status: number; code: string }
  | { kind: "reset" };

/** A recording, fault-injecting HTTP proxy in front of an S3 server. */
export interface S3Proxy extends AsyncDisposable {
  /** `http://127.0.0.1:PORT`: use as the client's endpoint. */
  readonly endpoint: string;
  readonly requests: ProxiedRequest[];
  /** Makes the next `count` requests whose method matches fail with `fault`. */
  inject(fault: ProxyFault, count: number, method?: string): void;
  stop(): Promise<void>;
}

/**
 * Starts a proxy forwarding to `upstream`, keeping the Host header so signatures stay valid.
 * Like AWS, it rejects DeleteObjects with more than 1000 keys (400 MalformedXML).
 */
export async function startS3Proxy(upstream: string): Promise<S3Proxy> {
  const target = new URL(upstream);
  const requests: ProxiedRequest[] = [];
  const faults: { fault: ProxyFault; method?: string }[] = [];
  const agent = new http.Agent({ keepAlive: false });

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const record: ProxiedRequest = { method: req.method ?? "", url: req.url ?? "", status: 0 };
      const scope = /Credential=[^/]+\/\d+\/([^/]+)\//.exec(req.headers.authorization ?? "");
      if (scope) record.signedRegion = scope[1];
      requests.push(record);
      if (record.method === "POST" && /[?&]delete(=|&|$)/.test(record.url)) {
        const xml = body.toString("utf8");
        record.deleteKeys = xml.split("<Key>").length - 1;
        record.deleteQuiet = /<Quiet>true<\/Quiet>/.test(xml);
      }

      const i = faults.findIndex((f) => !f.method || f.method === record.method);
      if (i >= 0) {
        const [{ fault }] = faults.splice(i, 1);
        if (fault.kind === "reset") {
          record.status = -1;
          req.socket.destroy();
          return;
        }
        record.status = fault.status;
        reply(res, fault.status, fault.code);
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
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
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
      server.close(() => resolve());
      agent.destroy();
    });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    inject(fault, count, method) {
      for (let i = 0; i < count; i++) faults.push({ fault, method });
    },
    stop,
    [Symbol.asyncDispose]: stop,
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
