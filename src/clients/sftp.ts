/**
 * {@linkcode SftpReplicaClient}: stores a replica in a directory of an SSH server over SFTP,
 * in the v0.3.13 layout (`<path>/generations/<gen>/{snapshots,wal}/…`). This is the only file
 * that imports the `ssh2` package; its errors are translated here into `Deno.errors.NotFound`
 * or into one-line errors that name the replica and never contain the password.
 *
 * Like v0.3.13, the client does not check the server's host key (Go's
 * `ssh.InsecureIgnoreHostKey()`): anyone who can intercept the connection can read and change
 * the replica. Use it on networks you trust, or tunnel it.
 *
 * @example
 * ```ts
 * const client = new SftpReplicaClient(parseSftpUrl("sftp://backup@db2.internal/srv/app"));
 * try {
 *   console.log(await client.generations());
 * } finally {
 *   await client.close();
 * }
 * ```
 *
 * @module
 */
import { Buffer } from "node:buffer";
import * as net from "node:net";
// Pinned here rather than in deno.json's imports so that only SFTP users fetch it; the
// lazy import of this file by clients/mod.ts keeps it off every other path.
// deno-lint-ignore no-import-prefix
import ssh2 from "npm:ssh2@1.17.0";
import {
  cleanPath,
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

/** SSH port used when `host` names none. */
export const DEFAULT_PORT = 22;
/** Time allowed for the TCP connection plus the SSH handshake and login (v0.3.13's value). */
export const DEFAULT_DIAL_TIMEOUT_MS = 30_000;
/** Bytes per SFTP read or write request. */
const CHUNK_SIZE = 64 * 1024;
/** Read or write requests kept in flight on one file, so throughput does not wait on latency. */
const REQUESTS_IN_FLIGHT = 16;
/** Deletes kept in flight at once. */
const DELETES_IN_FLIGHT = 32;
/** Keep-alive probes: a silent connection is declared dead after about a minute. */
const KEEPALIVE_INTERVAL_MS = 15_000;
const KEEPALIVE_COUNT_MAX = 4;

/** How to reach one SFTP replica; the keys of v0.3.13's config (`key-path` is `keyPath`). */
export interface SftpReplicaClientOptions {
  /** `host[:port]`, e.g. `"db2.internal"`, `"10.0.0.5:2222"` or `"[::1]:22"`. Port 22 if none. */
  host: string;
  /** User to log in as. */
  user: string;
  /** Password, tried before the key. Never appears in messages. @default {none} */
  password?: string;
  /** Path of a private key file (OpenSSH or PEM, not passphrase-protected). @default {none} */
  keyPath?: string;
  /**
   * Directory of the replica on the server. A relative path is resolved by the server against
   * the session's start directory (usually the user's home). @default {""}: the start directory
   */
  path?: string;
  /** Time allowed to connect, handshake and log in. @default {30_000} */
  dialTimeoutMs?: number;
}

/**
 * Parses an `sftp://user[:password]@host[:port]/path` replica URL into client options, as
 * v0.3.13 reads it: the path is absolute (`sftp://u@h/srv/db` is `/srv/db`), and `sftp://u@h`
 * means the session's start directory. `/~/rest` (the IETF draft's home-relative form, which
 * {@linkcode SftpReplicaClient.location} prints for relative paths) gives the relative path
 * `rest`. User and password are percent-decoded; query and fragment are ignored.
 *
 * @throws {SyntaxError} If `url` is not an `sftp://` URL. The message never holds the password.
 * @throws {RangeError} If the URL names no host.
 */
export function parseSftpUrl(url: string): SftpReplicaClientOptions {
  const shown = redactUrl(url);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new SyntaxError(`Cannot parse SFTP replica URL "${shown}"`);
  }
  if (u.protocol !== "sftp:") {
    throw new SyntaxError(
      `Cannot parse SFTP replica URL "${shown}": expected sftp://USER@HOST/PATH`,
    );
  }
  if (!u.hostname) throw new RangeError(`Cannot use SFTP replica URL "${shown}": no host`);
  let user: string, password: string, path: string;
  try {
    [user, password, path] = [u.username, u.password, u.pathname].map(decodeURIComponent);
  } catch {
    throw new SyntaxError(`Cannot parse SFTP replica URL "${shown}": bad percent-escape`);
  }
  if (path === "/~" || path.startsWith("/~/")) path = path.slice(3);
  const options: SftpReplicaClientOptions = { host: u.host, user, path };
  if (password !== "") options.password = password;
  return options;
}

/** The keys of an `sftp` replica in a v0.3.13 config. */
export interface SftpReplicaConfig {
  url?: string;
  host?: string;
  user?: string;
  password?: string;
  keyPath?: string;
  path?: string;
}

/**
 * Combines a replica config's `url` and keys the way v0.3.13 does: `url` may not come with
 * `host` or `path`; `user` and `password` keys win over the URL's; `host` and `user` are
 * required.
 *
 * @throws {RangeError} With v0.3.13's reason when the combination is invalid.
 * @throws {SyntaxError} If `url` does not parse.
 */
