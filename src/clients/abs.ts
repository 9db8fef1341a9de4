/**
 * {@linkcode AbsReplicaClient}: stores a replica in an Azure Blob Storage container under a
 * blob-name prefix, in the v0.3.13 layout (`<path>/generations/<gen>/{snapshots,wal}/…`),
 * so that either tool restores what the other wrote. Errors become one line naming the
 * replica, and never hold the account key.
 *
 * **Library decision: plain `fetch` and a small SharedKey signer, not `@azure/storage-blob`.**
 * v0.3.13 uses only SharedKey authentication and five operations (Put Blob, Put Block and
 * Put Block List, Get Blob, List Blobs, Delete Blob), all stable, documented REST calls.
 * Measured under Deno 2.9.6, `npm:@azure/storage-blob@12.31.0` pulls 17 npm packages (40 MB
 * in the cache), takes ~250 ms to import and adds ~30 MB of resident memory, and its
 * bodies are Node streams that need bridging to and from web streams. Here the signer is
 * one HMAC-SHA256 from WebCrypto, uploads and downloads are web streams end to end,
 * `AbortSignal` goes straight to `fetch`, and the file needs no permission beyond
 * `--allow-net` (plus `--allow-env` for `LITESTREAM_AZURE_ACCOUNT_KEY`). The price is code we
 * own: the string-to-sign, a List Blobs XML reader (flat elements, five entities) and retries
 * with backoff. Azurite checks every signature with its own implementation of the same
 * rules, and tests/abs_test.ts round-trips replicas with the real v0.3.13 (Go's azblob) in
 * both directions. The wire version is {@linkcode API_VERSION}, which Azure accepts and
 * Azurite 3.35.0 accepts without `--skipApiVersionCheck`.
 *
 * @example
 * ```ts
 * const client = new AbsReplicaClient({
 *   ...parseAbsUrl("abs://myaccount@mycontainer/db"),
 *   accountName: "myaccount",
 *   accountKey: Deno.env.get("AZURE_KEY"),
 * });
 * console.log(await client.generations());
 * ```
 *
 * @module
 */
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
import { formatPos, type Pos } from "../pos.ts";
import type {
  Body,
  CallOptions,
  ReplicaClient,
  SnapshotInfo,
  SnapshotKey,
  WalSegmentInfo,
} from "../replica_client.ts";
import { delay } from "../internal/delay.ts";
import { IdleTimeoutError, IdleTimer } from "../internal/idle_timer.ts";

/** Environment variable v0.3.13 reads the account key from when `account-key` is not set. */
export const ACCOUNT_KEY_ENV = "LITESTREAM_AZURE_ACCOUNT_KEY";
/** `x-ms-version` of every request (Blob service REST API version). */
export const API_VERSION = "2021-08-06";
/** Size of the blocks a streamed upload is cut into; a stream that fits in one is one Put Blob. */
export const BLOCK_SIZE = 4 * 1024 * 1024;
/** Most blobs one List Blobs page may hold (an Azure limit), and our default page size. */
export const MAX_LIST_RESULTS = 5000;
/** A request whose connection moves no byte for this long fails (and is retried). */
export const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
/** Blocks of one upload sent at once; memory held is `(this + 1) * BLOCK_SIZE`. */
const UPLOAD_CONCURRENCY = 2;
/** Delete Blob requests in flight at once (Azure has no simple multi-delete). */
const DELETE_CONCURRENCY = 8;
/** Attempts per request: retries network errors, timeouts, 408, 429 and 5xx answers. */
const MAX_ATTEMPTS = 5;
const RETRY_BASE_DELAY_MS = 100;
const RETRY_MAX_DELAY_MS = 10_000;
/** Content type of every blob, as v0.3.13 sets it. */
const BLOB_CONTENT_TYPE = "application/octet-stream";
const RETRY_STATUS = new Set([408, 429, 500, 502, 503, 504]);

/** How to reach one Azure Blob Storage replica (v0.3.13's `abs` keys). */
export interface AbsReplicaClientOptions {
  /** Storage account name (`account-name`). */
  accountName: string;
  /**
   * Shared key of the account, base64 (`account-key`).
   * @default {the `LITESTREAM_AZURE_ACCOUNT_KEY` environment variable, read by the constructor}
   */
  accountKey?: string;
  /** Container name (`bucket`). */
  bucket: string;
  /** Blob-name prefix of the replica, cleaned; no leading or trailing slash. @default {""} */
  path?: string;
  /**
   * Blob service endpoint, e.g. Azurite's `http://127.0.0.1:10000/devstoreaccount1`.
   * @default {`https://<accountName>.blob.core.windows.net`}
   */
  endpoint?: string;
  /**
   * A request whose connection moves no byte for this long (a stalled server or network
   * path) fails with a timeout and is retried like a 5xx answer.
   * @default {120_000}
   */
  idleTimeoutMs?: number;
  /** Blobs asked for per List Blobs page, 1 to 5000. @default {5000} */
  listPageSize?: number;
}

