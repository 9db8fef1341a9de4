/**
 * {@linkcode GcsReplicaClient}: stores a replica in a Google Cloud Storage bucket under an
 * object-name prefix, in the v0.3.13 layout (`<path>/generations/<gen>/snapshots/…` and
 * `…/wal/…`, names joined like Go's `path.Join`, as v0.3.13's `gcs` client does).
 *
 * **Library decision: plain `fetch` against the GCS JSON API, no npm package.** We tried the
 * official `npm:@google-cloud/storage@8.4.0` under Deno (2026-12): it works against
 * fake-gcs-server through `apiEndpoint` with only `--allow-net --allow-env`, but it pulls 57
 * npm packages (gaxios, google-auth-library, teeny-request, retry-request, …), takes 0.3–0.8 s
 * to import, prints `MaxListenersExceededWarning` to stderr on streamed uploads, and with
 * `STORAGE_EMULATOR_HOST` its resumable upload got a 404 from fake-gcs-server; it would also
 * grow the one-file bundle for every user, file-replica users included. What this client
 * needs from GCS is a handful of plain HTTP requests (list, media download, media upload,
 * resumable session and chunks, delete); the one part worth a library, OAuth2, is small for
 * the credential types a server uses. Owning the requests also gives the house behaviour
 * directly: `AbortSignal` on every byte, an idle timeout, bounded-memory streamed uploads
 * (resumable, 8 MiB chunks, resumed from the server's committed offset after a failure),
 * and one-line errors that never carry a token. The cost: auth against real Google is ours
 * to get right, and it is tested only against a loopback token endpoint (below).
 *
 * Credentials, first match wins (Google's "application default credentials" order):
 * 1. `credentialsFile`, else the file named by `GOOGLE_APPLICATION_CREDENTIALS`: a
 *    service-account key (`"type": "service_account"`: an RS256 JWT signed with Web Crypto,
 *    exchanged at its `token_uri`) or an authorized-user file (`"authorized_user"`, what
 *    `gcloud auth application-default login` writes: a refresh-token grant);
 * 2. gcloud's well-known file `$CLOUDSDK_CONFIG/application_default_credentials.json`
 *    (default `~/.config/gcloud/…`);
 * 3. the GCE/GKE/Cloud Run metadata server (`GCE_METADATA_HOST`, default 169.254.169.254).
 * Workload-identity-federation files (`"external_account"`) and impersonation are not
 * supported and fail with a message saying so. Only the emulator and a loopback token server
 * are tested here: no request has been made to real GCS.
 *
 * Emulators: `STORAGE_EMULATOR_HOST` sends requests there without credentials, as v0.3.13's
 * Go client does (the value may carry a scheme; without one it is `http`, as in Go; Node's
 * client assumes `https`; any path is ignored). Explicitly: the `endpoint` option moves
 * requests, `anonymous: true` drops credentials.
 *
 * Permissions: `--allow-net` (storage, token and metadata hosts), `--allow-env`
 * (`STORAGE_EMULATOR_HOST`, `GOOGLE_APPLICATION_CREDENTIALS`, `CLOUDSDK_CONFIG`, `HOME`,
 * `GCE_METADATA_HOST`), `--allow-read` (the credentials file).
 *
 * @example
 * ```ts
 * const client = new GcsReplicaClient(parseGcsUrl("gcs://mybkt/db"));
 * console.log(await client.generations());
 * ```
 *
 * @module
 */
import {
  baseName,
  checkGeneration,
  cleanPath,
  generationKey,
  GENERATIONS_DIR,
  isGenerationName,
  parseSnapshotName,
  parseWalSegmentName,
  snapshotKey,
  snapshotsKey,
  walSegmentKey,
  walSegmentsKey,
} from "../layout.ts";
import { ReplicaOperationMetrics } from "../metrics.ts";
import { formatPos, type Pos } from "../pos.ts";
import type {
  Body,
  CallOptions,
  ReplicaClient,
  SnapshotInfo,
  SnapshotKey,
  WalSegmentInfo,
} from "../replica_client.ts";
import { concat } from "../internal/bytes.ts";
import { delay } from "../internal/delay.ts";
import { IdleTimeoutError, IdleTimer } from "../internal/idle_timer.ts";

/** Where requests go when neither `endpoint` nor `STORAGE_EMULATOR_HOST` is set. */
export const DEFAULT_GCS_ENDPOINT = "https://storage.googleapis.com";
/**
 * Bodies up to this size go in one request; larger ones in a resumable upload of chunks of
 * this size (GCS wants multiples of 256 KiB). At most one chunk is held in memory.
 */
export const UPLOAD_CHUNK_SIZE = 8 * 1024 * 1024;
/** A request whose connection moves no byte for this long fails (and is retried). */
export const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
/** Attempts per request: retries 408, 429, 5xx, resets and timeouts with backoff. */
const MAX_ATTEMPTS = 5;
const BACKOFF_BASE_MS = 100;
const BACKOFF_MAX_MS = 5_000;
/** Objects per list page (the JSON API's maximum). */
const LIST_PAGE_SIZE = 1000;
/** Deletes in flight at once (the JSON API deletes one object per request). */
const DELETE_CONCURRENCY = 8;
/** OAuth2 scope of our tokens: objects read, write, delete and list. */
const SCOPE = "https://www.googleapis.com/auth/devstorage.read_write";
const DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token";
const DEFAULT_METADATA_HOST = "169.254.169.254";
/** A token is refreshed this long before it expires. */
const TOKEN_EARLY_REFRESH_MS = 5 * 60_000;
const TOKEN_TIMEOUT_MS = 30_000;
const METADATA_TIMEOUT_MS = 3_000;