export function sftpOptionsFromConfig(cfg: SftpReplicaConfig): SftpReplicaClientOptions {
  if (cfg.url && cfg.path) throw new RangeError("Cannot specify url & path for sftp replica");
  if (cfg.url && cfg.host) throw new RangeError("Cannot specify url & host for sftp replica");
  const fromUrl: Partial<SftpReplicaClientOptions> = cfg.url ? parseSftpUrl(cfg.url) : {};
  const host = cfg.host || fromUrl.host || "";
  const user = cfg.user || fromUrl.user || "";
  if (!host) throw new RangeError("Host required for sftp replica");
  if (!user) throw new RangeError("User required for sftp replica");
  const options: SftpReplicaClientOptions = { host, user, path: cfg.path || fromUrl.path || "" };
  const password = cfg.password || fromUrl.password;
  if (password) options.password = password;
  if (cfg.keyPath) options.keyPath = cfg.keyPath;
  return options;
}

/** Replaces the password of a URL's user info by `xxxxx` (erring towards hiding more). */
function redactUrl(url: string): string {
  const start = url.indexOf("://") + 3;
  const at = url.lastIndexOf("@");
  const colon = url.indexOf(":", start);
  if (start < 3 || at < start || colon < 0 || colon > at) return url;
  return `${url.slice(0, colon + 1)}xxxxx${url.slice(at)}`;
}

/** Splits `host[:port]` like Go's `net.SplitHostPort`, defaulting the port to 22. */
function splitHostPort(hostPort: string): { hostname: string; port: number } {
  const bad = () => new RangeError(`Invalid SFTP host "${hostPort}": expected HOST[:PORT]`);
  let hostname = hostPort;
  let port = String(DEFAULT_PORT);
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(hostPort);
  if (bracketed) {
    hostname = bracketed[1];
    if (bracketed[2] !== undefined) port = bracketed[2];
  } else if (hostPort.split(":").length === 2) {
    [hostname, port] = hostPort.split(":");
  } // several colons: a bare IPv6 address
  if (!hostname || !/^\d{1,5}$/.test(port) || Number(port) > 65535) throw bad();
  return { hostname, port: Number(port) };
}

function parentDir(path: string): string {
  const i = path.lastIndexOf("/");
  if (i < 0) return "";
  return i === 0 ? "/" : path.slice(0, i);
}

// ---------------------------------------------------------------------------------------
// The parts of ssh2's API this file uses (the package ships no types).

type Handle = Buffer;

interface SftpAttrs {
  mode: number;
  size: number;
  /** Seconds since the epoch. */
  mtime: number;
}

interface SftpDirEntry {
  filename: string;
  attrs: SftpAttrs;
}

/** An error from ssh2: SFTP status codes are numbers, socket errors Node's string codes. */
interface Ssh2Error extends Error {
  code?: number | string;
  level?: string;
}

type Callback<T> = (err: Ssh2Error | undefined | null, value: T) => void;

interface Ssh2Sftp {
  open(path: string, flags: string, cb: Callback<Handle>): void;
  close(handle: Handle, cb: Callback<void>): void;
  read(
    handle: Handle,
    buf: Buffer,
    offset: number,
    length: number,
    position: number,
    cb: (err: Ssh2Error | undefined | null, bytesRead: number) => void,
  ): void;
  write(
    handle: Handle,
    buf: Buffer,
    offset: number,
    length: number,
    position: number,
    cb: Callback<void>,
  ): void;
  opendir(path: string, cb: Callback<Handle>): void;
  readdir(handle: Handle, cb: Callback<SftpDirEntry[]>): void;
  stat(path: string, cb: Callback<SftpAttrs>): void;
  mkdir(path: string, cb: Callback<void>): void;
  rmdir(path: string, cb: Callback<void>): void;
  unlink(path: string, cb: Callback<void>): void;
  rename(from: string, to: string, cb: Callback<void>): void;
  /** Throws synchronously if the server lacks `posix-rename@openssh.com`. */
  // deno-lint-ignore camelcase
  ext_openssh_rename(from: string, to: string, cb: Callback<void>): void;
  /** Throws synchronously if the server lacks `fsync@openssh.com`. */
  // deno-lint-ignore camelcase
  ext_openssh_fsync(handle: Handle, cb: Callback<void>): void;
  on(event: "close" | "error", fn: (err?: Error) => void): void;
  end(): void;
}

interface Ssh2Client {
  connect(config: Record<string, unknown>): void;
  sftp(cb: Callback<Ssh2Sftp>): void;
  on(event: "ready" | "close" | "end", fn: () => void): Ssh2Client;
  on(event: "error", fn: (err: Ssh2Error) => void): Ssh2Client;
  once(event: "ready" | "close", fn: () => void): Ssh2Client;
  once(event: "error", fn: (err: Ssh2Error) => void): Ssh2Client;
  removeListener(event: string, fn: (...args: never[]) => void): void;
  end(): void;
  destroy(): void;
}

const Ssh2ClientClass = (ssh2 as { Client: new () => Ssh2Client }).Client;

