/**
 * {@linkcode S3ReplicaClient}: stores a replica in an S3 bucket (AWS or any S3-compatible
 * store) under a key prefix, in the v0.3.13 layout. This is the only file that imports the
 * AWS SDK; SDK errors are translated here into `Deno.errors.NotFound` or into one-line errors
 * that never contain credentials.
 *
 * @example
 * ```ts
 * const client = new S3ReplicaClient(parseS3Url("s3://mybkt.localhost:9000/db"));
 * try {
 *   console.log(await client.generations());
 * } finally {
 *   await client.close();
 * }
 * ```
 *
 * @module
 */
import {
  DeleteObjectsCommand,
  GetBucketLocationCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  type ListObjectsV2CommandOutput,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import {
  baseName,
  checkGeneration,
  cleanKeyPath,
  generationKey,
  GENERATIONS_DIR,
  isGenerationName,
  joinKey,
  parseSnapshotName,
  parseWalSegmentName,
  snapshotKey,
  snapshotsKey,
  walSegmentKey,
  walSegmentsKey,
} from "../layout.ts";
import { ReplicaOperationMetrics } from "../metrics.ts";
import { FetchHandler } from "../internal/fetch_handler.ts";
import { formatPos, type Pos } from "../pos.ts";
import type {
  Body,
  CallOptions,
  ReplicaClient,
  SnapshotInfo,
  SnapshotKey,
  WalSegmentInfo,
} from "../replica_client.ts";

/** Region used when none is configured and an endpoint is, or when a bucket has no constraint. */
export const DEFAULT_REGION = "us-east-1";
/** Most keys one DeleteObjects request may name (an S3 limit). */
export const MAX_DELETE_KEYS = 1000;
/** Part size of multipart uploads; bodies up to this size go in one PutObject. */
export const UPLOAD_PART_SIZE = 5 * 1024 * 1024;
/** Parts of one multipart upload sent at once. */
const UPLOAD_QUEUE_SIZE = 4;
/** Attempts per request: retries 5xx, throttling, timeouts and resets with exponential backoff. */
const MAX_ATTEMPTS = 5;
const CONNECT_TIMEOUT_MS = 10_000;
/** A socket idle this long is closed and the request fails (and is retried). */
export const DEFAULT_IDLE_TIMEOUT_MS = 120_000;

/** How to reach one S3 replica. */
export interface S3ReplicaClientOptions {
  /** Bucket name. */
  bucket: string;
  /** Key prefix of the replica, without leading or trailing slash. @default {""} */
  path?: string;
  /**
   * Bucket region.
   * @default {looked up with GetBucketLocation; `"us-east-1"` when `endpoint` is set}
   */
  region?: string;
  /** Endpoint URL of an S3-compatible store, e.g. `"http://localhost:9000"`. @default {AWS} */
  endpoint?: string;
  /** Address buckets as `endpoint/bucket` rather than `bucket.endpoint`. @default {true if `endpoint` is set} */
  forcePathStyle?: boolean;
  /** Accept any TLS certificate from the endpoint. @default {false} */
  skipVerify?: boolean;
  /**
   * Access key ID. When neither key is set, `LITESTREAM_ACCESS_KEY_ID`/`LITESTREAM_SECRET_ACCESS_KEY`
   * are used where `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` are unset, then the SDK's chain.
   */
  accessKeyId?: string;
  /** Secret access key; see `accessKeyId`. */
  secretAccessKey?: string;
  /**
   * A request whose connection moves no byte for this long (a stalled server or network
   * path) fails with a timeout and is retried like a 5xx answer.
   * @default {120_000}
   */
  idleTimeoutMs?: number;
}

const LOCALHOST_REGEXP = /^(?:(.+)\.)?localhost$/;
const BACKBLAZE_REGEXP = /^(?:(.+)\.)?s3\.([^.]+)\.backblazeb2\.com$/;
const FILEBASE_REGEXP = /^(?:(.+)\.)?s3\.filebase\.com$/;
const DIGITALOCEAN_REGEXP = /^(?:(.+)\.)?([^.]+)\.digitaloceanspaces\.com$/;
const SCALEWAY_REGEXP = /^(?:(.+)\.)?s3\.([^.]+)\.scw\.cloud$/;
const LINODE_REGEXP = /^(?:(.+)\.)?([^.]+)\.linodeobjects\.com$/;
const S3_URL_REGEXP = /^s3:\/\/([^/?#]*)([^?#]*)(?:\?[^#]*)?(?:#.*)?$/i;
const PORT_REGEXP = /^(.*):(\d*)$/;

/**
 * Parses an `s3://BUCKET[.provider-host][:port]/path` replica URL with v0.3.13's host rules:
 * `BUCKET.localhost[:port]` gives endpoint `http://localhost[:port]` and region us-east-1;
 * Backblaze, Filebase, DigitalOcean, Scaleway and Linode hosts give their https endpoint and
 * region; any other host is the bucket name (virtual-host style on AWS, port dropped). Known
 * providers get `forcePathStyle: true`. The path loses its leading slash and is cleaned.
 *
 * @throws {SyntaxError} If `url` is not an `s3://` URL.
 * @throws {RangeError} If the URL names no bucket.
 */
export function parseS3Url(url: string): S3ReplicaClientOptions {
  const m = S3_URL_REGEXP.exec(url);
  if (!m) throw new SyntaxError(`Cannot parse S3 replica URL "${url}": expected s3://BUCKET/PATH`);
  const [, hostPort, rawPath] = m;

  // Split off a port the way Go's net.SplitHostPort does (ignoring malformed ones).
  let host = hostPort;
  let port = "";
  const pm = PORT_REGEXP.exec(hostPort);
  if (pm && !pm[1].includes(":")) [host, port] = [pm[1], pm[2]];

  let bucket: string | undefined;
  let region: string | undefined;
  let endpoint: string | undefined;
  let forcePathStyle: boolean | undefined = true;
  let scheme = "https";
  let a: RegExpExecArray | null;
  if ((a = LOCALHOST_REGEXP.exec(host))) {
    [bucket, region, endpoint, scheme] = [a[1], DEFAULT_REGION, "localhost", "http"];
  } else if ((a = BACKBLAZE_REGEXP.exec(host))) {
    [bucket, region, endpoint] = [a[1], a[2], `s3.${a[2]}.backblazeb2.com`];
  } else if ((a = FILEBASE_REGEXP.exec(host))) {
    [bucket, endpoint] = [a[1], "s3.filebase.com"];
  } else if ((a = DIGITALOCEAN_REGEXP.exec(host))) {
    [bucket, region, endpoint] = [a[1], a[2], `${a[2]}.digitaloceanspaces.com`];
  } else if ((a = SCALEWAY_REGEXP.exec(host))) {
    [bucket, region, endpoint] = [a[1], a[2], `s3.${a[2]}.scw.cloud`];
  } else if ((a = LINODE_REGEXP.exec(host))) {
    [bucket, region, endpoint] = [a[1], a[2], `${a[2]}.linodeobjects.com`];
  } else {
    bucket = host;
    forcePathStyle = undefined; // AWS itself: virtual-host style
  }
  if (!bucket) throw new RangeError(`Cannot use S3 replica URL "${url}": no bucket name`);

  const options: S3ReplicaClientOptions = {
    bucket,
    path: cleanKeyPath(decodeUrlPath(url, rawPath)),
  };
  if (region !== undefined) options.region = region;
  if (endpoint !== undefined) options.endpoint = `${scheme}://${endpoint}${port ? `:${port}` : ""}`;
  if (forcePathStyle !== undefined) options.forcePathStyle = forcePathStyle;
  return options;
}

function decodeUrlPath(url: string, path: string): string {
  try {
    return decodeURIComponent(path);
  } catch (err) {
    throw new SyntaxError(`Cannot parse S3 replica URL "${url}": bad escape in path`, {
      cause: err,
    });
  }
}

export { applyLitestreamEnv } from "./env.ts";

/** What {@linkcode describeS3Error} needs to know about the client that failed. */
export interface S3ErrorContext {
  bucket: string;
  endpoint?: string;
}

/**
 * Turns an error from the SDK or the network into a short lowercase reason, e.g.
 * `bucket "bkt" does not exist` or `cannot connect to 127.0.0.1:9: connection refused`.
 * Never includes credentials (the SDK never sends the secret; the access key ID is not
 * echoed in any reason).
 */
export function describeS3Error(err: unknown, context: S3ErrorContext): string {
  const e = (err ?? {}) as {
    name?: string;
    code?: string;
    Code?: string;
    message?: string;
    $metadata?: { httpStatusCode?: number };
    $response?: { statusCode?: number };
    address?: string;
    port?: number;
    hostname?: string;
  };
  const name = e.Code ?? e.name ?? "";
  const code = typeof e.code === "string" ? e.code : "";
  const status = e.$metadata?.httpStatusCode ?? e.$response?.statusCode;
  const bucket = `bucket "${context.bucket}"`;
  const host = e.address !== undefined
    ? `${e.address}${e.port !== undefined ? `:${e.port}` : ""}`
    : e.hostname ?? endpointHost(context.endpoint);

  switch (name) {
    case "NoSuchBucket":
      return `${bucket} does not exist`;
    case "InvalidAccessKeyId":
    case "InvalidClientTokenId":
      return "the access key ID is not known to the server (check the credentials)";
    case "SignatureDoesNotMatch":
      return "the server rejected the request signature (check the secret access key)";
    case "InvalidToken":
    case "ExpiredToken":
    case "TokenRefreshRequired":
      return "the session token is invalid or expired";
    case "AccessDenied":
    case "AllAccessDisabled":
      return `access denied to ${bucket} (check the credentials and the bucket policy)`;
    case "PermanentRedirect":
    case "AuthorizationHeaderMalformed":
    case "IllegalLocationConstraintException":
      return `${bucket} is in another region (set the region)`;
    case "CredentialsProviderError":
      return "no credentials found (set access-key-id and secret-access-key, " +
        "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)";
    case "SlowDown":
    case "Throttling":
    case "ThrottlingException":
    case "RequestLimitExceeded":
      return "the server is throttling requests (SlowDown), retries gave up";
    case "TimeoutError":
    case "RequestTimeout":
      // The SDK names resets TimeoutError too (to retry them): the code tells them apart.
      if (!["ECONNRESET", "EPIPE", "ECONNABORTED"].includes(code)) {
        return `request to ${host} timed out`;
      }
  }
  switch (code) {
    case "ECONNREFUSED":
      return `cannot connect to ${host}: connection refused`;
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_NONAME":
      return `cannot resolve host ${host}`;
    case "ETIMEDOUT":
    case "ESOCKETTIMEDOUT":
      return `connection to ${host} timed out`;
    case "ECONNRESET":
    case "EPIPE":
    case "ECONNABORTED":
      return `connection to ${host} was closed unexpectedly`;
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return `cannot reach ${host}: no route`;
    case "DEPTH_ZERO_SELF_SIGNED_CERT":
    case "SELF_SIGNED_CERT_IN_CHAIN":
    case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
    case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
    case "CERT_HAS_EXPIRED":
    case "ERR_TLS_CERT_ALTNAME_INVALID":
      return `the TLS certificate of ${host} is not trusted (${code}); ` +
        "set skip-verify to accept it";
  }
  if (/certificate|UnknownIssuer|InvalidCertificate/i.test(e.message ?? "")) {
    return `the TLS certificate of ${host} is not trusted; set skip-verify to accept it`;
  }
  if (status === 403) return `access denied to ${bucket} (HTTP 403)`;
  if (status === 301) return `${bucket} is in another region (set the region)`;
  const message = firstLine(e.message ?? String(err));
  if (status !== undefined && status >= 500) {
    return `server error ${status}${name && name !== "Error" ? ` ${name}` : ""}: ${message}`;
  }
  if (name && name !== "Error" && !message.startsWith(name)) return `${name}: ${message}`;
  return message || "unknown error";
}

function firstLine(s: string): string {
  return s.split("\n")[0].trim();
}

function endpointHost(endpoint: string | undefined): string {
  if (!endpoint) return "S3";
  try {
    return new URL(endpoint).host;
  } catch {
    return endpoint;
  }
}

/**
 * Error properties that may hold credentials: `$response` (the SDK's raw response, whose
 * request carries the Authorization header naming the access key ID) and the fields some
 * servers put in signature errors.
 */
const SENSITIVE_ERROR_FIELDS = [
  "$response",
  "AWSAccessKeyId",
  "StringToSign",
  "StringToSignBytes",
  "SignatureProvided",
  "CanonicalRequest",
  "CanonicalRequestBytes",
];

/**
 * A replica in an S3 bucket. The SDK client is created on first use, after looking up the
 * bucket's region when neither `region` nor `endpoint` is set. Call {@linkcode close} when
 * done so its sockets are released.
 */
export class S3ReplicaClient implements ReplicaClient, AsyncDisposable {
  readonly type = "s3";
  readonly bucket: string;
  /** Key prefix, without leading or trailing slash; `""` for the bucket root. */
  readonly path: string;
  /** Configured region, if any (see {@linkcode S3ReplicaClientOptions.region}). */
  readonly region?: string;
  readonly endpoint?: string;
  readonly forcePathStyle: boolean;
  readonly skipVerify: boolean;
  /** See {@linkcode S3ReplicaClientOptions.idleTimeoutMs}. */
  readonly idleTimeoutMs: number;
  /**
   * Successful GET, PUT, DELETE and LIST requests of this client and the bytes they moved,
   * for `litestream_replica_operation_total` and `_bytes` (labelled `replica_type="s3"`).
   */
  readonly operations: ReplicaOperationMetrics = new ReplicaOperationMetrics("s3");
  #accessKeyId?: string;
  #secretAccessKey?: string;
  #client?: Promise<S3Client>;
  /** The SDK client of GETs (see {@linkcode FetchHandler}), made from `#client`'s. */
  #getClient?: { from: S3Client; client: S3Client };
  /** The region `#client` was made for. */
  #connectedRegion = DEFAULT_REGION;

  /**
   * @throws {RangeError} If `bucket` is empty.
   */
  constructor(options: S3ReplicaClientOptions) {
    if (!options.bucket) throw new RangeError("Cannot create S3 replica client: bucket required");
    this.bucket = options.bucket;
    this.path = cleanKeyPath(options.path ?? "");
    this.region = options.region || undefined;
    this.endpoint = options.endpoint || undefined;
    this.forcePathStyle = options.forcePathStyle ?? this.endpoint !== undefined;
    this.skipVerify = options.skipVerify ?? false;
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;

    // Explicit keys win; otherwise LITESTREAM_* stand in for unset AWS_* variables.
    if (options.accessKeyId || options.secretAccessKey) {
      this.#accessKeyId = options.accessKeyId ?? "";
      this.#secretAccessKey = options.secretAccessKey ?? "";
    } else {
      const id = Deno.env.get("AWS_ACCESS_KEY_ID") ?? Deno.env.get("LITESTREAM_ACCESS_KEY_ID");
      const secret = Deno.env.get("AWS_SECRET_ACCESS_KEY") ??
        Deno.env.get("LITESTREAM_SECRET_ACCESS_KEY");
      const fromLitestream = Deno.env.get("AWS_ACCESS_KEY_ID") === undefined ||
        Deno.env.get("AWS_SECRET_ACCESS_KEY") === undefined;
      if (fromLitestream && id !== undefined && secret !== undefined) {
        [this.#accessKeyId, this.#secretAccessKey] = [id, secret];
      }
    }
  }

  /** `s3://bucket/path`: names the replica in messages; never holds credentials. */
  get location(): string {
    return `s3://${this.bucket}${this.path ? `/${this.path}` : ""}`;
  }

  async generations(options: CallOptions = {}): Promise<string[]> {
    const { signal } = options;
    const out: string[] = [];
    const prefix = `${this.#key(GENERATIONS_DIR)}/`;
    await this.#try("list generations", signal, async () => {
      for await (const page of this.#list(prefix, "/", signal)) {
        for (const p of page.CommonPrefixes ?? []) {
          const name = baseName(p.Prefix ?? "");
          if (isGenerationName(name)) out.push(name);
        }
      }
    });
    return out.sort();
  }

  async *snapshots(generation: string, options: CallOptions = {}): AsyncIterable<SnapshotInfo> {
    const { signal } = options;
    const prefix = `${this.#key(snapshotsKey(checkGeneration(generation)))}/`;
    for await (const page of this.#listPages(`list snapshots of ${generation}`, prefix, signal)) {
      for (const obj of page.Contents ?? []) {
        const index = parseSnapshotName(baseName(obj.Key ?? ""));
        if (index === undefined) continue;
        yield {
          generation,
          index,
          size: obj.Size ?? 0,
          createdAt: obj.LastModified ?? new Date(0),
        };
      }
    }
  }

  async writeSnapshot(
    key: SnapshotKey,
    data: Body,
    options: CallOptions = {},
  ): Promise<SnapshotInfo> {
    const name = snapshotKey(checkGeneration(key.generation), key.index);
    const createdAt = new Date();
    const size = await this.#try(
      `write snapshot "${name}"`,
      options.signal,
      () => this.#put(this.#key(name), data, options.signal),
    );
    return { generation: key.generation, index: key.index, size, createdAt };
  }

  openSnapshot(key: SnapshotKey, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const name = snapshotKey(checkGeneration(key.generation), key.index);
    return this.#get("snapshot", name, options.signal);
  }

  async deleteSnapshot(key: SnapshotKey, options: CallOptions = {}): Promise<void> {
    const name = snapshotKey(checkGeneration(key.generation), key.index);
    await this.#try(
      `delete snapshot "${name}"`,
      options.signal,
      () => this.#deleteKeys([this.#key(name)], options.signal),
    );
  }

  async *walSegments(generation: string, options: CallOptions = {}): AsyncIterable<WalSegmentInfo> {
    const { signal } = options;
    const prefix = `${this.#key(walSegmentsKey(checkGeneration(generation)))}/`;
    for await (
      const page of this.#listPages(`list WAL segments of ${generation}`, prefix, signal)
    ) {
      for (const obj of page.Contents ?? []) {
        const parsed = parseWalSegmentName(baseName(obj.Key ?? ""));
        if (parsed === undefined) continue;
        yield {
          generation,
          index: parsed.index,
          offset: parsed.offset,
          size: obj.Size ?? 0,
          createdAt: obj.LastModified ?? new Date(0),
        };
      }
    }
  }

  async writeWalSegment(pos: Pos, data: Body, options: CallOptions = {}): Promise<WalSegmentInfo> {
    const name = walSegmentKey(checkGeneration(pos.generation), pos.index, pos.offset);
    const createdAt = new Date();
    const size = await this.#try(
      `write WAL segment ${formatPos(pos)}`,
      options.signal,
      () => this.#put(this.#key(name), data, options.signal),
    );
    return { generation: pos.generation, index: pos.index, offset: pos.offset, size, createdAt };
  }

  openWalSegment(pos: Pos, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const name = walSegmentKey(checkGeneration(pos.generation), pos.index, pos.offset);
    return this.#get("WAL segment", name, options.signal);
  }

  async deleteWalSegments(positions: Pos[], options: CallOptions = {}): Promise<void> {
    const keys = positions.map((p) =>
      this.#key(walSegmentKey(checkGeneration(p.generation), p.index, p.offset))
    );
    await this.#try(
      `delete ${keys.length} WAL segments`,
      options.signal,
      () => this.#deleteKeys(keys, options.signal),
    );
  }

  async deleteGeneration(generation: string, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const prefix = `${this.#key(generationKey(checkGeneration(generation)))}/`;
    await this.#try(`delete generation ${generation}`, signal, async () => {
      // Collect first, then delete: deleting while paging could skip keys on some stores.
      const keys: string[] = [];
      for await (const page of this.#list(prefix, undefined, signal)) {
        for (const obj of page.Contents ?? []) if (obj.Key) keys.push(obj.Key);
      }
      await this.#deleteKeys(keys, signal);
    });
  }

  /** Releases the SDK clients' sockets. The client may still be used afterwards. */
  async close(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    this.#getClient?.client.destroy();
    this.#getClient = undefined;
    if (client) (await client.catch(() => undefined))?.destroy();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Returns the full object key of a key relative to the replica root. */
  #key(relative: string): string {
    return joinKey(this.path, relative);
  }

  #config(region: string): S3ClientConfig {
    const config: S3ClientConfig = {
      region,
      forcePathStyle: this.forcePathStyle,
      maxAttempts: MAX_ATTEMPTS,
      retryMode: "standard",
      requestHandler: {
        connectionTimeout: CONNECT_TIMEOUT_MS,
        socketTimeout: this.idleTimeoutMs,
        ...(this.skipVerify ? { httpsAgent: { keepAlive: true, rejectUnauthorized: false } } : {}),
      },
    };
    if (this.endpoint) {
      config.endpoint = this.endpoint;
      // Most S3-compatible stores reject or mangle the SDK's default aws-chunked checksums.
      config.requestChecksumCalculation = "WHEN_REQUIRED";
      config.responseChecksumValidation = "WHEN_REQUIRED";
    }
    if (this.#accessKeyId !== undefined) {
      config.credentials = {
        accessKeyId: this.#accessKeyId,
        secretAccessKey: this.#secretAccessKey ?? "",
      };
    }
    return config;
  }

  /** Returns the SDK client, creating it (and looking up the region) on first use. */
  #s3(signal: AbortSignal | undefined): Promise<S3Client> {
    if (!this.#client) {
      const connecting = this.#connect();
      this.#client = connecting;
      // A failed lookup is retried by the next call.
      connecting.catch(() => {
        if (this.#client === connecting) this.#client = undefined;
      });
    }
    return raceSignal(this.#client, signal);
  }

  async #connect(): Promise<S3Client> {
    let region = this.region;
    if (!region && this.endpoint) region = DEFAULT_REGION;
    if (!region) {
      // Ask us-east-1 where the bucket lives; only the bucket owner may ask.
      const lookup = new S3Client(this.#config(DEFAULT_REGION));
      try {
        const out = await lookup.send(new GetBucketLocationCommand({ Bucket: this.bucket }));
        region = out.LocationConstraint || DEFAULT_REGION;
        if (region === "EU") region = "eu-west-1"; // legacy constraint name
      } catch (err) {
        throw new RegionLookupError(
          `cannot look up region of bucket "${this.bucket}": ${describeS3Error(err, this)}`,
          { cause: this.#scrub(err) },
        );
      } finally {
        lookup.destroy();
      }
    }
    this.#connectedRegion = region;
    return new S3Client(this.#config(region));
  }

  /**
   * Returns the SDK client for GETs: one sending with Deno's `fetch`, sharing the main
   * client's region and credentials (skip-verify needs the Node handler's TLS options, so it
   * keeps the main client).
   */
  async #getter(signal: AbortSignal | undefined): Promise<S3Client> {
    const s3 = await this.#s3(signal);
    if (this.skipVerify) return s3;
    if (this.#getClient?.from !== s3) {
      this.#getClient?.client.destroy();
      const config: S3ClientConfig = {
        ...this.#config(this.#connectedRegion),
        credentials: s3.config.credentials,
        requestHandler: new FetchHandler({
          idleTimeoutMs: this.idleTimeoutMs,
        }) as unknown as S3ClientConfig["requestHandler"],
      };
      this.#getClient = { from: s3, client: new S3Client(config) };
    }
    return this.#getClient.client;
  }

  /**
   * Runs `fn` and turns its errors into `Cannot <action> in "<location>": <reason>`. An
   * aborted call rejects with the signal's reason; NotFound and our own errors pass through.
   */
  async #try<T>(action: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    signal?.throwIfAborted();
    try {
      return await fn();
    } catch (err) {
      throw this.#translate(action, signal, err);
    }
  }

  #translate(action: string, signal: AbortSignal | undefined, err: unknown): unknown {
    if (signal?.aborted) return signal.reason;
    if (err instanceof Deno.errors.NotFound || err instanceof S3DeleteError) return err;
    if (err instanceof RegionLookupError) {
      return new Error(`Cannot ${action} in "${this.location}": ${err.message}`, {
        cause: err.cause,
      });
    }
    return new Error(`Cannot ${action} in "${this.location}": ${describeS3Error(err, this)}`, {
      cause: this.#scrub(err),
    });
  }

  /**
   * Returns a copy of an SDK error that is safe to keep as a cause: same prototype, name,
   * message and plain fields, minus `$response` (read-only on SDK errors, so it cannot be
   * deleted in place) and other fields that can carry credentials; key strings are redacted.
   */
  #scrub(err: unknown): unknown {
    if (!(err instanceof Error)) return err;
    const secrets = [
      this.#accessKeyId,
      this.#secretAccessKey,
      Deno.env.get("AWS_ACCESS_KEY_ID"),
      Deno.env.get("AWS_SECRET_ACCESS_KEY"),
    ].filter((s): s is string => !!s && s.length >= 4);
    const redact = (s: string) => secrets.reduce((t, x) => t.split(x).join("[redacted]"), s);
    const copy = Object.create(Object.getPrototypeOf(err)) as Error;
    const fields: PropertyDescriptorMap = {
      name: { value: err.name, writable: true, configurable: true },
      message: { value: redact(err.message), writable: true, configurable: true },
      stack: { value: redact(err.stack ?? ""), writable: true, configurable: true },
    };
    if (err.cause !== undefined) {
      fields.cause = { value: this.#scrub(err.cause), writable: true, configurable: true };
    }
    for (const [k, v] of Object.entries(err)) {
      if (SENSITIVE_ERROR_FIELDS.includes(k) || k in fields) continue;
      const value = typeof v === "string" ? redact(v) : v;
      fields[k] = { value, writable: true, enumerable: true, configurable: true };
    }
    return Object.defineProperties(copy, fields);
  }

  async #get(
    what: string,
    name: string,
    signal: AbortSignal | undefined,
  ): Promise<ReadableStream<Uint8Array>> {
    return await this.#try(`open ${what} "${name}"`, signal, async () => {
      const s3 = await this.#getter(signal);
      try {
        const out = await s3.send(
          new GetObjectCommand({ Bucket: this.bucket, Key: this.#key(name) }),
          { abortSignal: signal },
        );
        if (!out.Body) throw new Error("response has no body");
        this.operations.record("GET", out.ContentLength ?? 0);
        // The body arrives after send() returned: a reset or a stall while reading it fails
        // the stream, with the same one-line errors as a failed request.
        return translateErrors(
          out.Body.transformToWebStream() as ReadableStream<Uint8Array>,
          (err) => this.#translate(`read ${what} "${name}"`, signal, err),
        );
      } catch (err) {
        const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
        if (
          !signal?.aborted &&
          (e.name === "NoSuchKey" || e.name === "NotFound" ||
            (e.$metadata?.httpStatusCode === 404 && e.name !== "NoSuchBucket"))
        ) {
          throw new Deno.errors.NotFound(
            `Cannot open ${what} in "${this.location}": "${name}" does not exist`,
            { cause: this.#scrub(err) },
          );
        }
        throw err;
      }
    });
  }

  /** Stores `data` at `key`; returns the bytes written. Retried requests resend the same bytes. */
  async #put(key: string, data: Body, signal: AbortSignal | undefined): Promise<number> {
    const s3 = await this.#s3(signal);
    if (data instanceof Uint8Array) {
      await s3.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: data,
          ContentLength: data.byteLength,
        }),
        { abortSignal: signal },
      );
      this.operations.record("PUT", data.byteLength);
      return data.byteLength;
    }

    // Streams of unknown length go through lib-storage: one PutObject if the body fits in
    // one part, else a multipart upload. Each part is buffered, so retries resend it whole
    // (the SDK's own PutObject cannot take a web stream under Deno).
    let size = 0;
    const reader = data.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        const { done, value } = await reader.read();
        if (done) {
          controller.close();
        } else {
          size += value.byteLength;
          controller.enqueue(value);
        }
      },
      cancel: (reason) => reader.cancel(reason),
    }, { highWaterMark: 0 });
    const abort = new AbortController();
    const onAbort = () => abort.abort(signal?.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      const upload = new Upload({
        client: s3,
        params: { Bucket: this.bucket, Key: key, Body: body },
        partSize: UPLOAD_PART_SIZE,
        queueSize: UPLOAD_QUEUE_SIZE,
        leavePartsOnError: false,
        abortController: abort,
      });
      await upload.done();
      this.operations.record("PUT", size);
      return size;
    } catch (err) {
      // Release the caller's stream (and whatever file it reads) instead of leaving it locked.
      await reader.cancel(err).catch(() => {});
      throw err;
    } finally {
      signal?.removeEventListener("abort", onAbort);
      reader.releaseLock();
    }
  }

  /** Deletes keys in batches of {@linkcode MAX_DELETE_KEYS}; missing keys are not an error. */
  async #deleteKeys(keys: string[], signal: AbortSignal | undefined): Promise<void> {
    if (keys.length === 0) return;
    const s3 = await this.#s3(signal);
    for (let i = 0; i < keys.length; i += MAX_DELETE_KEYS) {
      const batch = keys.slice(i, i + MAX_DELETE_KEYS);
      const out = await s3.send(
        new DeleteObjectsCommand({
          Bucket: this.bucket,
          Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
        }),
        { abortSignal: signal },
      );
      const errors = out.Errors ?? [];
      if (errors.length > 0) {
        const [first] = errors;
        const more = errors.length > 1 ? ` (and ${errors.length - 1} more)` : "";
        throw new S3DeleteError(
          `Cannot delete "${first.Key}" in "${this.location}": ${first.Code ?? "error"}: ` +
            `${first.Message ?? "no message"}${more}`,
        );
      }
      this.operations.record("DELETE");
    }
  }

  /** Pages through ListObjectsV2, wrapping errors like the other calls. */
  async *#listPages(
    action: string,
    prefix: string,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ListObjectsV2CommandOutput> {
    signal?.throwIfAborted();
    const pages = this.#list(prefix, "/", signal);
    try {
      while (true) {
        let next: IteratorResult<ListObjectsV2CommandOutput>;
        try {
          next = await pages.next();
        } catch (err) {
          throw this.#translate(action, signal, err);
        }
        if (next.done) return;
        yield next.value;
      }
    } finally {
      await pages.return(undefined);
    }
  }

  async *#list(
    prefix: string,
    delimiter: string | undefined,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ListObjectsV2CommandOutput> {
    const s3 = await this.#s3(signal);
    let token: string | undefined;
    do {
      signal?.throwIfAborted();
      const page = await s3.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: prefix,
          Delimiter: delimiter,
          ContinuationToken: token,
        }),
        { abortSignal: signal },
      );
      this.operations.record("LIST");
      yield page;
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }
}

/** GetBucketLocation failed; the message is lowercase because it is always wrapped. */
class RegionLookupError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "RegionLookupError";
  }
}

/** Some keys of a DeleteObjects batch could not be deleted. */
class S3DeleteError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "S3DeleteError";
  }
}

/** Passes `stream` through, replacing the error it fails with by `translate(error)`. */
function translateErrors(
  stream: ReadableStream<Uint8Array>,
  translate: (err: unknown) => unknown,
): ReadableStream<Uint8Array> {
  const reader = stream.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let next: ReadableStreamReadResult<Uint8Array>;
      try {
        next = await reader.read();
      } catch (err) {
        controller.error(translate(err));
        return;
      }
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}

/** Resolves like `promise`, or rejects with the signal's reason as soon as it aborts. */
function raceSignal<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