/** How to reach one GCS replica. */
export interface GcsReplicaClientOptions {
  /** Bucket name. */
  bucket: string;
  /**
   * Object-name prefix of the replica. Cleaned like Go's `path.Clean`; a leading slash is
   * kept, as v0.3.13 keeps it (its object names then start with "/"). @default {""}
   */
  path?: string;
  /**
   * Base URL of the JSON API (scheme, host and port), e.g. an emulator's
   * `"http://127.0.0.1:4443"`.
   * @default {from `STORAGE_EMULATOR_HOST`, else `"https://storage.googleapis.com"`}
   */
  endpoint?: string;
  /**
   * A service-account key or authorized-user JSON file.
   * @default {`GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's file, then the metadata server}
   */
  credentialsFile?: string;
  /**
   * Send no credentials (for an emulator).
   * @default {true when the endpoint comes from `STORAGE_EMULATOR_HOST` and no
   * `credentialsFile` is set, as Google's clients do; false otherwise}
   */
  anonymous?: boolean;
  /**
   * A request whose connection moves no byte for this long fails with a timeout and is
   * retried like a 5xx answer.
   * @default {120_000}
   */
  idleTimeoutMs?: number;
}

const GCS_URL_REGEXP = /^gcs:\/\/([^/?#]*)([^?#]*)(?:\?[^#]*)?(?:#.*)?$/i;

/**
 * Parses a `gcs://BUCKET/PATH` replica URL as v0.3.13 does: the host is the bucket, the path
 * loses its leading slash and is cleaned. Query and fragment are ignored.
 *
 * @throws {SyntaxError} If `url` is not a `gcs://` URL or its path has a bad escape.
 * @throws {RangeError} If the URL names no bucket.
 */
export function parseGcsUrl(url: string): GcsReplicaClientOptions {
  const m = GCS_URL_REGEXP.exec(url);
  if (!m) {
    throw new SyntaxError(`Cannot parse GCS replica URL "${url}": expected gcs://BUCKET/PATH`);
  }
  const [, bucket, rawPath] = m;
  if (!bucket) throw new RangeError(`Cannot use GCS replica URL "${url}": no bucket name`);
  let path: string;
  try {
    path = decodeURIComponent(rawPath);
  } catch (err) {
    throw new SyntaxError(`Cannot parse GCS replica URL "${url}": bad escape in path`, {
      cause: err,
    });
  }
  return { bucket, path: cleanPath(path).replace(/^\/+/, "") };
}

/**
 * Returns the JSON API base URL named by a `STORAGE_EMULATOR_HOST` value, as Google's Go
 * client (v0.3.13's) reads it: `host:port` means `http://host:port`; a value with a scheme
 * keeps it; any path is dropped. `undefined` for an unset or empty value.
 *
 * @throws {SyntaxError} If the value is not a host or URL.
 */
export function emulatorEndpoint(value: string | undefined): string | undefined {
  if (!value) return undefined;
  try {
    const url = new URL(value.includes("://") ? value : `http://${value}`);
    if (!url.host) throw new TypeError("no host");
    return `${url.protocol}//${url.host}`;
  } catch (err) {
    throw new SyntaxError(`Cannot use STORAGE_EMULATOR_HOST "${value}": not a host or URL`, {
      cause: err,
    });
  }
}

function checkEndpoint(endpoint: string): string {
  let url: URL | undefined;
  try {
    url = new URL(endpoint);
  } catch {
    // Reported below.
  }
  if (!url || (url.protocol !== "http:" && url.protocol !== "https:") || !url.host) {
    throw new SyntaxError(`Cannot use GCS endpoint "${endpoint}": expected an http(s) URL`);
  }
  return endpoint.replace(/\/+$/, "");
}

/** Joins object-name parts like Go's `path.Join`: empty parts are skipped, the result cleaned. */
function joinPath(...parts: string[]): string {
  return cleanPath(parts.filter((p) => p !== "").join("/"));
}

// ---------------------------------------------------------------------------------------
// Errors

/** The JSON API answered with an error status. Its message is lowercase: it is always wrapped. */
class GcsHttpError extends Error {
  readonly status: number;
  /** The server's own message, on one line. */
  readonly detail: string;
  /**
   * Set on a 404 that can only mean the bucket is missing (a listing or an upload), since
   * emulators do not say which thing they did not find.
   */
  bucketMissing = false;
  constructor(status: number, detail: string) {
    super(`HTTP ${status}${detail ? `: ${detail}` : ""}`);
    this.name = "GcsHttpError";
    this.status = status;
    this.detail = detail;
  }
}

/** The server stored other bytes than were sent; the object it made is deleted. */
class IncompleteUploadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "IncompleteUploadError";
  }
}

/** Credentials could not be found or exchanged for a token; never retried. */
class GcsCredentialsError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "GcsCredentialsError";
  }
}

/** The token endpoint could not be reached; a `TypeError` like fetch's, so it is retried. */
class TokenEndpointError extends TypeError {
  readonly host: string;
  constructor(host: string, options?: ErrorOptions) {
    super("fetch failed", options);
    this.name = "TokenEndpointError";
    this.host = host;
  }
}

/** What {@linkcode describeGcsError} needs to know about the client that failed. */
export interface GcsErrorContext {
  bucket: string;
  endpoint: string;
}

/**
 * Turns an error from a request into a short lowercase reason, e.g.
 * `bucket "bkt" does not exist` or `cannot connect to 127.0.0.1:9: connection refused`.
 * Never includes a token or key: requests' headers are not part of any error.
 */