/** SFTP status codes (draft-ietf-secsh-filexfer-02). */
const STATUS_EOF = 1;
const STATUS_NO_SUCH_FILE = 2;
const STATUS_PERMISSION_DENIED = 3;
const STATUS_FAILURE = 4;
const STATUS_NO_CONNECTION = 6;
const STATUS_CONNECTION_LOST = 7;
const STATUS_OP_UNSUPPORTED = 8;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

/** The SSH connection dropped while a request was pending, or before it was sent. */
class ConnectionLostError extends Error {
  constructor(options?: ErrorOptions) {
    super("the SSH connection was lost", options);
    this.name = "ConnectionLostError";
  }
}

/** Connecting or logging in failed; the message is a lowercase reason, always wrapped. */
class SftpConnectError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "SftpConnectError";
  }
}

function isNoSuchFile(err: unknown): boolean {
  return (err as Ssh2Error | undefined)?.code === STATUS_NO_SUCH_FILE;
}

/**
 * One SSH connection with its SFTP session. Every request goes through {@linkcode request},
 * which fails at once when the connection is gone: ssh2 itself accepts requests on a closed
 * channel and never answers them.
 */
class Connection {
  readonly ssh: Ssh2Client;
  readonly sftp: Ssh2Sftp;
  #lost?: ConnectionLostError;
  #pending = new Set<(err: Error) => void>();
  #closed: Promise<void>;
  #onLost: () => void;
  /** Extensions found missing on this server (the `ext_openssh_*` calls threw). */
  readonly missing = new Set<string>();

  constructor(ssh: Ssh2Client, sftp: Ssh2Sftp, onLost: () => void) {
    this.ssh = ssh;
    this.sftp = sftp;
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#closed = promise;
    this.#onLost = onLost;
    const lose = (err?: Error) => this.lose(err);
    ssh.on("error", lose);
    ssh.on("end", () => lose());
    ssh.on("close", () => {
      lose();
      resolve();
    });
    sftp.on("error", lose);
    sftp.on("close", () => lose());
  }

  /** Marks the connection lost: pending and later requests fail with ConnectionLostError. */
  lose(err?: Error): void {
    if (!this.#lost) {
      this.#lost = new ConnectionLostError(err ? { cause: err } : undefined);
      this.#onLost();
    }
    for (const reject of this.#pending) reject(this.#lost);
    this.#pending.clear();
  }

  /** Sends one request: `send` is given the callback ssh2 calls with the answer. */
  request<T>(send: (cb: Callback<T>) => void): Promise<T> {
    if (this.#lost) return Promise.reject(this.#lost);
    return new Promise<T>((resolve, reject) => {
      const fail = (err: Error) => reject(err);
      this.#pending.add(fail);
      try {
        send((err, value) => {
          this.#pending.delete(fail);
          if (!err) resolve(value);
          else if (isConnectionLoss(err)) reject(new ConnectionLostError({ cause: err }));
          else reject(err);
        });
      } catch (err) {
        this.#pending.delete(fail);
        reject(err);
      }
    });
  }

  /** Closes the connection and waits for the socket to close. */
  async close(): Promise<void> {
    if (!this.#lost) {
      try {
        this.ssh.end();
      } catch { /* already closing */ }
    }
    const timer = setTimeout(() => this.ssh.destroy(), 2_000);
    await this.#closed;
    clearTimeout(timer);
  }
}

/**
 * True for ssh2's answers to requests pending when the channel closed. ssh2 gives these no
 * code, only this message, so the text is matched here, once.
 */
function isConnectionLoss(err: Ssh2Error): boolean {
  return err.message === "No response from server" ||
    err.code === STATUS_NO_CONNECTION || err.code === STATUS_CONNECTION_LOST;
}

/**
 * A replica in a directory of an SSH server, reached over SFTP. One SSH connection is opened
 * on first use and shared by all calls; when it drops, pending calls fail, a call that was
 * cut off before any of its data moved is retried once on a new connection, and later calls
 * reconnect. Call {@linkcode close} when done.
 *
 * Writes go to `<name>.tmp`, are fsynced (where the server offers `fsync@openssh.com`) and
 * renamed over the final name, so readers never see part of an object; leftover `.tmp` files
 * from interrupted writes are removed the first time the client writes into their directory.
 * (v0.3.13 writes in place.)
 */
export class SftpReplicaClient implements ReplicaClient, AsyncDisposable {
  readonly type = "sftp";
  /** `host[:port]` as given. */
  readonly host: string;
  readonly hostname: string;
  readonly port: number;
  readonly user: string;
  /** Cleaned replica directory; relative to the session's start directory unless absolute. */
  readonly path: string;
  readonly keyPath?: string;
  readonly dialTimeoutMs: number;
  /**
   * Successful GET, PUT and DELETE requests, counted as v0.3.13 counts them (PUT with bytes,
   * one DELETE per file), for `litestream_replica_operation_*{replica_type="sftp"}`.
   */
  readonly operations: ReplicaOperationMetrics = new ReplicaOperationMetrics("sftp");
  #password?: string;
  #connection?: Promise<Connection>;
  /** Directories known to exist, each made (and swept of `.tmp` leftovers) once. */
  #dirs = new Map<string, Promise<void>>();

  /**
   * @throws {RangeError} If `host` or `user` is empty, or `host` is malformed.
   */
  constructor(options: SftpReplicaClientOptions) {
    if (!options.host) throw new RangeError("Cannot create SFTP replica client: host required");
    if (!options.user) throw new RangeError("Cannot create SFTP replica client: user required");
    this.host = options.host;
    ({ hostname: this.hostname, port: this.port } = splitHostPort(options.host));
    this.user = options.user;
    this.path = cleanPath(options.path ?? "");
    this.keyPath = options.keyPath || undefined;
    this.#password = options.password || undefined;
    this.dialTimeoutMs = options.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS;
  }

  /**
   * `sftp://user@host:port/path`: names the replica in messages; never holds the password.
   * A relative path is shown as `/~/path` (the start directory is usually the home).
   */
  get location(): string {
    const host = this.hostname.includes(":") ? `[${this.hostname}]` : this.hostname;
    const path = this.path === "" || this.path.startsWith("/") ? this.path : `/~/${this.path}`;
    return `sftp://${encodeURIComponent(this.user)}@${host}:${this.port}${path}`;
  }

  /** `host:port` for messages. */
  get #address(): string {
    return `${this.hostname.includes(":") ? `[${this.hostname}]` : this.hostname}:${this.port}`;
  }

  #remote(key: string): string {
    return joinKey(this.path, key);
  }

