/**
 * SFTP replicas: a directory on an SSH server (`src/clients/sftp.ts`, the only importer of
 * ssh2). v0.3.13's keys: `host` (host:port), `user`, `password`, `key-path`, `path`, or
 * `url: sftp://user[:password]@host[:port]/path`.
 *
 * @module
 */
import { type Backend, str } from "./backend.ts";
import { UsageError } from "../errors.ts";

export const sftpBackend: Backend = {
  type: "sftp",
  title: "an sftp replica",
  keys: {
    host: { kind: "string" },
    user: { kind: "string" },
    password: { kind: "string", secret: true },
    "key-path": { kind: "string" },
  },
  checkUrl(url, shown) {
    return url.hostname === "" ? `replica URL "${shown}" has no host` : {};
  },
  check(replica) {
    const s = replica.settings;
    if (replica.url !== undefined && s.host !== undefined) {
      return { message: "cannot set both url and host", key: "host" };
    }
    if (replica.url === undefined && s.host === undefined) {
      return { message: "is an sftp replica and needs a host or a url" };
    }
    if (replica.url === undefined && s.user === undefined) {
      return { message: "is an sftp replica and needs a user" };
    }
    return undefined;
  },
  async create(replica) {
    const sftp = await import("../clients/sftp.ts");
    const s = replica.settings;
    try {
      return new sftp.SftpReplicaClient(sftp.sftpOptionsFromConfig({
        url: replica.url,
        host: str(s.host),
        user: str(s.user),
        password: str(s.password),
        keyPath: str(s["key-path"]),
        path: replica.path,
      }));
    } catch (err) {
      if (err instanceof RangeError || err instanceof SyntaxError) {
        throw new UsageError(err.message, { cause: err });
      }
      throw err;
    }
  },
};