export function describeGcsError(err: unknown, context: GcsErrorContext): string {
  const bucket = `bucket "${context.bucket}"`;
  const host = err instanceof TokenEndpointError
    ? `token endpoint ${err.host}`
    : hostOf(context.endpoint);
  if (err instanceof GcsHttpError) {
    const detail = err.detail ? `: ${err.detail}` : "";
    if (err.status === 404 && isBucketMissing(err)) return `${bucket} does not exist`;
    if (err.status === 401) {
      return `the server rejected the credentials (HTTP 401${detail})`;
    }
    if (err.status === 403) return `access denied to ${bucket} (HTTP 403${detail})`;
    if (err.status === 429) return `the server is throttling requests (HTTP 429), retries gave up`;
    return `the server answered HTTP ${err.status}${detail}`;
  }
  if (err instanceof IdleTimeoutError) return `request to ${host} timed out (${err.message})`;
  if (err instanceof GcsCredentialsError || err instanceof IncompleteUploadError) {
    return err.message;
  }
  // Only fetch() failures are about the network; anything else (the body's own stream
  // failing, say) keeps its message.
  if (!(err instanceof TypeError)) {
    return firstLine(err instanceof Error ? err.message : String(err)) || "unknown error";
  }
  // fetch() says "fetch failed"; what failed is in its cause.
  const messages: string[] = [];
  for (let e: unknown = err; e !== undefined && messages.length < 5; e = (e as Error).cause) {
    messages.push(e instanceof Error ? e.message : String(e));
    if (!(e instanceof Error)) break;
  }
  const message = messages.join(": ");
  if (/connection refused/i.test(message)) return `cannot connect to ${host}: connection refused`;
  if (/dns error|failed to lookup|name or service not known|no such host/i.test(message)) {
    return `cannot resolve host ${host}`;
  }
  if (/certificate|UnknownIssuer|invalid peer cert/i.test(message)) {
    return `the TLS certificate of ${host} is not trusted`;
  }
  if (/connection reset|broken pipe|connection closed|unexpected eof|incomplete/i.test(message)) {
    return `connection to ${host} was closed unexpectedly`;
  }
  if (/network is unreachable|no route to host|host is unreachable/i.test(message)) {
    return `cannot reach ${host}: no route`;
  }
  if (/timed out/i.test(message)) return `connection to ${host} timed out`;
  return `request to ${host} failed: ${firstLine(messages[messages.length - 1])}`;
}

function isBucketMissing(err: GcsHttpError): boolean {
  return err.bucketMissing || (/bucket/i.test(err.detail) && !/no such object/i.test(err.detail));
}

/** Marks a 404 from a request that only a missing bucket can fail with 404; rethrows. */
function bucketMissing(err: unknown): never {
  if (err instanceof GcsHttpError && err.status === 404) err.bucketMissing = true;
  throw err;
}

function hostOf(endpoint: string): string {
  try {
    return new URL(endpoint).host;
  } catch {
    return endpoint;
  }
}

function firstLine(s: string): string {
  const line = s.split("\n", 1)[0].trim();
  return line.length > 200 ? `${line.slice(0, 200)}…` : line;
}

/** True for errors worth another attempt: resets, timeouts, 408, 429 and 5xx answers. */
function isRetryable(err: unknown): boolean {
  if (err instanceof GcsHttpError) {
    return err.status === 408 || err.status === 429 || err.status >= 500;
  }
  if (err instanceof IdleTimeoutError) return true;
  // fetch() rejects with a TypeError for network failures.
  return err instanceof TypeError;
}

function backoff(attempt: number, signal: AbortSignal | undefined): Promise<void> {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
  return delay(ms * (0.5 + Math.random() / 2), { signal });
}

/** Reads an error answer's message: the JSON API's `error.message`, or the text itself. */
async function httpError(res: Response): Promise<GcsHttpError> {
  let text = "";
  try {
    text = await res.text();
  } catch {
    // The status alone must do.
  }
  let detail = text;
  try {
    const json = JSON.parse(text) as { error?: { message?: string } | string };
    if (typeof json.error === "string") detail = json.error;
    else if (json.error?.message) detail = json.error.message;
  } catch {
    // Not JSON: keep the text.
  }
  return new GcsHttpError(res.status, firstLine(detail));
}

// ---------------------------------------------------------------------------------------
// The client

/** Metadata of a stored object, as the JSON API returns it (sizes are decimal strings). */
interface GcsObject {
  name: string;
  size?: string;
  timeCreated?: string;
}

interface ListPage {
  items?: GcsObject[];
  prefixes?: string[];
  nextPageToken?: string;
}

/** One request of {@linkcode GcsReplicaClient}'s `#send`. */
interface GcsRequest {
  method: string;
  url: string;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Stop after one attempt: the caller retries (resumable upload chunks). */
  once?: boolean;
}

/** Replica client for a Google Cloud Storage bucket (or an emulator of its JSON API). */
export class GcsReplicaClient implements ReplicaClient {
  readonly type = "gcs";
  readonly bucket: string;
  /** Object-name prefix; see {@linkcode GcsReplicaClientOptions.path}. */
  readonly path: string;
  /** Base URL requests go to. */
  readonly endpoint: string;
  /** See {@linkcode GcsReplicaClientOptions.idleTimeoutMs}. */
  readonly idleTimeoutMs: number;
  /**
   * Successful GET, PUT, DELETE and LIST requests of this client and the bytes they moved,
   * for `litestream_replica_operation_total` and `_bytes` (labelled `replica_type="gcs"`).
   */
  readonly operations: ReplicaOperationMetrics = new ReplicaOperationMetrics("gcs");
  /** `undefined` for an emulator: requests carry no credentials. */
  #credentials?: GoogleCredentials;