  async generations(options: CallOptions = {}): Promise<string[]> {
    const out: string[] = [];
    await this.#run("list generations", options.signal, async (conn) => {
      out.length = 0;
      for await (const e of this.#readDir(conn, this.#remote(GENERATIONS_DIR), options.signal)) {
        if ((e.attrs.mode & S_IFMT) === S_IFDIR && isGenerationName(e.filename)) {
          out.push(e.filename);
        }
      }
    });
    return out.sort();
  }

  async *snapshots(generation: string, options: CallOptions = {}): AsyncIterable<SnapshotInfo> {
    for await (const e of this.#list("list snapshots", snapshotsKey(generation), options)) {
      const index = parseSnapshotName(e.filename);
      if (index === undefined) continue;
      yield { generation, index, size: e.attrs.size, createdAt: new Date(e.attrs.mtime * 1000) };
    }
  }

  async writeSnapshot(
    key: SnapshotKey,
    data: Body,
    options: CallOptions = {},
  ): Promise<SnapshotInfo> {
    const name = snapshotKey(key.generation, key.index);
    const createdAt = new Date();
    const size = await this.#write(`write snapshot "${name}"`, name, data, options.signal);
    return { ...key, size, createdAt };
  }

  async openSnapshot(
    key: SnapshotKey,
    options: CallOptions = {},
  ): Promise<ReadableStream<Uint8Array>> {
    return await this.#open("snapshot", snapshotKey(key.generation, key.index), options.signal);
  }

  async deleteSnapshot(key: SnapshotKey, options: CallOptions = {}): Promise<void> {
    const name = snapshotKey(key.generation, key.index);
    await this.#run(`delete snapshot "${name}"`, options.signal, async (conn) => {
      await this.#unlink(conn, this.#remote(name), options.signal);
    });
  }

  async *walSegments(generation: string, options: CallOptions = {}): AsyncIterable<WalSegmentInfo> {
    for await (const e of this.#list("list WAL segments", walSegmentsKey(generation), options)) {
      const p = parseWalSegmentName(e.filename);
      if (p === undefined) continue;
      yield {
        generation,
        ...p,
        size: e.attrs.size,
        createdAt: new Date(e.attrs.mtime * 1000),
      };
    }
  }

  async writeWalSegment(pos: Pos, data: Body, options: CallOptions = {}): Promise<WalSegmentInfo> {
    const name = walSegmentKey(pos.generation, pos.index, pos.offset);
    const createdAt = new Date();
    const size = await this.#write(
      `write WAL segment ${formatPos(pos)}`,
      name,
      data,
      options.signal,
    );
    return { ...pos, size, createdAt };
  }

  async openWalSegment(pos: Pos, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const name = walSegmentKey(pos.generation, pos.index, pos.offset);
    return await this.#open("WAL segment", name, options.signal);
  }

  async deleteWalSegments(positions: Pos[], options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    signal?.throwIfAborted();
    if (positions.length === 0) return;
    const paths = positions.map((p) =>
      this.#remote(walSegmentKey(p.generation, p.index, p.offset))
    );
    await this.#run("delete WAL segments", signal, async (conn) => {
      await eachLimit(paths, DELETES_IN_FLIGHT, async (path) => {
        await this.#unlink(conn, path, signal);
      });
    });
  }

  async deleteGeneration(generation: string, options: CallOptions = {}): Promise<void> {
    const { signal } = options;
    signal?.throwIfAborted();
    if (!isGenerationName(generation)) {
      throw new RangeError(`Cannot delete generation "${generation}": not a generation name`);
    }
    const dir = this.#remote(generationKey(generation));
    await this.#run(`delete generation "${generation}"`, signal, async (conn) => {
      await this.#removeTree(conn, dir, signal);
    });
    for (const known of this.#dirs.keys()) {
      if (known === dir || known.startsWith(`${dir}/`)) this.#dirs.delete(known);
    }
  }

  /** Closes the SSH connection. Later calls open a new one. */
  async close(): Promise<void> {
    const connecting = this.#connection;
    this.#connection = undefined;
    this.#dirs.clear();
    const conn = await connecting?.catch(() => undefined);
    await conn?.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // -------------------------------------------------------------------------------------
  // Connection

  /** Returns the shared connection, opening one if there is none (or it was lost). */
  #connect(signal: AbortSignal | undefined): Promise<Connection> {
    if (!this.#connection) {
      // Once lost, the next call dials again (unless a newer connection replaced this one).
      const connecting: Promise<Connection> = this.#dial(() => {
        if (this.#connection === connecting) this.#connection = undefined;
      });
      this.#connection = connecting;
      // A failed dial is retried by the next call.
      connecting.catch(() => {
        if (this.#connection === connecting) this.#connection = undefined;
      });
    }
    return raceSignal(this.#connection, signal);
  }

  async #dial(onLost: () => void): Promise<Connection> {
    let privateKey: Buffer | undefined;
    if (this.keyPath) {
      try {
        privateKey = Buffer.from(await Deno.readFile(this.keyPath));
      } catch (err) {
        // Not kept as a cause: a NotFound in the chain would read as "object not found".
        const why = err instanceof Deno.errors.NotFound
          ? "no such file"
          : err instanceof Deno.errors.PermissionDenied
          ? "permission denied"
          : (err as Error).message;
        throw new SftpConnectError(`cannot read key file "${this.keyPath}": ${why}`);
      }
    }

    const deadline = Date.now() + this.dialTimeoutMs;
    const sock = await this.#openSocket();
    const ssh = new Ssh2ClientClass();
    // Errors are handled through the promises below and by Connection; ssh2 emits a socket
    // error as an 'error' event, which must never go unheard (it would throw).
    ssh.on("error", () => {});
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Ssh2Error) => reject(err);
        ssh.once("error", onError);
        ssh.once("ready", () => {
          ssh.removeListener("error", onError);
          resolve();
        });
        ssh.once("close", () => reject(new Error("the server closed the connection")));
        try {
          // No hostVerifier: like v0.3.13 (ssh.InsecureIgnoreHostKey), host keys are not checked.
          ssh.connect({
            sock,
            username: this.user,
            password: this.#password,
            privateKey,
            readyTimeout: Math.max(1, deadline - Date.now()),
            keepaliveInterval: KEEPALIVE_INTERVAL_MS,
            keepaliveCountMax: KEEPALIVE_COUNT_MAX,
          });
        } catch (err) {
          // ssh2 parses the key synchronously.
          reject(
            new SftpConnectError(
              `cannot parse key file "${this.keyPath}": ${firstLine((err as Error).message)}`,
            ),
          );
        }
      });
      const sftp = await new Promise<Ssh2Sftp>((resolve, reject) => {
        ssh.once("error", reject);
        ssh.sftp((err, sftp) => err ? reject(err) : resolve(sftp));
      });
      const conn = new Connection(ssh, sftp, onLost);
      // A drop between login and here emitted its events before Connection listened.
      if (sock.destroyed) conn.lose();
      return conn;
    } catch (err) {
      ssh.destroy();
      sock.destroy();
      if (err instanceof SftpConnectError) throw err;
      throw new SftpConnectError(this.#describe(err), { cause: err });
    }
  }

  /** Opens the TCP connection with Nagle off (with it on, each request waits ~40 ms). */
  #openSocket(): Promise<net.Socket> {
    return new Promise((resolve, reject) => {
      const sock = net.connect({ host: this.hostname, port: this.port });
      sock.setNoDelay(true);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(
          new SftpConnectError(
            `connection to ${this.#address} timed out after ${this.dialTimeoutMs} ms`,
          ),
        );
      }, this.dialTimeoutMs);
      sock.once("connect", () => {
        clearTimeout(timer);
        sock.removeAllListeners("error");
        resolve(sock);
      });
      sock.once("error", (err) => {
        clearTimeout(timer);
        sock.destroy();
        reject(new SftpConnectError(this.#describe(err), { cause: err }));
      });
    });
  }

  /**
   * Runs `fn` on the shared connection and turns its errors into
   * `Cannot <action> in "<location>": <reason>`. An aborted call rejects with the signal's
   * reason; NotFound passes through. If the connection was lost under `fn`, `fn` runs once
   * more on a new connection when `canRetry()` says nothing irreversible happened.
   */
  async #run<T>(
    action: string,
    signal: AbortSignal | undefined,
    fn: (conn: Connection) => Promise<T>,
    canRetry: () => boolean = () => true,
  ): Promise<T> {
    signal?.throwIfAborted();
    for (let attempt = 1;; attempt++) {
      try {
        const conn = await this.#connect(signal);
        return await raceSignal(fn(conn), signal);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (err instanceof ConnectionLostError && attempt === 1 && canRetry()) continue;
        throw this.#translate(action, err);
      }
    }
  }

  #translate(action: string, err: unknown): unknown {
    if (err instanceof Deno.errors.NotFound) return err;
    const reason = err instanceof SftpConnectError ? err.message : this.#describe(err);
    const cause = err instanceof SftpConnectError || err instanceof ConnectionLostError
      ? err.cause
      : err;
    return new Error(
      `Cannot ${action} in "${this.location}": ${reason}`,
      cause === undefined ? undefined : { cause },
    );
  }

  /** A short lowercase reason for an ssh2, SFTP or socket error. Never holds the password. */
  #describe(err: unknown): string {
    const e = (err ?? {}) as Ssh2Error;
    const address = this.#address;
    if (err instanceof ConnectionLostError) return `the connection to ${address} was lost`;
    if (e.level === "client-authentication") {
      const how = [this.#password && "password", this.keyPath && "key"].filter(Boolean);
      return `cannot log in to ${address} as "${this.user}"` +
        (how.length ? ` with the configured ${how.join(" or ")}` : ": no password or key-path set");
    }
    if (e.level === "client-timeout") {
      return `the SSH handshake with ${address} timed out after ${this.dialTimeoutMs} ms`;
    }
    switch (e.code) {
      case "ECONNREFUSED":
        return `cannot connect to ${address}: connection refused`;
      case "ENOTFOUND":
      case "EAI_AGAIN":
      case "EAI_NONAME":
        return `cannot resolve host "${this.hostname}"`;
      case "ETIMEDOUT":
        return `connection to ${address} timed out`;
      case "ECONNRESET":
      case "EPIPE":
        return `the connection to ${address} was closed unexpectedly`;
      case "EHOSTUNREACH":
      case "ENETUNREACH":
        return `cannot reach ${address}: no route`;
      case STATUS_NO_SUCH_FILE:
        return "no such file or directory";
      case STATUS_PERMISSION_DENIED:
        return "permission denied";
      case STATUS_FAILURE:
        return e.message && e.message !== "Failure"
          ? `the server reported a failure: ${firstLine(e.message)}`
          : "the server reported a failure (is the disk full, or a file in the way?)";
      case STATUS_OP_UNSUPPORTED:
        return "the server does not support this operation";
    }
    return firstLine(e.message ?? String(err)) || "unknown error";
  }

  // -------------------------------------------------------------------------------------
  // Requests

  /** Lists a directory under `key`, page by page; a missing directory lists nothing. */
  async *#list(
    action: string,
    key: string,
    options: CallOptions,
  ): AsyncGenerator<SftpDirEntry> {
    const { signal } = options;
    const dir = this.#remote(key);
    // Read the whole listing first (directories hold at most a few thousand names), so a
    // dropped connection can be retried and the caller sees one consistent listing.
    const entries = await this.#run(action, signal, async (conn) => {
      const out: SftpDirEntry[] = [];
      for await (const e of this.#readDir(conn, dir, signal)) out.push(e);
      return out;
    });
    for (const e of entries) {
      signal?.throwIfAborted();
      if ((e.attrs.mode & S_IFMT) !== S_IFDIR) yield e;
    }
  }

  /** Reads a directory's entries (no `.` or `..`); nothing if it does not exist. */
  async *#readDir(
    conn: Connection,
    dir: string,
    signal: AbortSignal | undefined,
  ): AsyncGenerator<SftpDirEntry> {
    let handle: Handle;
    try {
      handle = await conn.request<Handle>((cb) => conn.sftp.opendir(dir || ".", cb));
    } catch (err) {
      if (isNoSuchFile(err)) return;
      throw err;
    }
    try {
      while (true) {
        signal?.throwIfAborted();
        let page: SftpDirEntry[];
        try {
          page = await conn.request<SftpDirEntry[]>((cb) => conn.sftp.readdir(handle, cb));
        } catch (err) {
          if ((err as Ssh2Error).code === STATUS_EOF) return;
          throw err;
        }
        for (const e of page) {
          if (e.filename !== "." && e.filename !== "..") yield e;
        }
      }
    } finally {
      await conn.request<void>((cb) => conn.sftp.close(handle, cb)).catch(() => {});
    }
  }

  async #unlink(conn: Connection, path: string, signal: AbortSignal | undefined): Promise<void> {
    signal?.throwIfAborted();
    try {
      await conn.request<void>((cb) => conn.sftp.unlink(path, cb));
      this.operations.record("DELETE");
    } catch (err) {
      if (!isNoSuchFile(err)) throw err;
    }
  }

  /** Deletes a directory and everything below it; a missing one is not an error. */
  async #removeTree(conn: Connection, dir: string, signal: AbortSignal | undefined) {
    const entries: SftpDirEntry[] = [];
    for await (const e of this.#readDir(conn, dir, signal)) entries.push(e);
    const subdirs = entries.filter((e) => (e.attrs.mode & S_IFMT) === S_IFDIR);
    for (const e of subdirs) await this.#removeTree(conn, `${dir}/${e.filename}`, signal);
    const files = entries.filter((e) => (e.attrs.mode & S_IFMT) !== S_IFDIR);
    await eachLimit(files, DELETES_IN_FLIGHT, async (e) => {
      await this.#unlink(conn, `${dir}/${e.filename}`, signal);
    });
    try {
      await conn.request<void>((cb) => conn.sftp.rmdir(dir, cb));
    } catch (err) {
      if (!isNoSuchFile(err)) throw err;
    }
  }

  /** Opens `key` for reading; the stream reads ahead {@linkcode REQUESTS_IN_FLIGHT} chunks. */
  async #open(
    what: string,
    key: string,
    signal: AbortSignal | undefined,
  ): Promise<ReadableStream<Uint8Array>> {
    const path = this.#remote(key);
    const { conn, handle } = await this.#run(`open ${what} "${key}"`, signal, async (conn) => {
      try {
        const handle = await conn.request<Handle>((cb) => conn.sftp.open(path, "r", cb));
        return { conn, handle };
      } catch (err) {
        if (isNoSuchFile(err)) {
          throw new Deno.errors.NotFound(
            `Cannot open ${what} in "${this.location}": "${key}" does not exist`,
          );
        }
        throw err;
      }
    });
    this.operations.record("GET");

    // Reads at increasing offsets; a short read (the server may cap a read's size) gets its
    // missing rest re-requested first, and a read of 0 bytes is the end of the file.
    const queue: { position: number; length: number; read: Promise<Uint8Array> }[] = [];
    let next = 0;
    let closed = false;
    const read = (position: number, length: number) => {
      const buf = Buffer.allocUnsafe(length);
      const p = conn.request<number>((cb) =>
        conn.sftp.read(handle, buf, 0, length, position, cb as Callback<number>)
      ).then((n) => new Uint8Array(buf.buffer, buf.byteOffset, n));
      p.catch(() => {}); // awaited in order below; unhandled only if the stream is cancelled
      return { position, length, read: p };
    };
    const finish = async () => {
      if (closed) return;
      closed = true;
      await Promise.allSettled(queue.map((r) => r.read));
      queue.length = 0;
      await conn.request<void>((cb) => conn.sftp.close(handle, cb)).catch(() => {});
    };
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        try {
          while (queue.length < REQUESTS_IN_FLIGHT) {
            queue.push(read(next, CHUNK_SIZE));
            next += CHUNK_SIZE;
          }
          const r = queue.shift()!;
          const bytes = await r.read;
          if (bytes.length === 0) {
            await finish();
            controller.close();
            return;
          }
          if (bytes.length < r.length) {
            queue.unshift(read(r.position + bytes.length, r.length - bytes.length));
          }
          controller.enqueue(bytes);
        } catch (err) {
          await finish();
          controller.error(this.#translate(`read ${what} "${key}"`, err));
        }
      },
      cancel: () => finish(),
    }, { highWaterMark: 0 });
  }

  /**
   * Writes `data` to `key` atomically: into `<key>.tmp`, fsynced, then renamed over `key`.
   * Returns the bytes written.
   */
  async #write(action: string, key: string, data: Body, signal?: AbortSignal): Promise<number> {
    const path = this.#remote(key);
    const tmp = `${path}.tmp`;
    const reader = data instanceof Uint8Array ? undefined : data.getReader();
    let consumed = false;
    try {
      return await this.#run(action, signal, async (conn) => {
        await this.#ensureDir(conn, parentDir(path));
        let handle: Handle;
        try {
          handle = await conn.request<Handle>((cb) => conn.sftp.open(tmp, "w", cb));
        } catch (err) {
          if (!isNoSuchFile(err)) throw err;
          // The directory went away (another process deleted the generation): make it again.
          this.#dirs.delete(parentDir(path));
          await this.#ensureDir(conn, parentDir(path));
          handle = await conn.request<Handle>((cb) => conn.sftp.open(tmp, "w", cb));
        }
        let size: number;
        try {
          const chunks = reader
            ? readChunks(reader, signal, () => consumed = true)
            : [data as Uint8Array];
          size = await writeChunks(conn, handle, chunks, signal);
          await this.#fsync(conn, handle);
        } catch (err) {
          await conn.request<void>((cb) => conn.sftp.close(handle, cb)).catch(() => {});
          await conn.request<void>((cb) => conn.sftp.unlink(tmp, cb)).catch(() => {});
          throw err;
        }
        await conn.request<void>((cb) => conn.sftp.close(handle, cb));
        signal?.throwIfAborted(); // an aborted write must not appear under its name
        await this.#rename(conn, tmp, path);
        this.operations.record("PUT", size);
        return size;
      }, () => !consumed);
    } catch (err) {
      // Release the caller's stream (and whatever file it reads) instead of leaving it locked.
      await reader?.cancel(err).catch(() => {});
      throw err;
    } finally {
      reader?.releaseLock();
    }
  }

  async #fsync(conn: Connection, handle: Handle): Promise<void> {
    if (conn.missing.has("fsync")) return;
    try {
      await conn.request<void>((cb) => conn.sftp.ext_openssh_fsync(handle, cb));
    } catch (err) {
      if (!isUnsupported(err)) throw err;
      conn.missing.add("fsync");
    }
  }

  /** Renames over an existing file: POSIX rename where offered, else unlink then rename. */
  async #rename(conn: Connection, from: string, to: string): Promise<void> {
    if (!conn.missing.has("posix-rename")) {
      try {
        await conn.request<void>((cb) => conn.sftp.ext_openssh_rename(from, to, cb));
        return;
      } catch (err) {
        if (!isUnsupported(err)) throw err;
        conn.missing.add("posix-rename");
      }
    }
    // Plain SFTP rename fails when the target exists.
    await conn.request<void>((cb) => conn.sftp.unlink(to, cb)).catch((err) => {
      if (!isNoSuchFile(err)) throw err;
    });
    await conn.request<void>((cb) => conn.sftp.rename(from, to, cb));
  }

  /** Makes `dir` and its parents once per client, removing `.tmp` leftovers in it. */
  #ensureDir(conn: Connection, dir: string): Promise<void> {
    let ready = this.#dirs.get(dir);
    if (!ready) {
      ready = (async () => {
        await this.#mkdirAll(conn, dir);
        for await (const e of this.#readDir(conn, dir, undefined)) {
          if ((e.attrs.mode & S_IFMT) !== S_IFDIR && e.filename.endsWith(".tmp")) {
            await conn.request<void>((cb) => conn.sftp.unlink(`${dir}/${e.filename}`, cb))
              .catch(() => {});
          }
        }
      })();
      this.#dirs.set(dir, ready);
      const made = ready;
      made.catch(() => {
        if (this.#dirs.get(dir) === made) this.#dirs.delete(dir);
      });
    }
    return ready;
  }

  async #mkdirAll(conn: Connection, dir: string): Promise<void> {
    if (dir === "" || dir === "/" || dir === ".") return;
    try {
      const attrs = await conn.request<SftpAttrs>((cb) => conn.sftp.stat(dir, cb));
      if ((attrs.mode & S_IFMT) === S_IFDIR) return;
      throw new Error(`"${dir}" exists and is not a directory`);
    } catch (err) {
      if (!isNoSuchFile(err)) throw err;
    }
    await this.#mkdirAll(conn, parentDir(dir));
    try {
      await conn.request<void>((cb) => conn.sftp.mkdir(dir, cb));
    } catch (err) {
      // Someone else (a concurrent write) may have made it meanwhile.
      const attrs = await conn.request<SftpAttrs>((cb) => conn.sftp.stat(dir, cb))
        .catch(() => undefined);
      if (attrs === undefined || (attrs.mode & S_IFMT) !== S_IFDIR) {
        throw new Error(`cannot make directory "${dir}": ${this.#describe(err)}`, { cause: err });
      }
    }
  }
}

