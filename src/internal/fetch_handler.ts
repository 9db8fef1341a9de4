/**
 * An HTTP handler for the AWS SDK that sends requests with Deno's own `fetch`, used by the
 * S3 client for GETs: the SDK's default handler runs on the Node compatibility layer
 * (`node:http`, Node streams, an HTTP parser in JavaScript), which cost a restore from S3
 * more CPU and garbage than the LZ4 decoding and WAL validation together.
 *
 * The SDK still resolves endpoints, signs, retries and parses; this only moves bytes. The
 * shapes below are the SDK's (`@smithy/types` `HttpRequest`/`HttpResponse`), restated so that
 * this file imports no package. Network failures become errors carrying the Node error code
 * the SDK's retry strategy and `describeS3Error` recognise (`ECONNREFUSED`, `ECONNRESET`, …);
 * a request that moves no byte for the idle timeout fails as a `TimeoutError`.
 *
 * @module
 */
import { IdleTimer } from "./idle_timer.ts";

/** The request the SDK hands its handler. */
export interface SdkHttpRequest {
  method: string;
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  query?: Record<string, string | (string | null)[] | null>;
  fragment?: string;
  headers: Record<string, string>;
  body?: unknown;
}

/** The response the SDK expects back; `body` is a web stream (the SDK accepts those). */
export interface SdkHttpResponse {
  statusCode: number;
  reason?: string;
  headers: Record<string, string>;
  body: ReadableStream<Uint8Array> | undefined;
}

/** Options of {@linkcode FetchHandler}. */
export interface FetchHandlerOptions {
  /** A request (waiting for the answer, or reading its body) failing after this long idle. */
  idleTimeoutMs: number;
}

/** A request moved no byte for the idle timeout; retried by the SDK like a timeout. */
export class FetchTimeoutError extends Error {
  constructor(ms: number) {
    super(`no data for ${ms} ms`);
    this.name = "TimeoutError";
  }
}

/** A `fetch` failure, with the Node error code that classifies it. */
export class FetchNetworkError extends Error {
  readonly code: string | undefined;
  /** The server's host name and port, as Node's network errors name them. */
  readonly address: string;
  readonly port: number | undefined;
  constructor(message: string, code: string | undefined, r: SdkHttpRequest) {
    super(message);
    this.name = "NetworkError";
    this.code = code;
    this.address = r.hostname;
    this.port = r.port;
  }
}

/** Sends the SDK's requests with `fetch`; declares itself an HTTP/1.1 handler. */
export class FetchHandler {
  readonly metadata = { handlerProtocol: "http/1.1" };
  readonly #idleTimeoutMs: number;

  constructor(options: FetchHandlerOptions) {
    this.#idleTimeoutMs = options.idleTimeoutMs;
  }

  /** Sends `request`; the body of the answer is guarded by the idle timeout while read. */
  async handle(
    request: SdkHttpRequest,
    options: { abortSignal?: AbortSignal } = {},
  ): Promise<{ response: SdkHttpResponse }> {
    const idle = new IdleTimer(this.#idleTimeoutMs, (ms) => new FetchTimeoutError(ms));
    const caller = options.abortSignal;
    // The SDK may hand an AbortSignal of its own shape: only a real one can be combined.
    const signal = caller instanceof AbortSignal
      ? AbortSignal.any([caller, idle.signal])
      : idle.signal;
    const headers = new Headers();
    for (const [k, v] of Object.entries(request.headers)) {
      // fetch sets Host itself (the same value the request was signed with).
      if (k.toLowerCase() !== "host") headers.set(k, v);
    }
    let res: Response;
    idle.start();
    try {
      res = await idle.race(fetch(requestUrl(request), {
        method: request.method,
        headers,
        body: request.body as BodyInit | undefined,
        signal,
        redirect: "manual",
      }));
    } catch (err) {
      if (caller?.aborted) throw err;
      throw idle.fired ?? networkError(err, request);
    } finally {
      idle.stop();
    }
    const out: Record<string, string> = {};
    res.headers.forEach((v, k) => out[k] = v);
    return {
      response: {
        statusCode: res.status,
        reason: res.statusText,
        headers: out,
        body: res.body ? idle.guard(res.body, (err) => networkError(err, request)) : undefined,
      },
    };
  }

  /** Nothing to update: the options are fixed at construction. */
  updateHttpClientConfig(): void {}

  httpHandlerConfigs(): Record<string, never> {
    return {};
  }

  /** Connections belong to Deno's shared fetch client: nothing to release. */
  destroy(): void {}
}

/** The URL of `request`, its query encoded as the SDK signs it (RFC 3986). */
function requestUrl(r: SdkHttpRequest): string {
  const parts: string[] = [];
  for (const key of Object.keys(r.query ?? {}).sort()) {
    const value = r.query![key];
    const k = escapeUri(key);
    if (Array.isArray(value)) {
      for (const v of value) parts.push(v === null ? k : `${k}=${escapeUri(v)}`);
    } else parts.push(value === null ? k : `${k}=${escapeUri(value)}`);
  }
  const query = parts.length > 0 ? `?${parts.join("&")}` : "";
  const port = r.port ? `:${r.port}` : "";
  const fragment = r.fragment ? `#${r.fragment}` : "";
  return `${r.protocol}//${r.hostname}${port}${r.path}${query}${fragment}`;
}

function escapeUri(s: string): string {
  return encodeURIComponent(s).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** Classifies a `fetch` rejection by the messages of its cause chain. */
function networkError(err: unknown, request: SdkHttpRequest): unknown {
  if (!(err instanceof TypeError)) return err;
  const messages: string[] = [];
  for (let e: unknown = err; e !== undefined && messages.length < 5; e = (e as Error).cause) {
    messages.push(e instanceof Error ? e.message : String(e));
    if (!(e instanceof Error)) break;
  }
  const message = messages.join(": ");
  let code: string | undefined;
  if (/connection refused/i.test(message)) code = "ECONNREFUSED";
  else if (/dns error|failed to lookup|name or service not known|no such host/i.test(message)) {
    code = "ENOTFOUND";
  } else if (/certificate|UnknownIssuer|InvalidCertificate/i.test(message)) code = undefined;
  else if (/unreachable|no route/i.test(message)) code = "EHOSTUNREACH";
  else code = "ECONNRESET"; // closed, reset or broken: retried like a reset
  // What happened, without the request's URL and addresses that Deno's message repeats
  // ("client error (SendRequest): connection closed before message completed").
  const what = messages.find((m) => /^error sending request/.test(m)) ??
    messages[messages.length - 1];
  return new FetchNetworkError(shortReason(what), code, request);
}

/** Deno's "error sending request from A for URL (B): reason" shortened to the reason. */
function shortReason(message: string): string {
  const m = /^error sending request\b.*?\): (.*)$/.exec(message);
  return m ? m[1] : message;
}