  /**
   * @throws {RangeError} If `bucket` is empty.
   * @throws {SyntaxError} If `endpoint` is not an http(s) URL, or `STORAGE_EMULATOR_HOST`
   * is set but not a host or URL.
   */
  constructor(options: GcsReplicaClientOptions) {
    if (!options.bucket) throw new RangeError("Cannot create GCS replica client: bucket required");
    this.bucket = options.bucket;
    this.path = cleanPath(options.path ?? "");
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    const explicit = options.endpoint ? checkEndpoint(options.endpoint) : undefined;
    const emulator = explicit ? undefined : emulatorEndpoint(Deno.env.get("STORAGE_EMULATOR_HOST"));
    this.endpoint = explicit ?? emulator ?? DEFAULT_GCS_ENDPOINT;
    const anonymous = options.anonymous ??
      (emulator !== undefined && options.credentialsFile === undefined);
    if (!anonymous) this.#credentials = new GoogleCredentials(options.credentialsFile);
  }

  /** `gcs://bucket/path`: names the replica in messages; never holds credentials. */
  get location(): string {
    return `gcs://${this.bucket}${this.path ? `/${this.path}` : ""}`;
  }

  async generations(options: CallOptions = {}): Promise<string[]> {
    const { signal } = options;
    // A Set: fake-gcs-server repeats the prefixes on every page.
    const out = new Set<string>();
    const prefix = `${this.#name(GENERATIONS_DIR)}/`;
    await this.#try("list generations", signal, async () => {
      for await (const page of this.#list(prefix, "/", signal)) {
        for (const p of page.prefixes ?? []) {
          const name = baseName(p);
          if (isGenerationName(name)) out.add(name);
        }
      }
    });
    return [...out].sort();
  }

  async *snapshots(generation: string, options: CallOptions = {}): AsyncIterable<SnapshotInfo> {
    const prefix = `${this.#name(snapshotsKey(checkGeneration(generation)))}/`;
    const action = `list snapshots of ${generation}`;
    for await (const page of this.#listPages(action, prefix, options.signal)) {
      for (const obj of page.items ?? []) {
        const index = parseSnapshotName(baseName(obj.name));
        if (index === undefined) continue;
        yield { generation, index, size: Number(obj.size ?? 0), createdAt: created(obj) };
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
      () => this.#upload(this.#name(name), data, options.signal),
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
      () => this.#delete([this.#name(name)], options.signal),
    );
  }

  async *walSegments(generation: string, options: CallOptions = {}): AsyncIterable<WalSegmentInfo> {
    const prefix = `${this.#name(walSegmentsKey(checkGeneration(generation)))}/`;
    const action = `list WAL segments of ${generation}`;
    for await (const page of this.#listPages(action, prefix, options.signal)) {
      for (const obj of page.items ?? []) {
        const parsed = parseWalSegmentName(baseName(obj.name));
        if (parsed === undefined) continue;
        yield { generation, ...parsed, size: Number(obj.size ?? 0), createdAt: created(obj) };
      }
    }
  }

  async writeWalSegment(pos: Pos, data: Body, options: CallOptions = {}): Promise<WalSegmentInfo> {
    const name = walSegmentKey(checkGeneration(pos.generation), pos.index, pos.offset);
    const createdAt = new Date();
    const size = await this.#try(
      `write WAL segment ${formatPos(pos)}`,
      options.signal,
      () => this.#upload(this.#name(name), data, options.signal),
    );
    return { generation: pos.generation, index: pos.index, offset: pos.offset, size, createdAt };
  }

  openWalSegment(pos: Pos, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const name = walSegmentKey(checkGeneration(pos.generation), pos.index, pos.offset);
    return this.#get("WAL segment", name, options.signal);
  }

  async deleteWalSegments(positions: Pos[], options: CallOptions = {}): Promise<void> {
    const names = positions.map((p) =>
      this.#name(walSegmentKey(checkGeneration(p.generation), p.index, p.offset))
    );
    await this.#try(
      `delete ${names.length} WAL segments`,
      options.signal,
      () => this.#delete(names, options.signal),
    );
  }

  async deleteGeneration(generation: string, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const prefix = `${this.#name(generationKey(checkGeneration(generation)))}/`;
    await this.#try(`delete generation ${generation}`, signal, async () => {
      // Collect first, then delete: deleting while paging could skip names.
      const names: string[] = [];
      for await (const page of this.#list(prefix, undefined, signal)) {
        for (const obj of page.items ?? []) names.push(obj.name);
      }
      await this.#delete(names, signal);
    });
  }

  /** Holds no connection or timer between calls: nothing to release. */
  close(): Promise<void> {
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** Returns the full object name of a name relative to the replica root. */
  #name(relative: string): string {
    return joinPath(this.path, relative);
  }

  #objectUrl(name: string): string {
    return `${this.endpoint}/storage/v1/b/${encodeURIComponent(this.bucket)}/o/${
      encodeURIComponent(name)
    }`;
  }

  #uploadUrl(type: "media" | "resumable", name: string): string {
    return `${this.endpoint}/upload/storage/v1/b/${encodeURIComponent(this.bucket)}/o?` +
      new URLSearchParams({ uploadType: type, name });
  }

  /**
   * Runs `fn` and turns its errors into `Cannot <action> in "<location>": <reason>`. An
   * aborted call rejects with the signal's reason; NotFound passes through.
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
    if (err instanceof Deno.errors.NotFound) return err;
    return new Error(`Cannot ${action} in "${this.location}": ${describeGcsError(err, this)}`, {
      cause: err,
    });
  }

  /**
   * Sends one request, retrying network failures, timeouts, 408, 429 and 5xx answers with
   * backoff (a 401 once, with a fresh token). Resolves with answers below 400, whose body
   * the caller must consume or cancel; rejects with a {@linkcode GcsHttpError} otherwise.
   * The body is guarded by the idle timeout while the caller reads it.
   */
  async #send(req: GcsRequest, signal: AbortSignal | undefined): Promise<Response> {
    const attempts = req.once ? 1 : MAX_ATTEMPTS;
    let refreshed = false;
    for (let attempt = 0;; attempt++) {
      signal?.throwIfAborted();
      try {
        return await this.#attempt(req, signal);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (
          err instanceof GcsHttpError && err.status === 401 && this.#credentials && !refreshed
        ) {
          refreshed = true;
          this.#credentials.invalidate();
          continue;
        }
        if (attempt + 1 >= attempts || !isRetryable(err)) throw err;
        await backoff(attempt, signal);
      }
    }
  }

  async #attempt(req: GcsRequest, signal: AbortSignal | undefined): Promise<Response> {
    const headers: Record<string, string> = { ...req.headers };
    if (this.#credentials) Object.assign(headers, await this.#credentials.headers(signal));
    const idle = new IdleTimer(this.idleTimeoutMs);
    const combined = signal ? AbortSignal.any([signal, idle.signal]) : idle.signal;
    let res: Response;
    try {
      idle.start();
      res = await idle.race(fetch(req.url, {
        method: req.method,
        headers,
        body: req.body as BodyInit | undefined,
        signal: combined,
        // A resumable upload's "308 Resume Incomplete" is not a redirect.
        redirect: "manual",
      }));
      if (res.status >= 400) throw await httpError(res);
    } catch (err) {
      throw idle.fired ?? err;
    } finally {
      idle.stop();
    }
    if (!res.body) return res;
    return new Response(idle.guard(res.body), { status: res.status, headers: res.headers });
  }

  /** Sends a request and parses its JSON answer. */
  async #json<T>(req: GcsRequest, signal: AbortSignal | undefined): Promise<T> {
    const res = await this.#send(req, signal);
    return await res.json() as T;
  }

  async #get(
    what: string,
    name: string,
    signal: AbortSignal | undefined,
  ): Promise<ReadableStream<Uint8Array>> {
    return await this.#try(`open ${what} "${name}"`, signal, async () => {
      let res: Response;
      try {
        res = await this.#send(
          { method: "GET", url: `${this.#objectUrl(this.#name(name))}?alt=media` },
          signal,
        );
      } catch (err) {
        if (!signal?.aborted && err instanceof GcsHttpError && err.status === 404) {
          if (!isBucketMissing(err)) {
            throw new Deno.errors.NotFound(
              `Cannot open ${what} in "${this.location}": "${name}" does not exist`,
              { cause: err },
            );
          }
        }
        throw err;
      }
      this.operations.record("GET", Number(res.headers.get("content-length") ?? 0));
      // The body arrives after the answer: a reset or a stall while reading it fails the
      // stream with the same one-line errors as a failed request.
      return translateErrors(
        res.body ?? new Blob([]).stream(),
        (err) => this.#translate(`read ${what} "${name}"`, signal, err),
      );
    });
  }

  /**
   * Stores `data` as object `name`; returns the bytes written. A body that fits in one chunk
   * goes in one media upload (retried whole); a larger one in a resumable upload whose
   * chunks are read from `data` one at a time.
   */
  async #upload(name: string, data: Body, signal: AbortSignal | undefined): Promise<number> {
    const chunks = new ChunkReader(data, UPLOAD_CHUNK_SIZE, signal);
    let session: string | undefined;
    try {
      const first = await chunks.next();
      if (first.last) {
        const obj = await this.#json<GcsObject>({
          method: "POST",
          url: this.#uploadUrl("media", name),
          headers: { "content-type": "application/octet-stream" },
          body: first.bytes,
        }, signal).catch(bucketMissing);
        checkSize(obj, first.bytes.byteLength);
        this.operations.record("PUT", first.bytes.byteLength);
        return first.bytes.byteLength;
      }

      session = await this.#startSession(name, signal);
      let offset = 0;
      for (let chunk = first;; chunk = await chunks.next()) {
        const end = offset + chunk.bytes.byteLength;
        const obj = await this.#putChunk(session, chunk.bytes, offset, chunk.last, signal);
        offset = end;
        if (obj) {
          checkSize(obj, chunk.last ? offset : -1);
          this.operations.record("PUT", offset);
          return offset;
        }
        if (chunk.last) throw new Error("the server did not finish the upload");
      }
    } catch (err) {
      // Release the caller's stream (and whatever file it reads), and the upload session.
      await chunks.cancel(err);
      if (session) await this.#cancelSession(session);
      // Never leave a truncated object where a good one is expected.
      if (err instanceof IncompleteUploadError) await this.#deleteQuietly(name);
      throw err;
    }
  }

  /** Starts a resumable upload; returns the session URL. */
  async #startSession(name: string, signal: AbortSignal | undefined): Promise<string> {
    const res = await this.#send({
      method: "POST",
      url: this.#uploadUrl("resumable", name),
      headers: {
        "content-type": "application/json; charset=UTF-8",
        "x-upload-content-type": "application/octet-stream",
      },
      body: JSON.stringify({ name }),
    }, signal).catch(bucketMissing);
    await res.body?.cancel();
    const location = res.headers.get("location");
    if (!location) throw new Error("the server started an upload without a session URL");
    return location;
  }

  /**
   * Sends one chunk of a resumable upload starting at object offset `start`. After a failed
   * attempt it asks the server how much it has committed and sends the rest. Returns the
   * object's metadata once the last chunk completes the upload.
   */
  async #putChunk(
    session: string,
    bytes: Uint8Array,
    start: number,
    last: boolean,
    signal: AbortSignal | undefined,
  ): Promise<GcsObject | undefined> {
    const end = start + bytes.byteLength;
    const total = last ? String(end) : "*";
    let committed = start;
    for (let attempt = 0;;) {
      try {
        const rest = bytes.subarray(committed - start);
        const range = rest.byteLength > 0
          ? `bytes ${committed}-${end - 1}/${total}`
          : `bytes */${total}`;
        const res = await this.#send({
          method: "PUT",
          url: session,
          headers: { "content-range": range },
          body: rest,
          once: true,
        }, signal);
        if (res.status !== 308) return await res.json() as GcsObject;
        await res.body?.cancel();
        const before = committed;
        committed = committedOffset(res, start);
        if (committed >= end) return undefined;
        // The server kept part of the chunk: send the rest (if it keeps anything at all).
        if (committed === before && ++attempt >= MAX_ATTEMPTS) {
          throw new Error(`the server accepted none of the bytes from offset ${committed}`);
        }
        continue;
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (++attempt >= MAX_ATTEMPTS || !isRetryable(err)) throw err;
      }
      // Ask what the server committed, then resume from there.
      await backoff(attempt, signal);
      try {
        const res = await this.#send({
          method: "PUT",
          url: session,
          headers: { "content-range": `bytes */${total}` },
          once: true,
        }, signal);
        if (res.status !== 308) return await res.json() as GcsObject;
        await res.body?.cancel();
        committed = committedOffset(res, start);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (!isRetryable(err)) throw err;
      }
    }
  }

  /** Deletes one object, best effort, whatever the caller's signal says. */
  async #deleteQuietly(name: string): Promise<void> {
    try {
      const res = await this.#send(
        { method: "DELETE", url: this.#objectUrl(name), once: true },
        AbortSignal.timeout(5_000),
      );
      await res.body?.cancel();
    } catch {
      // The next write of this name replaces it.
    }
  }

  /** Cancels a resumable upload, best effort (the server drops it after a week anyway). */
  async #cancelSession(session: string): Promise<void> {
    try {
      const res = await this.#send(
        { method: "DELETE", url: session, once: true },
        AbortSignal.timeout(5_000),
      );
      await res.body?.cancel();
    } catch {
      // 499 is the documented answer; anything else leaves an orphan session, not an object.
    }
  }

  /** Deletes objects, a few at a time; missing ones are not an error. */
  async #delete(names: string[], signal: AbortSignal | undefined): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < names.length) {
        const name = names[next++];
        try {
          const res = await this.#send({ method: "DELETE", url: this.#objectUrl(name) }, signal);
          await res.body?.cancel();
        } catch (err) {
          if (!(err instanceof GcsHttpError && err.status === 404 && !isBucketMissing(err))) {
            throw err;
          }
        }
        this.operations.record("DELETE");
      }
    };
    const workers = Array.from({ length: Math.min(DELETE_CONCURRENCY, names.length) }, worker);
    const results = await Promise.allSettled(workers);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }

  /** Pages through a listing, wrapping errors like the other calls. */
  async *#listPages(
    action: string,
    prefix: string,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ListPage> {
    signal?.throwIfAborted();
    const pages = this.#list(prefix, "/", signal);
    try {
      while (true) {
        let next: IteratorResult<ListPage>;
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
  ): AsyncGenerator<ListPage> {
    let token: string | undefined;
    do {
      signal?.throwIfAborted();
      const query = new URLSearchParams({ prefix, maxResults: String(LIST_PAGE_SIZE) });
      if (delimiter) query.set("delimiter", delimiter);
      if (token) query.set("pageToken", token);
      const page = await this.#json<ListPage>({
        method: "GET",
        url: `${this.endpoint}/storage/v1/b/${encodeURIComponent(this.bucket)}/o?${query}`,
      }, signal).catch(bucketMissing);
      this.operations.record("LIST");
      yield page;
      token = page.nextPageToken || undefined;
    } while (token);
  }
}

