/**
 * Client-side encryption with [age](https://age-encryption.org/v1), as Litestream v0.3.13
 * does it (`age: {identities, recipients}` on a replica): {@linkcode AgeReplicaClient} wraps
 * any other {@linkcode ReplicaClient}, encrypts every snapshot and WAL segment it writes to
 * the recipients and decrypts every one it reads with the identities.
 *
 * The object is an age v1 file whose plaintext is the LZ4 frame (data → LZ4 → age), under
 * the usual `.lz4` name, so v0.3.13 and `age -d` read what we write and we read theirs.
 * Listings pass through, so sizes are the stored (encrypted) sizes, as v0.3.13 shows them.
 *
 * The header (X25519 key wrapping, stanzas, HMAC) comes from `age-encryption`, by age's
 * author; the payload's STREAM layer (ChaCha20-Poly1305 over 64 KiB chunks) is done here
 * with `node:crypto`, about ten times faster than the package's pure-JS cipher. Both
 * directions stream chunk by chunk: no object is held whole in memory.
 *
 * Only X25519 keys are accepted (`age1…` recipients, `AGE-SECRET-KEY-1…` identities): the
 * age v1.1.1 inside v0.3.13 knows no other kind, so it could not read anything else.
 *
 * This is the only module that imports `age-encryption` and `node:crypto`.
 *
 * @example
 * ```ts
 * import { AgeReplicaClient, generateAgeKey } from "./age.ts";
 * import { FileReplicaClient } from "./file.ts";
 *
 * const { identity, recipient } = await generateAgeKey();
 * const client = new AgeReplicaClient(new FileReplicaClient("/backups/app"), {
 *   identities: [identity],
 *   recipients: [recipient],
 * });
 * ```
 *
 * @module
 */
// Pinned inline until deno.json's import map lists it; then `from "age-encryption"`.
// deno-lint-ignore no-import-prefix
import * as age from "npm:age-encryption@0.3.1";
import { createCipheriv, createDecipheriv, hkdfSync } from "node:crypto";
import { snapshotKey, walSegmentKey } from "../layout.ts";
import type { Pos } from "../pos.ts";
import type { ReplicaOperationMetrics } from "../metrics.ts";
import type {
  Body,
  CallOptions,
  ReplicaClient,
  SnapshotInfo,
  SnapshotKey,
  WalSegmentInfo,
} from "../replica_client.ts";
import { UsageError } from "../errors.ts";
import { concat } from "../internal/bytes.ts";

/** The first line of every age v1 file. */
const AGE_MAGIC = new TextEncoder().encode("age-encryption.org/v1\n");
/** The header ends with the line `--- <MAC>`. */
const MAC_LINE = new TextEncoder().encode("\n--- ");
/** Longer headers are refused rather than read on (X25519 stanzas are ~100 bytes each). */
const MAX_HEADER_BYTES = 1 << 20;
/** Plaintext bytes per STREAM chunk. */
const CHUNK_BYTES = 64 * 1024;
/** Poly1305 tag after each chunk. */
const TAG_BYTES = 16;
/** Random nonce between the header and the first chunk. */
const NONCE_BYTES = 16;
const PAYLOAD_LABEL = "payload";
const X25519_RECIPIENT_REGEXP = /^age1[02-9ac-hj-np-z]{58}$/;
const X25519_IDENTITY_REGEXP = /^AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}$/;

/** Keys of an {@linkcode AgeReplicaClient}, as the `age:` block of a replica config. */
export interface AgeOptions {
  /**
   * Secret keys (`AGE-SECRET-KEY-1…`) that decrypt what is read. Each entry may hold several
   * keys, one a line, like an identity file (`#` comments and blank lines are skipped), as
   * v0.3.13 parses them. Needed to restore, and to replicate (the replica's position is read
   * back from its last WAL segment). @default {none: reads fail}
   */
  identities?: readonly string[];
  /**
   * Public keys (`age1…`) that what is written is encrypted to; one a line per entry, as
   * for identities. @default {none: writes fail}
   */
  recipients?: readonly string[];
}

/**
 * A {@linkcode ReplicaClient} that encrypts what it writes to age recipients and decrypts
 * what it reads with age identities, storing through `inner`. Type, location and request
 * metrics are the inner client's, so logs and the default replica name stay the same.
 */
export class AgeReplicaClient implements ReplicaClient {
  /** The client that stores the encrypted objects. */
  readonly inner: ReplicaClient;
  /** The recipients written to (public keys; safe to show). */
  readonly recipients: readonly string[];
  readonly #decrypter?: age.Decrypter;

