/**
 * GCS for tests, on 127.0.0.1:
 *
 * - {@linkcode startGcsServer}: fake-gcs-server (Go), the version `scripts/setup_gcs.sh`
 *   pins, run from the directory it builds into (never one found on PATH), with an
 *   in-memory backend and buckets made through its JSON API;
 * - {@linkcode startGcsAuthProxy}: a `Deno.serve` front of it that plays Google's OAuth2
 *   token endpoint (RS256 JWT-bearer and refresh-token grants, checked) and the metadata
 *   server's token URL, rejects storage
 *   requests without a token it issued, records requests, injects 503 answers, and answers
 *   resumable-upload status queries the way GCS does (fake-gcs-server finishes the upload
 *   instead).
 *
 * @module
 */
import { fileURLToPath } from "node:url";

import { closedPort } from "./_helpers.ts";

export { isCi } from "./_helpers.ts";

const START_TIMEOUT_MS = 30_000;
const START_ATTEMPTS = 3;

/** Directory `scripts/setup_gcs.sh` builds into (`$LITESTREAM_GCS_DIR`, default `.bench/gcs`). */
export function gcsDir(): string {
  return Deno.env.get("LITESTREAM_GCS_DIR") ??
    fileURLToPath(new URL("../.bench/gcs", import.meta.url));
}

/** Path of the fake-gcs-server binary the setup script builds. */
export function gcsServerBin(): string {
  return `${gcsDir()}/bin/fake-gcs-server`;
}

/** Returns why fake-gcs-server cannot be started here, or `undefined` if it can. */
export async function gcsServerUnavailable(): Promise<string | undefined> {
  try {
    const info = await Deno.stat(gcsServerBin());
    if (!info.isFile) return `${gcsServerBin()} is not a file`;
    return undefined;
  } catch {
    return `${gcsServerBin()} is missing (run scripts/setup_gcs.sh: needs Go, about 2 min)`;
  }
}

/** A running fake-gcs-server, stopped on dispose. */
export interface GcsTestServer extends AsyncDisposable {
  /** `http://127.0.0.1:PORT` */
  readonly endpoint: string;
  /** A bucket that exists. */
  readonly bucket: string;
  createBucket(name: string): Promise<void>;
  /** Names of all objects in `bucket` whose names start with `prefix`. */
  objectNames(bucket: string, prefix: string): Promise<string[]>;
  stop(): Promise<void>;
}

const BUCKET = "litestream-test";

