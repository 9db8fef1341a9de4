/**
 * File replicas: a directory on a local or mounted file system.
 *
 * @module
 */
import type { Backend } from "./backend.ts";
import { UsageError } from "../errors.ts";

export const fileBackend: Backend = {
  type: "file",
  title: "a file replica",
  keys: {},
  localPath: true,
  checkUrl(url, shown) {
    if (url.host !== "") {
      return `file URL "${shown}" must have an absolute path such as "file:///var/backups/db"`;
    }
    let path = url.pathname;
    try {
      path = decodeURIComponent(path);
    } catch {
      // Keep malformed escapes as written.
    }
    if (path === "" || shown.endsWith("://")) return `file URL "${shown}" has no path`;
    return { path };
  },
  check(replica) {
    return replica.path === undefined
      ? { message: "is a file replica and needs a path or a url" }
      : undefined;
  },
  async create(replica) {
    if (!replica.path) throw new UsageError("File replica needs a path or a file:// url");
    const { FileReplicaClient } = await import("../clients/file.ts");
    return new FileReplicaClient(replica.path);
  },
};