  /**
   * @throws {UsageError} If a key does not parse (the message never shows a secret key), or
   * neither identities nor recipients are given.
   */
  constructor(inner: ReplicaClient, options: AgeOptions) {
    this.inner = inner;
    const identities = parseKeys("identity", options.identities ?? [], X25519_IDENTITY_REGEXP);
    this.recipients = parseKeys("recipient", options.recipients ?? [], X25519_RECIPIENT_REGEXP);
    if (identities.length === 0 && this.recipients.length === 0) {
      throw new UsageError("Cannot use age encryption: no identities and no recipients given");
    }
    // Check each recipient's checksum now rather than at the first write.
    const check = new age.Encrypter();
    for (const r of this.recipients) {
      try {
        check.addRecipient(r);
      } catch (err) {
        throw new UsageError(`Cannot use age recipient "${r}": bad checksum`, { cause: err });
      }
    }
    if (identities.length > 0) {
      this.#decrypter = new age.Decrypter();
      for (const [i, id] of identities.entries()) {
        try {
          this.#decrypter.addIdentity(id);
        } catch {
          // No cause: the library's error could quote the key.
          throw new UsageError(`Cannot use age identity ${i + 1}: bad checksum`);
        }
      }
      // Tried last, only when no identity matched: tells that case from a damaged header.
      this.#decrypter.addIdentity(NO_MATCH);
    }
  }

  get type(): string {
    return this.inner.type;
  }

  get location(): string {
    return this.inner.location;
  }

  get operations(): ReplicaOperationMetrics | undefined {
    return this.inner.operations;
  }

  generations(options?: CallOptions): Promise<string[]> {
    return this.inner.generations(options);
  }

  snapshots(generation: string, options?: CallOptions): AsyncIterable<SnapshotInfo> {
    return this.inner.snapshots(generation, options);
  }

  /**
   * Encrypts `data` (an LZ4 frame) to the recipients and stores it; a stream is encrypted
   * as the store reads it. The returned size is the stored, encrypted size.
   *
   * @throws {UsageError} If no recipient is configured.
   */
  async writeSnapshot(
    key: SnapshotKey,
    data: Body,
    options: CallOptions = {},
  ): Promise<SnapshotInfo> {
    const what = `snapshot "${snapshotKey(key.generation, key.index)}"`;
    return await this.#write(what, data, options, (b) => this.inner.writeSnapshot(key, b, options));
  }

  /**
   * Opens a snapshot and decrypts it as it is read. The header is checked before this
   * resolves; a damaged or truncated payload errors the stream with a `SyntaxError`.
   *
   * @throws {Deno.errors.NotFound} If no snapshot exists at `key`.
   * @throws {UsageError} If no identity is configured.
   * @throws {Error} If no identity matches the object, or it is not age-encrypted.
   * @throws {SyntaxError} If its age header is damaged.
   */
  async openSnapshot(
    key: SnapshotKey,
    options: CallOptions = {},
  ): Promise<ReadableStream<Uint8Array>> {
    const what = `snapshot "${snapshotKey(key.generation, key.index)}"`;
    return await this.#open(what, () => this.inner.openSnapshot(key, options));
  }

  deleteSnapshot(key: SnapshotKey, options?: CallOptions): Promise<void> {
    return this.inner.deleteSnapshot(key, options);
  }

  walSegments(generation: string, options?: CallOptions): AsyncIterable<WalSegmentInfo> {
    return this.inner.walSegments(generation, options);
  }