function created(obj: GcsObject): Date {
  const t = obj.timeCreated ? new Date(obj.timeCreated) : undefined;
  return t && !Number.isNaN(t.getTime()) ? t : new Date(0);
}

/**
 * Fails if the server stored a different number of bytes than were sent (`-1`: the server
 * finished a resumable upload before its last chunk, which fake-gcs-server does when asked
 * for a session's status).
 */
function checkSize(obj: GcsObject, sent: number): void {
  if (sent < 0) {
    throw new IncompleteUploadError(
      `the server finished the upload early, at ${obj.size ?? "?"} bytes`,
    );
  }
  if (obj.size !== undefined && Number(obj.size) !== sent) {
    throw new IncompleteUploadError(`the server stored ${obj.size} bytes of ${sent}`);
  }
}

/**
 * The object offset a resumable session has committed, from a 308 answer's `Range` (none:
 * nothing yet). Earlier chunks are no longer in memory, so an offset before `start` fails.
 */
function committedOffset(res: Response, start: number): number {
  const range = res.headers.get("range");
  const m = /^bytes=0-(\d+)$/.exec(range ?? "");
  if (range !== null && !m) throw new Error(`the server answered an unknown range "${range}"`);
  const committed = m ? Number(m[1]) + 1 : 0;
  if (committed < start) {
    throw new Error(`the server kept ${committed} bytes of the upload, ${start} were sent`);
  }
  return committed;
}