/** Starts fake-gcs-server on a free loopback port with one bucket. */
export async function startGcsServer(): Promise<GcsTestServer> {
  const why = await gcsServerUnavailable();
  if (why) throw new Error(`Cannot start fake-gcs-server: ${why}`);
  let last: unknown;
  // The port is chosen before the server binds it (it must know its own URL for upload
  // session links): another process may take it first, so try a few.
  for (let attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    try {
      return await startOnce(closedPort());
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

async function startOnce(port: number): Promise<GcsTestServer> {
  const endpoint = `http://127.0.0.1:${port}`;
  const child = new Deno.Command(gcsServerBin(), {
    args: [
      "-scheme",
      "http",
      "-host",
      "127.0.0.1",
      "-port",
      String(port),
      "-public-host",
      `127.0.0.1:${port}`,
      "-external-url",
      endpoint,
      "-backend",
      "memory",
      "-log-level",
      "info",
    ],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();

  // It logs "server started at …" once it listens; keep draining its log afterwards so a
  // full pipe never blocks it.
  const tail: string[] = [];
  const { promise: started, resolve: onStarted } = Promise.withResolvers<void>();
  const drained = (async () => {
    let pending = "";
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      const lines = (pending + text).split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 20) tail.shift();
        if (line.includes("server started at")) onStarted();
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
  const createBucket = async (name: string) => {
    const res = await fetch(`${endpoint}/storage/v1/b`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name }),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`Cannot create bucket "${name}": HTTP ${res.status} ${text}`);
  };
  try {
    await Promise.race([
      started,
      child.status.then((s) => {
        throw new Error(`fake-gcs-server exited with code ${s.code} before listening`);
      }),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`fake-gcs-server did not listen within ${START_TIMEOUT_MS} ms`)),
          START_TIMEOUT_MS,
        );
      }),
    ]);
    clearTimeout(timer);
    await createBucket(BUCKET);
  } catch (err) {
    await stop();
    throw new Error(
      `Cannot start fake-gcs-server: ${(err as Error).message}\n${tail.join("\n")}`,
      { cause: err },
    );
  }
  return {
    endpoint,
    bucket: BUCKET,
    createBucket,
    async objectNames(bucket, prefix) {
      const names: string[] = [];
      let token = "";
      do {
        const q = new URLSearchParams({ prefix, ...(token ? { pageToken: token } : {}) });
        const res = await fetch(`${endpoint}/storage/v1/b/${bucket}/o?${q}`);
        const page = await res.json() as { items?: { name: string }[]; nextPageToken?: string };
        names.push(...(page.items ?? []).map((o) => o.name));
        token = page.nextPageToken ?? "";
      } while (token);
      return names.sort();
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

// ---------------------------------------------------------------------------------------
// The auth and fault proxy

/** One storage request the proxy saw. */
export interface ProxiedRequest {
  method: string;
  /** Path and query, as sent to the proxy. */
  url: string;
  /** The `Authorization` header, if any. */
  authorization?: string;
}

/** A token endpoint plus storage proxy in front of a {@linkcode GcsTestServer}. */
export interface GcsAuthProxy extends AsyncDisposable {
  /** `http://127.0.0.1:PORT`: the storage endpoint and, at `/token`, the token endpoint. */
  readonly endpoint: string;
  /** A service-account key file whose `token_uri` is this proxy. */
  readonly serviceAccountFile: string;
  /** An authorized-user file (refresh token) whose `token_uri` is this proxy. */
  readonly authorizedUserFile: string;
  /** Storage requests seen, oldest first. */
  readonly requests: ProxiedRequest[];
  /** Tokens issued, by grant type. */
  readonly issued: { jwt: number; refresh: number; metadata: number };
  /** Headers of the last metadata-server token request. */
  readonly metadataRequests: Headers[];
  /**
   * After `skip` more storage requests matching `method` and `pattern` (a test of the full
   * URL), the next `count` get a 503 (defaults: skip 0, count 1).
   */
  failNext(method: string, pattern: RegExp, options?: { skip?: number; count?: number }): void;
  stop(): Promise<void>;
}

const CLIENT_EMAIL = "litestream-test@example.iam.gserviceaccount.com";
const REFRESH_TOKEN = "test-refresh-token";

/** Starts the proxy; its key files live in `dir`. */
export async function startGcsAuthProxy(
  upstream: string,
  dir: string,
): Promise<GcsAuthProxy> {
  const keys = await crypto.subtle.generateKey(
    {
      name: "RSASSA-PKCS1-v1_5",
      modulusLength: 2048,
      publicExponent: new Uint8Array([1, 0, 1]),
      hash: "SHA-256",
    },
    true,
    ["sign", "verify"],
  );
  const pkcs8 = new Uint8Array(await crypto.subtle.exportKey("pkcs8", keys.privateKey));
  const pem = `-----BEGIN PRIVATE KEY-----\n${
    btoa(String.fromCharCode(...pkcs8)).replace(/(.{64})/g, "$1\n")
  }\n-----END PRIVATE KEY-----\n`;

  const tokens = new Set<string>();
  const requests: ProxiedRequest[] = [];
  const issued = { jwt: 0, refresh: 0, metadata: 0 };
  const metadataRequests: Headers[] = [];
  const faults: { method: string; pattern: RegExp; skip: number; count: number }[] = [];
  /** Committed bytes of each resumable session (by upload_id), from upstream's 308s. */
  const committed = new Map<string, number>();
  let tokenUri = "";

  const issue = (kind: keyof typeof issued) => {
    issued[kind]++;
    const token = `tok-${crypto.randomUUID()}`;
    tokens.add(token);
    return Response.json({ access_token: token, expires_in: 3600, token_type: "Bearer" });
  };

  const tokenEndpoint = async (req: Request): Promise<Response> => {
    const form = new URLSearchParams(await req.text());
    const deny = (error: string) => Response.json({ error }, { status: 400 });
    if (form.get("grant_type") === "refresh_token") {
      return form.get("refresh_token") === REFRESH_TOKEN && form.get("client_id") === "cid" &&
          form.get("client_secret") === "csecret"
        ? issue("refresh")
        : deny("invalid_grant");
    }
    if (form.get("grant_type") !== "urn:ietf:params:oauth:grant-type:jwt-bearer") {
      return deny("unsupported_grant_type");
    }
    const [h, c, s] = (form.get("assertion") ?? "").split(".");
    const ok = await crypto.subtle.verify(
      "RSASSA-PKCS1-v1_5",
      keys.publicKey,
      fromBase64Url(s ?? ""),
      new TextEncoder().encode(`${h}.${c}`),
    ).catch(() => false);
    if (!ok) return deny("invalid_grant: bad signature");
    const claims = JSON.parse(new TextDecoder().decode(fromBase64Url(c)));
    const now = Date.now() / 1000;
    if (
      claims.iss !== CLIENT_EMAIL || claims.aud !== tokenUri || !(claims.exp > now) ||
      !String(claims.scope).includes("devstorage")
    ) {
      return deny("invalid_grant: bad claims");
    }
    return issue("jwt");
  };

  const storage = async (req: Request, url: URL): Promise<Response> => {
    const authorization = req.headers.get("authorization") ?? undefined;
    requests.push({ method: req.method, url: url.pathname + url.search, authorization });
    const bearer = /^Bearer (.+)$/.exec(authorization ?? "")?.[1];
    if (!bearer || !tokens.has(bearer)) {
      return Response.json({ error: { code: 401, message: "Invalid Credentials" } }, {
        status: 401,
      });
    }
    const fault = faults.find((f) => f.method === req.method && f.pattern.test(url.href));
    if (fault && fault.skip > 0) {
      fault.skip--;
    } else if (fault) {
      if (--fault.count <= 0) faults.splice(faults.indexOf(fault), 1);
      await req.body?.cancel();
      return Response.json({ error: { code: 503, message: "injected" } }, { status: 503 });
    }
    const uploadId = url.searchParams.get("upload_id");
    const range = req.headers.get("content-range") ?? "";
    if (uploadId && req.method === "PUT" && /^bytes \*\/\*$/.test(range)) {
      // A status query: answer as GCS does (fake-gcs-server would finish the upload).
      const n = committed.get(uploadId) ?? 0;
      const headers = n > 0 ? { range: `bytes=0-${n - 1}` } : undefined;
      return new Response(null, { status: 308, headers });
    }
    const headers = new Headers(req.headers);
    headers.delete("authorization");
    headers.delete("host");
    const body = req.method === "GET" || req.method === "HEAD"
      ? undefined
      : new Uint8Array(await req.arrayBuffer());
    const res = await fetch(`${upstream}${url.pathname}${url.search}`, {
      method: req.method,
      headers,
      body,
      redirect: "manual",
    });
    const out = new Headers(res.headers);
    const location = out.get("location");
    if (location) out.set("location", location.replace(upstream, `http://${url.host}`));
    if (uploadId && res.status === 308) {
      const m = /^bytes=0-(\d+)$/.exec(res.headers.get("range") ?? "");
      if (m) committed.set(uploadId, Number(m[1]) + 1);
    }
    return new Response(res.body, { status: res.status, headers: out });
  };

  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req) => {
      const url = new URL(req.url);
      if (url.pathname === "/token") return tokenEndpoint(req);
      if (url.pathname === "/computeMetadata/v1/instance/service-accounts/default/token") {
        metadataRequests.push(req.headers);
        return req.headers.get("metadata-flavor") === "Google"
          ? issue("metadata")
          : new Response("missing Metadata-Flavor", { status: 403 });
      }
      return storage(req, url);
    },
  );
  const endpoint = `http://127.0.0.1:${server.addr.port}`;
  tokenUri = `${endpoint}/token`;

  const serviceAccountFile = `${dir}/service-account.json`;
  await Deno.writeTextFile(
    serviceAccountFile,
    JSON.stringify({
      type: "service_account",
      project_id: "test",
      private_key_id: "k1",
      private_key: pem,
      client_email: CLIENT_EMAIL,
      token_uri: tokenUri,
    }),
  );
  const authorizedUserFile = `${dir}/authorized-user.json`;
  await Deno.writeTextFile(
    authorizedUserFile,
    JSON.stringify({
      type: "authorized_user",
      client_id: "cid",
      client_secret: "csecret",
      refresh_token: REFRESH_TOKEN,
      token_uri: tokenUri,
      quota_project_id: "quota-test",
    }),
  );
  const stop = async () => {
    await server.shutdown();
    await server.finished;
  };
  return {
    endpoint,
    serviceAccountFile,
    authorizedUserFile,
    requests,
    issued,
    metadataRequests,
    failNext(method, pattern, { skip = 0, count = 1 } = {}) {
      faults.push({ method, pattern, skip, count });
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

function fromBase64Url(s: string): Uint8Array<ArrayBuffer> {
  const b64 = s.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(s.length / 4) * 4, "=");
  return Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
}