/** What an `abs://` URL names. */
export interface AbsUrl {
  /** The URL's user name, if it has one. */
  accountName?: string;
  /** The container. */
  bucket: string;
  /** Blob-name prefix, cleaned; `""` for the container root. */
  path: string;
}

const ABS_URL_REGEXP = /^abs:\/\/(?:([^/?#]*)@)?([^/?#]*)([^?#]*)(?:\?[^#]*)?(?:#.*)?$/i;

/**
 * Parses an `abs://[ACCOUNT@]CONTAINER/PATH` replica URL as v0.3.13 does: the user name is
 * the account (a password after `:` is ignored), the host the container, and the path
 * (percent-decoded, cleaned, without its leading slash) the blob-name prefix. Query and
 * fragment are ignored.
 *
 * @throws {SyntaxError} If `url` is not an `abs://` URL or has a bad `%` escape.
 * @throws {RangeError} If the URL names no container.
 */
export function parseAbsUrl(url: string): AbsUrl {
  const m = ABS_URL_REGEXP.exec(url);
  const shown = redactUrlPassword(url);
  if (!m) {
    throw new SyntaxError(
      `Cannot parse ABS replica URL "${shown}": expected abs://ACCOUNT@CONTAINER/PATH`,
    );
  }
  const [, userinfo, host, rawPath] = m;
  const decode = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch (err) {
      throw new SyntaxError(`Cannot parse ABS replica URL "${shown}": bad escape`, {
        cause: err,
      });
    }
  };
  const bucket = decode(host);
  if (!bucket) throw new RangeError(`Cannot use ABS replica URL "${shown}": no container name`);
  const out: AbsUrl = { bucket, path: cleanKeyPath(decode(rawPath)) };
  const accountName = userinfo === undefined ? "" : decode(userinfo.split(":")[0]);
  if (accountName) out.accountName = accountName;
  return out;
}

/** The endpoint v0.3.13 uses when none is configured: `https://<account>.blob.core.windows.net`. */
export function defaultAbsEndpoint(accountName: string): string {
  return `https://${accountName}.blob.core.windows.net`;
}

/** `abs://user:secret@…` → `abs://user@…`, for messages. */
function redactUrlPassword(url: string): string {
  return url.replace(/^(abs:\/\/[^/?#:@]*):[^/?#]*@/i, "$1@");
}

// ---------------------------------------------------------------------------------------
// SharedKey signing (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key)

/** The standard headers of the string-to-sign, in order (then x-ms-* and the resource). */
const SIGNED_HEADERS = [
  "content-encoding",
  "content-language",
  "content-length",
  "content-md5",
  "content-type",
  "date",
  "if-modified-since",
  "if-match",
  "if-none-match",
  "if-unmodified-since",
  "range",
];

/**
 * Returns the SharedKey string-to-sign of a Blob service request (version 2015-02-21 and
 * later): the verb, the standard headers (a zero content length as empty), the `x-ms-*`
 * headers lowercased and sorted, then `/<account><escaped path>` and the query parameters,
 * lowercased, sorted and decoded. Pure.
 *
 * @param contentLength Bytes of the request body; `fetch` sets the header itself.
 */
export function sharedKeyStringToSign(
  accountName: string,
  method: string,
  url: URL,
  headers: Headers,
  contentLength = 0,
): string {
  const lines = [method.toUpperCase()];
  for (const name of SIGNED_HEADERS) {
    if (name === "content-length") lines.push(contentLength > 0 ? String(contentLength) : "");
    else lines.push(headers.get(name) ?? "");
  }
  // Headers iterate lowercased and sorted, repeated names joined with ", ".
  let canonical = "";
  for (const [name, value] of headers) {
    if (name.startsWith("x-ms-")) canonical += `${name}:${value.replace(/\s+/g, " ").trim()}\n`;
  }
  let resource = `/${accountName}${url.pathname || "/"}`;
  const params = new Map<string, string[]>();
  for (const [name, value] of url.searchParams) {
    const key = name.toLowerCase();
    params.set(key, [...(params.get(key) ?? []), value]);
  }
  for (const key of [...params.keys()].sort()) {
    resource += `\n${key}:${params.get(key)!.sort().join(",")}`;
  }
  return `${lines.join("\n")}\n${canonical}${resource}`;
}

/**
 * Decodes a base64 account key into an HMAC-SHA256 key.
 * @throws {AbsKeyError} If the key is not base64 (the message does not quote it).
 */
async function importAccountKey(accountKey: string): Promise<CryptoKey> {
  let raw: Uint8Array<ArrayBuffer>;
  try {
    raw = Uint8Array.from(atob(accountKey.trim()), (c) => c.charCodeAt(0));
  } catch {
    throw new AbsKeyError("the account key is not valid base64");
  }
  if (raw.length === 0) throw new AbsKeyError("the account key is empty");
  return await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, [
    "sign",
  ]);
}

async function authorization(
  accountName: string,
  key: CryptoKey,
  method: string,
  url: URL,
  headers: Headers,
  contentLength: number,
): Promise<string> {
  const text = sharedKeyStringToSign(accountName, method, url, headers, contentLength);
  const mac = new Uint8Array(
    await crypto.subtle.sign("HMAC", key, new TextEncoder().encode(text)),
  );
  return `SharedKey ${accountName}:${btoa(String.fromCharCode(...mac))}`;
}

/**
 * Sets `x-ms-date`, `x-ms-version` (unless present) and a SharedKey `authorization` on
 * `headers` for one request. For tools and tests that make requests the client does not
 * (creating a container); the client signs its own.
 *
 * @throws {Error} If `accountKey` is not base64; the message never quotes it.
 */
export async function signAbsRequest(
  accountName: string,
  accountKey: string,
  method: string,
  url: string,
  headers: Headers,
  contentLength = 0,
): Promise<void> {
  if (!headers.has("x-ms-date")) headers.set("x-ms-date", new Date().toUTCString());
  if (!headers.has("x-ms-version")) headers.set("x-ms-version", API_VERSION);
  const key = await importAccountKey(accountKey);
  headers.set(
    "authorization",
    await authorization(accountName, key, method, new URL(url), headers, contentLength),
  );
}

// ---------------------------------------------------------------------------------------
// List Blobs responses

/** One blob of a List Blobs page. */
export interface ListedBlob {
  /** Full blob name. */
  name: string;
  /** `Content-Length` in bytes. */
  size: number;
  /** `Creation-Time` (what v0.3.13 reports), else `Last-Modified`. */
  createdAt: Date;
}

/** One page of a List Blobs answer. */
export interface ListBlobsPage {
  /** `Blob` entries, in the store's order. */
  blobs: ListedBlob[];
  /** `BlobPrefix` names (with a delimiter): "directories", ending in the delimiter. */
  prefixes: string[];
  /** Marker of the next page; `""` on the last. */
  nextMarker: string;
}

const BLOB_REGEXP = /<Blob>([\s\S]*?)<\/Blob>/g;
const BLOB_PREFIX_REGEXP = /<BlobPrefix>([\s\S]*?)<\/BlobPrefix>/g;
const NAME_REGEXP = /<Name(\s[^>]*)?>([^<]*)<\/Name>/;
const ENCODED_REGEXP = /\bEncoded\s*=\s*["']true["']/i;
const ENTITY_REGEXP = /&(?:#(\d+)|#x([0-9a-fA-F]+)|(lt|gt|amp|quot|apos));/g;
const NAMED_ENTITIES: Record<string, string> = {
  lt: "<",
  gt: ">",
  amp: "&",
  quot: '"',
  apos: "'",
};

function xmlText(s: string): string {
  return s.replace(ENTITY_REGEXP, (_, dec, hex, named) => {
    if (named) return NAMED_ENTITIES[named];
    return String.fromCodePoint(parseInt(dec ?? hex, dec ? 10 : 16));
  });
}

/** Returns the text of the first `<tag>` in `xml`, decoded, or `undefined`. */
function xmlElement(xml: string, tag: string): string | undefined {
  const m = new RegExp(`<${tag}>([^<]*)</${tag}>`).exec(xml);
  return m ? xmlText(m[1]) : undefined;
}

function xmlName(xml: string): string | undefined {
  const m = NAME_REGEXP.exec(xml);
  if (!m) return undefined;
  const text = xmlText(m[2]);
  // Names with characters XML cannot carry come percent-encoded, marked Encoded="true".
  return m[1] && ENCODED_REGEXP.test(m[1]) ? decodeURIComponent(text) : text;
}

/**
 * Reads a List Blobs answer (`<EnumerationResults>`): blob names, sizes and times, blob
 * prefixes and the next marker. Pure.
 *
 * @throws {SyntaxError} If `xml` is not a List Blobs answer.
 */
export function parseListBlobsXml(xml: string): ListBlobsPage {
  if (!xml.includes("<EnumerationResults")) {
    throw new SyntaxError(
      `Cannot read List Blobs answer: no <EnumerationResults> in "${xml.slice(0, 80)}"`,
    );
  }
  const blobs: ListedBlob[] = [];
  for (const [, body] of xml.matchAll(BLOB_REGEXP)) {
    const name = xmlName(body);
    if (name === undefined) {
      throw new SyntaxError("Cannot read List Blobs answer: blob without name");
    }
    const created = xmlElement(body, "Creation-Time") ?? xmlElement(body, "Last-Modified");
    blobs.push({
      name,
      size: Number(xmlElement(body, "Content-Length") ?? 0),
      createdAt: created ? new Date(created) : new Date(0),
    });
  }
  const prefixes: string[] = [];
  for (const [, body] of xml.matchAll(BLOB_PREFIX_REGEXP)) {
    const name = xmlName(body);
    if (name !== undefined) prefixes.push(name);
  }
  return { blobs, prefixes, nextMarker: xmlElement(xml, "NextMarker") ?? "" };
}

// ---------------------------------------------------------------------------------------
// The client

/** An answer other than 2xx; `code` is Azure's `x-ms-error-code`, e.g. `"BlobNotFound"`. */
class AbsHttpError extends Error {
  /** First line of Azure's `<Message>`, if any. */
  readonly detail: string;

  constructor(readonly status: number, readonly code: string, detail: string) {
    super(`HTTP ${status}${code ? ` ${code}` : ""}`);
    this.name = "AbsHttpError";
    this.detail = detail;
  }
}

/** The account key is missing or malformed; the message is lowercase (always wrapped). */
class AbsKeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AbsKeyError";
  }
}

/** One request to send; bodies are whole (blocks are buffered), so retries resend them. */
interface AbsRequest {
  method: "GET" | "PUT" | "DELETE";
  url: string;
  headers?: Record<string, string>;
  body?: Uint8Array;
  /** The caller reads the body as a stream after the call returns (downloads). */
  stream?: boolean;
}

/**
 * A replica in an Azure Blob Storage container, v0.3.13's `abs` type. Requests are signed
 * with the account's shared key; the key is decoded on first use, so a missing or malformed
 * key fails the first call, not the constructor. Holds no connection of its own (Deno's
 * `fetch` pool), so there is nothing to close.
 */
export class AbsReplicaClient implements ReplicaClient {
  readonly type = "abs";
  /** Storage account; signs every request. */
  readonly accountName: string;
  /** The container. */
  readonly bucket: string;
  /** Blob-name prefix, without leading or trailing slash; `""` for the container root. */
  readonly path: string;
  /** Blob service endpoint, without trailing slash. */
  readonly endpoint: string;
  /** See {@linkcode AbsReplicaClientOptions.idleTimeoutMs}. */
  readonly idleTimeoutMs: number;
  /** See {@linkcode AbsReplicaClientOptions.listPageSize}. */
  readonly listPageSize: number;
  /**
   * Successful GET, PUT, DELETE and LIST requests and the bytes they moved, counted as
   * v0.3.13 counts them (one DELETE per blob, one LIST per page, one PUT per object).
   */
  readonly operations: ReplicaOperationMetrics = new ReplicaOperationMetrics("abs");
  #accountKey: string;
  #cryptoKey?: Promise<CryptoKey>;
  #containerUrl: string;

  /**
   * @throws {RangeError} If `accountName` or `bucket` is empty, `endpoint` is not an http(s)
   * URL without query, or `listPageSize` is out of range.
   */
  constructor(options: AbsReplicaClientOptions) {
    if (!options.accountName) {
      throw new RangeError(
        "Cannot create ABS replica client: account name required " +
          "(account-name, or abs://ACCOUNT@CONTAINER/PATH)",
      );
    }
    if (!options.bucket) {
      throw new RangeError("Cannot create ABS replica client: container (bucket) required");
    }
    this.accountName = options.accountName;
    this.bucket = options.bucket;
    this.path = cleanKeyPath(options.path ?? "");
    this.idleTimeoutMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.listPageSize = options.listPageSize ?? MAX_LIST_RESULTS;
    if (
      !Number.isInteger(this.listPageSize) || this.listPageSize < 1 ||
      this.listPageSize > MAX_LIST_RESULTS
    ) {
      throw new RangeError(
        `Cannot create ABS replica client: list page size ${this.listPageSize} is not 1 to ${MAX_LIST_RESULTS}`,
      );
    }

    const endpoint = options.endpoint || defaultAbsEndpoint(this.accountName);
    let u: URL;
    try {
      u = new URL(endpoint);
    } catch {
      throw new RangeError(`Cannot use ABS endpoint "${endpoint}": not a URL`);
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") {
      throw new RangeError(`Cannot use ABS endpoint "${endpoint}": need http:// or https://`);
    }
    if (u.search || u.username || u.password) {
      throw new RangeError(
        `Cannot use ABS endpoint "${u.origin}${u.pathname}": ` +
          "query strings and user info (SAS tokens) are not supported",
      );
    }
    this.endpoint = `${u.origin}${u.pathname.replace(/\/+$/, "")}`;
    this.#containerUrl = `${this.endpoint}/${encodeURIComponent(this.bucket)}`;
    // v0.3.13 reads the environment when account-key is empty or unset.
    this.#accountKey = options.accountKey || readEnv(ACCOUNT_KEY_ENV) || "";
  }

  /** `abs://account@container/path`: names the replica in messages; never holds the key. */
  get location(): string {
    return `abs://${this.accountName}@${this.bucket}${this.path ? `/${this.path}` : ""}`;
  }

  async generations(options: CallOptions = {}): Promise<string[]> {
    const { signal } = options;
    const out: string[] = [];
    const prefix = `${this.#key(GENERATIONS_DIR)}/`;
    for await (const page of this.#list("list generations", prefix, "/", signal)) {
      for (const p of page.prefixes) {
        const name = baseName(p);
        if (isGenerationName(name)) out.push(name);
      }
    }
    return out.sort();
  }

  async *snapshots(generation: string, options: CallOptions = {}): AsyncIterable<SnapshotInfo> {
    const { signal } = options;
    const prefix = `${this.#key(snapshotsKey(checkGeneration(generation)))}/`;
    for await (const page of this.#list(`list snapshots of ${generation}`, prefix, "", signal)) {
      for (const blob of page.blobs) {
        const index = parseSnapshotName(baseName(blob.name));
        if (index === undefined) continue;
        yield { generation, index, size: blob.size, createdAt: blob.createdAt };
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
      () => this.#upload(this.#key(name), data, options.signal),
    );
    return { generation: key.generation, index: key.index, size, createdAt };
  }

  openSnapshot(key: SnapshotKey, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const name = snapshotKey(checkGeneration(key.generation), key.index);
    return this.#download("snapshot", name, options.signal);
  }

  async deleteSnapshot(key: SnapshotKey, options: CallOptions = {}): Promise<void> {
    const name = snapshotKey(checkGeneration(key.generation), key.index);
    await this.#try(
      `delete snapshot "${name}"`,
      options.signal,
      () => this.#deleteBlobs([this.#key(name)], options.signal),
    );
  }

  async *walSegments(generation: string, options: CallOptions = {}): AsyncIterable<WalSegmentInfo> {
    const { signal } = options;
    const prefix = `${this.#key(walSegmentsKey(checkGeneration(generation)))}/`;
    const action = `list WAL segments of ${generation}`;
    for await (const page of this.#list(action, prefix, "", signal)) {
      for (const blob of page.blobs) {
        const parsed = parseWalSegmentName(baseName(blob.name));
        if (parsed === undefined) continue;
        yield { generation, ...parsed, size: blob.size, createdAt: blob.createdAt };
      }
    }
  }

  async writeWalSegment(pos: Pos, data: Body, options: CallOptions = {}): Promise<WalSegmentInfo> {
    const name = walSegmentKey(checkGeneration(pos.generation), pos.index, pos.offset);
    const createdAt = new Date();
    const size = await this.#try(
      `write WAL segment ${formatPos(pos)}`,
      options.signal,
      () => this.#upload(this.#key(name), data, options.signal),
    );
    return { generation: pos.generation, index: pos.index, offset: pos.offset, size, createdAt };
  }

  openWalSegment(pos: Pos, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const name = walSegmentKey(checkGeneration(pos.generation), pos.index, pos.offset);
    return this.#download("WAL segment", name, options.signal);
  }

  async deleteWalSegments(positions: Pos[], options: CallOptions = {}): Promise<void> {
    const names = positions.map((p) =>
      this.#key(walSegmentKey(checkGeneration(p.generation), p.index, p.offset))
    );
    await this.#try(
      `delete ${names.length} WAL segments`,
      options.signal,
      () => this.#deleteBlobs(names, options.signal),
    );
  }

  async deleteGeneration(generation: string, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    const action = `delete generation ${generation}`;
    const prefix = `${this.#key(generationKey(checkGeneration(generation)))}/`;
    // Collect first, then delete: deleting while paging could skip blobs.
    const names: string[] = [];
    for await (const page of this.#list(action, prefix, "", signal)) {
      for (const blob of page.blobs) names.push(blob.name);
    }
    await this.#try(action, signal, () => this.#deleteBlobs(names, signal));
  }

  /** Returns the full blob name of a key relative to the replica root. */
  #key(relative: string): string {
    return joinKey(this.path, relative);
  }

  #blobUrl(name: string): string {
    return `${this.#containerUrl}/${name.split("/").map(encodeURIComponent).join("/")}`;
  }

  /** Host (and port) of the endpoint, for messages. */
  get #host(): string {
    return new URL(this.endpoint).host;
  }

  #signingKey(): Promise<CryptoKey> {
    if (!this.#accountKey) {
      return Promise.reject(
        new AbsKeyError(`no account key (set account-key, or the ${ACCOUNT_KEY_ENV} variable)`),
      );
    }
    return this.#cryptoKey ??= importAccountKey(this.#accountKey);
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
    const reason = this.#reason(err);
    // Our own errors are the whole story; keep the server's or the network's as the cause.
    const cause = err instanceof AbsKeyError ? undefined : err;
    return new Error(`Cannot ${action} in "${this.location}": ${reason}`, { cause });
  }

  /** A short lowercase reason for `err`; never includes the account key. */
  #reason(err: unknown): string {
    const container = `container "${this.bucket}"`;
    const host = this.#host;
    if (err instanceof AbsKeyError) return err.message;
    if (err instanceof IdleTimeoutError) return `request to ${host} timed out`;
    if (err instanceof AbsHttpError) {
      switch (err.code) {
        case "ContainerNotFound":
          return `${container} does not exist`;
        case "ResourceNotFound":
          return `account "${this.accountName}" or ${container} does not exist`;
        case "AuthenticationFailed":
        case "InvalidAuthenticationInfo":
          return "the server rejected the request signature " +
            "(check account-name and account-key)";
        case "AuthorizationFailure":
          // Azurite's answer to a bad signature; Azure's to firewall and network rules.
          if (/authenticate/i.test(err.detail)) {
            return "the server rejected the request signature " +
              "(check account-name and account-key)";
          }
          return `access denied to ${container}`;
        case "AuthorizationPermissionMismatch":
        case "InsufficientAccountPermissions":
          return `access denied to ${container}`;
        case "AccountIsDisabled":
          return `account "${this.accountName}" is disabled`;
      }
      if (err.status === 400 && /x-ms-version|api version/i.test(err.detail)) {
        return `the server does not support API version ${API_VERSION}`;
      }
      if (RETRY_STATUS.has(err.status)) {
        return `${host} answered HTTP ${err.status}${err.code ? ` ${err.code}` : ""}, ` +
          "retries gave up";
      }
      return `unexpected answer from ${host}${err.detail ? ` (${err.detail})` : ""}`;
    }
    if (err instanceof TypeError) {
      // Deno's fetch says "fetch failed" and puts the detail in its causes.
      let msg = "";
      for (let e: unknown = err; e instanceof Error; e = e.cause) msg += ` ${e.message}`;
      if (/connection refused/i.test(msg)) return `cannot connect to ${host}: connection refused`;
      if (/dns error|failed to lookup|name or service not known|no address/i.test(msg)) {
        return `cannot resolve host ${host}`;
      }
      if (/certificate|UnknownIssuer|InvalidCertificate|tls/i.test(msg)) {
        return `the TLS certificate of ${host} is not trusted`;
      }
      if (/reset|broken pipe|closed|incomplete|unexpected eof/i.test(msg)) {
        return `connection to ${host} was closed unexpectedly`;
      }
      if (/unreachable|no route/i.test(msg)) return `cannot reach ${host}: no route`;
      return `cannot reach ${host}`;
    }
    if (err instanceof SyntaxError) return `unexpected answer from ${host}`;
    return "unexpected error";
  }

  /**
   * Sends `req`, signed, retrying network errors, idle timeouts and 408/429/5xx answers
   * with exponential backoff. `read` consumes a 2xx answer; an error while reading is
   * retried too, unless `req.stream` (the caller reads after this returns).
   */
  async #call<T>(
    req: AbsRequest,
    signal: AbortSignal | undefined,
    read: (res: Response, timer: IdleTimer) => Promise<T>,
  ): Promise<T> {
    const key = await this.#signingKey();
    for (let attempt = 1;; attempt++) {
      signal?.throwIfAborted();
      const timer = new IdleTimer(this.idleTimeoutMs);
      let retryable: unknown;
      try {
        const combined = signal ? AbortSignal.any([signal, timer.signal]) : timer.signal;
        const url = new URL(req.url);
        const headers = new Headers(req.headers);
        headers.set("x-ms-date", new Date().toUTCString());
        headers.set("x-ms-version", API_VERSION);
        const length = req.body?.byteLength ?? 0;
        headers.set(
          "authorization",
          await authorization(this.accountName, key, req.method, url, headers, length),
        );
        timer.start();
        const res = await timer.race(fetch(url, {
          method: req.method,
          headers,
          // Never a SharedArrayBuffer view: our blocks, or the caller's bytes.
          body: req.method === "PUT"
            ? (req.body ?? new Uint8Array()) as Uint8Array<ArrayBuffer>
            : undefined,
          signal: combined,
        }));
        if (!res.ok) {
          const text = await res.text().catch(() => "");
          const code = res.headers.get("x-ms-error-code") ?? xmlElement(text, "Code") ?? "";
          const message = (xmlElement(text, "Message") ?? "").split("\n")[0].trim();
          const err = new AbsHttpError(res.status, code, message);
          if (!RETRY_STATUS.has(res.status)) throw err;
          retryable = err;
        } else {
          if (req.stream) timer.stop(); // the caller arms it while it reads
          const out = await read(res, timer);
          if (!req.stream) timer.stop();
          return out;
        }
      } catch (err) {
        timer.stop();
        if (signal?.aborted) throw signal.reason;
        if (!(err instanceof TypeError || err instanceof IdleTimeoutError)) throw err;
        retryable = err;
      }
      timer.stop();
      if (attempt >= MAX_ATTEMPTS) throw retryable;
      const cap = Math.min(RETRY_MAX_DELAY_MS, RETRY_BASE_DELAY_MS * 2 ** (attempt - 1));
      await delay(Math.random() * cap, { signal });
    }
  }

  /** Opens a blob as a stream; a missing blob is `Deno.errors.NotFound`. */
  async #download(
    what: string,
    name: string,
    signal: AbortSignal | undefined,
  ): Promise<ReadableStream<Uint8Array>> {
    return await this.#try(`open ${what} "${name}"`, signal, async () => {
      try {
        return await this.#call(
          { method: "GET", url: this.#blobUrl(this.#key(name)), stream: true },
          signal,
          (res, timer) => {
            const length = Number(res.headers.get("content-length") ?? 0);
            this.operations.record("GET", length);
            // The body arrives after this returned: a reset or a stall while reading it
            // fails the stream with the same one-line errors as a failed request.
            return Promise.resolve(this.#body(res, timer, `read ${what} "${name}"`, signal));
          },
        );
      } catch (err) {
        if (err instanceof AbsHttpError && err.code === "BlobNotFound") {
          throw new Deno.errors.NotFound(
            `Cannot open ${what} in "${this.location}": "${name}" does not exist`,
            { cause: err },
          );
        }
        throw err;
      }
    });
  }

  #body(
    res: Response,
    timer: IdleTimer,
    action: string,
    signal: AbortSignal | undefined,
  ): ReadableStream<Uint8Array> {
    if (!res.body) {
      timer.stop();
      return new ReadableStream({ start: (c) => c.close() });
    }
    const reader = res.body.getReader();
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        timer.start(); // only while waiting on the server, not while the reader is slow
        let next: ReadableStreamReadResult<Uint8Array>;
        try {
          next = await reader.read();
        } catch (err) {
          timer.stop();
          controller.error(this.#translate(action, signal, err));
          return;
        }
        timer.stop();
        if (next.done) controller.close();
        else controller.enqueue(next.value);
      },
      cancel: (reason) => {
        timer.stop();
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
  }

  /** Stores `data` as block blob `name`; returns the bytes written. */
  async #upload(name: string, data: Body, signal: AbortSignal | undefined): Promise<number> {
    const url = this.#blobUrl(name);
    if (data instanceof Uint8Array) {
      await this.#putBlob(url, data, signal);
      return data.byteLength;
    }

    // A stream is cut into blocks. One that fits in one block is one Put Blob; longer ones
    // are staged with Put Block (a few at once) and committed with Put Block List, so no
    // more than UPLOAD_CONCURRENCY + 1 blocks are in memory.
    const blocks = new BlockReader(data.getReader(), signal);
    const failed = new AbortController();
    const inner = signal ? AbortSignal.any([signal, failed.signal]) : failed.signal;
    const inFlight = new Set<Promise<void>>();
    let failure: { err: unknown } | undefined;
    try {
      let block = await blocks.next();
      if (blocks.done) {
        await this.#putBlob(url, block, signal);
        return block.byteLength;
      }
      const uploadId = randomHex(8);
      const ids: string[] = [];
      let size = 0;
      while (true) {
        const id = btoa(`${uploadId}-${String(ids.length).padStart(7, "0")}`);
        ids.push(id);
        size += block.byteLength;
        const body = block;
        const p: Promise<void> = this.#call(
          { method: "PUT", url: `${url}?comp=block&blockid=${encodeURIComponent(id)}`, body },
          inner,
          (res) => discard(res),
        ).catch((err) => {
          failure ??= { err };
          failed.abort(err);
        }).finally(() => inFlight.delete(p));
        inFlight.add(p);
        while (inFlight.size >= UPLOAD_CONCURRENCY && !failure) await Promise.race(inFlight);
        if (failure) break;
        if (blocks.done) break;
        block = await raceSignal(blocks.next(), inner);
        if (block.byteLength === 0 && blocks.done) break;
      }
      await Promise.all(inFlight);
      if (failure) throw failure.err;
      const xml = `<?xml version="1.0" encoding="utf-8"?><BlockList>${
        ids.map((id) => `<Latest>${id}</Latest>`).join("")
      }</BlockList>`;
      await this.#call(
        {
          method: "PUT",
          url: `${url}?comp=blocklist`,
          headers: { "x-ms-blob-content-type": BLOB_CONTENT_TYPE },
          body: new TextEncoder().encode(xml),
        },
        signal,
        (res) => discard(res),
      );
      this.operations.record("PUT", size);
      return size;
    } catch (err) {
      failed.abort(err);
      await Promise.all(inFlight);
      // Release the caller's stream (and whatever file it reads) instead of leaving it locked.
      await blocks.cancel(failure?.err ?? err);
      throw signal?.aborted ? signal.reason : failure?.err ?? err;
    } finally {
      blocks.release();
    }
  }

  async #putBlob(url: string, body: Uint8Array, signal: AbortSignal | undefined): Promise<void> {
    await this.#call(
      {
        method: "PUT",
        url,
        headers: { "x-ms-blob-type": "BlockBlob", "content-type": BLOB_CONTENT_TYPE },
        body,
      },
      signal,
      (res) => discard(res),
    );
    this.operations.record("PUT", body.byteLength);
  }

  /** Deletes blobs, a few at once; missing ones are not an error. */
  async #deleteBlobs(names: string[], signal: AbortSignal | undefined): Promise<void> {
    let next = 0;
    const worker = async () => {
      while (next < names.length) {
        const url = this.#blobUrl(names[next++]);
        try {
          await this.#call({ method: "DELETE", url }, signal, (res) => discard(res));
        } catch (err) {
          if (err instanceof AbsHttpError && err.code === "BlobNotFound") continue;
          throw err;
        }
        this.operations.record("DELETE");
      }
    };
    const workers = Array.from({ length: Math.min(DELETE_CONCURRENCY, names.length) }, worker);
    const results = await Promise.allSettled(workers);
    const rejected = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (rejected) throw rejected.reason;
  }

  /** Pages through List Blobs under `prefix` (with `delimiter` if not empty). */
  async *#list(
    action: string,
    prefix: string,
    delimiter: string,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<ListBlobsPage> {
    let marker = "";
    do {
      signal?.throwIfAborted();
      const query: [string, string][] = [
        ["restype", "container"],
        ["comp", "list"],
        ["prefix", prefix],
        ["maxresults", String(this.listPageSize)],
      ];
      if (delimiter) query.push(["delimiter", delimiter]);
      if (marker) query.push(["marker", marker]);
      const url = `${this.#containerUrl}?${
        query.map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&")
      }`;
      let page: ListBlobsPage;
      try {
        page = await this.#call(
          { method: "GET", url },
          signal,
          async (res) => parseListBlobsXml(await res.text()),
        );
      } catch (err) {
        throw this.#translate(action, signal, err);
      }
      this.operations.record("LIST");
      yield page;
      marker = page.nextMarker;
    } while (marker);
  }
}