  /**
   * Encrypts `data` (an LZ4 frame) to the recipients and stores it as a WAL segment.
   *
   * @throws {UsageError} If no recipient is configured.
   */
  async writeWalSegment(pos: Pos, data: Body, options: CallOptions = {}): Promise<WalSegmentInfo> {
    const what = `WAL segment "${walSegmentKey(pos.generation, pos.index, pos.offset)}"`;
    return await this.#write(
      what,
      data,
      options,
      (b) => this.inner.writeWalSegment(pos, b, options),
    );
  }

  /**
   * Opens a WAL segment and decrypts it as it is read; fails as {@linkcode openSnapshot}.
   *
   * @throws {Deno.errors.NotFound} If no segment exists at `pos`.
   */
  async openWalSegment(pos: Pos, options: CallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const what = `WAL segment "${walSegmentKey(pos.generation, pos.index, pos.offset)}"`;
    return await this.#open(what, () => this.inner.openWalSegment(pos, options));
  }

  deleteWalSegments(positions: Pos[], options?: CallOptions): Promise<void> {
    return this.inner.deleteWalSegments(positions, options);
  }

  deleteGeneration(generation: string, options?: CallOptions): Promise<void> {
    return this.inner.deleteGeneration(generation, options);
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }

  async #write<T>(
    what: string,
    data: Body,
    options: CallOptions,
    store: (body: Body) => Promise<T>,
  ): Promise<T> {
    let body: Body;
    try {
      if (this.recipients.length === 0) {
        throw new UsageError(
          `Cannot write ${what} to "${this.location}": no age recipients configured`,
        );
      }
      options.signal?.throwIfAborted();
      const { prefix, key } = await this.#newFile();
      body = data instanceof ReadableStream
        ? data.pipeThrough(sealStream(key, prefix))
        : sealAll(key, prefix, data);
    } catch (err) {
      if (data instanceof ReadableStream) await data.cancel(err).catch(() => {});
      throw err;
    }
    try {
      return await store(body);
    } catch (err) {
      // A store that failed before reading must still release the caller's stream.
      if (body instanceof ReadableStream) await body.cancel(err).catch(() => {});
      throw err;
    }
  }

  /** A fresh file key wrapped to the recipients: the header and nonce, and the payload key. */
  async #newFile(): Promise<{ prefix: Uint8Array; key: Uint8Array }> {
    // The package builds and MACs the header; a recipient of ours that adds no stanza
    // learns the file key, from which the payload key is derived as the spec says.
    let fileKey: Uint8Array | undefined;
    const encrypter = new age.Encrypter();
    for (const r of this.recipients) encrypter.addRecipient(r);
    encrypter.addRecipient({
      wrapFileKey(key: Uint8Array) {
        fileKey = key.slice();
        return [];
      },
    });
    const empty = await encrypter.encrypt(new Uint8Array(0));
    const header = empty.subarray(0, headerEnd(empty));
    const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    return { prefix: concat([header, nonce]), key: payloadKey(fileKey!, nonce) };
  }

  async #open(
    what: string,
    open: () => Promise<ReadableStream<Uint8Array>>,
  ): Promise<ReadableStream<Uint8Array>> {
    const fail = (why: string) => `Cannot decrypt ${what} in "${this.location}": ${why}`;
    if (!this.#decrypter) throw new UsageError(fail("no age identities configured"));
    const source = new Source(await open());
    let key: Uint8Array;
    try {
      const head = await source.fill(AGE_MAGIC.length);
      if (!startsWith(head, AGE_MAGIC)) {
        throw new Error(fail('not age-encrypted (no "age-encryption.org/v1" header)'));
      }
      // Errors of the store (a network error, an abort) come from fill() and pass unchanged.
      const header = await readHeader(source, fail);
      let fileKey: Uint8Array;
      try {
        fileKey = await this.#decrypter.decryptHeader(header);
      } catch (err) {
        if (err instanceof NoMatchError) {
          throw new Error(fail("the age identities do not match its recipients"));
        }
        throw new SyntaxError(fail("damaged age header"), { cause: err });
      }
      const nonce = (await source.fill(NONCE_BYTES)).slice(0, NONCE_BYTES);
      if (nonce.length < NONCE_BYTES) throw new SyntaxError(fail("truncated after the header"));
      source.consume(NONCE_BYTES);
      key = payloadKey(fileKey, nonce);
    } catch (err) {
      await source.cancel(err);
      throw err;
    }
    return source.rest().pipeThrough(openStream(key, fail));
  }
}

/** Generates a new X25519 key pair: the secret identity and its public recipient. */
export async function generateAgeKey(): Promise<{ identity: string; recipient: string }> {
  const identity = await age.generateX25519Identity();
  return { identity, recipient: await age.identityToRecipient(identity) };
}

/**
 * Splits config entries into keys as age's ParseIdentities/ParseRecipients do (one a line,
 * `#` comments and blank lines skipped) and checks each one's form. An entry without a key
 * is an error, as in v0.3.13. Messages never show a secret key.
 */
function parseKeys(
  kind: "identity" | "recipient",
  entries: readonly string[],
  form: RegExp,
): string[] {
  const want = kind === "identity"
    ? 'an X25519 secret key ("AGE-SECRET-KEY-1…")'
    : 'an X25519 public key ("age1…")';
  const keys: string[] = [];
  for (const [i, entry] of entries.entries()) {
    let found = 0;
    for (const [n, raw] of entry.split("\n").entries()) {
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) continue;
      if (!form.test(line)) {
        const shown = kind === "recipient" ? ` "${line}"` : "";
        const at = entry.includes("\n") ? ` (line ${n + 1})` : "";
        throw new UsageError(`Cannot use age ${kind} ${i + 1}${shown}${at}: want ${want}`);
      }
      keys.push(line);
      found++;
    }
    if (found === 0) throw new UsageError(`Cannot use age ${kind} ${i + 1}: no key in it`);
  }
  return keys;
}

