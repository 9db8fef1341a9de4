/**
 * The table of replica backends. The config parser, the URL parser and the client factory
 * consult it; adding a backend is its client file, its descriptor and one line here.
 *
 * @module
 */
import type { Backend } from "./backend.ts";
import { fileBackend } from "./file.ts";
import { s3Backend } from "./s3.ts";
import { sftpBackend } from "./sftp.ts";
import { gcsBackend } from "./gcs.ts";
import { absBackend } from "./abs.ts";

export type { Backend, BackendKey, BackendReplica, BackendSettings } from "./backend.ts";

/** Every backend, in the order messages list them. */
export const BACKENDS: readonly Backend[] = [
  fileBackend,
  s3Backend,
  gcsBackend,
  absBackend,
  sftpBackend,
];

/** The backend of `type`, if there is one. */
export function backendOf(type: string): Backend | undefined {
  return BACKENDS.find((b) => b.type === type);
}

/** The backends that accept the replica key `key`. */
export function backendsWithKey(key: string): Backend[] {
  return BACKENDS.filter((b) => Object.hasOwn(b.keys, key));
}

/** Every backend key, and whether a message may show its value. */
export function allBackendKeys(): Map<string, { secret: boolean; global: boolean }> {
  const out = new Map<string, { secret: boolean; global: boolean }>();
  for (const b of BACKENDS) {
    for (const [key, spec] of Object.entries(b.keys)) {
      const prev = out.get(key);
      out.set(key, {
        secret: (prev?.secret ?? false) || !!spec.secret,
        global: (prev?.global ?? false) || !!spec.global,
      });
    }
  }
  return out;
}