/** Reads a byte stream in blocks of {@linkcode BLOCK_SIZE}. */
class BlockReader {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #signal?: AbortSignal;
  #carry?: Uint8Array;
  done = false;

  constructor(reader: ReadableStreamDefaultReader<Uint8Array>, signal?: AbortSignal) {
    this.#reader = reader;
    this.#signal = signal;
  }

  /** The next block: full, or shorter (maybe empty) at the end, which sets `done`. */
  async next(): Promise<Uint8Array> {
    const block = new Uint8Array(BLOCK_SIZE);
    let n = 0;
    while (n < BLOCK_SIZE) {
      let chunk = this.#carry;
      this.#carry = undefined;
      if (!chunk) {
        const r = await raceSignal(this.#reader.read(), this.#signal);
        if (r.done) {
          this.done = true;
          break;
        }
        chunk = r.value;
      }
      const take = Math.min(chunk.byteLength, BLOCK_SIZE - n);
      block.set(chunk.subarray(0, take), n);
      n += take;
      if (take < chunk.byteLength) this.#carry = chunk.subarray(take);
    }
    return n === BLOCK_SIZE ? block : block.slice(0, n);
  }

  cancel(reason: unknown): Promise<void> {
    return this.#reader.cancel(reason).catch(() => {});
  }

  release(): void {
    this.#reader.releaseLock();
  }
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: as if unset
  }
}

async function discard(res: Response): Promise<void> {
  await res.body?.cancel();
}

function randomHex(bytes: number): string {
  return Array.from(
    crypto.getRandomValues(new Uint8Array(bytes)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
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