class NoMatchError extends Error {}

/** An identity that matches nothing: reached only when every real identity returned null. */
const NO_MATCH: age.Identity = {
  unwrapFileKey(): never {
    throw new NoMatchError("no identity matched");
  },
};

/** Length of the header at the start of `bytes` (through the MAC line), or -1. */
function headerEnd(bytes: Uint8Array): number {
  const at = indexOf(bytes, MAC_LINE);
  if (at < 0) return -1;
  const eol = bytes.indexOf(0x0a, at + MAC_LINE.length);
  return eol < 0 ? -1 : eol + 1;
}

/** Reads and consumes the header (the version line through the MAC line). */
async function readHeader(source: Source, fail: (why: string) => string): Promise<Uint8Array> {
  for (let want = AGE_MAGIC.length + 1;; want = source.buffered + 1) {
    const buf = await source.fill(want);
    const end = headerEnd(buf);
    if (end >= 0) return source.consume(end);
    if (buf.length < want) throw new SyntaxError(fail("truncated age header"));
    if (buf.length > MAX_HEADER_BYTES) throw new SyntaxError(fail("age header too long"));
  }
}

/** HKDF-SHA-256(file key, nonce, "payload"): the key of the STREAM chunks. */
function payloadKey(fileKey: Uint8Array, nonce: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync("sha256", fileKey, nonce, PAYLOAD_LABEL, 32));
}

/** The 12-byte nonce of chunk `counter`: 11-byte big-endian counter, then the last flag. */
function chunkNonce(counter: number, last: boolean): Uint8Array {
  const nonce = new Uint8Array(12);
  for (let i = 10, n = counter; i >= 0 && n > 0; i--, n = Math.floor(n / 256)) nonce[i] = n % 256;
  nonce[11] = last ? 1 : 0;
  return nonce;
}

/** Encrypts one chunk into `out` at `at` (ciphertext, then tag). */
function sealChunk(
  key: Uint8Array,
  counter: number,
  last: boolean,
  plain: Uint8Array,
  out: Uint8Array,
  at: number,
): void {
  const cipher = createCipheriv("chacha20-poly1305", key, chunkNonce(counter, last), {
    authTagLength: TAG_BYTES,
  });
  const head = cipher.update(plain);
  out.set(head, at);
  out.set(cipher.final(), at + head.length);
  out.set(cipher.getAuthTag(), at + plain.length);
}

/** Encrypts one chunk into a fresh array (never a pooled Buffer: consumers may transfer it). */
function sealed(key: Uint8Array, counter: number, last: boolean, plain: Uint8Array): Uint8Array {
  const out = new Uint8Array(plain.length + TAG_BYTES);
  sealChunk(key, counter, last, plain, out, 0);
  return out;
}

/** `prefix` (header and nonce) followed by the whole of `data`, encrypted. */
function sealAll(key: Uint8Array, prefix: Uint8Array, data: Uint8Array): Uint8Array {
  const chunks = Math.max(1, Math.ceil(data.length / CHUNK_BYTES));
  const out = new Uint8Array(prefix.length + data.length + chunks * TAG_BYTES);
  out.set(prefix);
  for (let i = 0, at = prefix.length; i < chunks; i++) {
    const plain = data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES);
    sealChunk(key, i, i === chunks - 1, plain, out, at);
    at += plain.length + TAG_BYTES;
  }
  return out;
}

/**
 * Encrypts a stream: `prefix` first, then 64 KiB chunks. A full chunk is sealed as "not
 * last" only once more data follows, so the final chunk may be full, and is empty only
 * when the whole plaintext is.
 */