/** True if an `ext_openssh_*` call threw because the server lacks the extension. */
function isUnsupported(err: unknown): boolean {
  const e = err as Ssh2Error;
  return e?.code === STATUS_OP_UNSUPPORTED ||
    (e instanceof Error && /does not support this extended request/.test(e.message));
}

/** Yields the chunks of a stream, rejecting with the signal's reason as soon as it aborts. */
async function* readChunks(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  signal: AbortSignal | undefined,
  onRead: () => void,
): AsyncGenerator<Uint8Array> {
  while (true) {
    const { done, value } = await raceSignal(reader.read(), signal);
    if (done) return;
    onRead();
    yield value;
  }
}

/**
 * Writes chunks at increasing offsets with up to {@linkcode REQUESTS_IN_FLIGHT} write
 * requests outstanding; returns the bytes written.
 */
async function writeChunks(
  conn: Connection,
  handle: Handle,
  chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>,
  signal: AbortSignal | undefined,
): Promise<number> {
  const inFlight: Promise<void>[] = [];
  let position = 0;
  try {
    for await (const chunk of chunks) {
      for (let at = 0; at < chunk.length; at += CHUNK_SIZE) {
        signal?.throwIfAborted();
        const piece = chunk.subarray(at, at + CHUNK_SIZE);
        const buf = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
        const offset = position;
        position += piece.length;
        const p = conn.request<void>((cb) =>
          conn.sftp.write(handle, buf, 0, buf.length, offset, cb)
        );
        p.catch(() => {}); // awaited below
        inFlight.push(p);
        if (inFlight.length >= REQUESTS_IN_FLIGHT) await inFlight.shift();
      }
    }
    while (inFlight.length > 0) await inFlight.shift();
  } finally {
    await Promise.allSettled(inFlight);
  }
  return position;
}

/** Runs `fn` on `items` with at most `limit` at once; stops at the first failure. */
async function eachLimit<T>(items: T[], limit: number, fn: (x: T) => Promise<void>) {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      try {
        await fn(items[next++]);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(
    Array.from({ length: Math.min(limit, items.length) }, worker),
  );
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (rejected) throw rejected.reason;
}

function firstLine(s: string): string {
  return s.split("\n")[0].trim();
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