/**
 * Cuts a body into chunks of `size` bytes, reading a stream only as far as the next chunk
 * (plus one piece, to learn whether the chunk is the last). A pending read rejects with the
 * signal's reason when it aborts.
 */
class ChunkReader {
  readonly #size: number;
  readonly #signal?: AbortSignal;
  #bytes?: Uint8Array;
  #at = 0;
  #reader?: ReadableStreamDefaultReader<Uint8Array>;
  #carry: Uint8Array[] = [];
  #ended = false;

  constructor(data: Body, size: number, signal: AbortSignal | undefined) {
    this.#size = size;
    this.#signal = signal;
    if (data instanceof Uint8Array) this.#bytes = data;
    else this.#reader = data.getReader();
  }

  async next(): Promise<{ bytes: Uint8Array; last: boolean }> {
    if (this.#bytes) {
      const bytes = this.#bytes.subarray(this.#at, this.#at + this.#size);
      this.#at += bytes.byteLength;
      return { bytes, last: this.#at >= this.#bytes.byteLength };
    }
    const parts = this.#carry;
    this.#carry = [];
    let length = parts.reduce((n, p) => n + p.byteLength, 0);
    while (length < this.#size && !this.#ended) {
      const piece = await this.#read();
      if (piece) {
        parts.push(piece);
        length += piece.byteLength;
      }
    }
    const all = parts.length === 1 ? parts[0] : concat(parts);
    const bytes = all.subarray(0, this.#size);
    if (all.byteLength > this.#size) this.#carry = [all.subarray(this.#size)];
    // A full chunk with nothing after it yet: look one piece ahead.
    while (this.#carry.length === 0 && !this.#ended) {
      const piece = await this.#read();
      if (piece) this.#carry = [piece];
    }
    return { bytes, last: this.#carry.length === 0 };
  }

  async #read(): Promise<Uint8Array | undefined> {
    const { done, value } = await raceSignal(this.#reader!.read(), this.#signal);
    if (done) {
      this.#ended = true;
      this.#reader!.releaseLock();
      return undefined;
    }
    return value.byteLength > 0 ? value : undefined;
  }

  /** Cancels the source stream (if it is still being read). */
  async cancel(reason: unknown): Promise<void> {
    if (!this.#reader || this.#ended) return;
    this.#ended = true;
    await this.#reader.cancel(reason).catch(() => {});
    this.#reader.releaseLock();
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

// ---------------------------------------------------------------------------------------
// Credentials: Google's application-default order, for the types a server uses.

/** A service-account key file's fields that we use. */
interface ServiceAccountKey {
  "type": "service_account";
  "client_email": string;
  "private_key": string;
  "private_key_id"?: string;
  "token_uri"?: string;
}

/** An authorized-user file (`gcloud auth application-default login`). */
interface AuthorizedUser {
  "type": "authorized_user";
  "client_id": string;
  "client_secret": string;
  "refresh_token": string;
  "token_uri"?: string;
  "quota_project_id"?: string;
}

type CredentialsFile = ServiceAccountKey | AuthorizedUser;

interface Token {
  value: string;
  expiresAt: number;
}

interface TokenSource {
  /** Where the credentials came from, for messages (a path, or "the metadata server"). */
  readonly origin: string;
  /** Extra headers every request carries (a quota project). */
  readonly headers: Record<string, string>;
  fetchToken(signal: AbortSignal | undefined): Promise<Token>;
}

/**
 * Finds credentials on first use and keeps an access token, refreshing it before it
 * expires. One refresh at a time; a failed lookup is retried by the next request.
 */
class GoogleCredentials {
  readonly #file?: string;
  #source?: Promise<TokenSource>;
  #token?: Token;
  #refreshing?: Promise<Token>;

  constructor(file: string | undefined) {
    this.#file = file;
  }

  /** Forgets the current token (the server rejected it). */
  invalidate(): void {
    this.#token = undefined;
  }

  async headers(signal: AbortSignal | undefined): Promise<Record<string, string>> {
    const source = await raceSignal(this.#findSource(), signal);
    if (!this.#token || this.#token.expiresAt - TOKEN_EARLY_REFRESH_MS < Date.now()) {
      if (!this.#refreshing) {
        const refreshing = source.fetchToken(undefined);
        this.#refreshing = refreshing;
        refreshing.then((t) => this.#token = t, () => {}).finally(() => {
          if (this.#refreshing === refreshing) this.#refreshing = undefined;
        });
      }
      this.#token = await raceSignal(this.#refreshing, signal);
    }
    return { ...source.headers, authorization: `Bearer ${this.#token.value}` };
  }

  #findSource(): Promise<TokenSource> {
    if (!this.#source) {
      const finding = findTokenSource(this.#file);
      this.#source = finding;
      finding.catch(() => {
        if (this.#source === finding) this.#source = undefined;
      });
    }
    return this.#source;
  }
}

async function findTokenSource(explicit: string | undefined): Promise<TokenSource> {
  const named = explicit ?? (Deno.env.get("GOOGLE_APPLICATION_CREDENTIALS") || undefined);
  if (named !== undefined) {
    const via = explicit !== undefined ? "credentials file" : "GOOGLE_APPLICATION_CREDENTIALS";
    return fileTokenSource(named, await readCredentialsFile(named, via));
  }
  const wellKnown = gcloudCredentialsPath();
  if (wellKnown !== undefined) {
    try {
      const text = await Deno.readTextFile(wellKnown);
      return fileTokenSource(wellKnown, parseCredentials(wellKnown, text));
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return metadataTokenSource();
}

async function readCredentialsFile(path: string, via: string): Promise<CredentialsFile> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound ? "no such file" : (err as Error).message;
    throw new GcsCredentialsError(`cannot read ${via} "${path}": ${why}`, { cause: err });
  }
  return parseCredentials(path, text);
}

function parseCredentials(path: string, text: string): CredentialsFile {
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new GcsCredentialsError(`credentials file "${path}" is not JSON`, { cause: err });
  }
  const need = (...keys: string[]) => {
    const missing = keys.filter((k) => typeof json[k] !== "string" || json[k] === "");
    if (missing.length > 0) {
      throw new GcsCredentialsError(
        `credentials file "${path}" lacks ${missing.map((k) => `"${k}"`).join(", ")}`,
      );
    }
  };
  switch (json.type) {
    case "service_account":
      need("client_email", "private_key");
      return json as unknown as ServiceAccountKey;
    case "authorized_user":
      need("client_id", "client_secret", "refresh_token");
      return json as unknown as AuthorizedUser;
    default:
      throw new GcsCredentialsError(
        `credentials file "${path}" has type "${String(json.type)}"; ` +
          `supported: "service_account", "authorized_user"`,
      );
  }
}

/** gcloud's application-default credentials file, if a config directory can be named. */
function gcloudCredentialsPath(): string | undefined {
  const config = Deno.env.get("CLOUDSDK_CONFIG");
  if (config) return `${config}/application_default_credentials.json`;
  if (Deno.build.os === "windows") {
    const appData = Deno.env.get("APPDATA");
    return appData ? `${appData}\\gcloud\\application_default_credentials.json` : undefined;
  }
  const home = Deno.env.get("HOME");
  return home ? `${home}/.config/gcloud/application_default_credentials.json` : undefined;
}

function fileTokenSource(path: string, creds: CredentialsFile): TokenSource {
  const tokenUri = creds.token_uri || DEFAULT_TOKEN_URI;
  if (creds.type === "authorized_user") {
    return {
      origin: path,
      headers: creds.quota_project_id ? { "x-goog-user-project": creds.quota_project_id } : {},
      fetchToken: (signal) =>
        exchangeToken(path, tokenUri, {
          "grant_type": "refresh_token",
          "client_id": creds.client_id,
          "client_secret": creds.client_secret,
          "refresh_token": creds.refresh_token,
        }, signal),
    };
  }
  let key: Promise<CryptoKey> | undefined;
  return {
    origin: path,
    headers: {},
    async fetchToken(signal) {
      key ??= importPrivateKey(path, creds.private_key);
      key.catch(() => key = undefined);
      const assertion = await signJwt(await key, creds, tokenUri);
      return await exchangeToken(path, tokenUri, {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        assertion,
      }, signal);
    },
  };
}

async function importPrivateKey(path: string, pem: string): Promise<CryptoKey> {
  try {
    const base64 = pem.replace(/-----(BEGIN|END) PRIVATE KEY-----/g, "").replace(/\s+/g, "");
    const der = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return await crypto.subtle.importKey(
      "pkcs8",
      der,
      { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
      false,
      ["sign"],
    );
  } catch (err) {
    throw new GcsCredentialsError(
      `cannot read the private key of credentials file "${path}" (want a PKCS#8 RSA key)`,
      { cause: err },
    );
  }
}

/** Signs the JWT a service account exchanges for an access token (RFC 7523). */
async function signJwt(key: CryptoKey, sa: ServiceAccountKey, audience: string): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const header: Record<string, string> = { alg: "RS256", typ: "JWT" };
  if (sa.private_key_id) header.kid = sa.private_key_id;
  const claims = { iss: sa.client_email, scope: SCOPE, aud: audience, iat: now, exp: now + 3600 };
  const text = new TextEncoder();
  const input = `${base64Url(text.encode(JSON.stringify(header)))}.${
    base64Url(text.encode(JSON.stringify(claims)))
  }`;
  const signature = await crypto.subtle.sign("RSASSA-PKCS1-v1_5", key, text.encode(input));
  return `${input}.${base64Url(new Uint8Array(signature))}`;
}

function base64Url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Posts an OAuth2 token request; network failures stay `TypeError`s so they are retried. */
async function exchangeToken(
  path: string,
  tokenUri: string,
  form: Record<string, string>,
  signal: AbortSignal | undefined,
): Promise<Token> {
  const timeout = AbortSignal.timeout(TOKEN_TIMEOUT_MS);
  let res: Response;
  try {
    res = await fetch(tokenUri, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(form),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw new TokenEndpointError(hostOf(tokenUri), { cause: err });
  }
  return await readToken(res, `token endpoint ${hostOf(tokenUri)} (credentials "${path}")`);
}

async function readToken(res: Response, from: string): Promise<Token> {
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text);
  } catch {
    // Reported below.
  }
  if (!res.ok || typeof json.access_token !== "string") {
    if (res.status >= 500 || res.status === 429) throw new GcsHttpError(res.status, from);
    const why = typeof json.error === "string"
      ? `${json.error}${
        typeof json.error_description === "string" ? `: ${json.error_description}` : ""
      }`
      : `HTTP ${res.status}`;
    throw new GcsCredentialsError(`${from} refused to issue a token (${firstLine(why)})`);
  }
  const seconds = typeof json.expires_in === "number" ? json.expires_in : 3600;
  return { value: json.access_token, expiresAt: Date.now() + seconds * 1000 };
}

/** The metadata server of GCE, GKE, Cloud Run and Cloud Functions. */
function metadataTokenSource(): TokenSource {
  const host = Deno.env.get("GCE_METADATA_HOST") || DEFAULT_METADATA_HOST;
  const url = `http://${host}/computeMetadata/v1/instance/service-accounts/default/token`;
  return {
    origin: "the metadata server",
    headers: {},
    async fetchToken(signal) {
      const timeout = AbortSignal.timeout(METADATA_TIMEOUT_MS);
      let res: Response;
      try {
        res = await fetch(url, {
          headers: { "metadata-flavor": "Google" },
          signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
        });
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        throw new GcsCredentialsError(
          "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a service-account " +
            `key file (and no metadata server answered at ${host})`,
          { cause: err },
        );
      }
      return await readToken(res, `metadata server ${host}`);
    },
  };
}