function sealStream(key: Uint8Array, prefix: Uint8Array): TransformStream<Uint8Array, Uint8Array> {
  const buf = new Uint8Array(CHUNK_BYTES);
  let used = 0;
  let counter = 0;
  return new TransformStream({
    start(controller) {
      controller.enqueue(prefix);
    },
    transform(chunk, controller) {
      while (chunk.length > 0) {
        if (used === CHUNK_BYTES) {
          controller.enqueue(sealed(key, counter++, false, buf));
          used = 0;
        }
        if (used === 0 && chunk.length > CHUNK_BYTES) {
          // More follows this chunk's first 64 KiB: seal them in place.
          controller.enqueue(sealed(key, counter++, false, chunk.subarray(0, CHUNK_BYTES)));
          chunk = chunk.subarray(CHUNK_BYTES);
          continue;
        }
        const n = Math.min(CHUNK_BYTES - used, chunk.length);
        buf.set(chunk.subarray(0, n), used);
        used += n;
        chunk = chunk.subarray(n);
      }
    },
    flush(controller) {
      controller.enqueue(sealed(key, counter, true, buf.subarray(0, used)));
    },
  });
}

/**
 * Decrypts a payload stream (after the nonce). A chunk is opened only once the next byte or
 * the end is seen, to know whether it is the last; every chunk is authenticated before any
 * of its bytes are passed on.
 */
function openStream(
  key: Uint8Array,
  fail: (why: string) => string,
): TransformStream<Uint8Array, Uint8Array> {
  const buf = new Uint8Array(CHUNK_BYTES + TAG_BYTES);
  let used = 0;
  let counter = 0;
  const open = (last: boolean, sealed: Uint8Array): Uint8Array => {
    const damaged = () =>
      new SyntaxError(fail(`age payload chunk ${counter} failed authentication`));
    if (sealed.length < TAG_BYTES) throw damaged();
    const n = sealed.length - TAG_BYTES;
    const decipher = createDecipheriv("chacha20-poly1305", key, chunkNonce(counter, last), {
      authTagLength: TAG_BYTES,
    });
    decipher.setAuthTag(sealed.subarray(n));
    const out = new Uint8Array(n);
    try {
      const head = decipher.update(sealed.subarray(0, n));
      out.set(head);
      out.set(decipher.final(), head.length);
    } catch (err) {
      throw new SyntaxError(fail(`age payload chunk ${counter} failed authentication`), {
        cause: err,
      });
    }
    counter++;
    return out;
  };
  return new TransformStream({
    transform(chunk, controller) {
      while (chunk.length > 0) {
        if (used === buf.length) {
          controller.enqueue(open(false, buf));
          used = 0;
        }
        const n = Math.min(buf.length - used, chunk.length);
        buf.set(chunk.subarray(0, n), used);
        used += n;
        chunk = chunk.subarray(n);
      }
    },
    flush(controller) {
      const plain = open(true, buf.subarray(0, used));
      if (plain.length > 0) controller.enqueue(plain);
      else if (counter > 1) throw new SyntaxError(fail("age payload ends in an empty chunk"));
    },
  });
}

/** A stored stream read through a buffer, so its start can be parsed and the rest piped on. */
class Source {
  #reader: ReadableStreamDefaultReader<Uint8Array>;
  #buf: Uint8Array = new Uint8Array(0);
  #done = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  get buffered(): number {
    return this.#buf.length;
  }

  /** Buffers at least `n` bytes, or all that are left; returns the buffer. */
  async fill(n: number): Promise<Uint8Array> {
    const parts = [this.#buf];
    let have = this.#buf.length;
    while (have < n && !this.#done) {
      const { done, value } = await this.#reader.read();
      if (done) this.#done = true;
      else {
        parts.push(value);
        have += value.length;
      }
    }
    if (parts.length > 1) this.#buf = concat(parts);
    return this.#buf;
  }

  /** Removes and returns the first `n` buffered bytes. */
  consume(n: number): Uint8Array {
    const out = this.#buf.slice(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** The buffered bytes, then the rest of the stored stream; cancelling it cancels that. */
  rest(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        if (this.#buf.length > 0) {
          controller.enqueue(this.#buf);
          this.#buf = new Uint8Array(0);
          return;
        }
        const next = this.#done ? undefined : await this.#reader.read();
        if (!next || next.done) controller.close();
        else controller.enqueue(next.value);
      },
      cancel: (reason) => this.#reader.cancel(reason),
    }, { highWaterMark: 0 });
  }

  async cancel(reason: unknown): Promise<void> {
    await this.#reader.cancel(reason).catch(() => {});
  }
}

function indexOf(bytes: Uint8Array, needle: Uint8Array): number {
  for (let i = bytes.indexOf(needle[0]); i >= 0; i = bytes.indexOf(needle[0], i + 1)) {
    if (i + needle.length > bytes.length) return -1;
    if (needle.every((b, k) => bytes[i + k] === b)) return i;
  }
  return -1;
}

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  return bytes.length >= prefix.length && prefix.every((b, i) => bytes[i] === b);
}
