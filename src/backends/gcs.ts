/**
 * Google Cloud Storage replicas (`src/clients/gcs.ts`). v0.3.13's keys: `bucket`, `path`,
 * or `url: gcs://bucket/path`; credentials come from Google's default chain, and
 * `STORAGE_EMULATOR_HOST` points it at an emulator.
 *
 * @module
 */
import { type Backend, str } from "./backend.ts";
import { UsageError } from "../errors.ts";

export const gcsBackend: Backend = {
  type: "gcs",
  title: "a gcs replica",
  keys: {
    bucket: { kind: "string" },
  },
  checkUrl(url, shown) {
    return url.hostname === "" ? `replica URL "${shown}" has no bucket` : {};
  },
  check(replica) {
    if (replica.url !== undefined && replica.settings.bucket !== undefined) {
      return { message: "cannot set both url and bucket", key: "bucket" };
    }
    if (replica.url === undefined && replica.settings.bucket === undefined) {
      return { message: "is a gcs replica and needs a bucket or a url" };
    }
    return undefined;
  },
  async create(replica) {
    const gcs = await import("../clients/gcs.ts");
    let options: { bucket: string; path?: string } | undefined;
    try {
      options = replica.url
        ? gcs.parseGcsUrl(replica.url)
        : { bucket: str(replica.settings.bucket) ?? "", path: replica.path ?? "" };
      return new gcs.GcsReplicaClient(options);
    } catch (err) {
      if (err instanceof RangeError || err instanceof SyntaxError) {
        throw new UsageError(err.message, { cause: err });
      }
      if (options && err instanceof Deno.errors.NotCapable) {
        // The constructor reads STORAGE_EMULATOR_HOST: name the replica that needs it.
        const where = `gcs://${options.bucket}${options.path ? `/${options.path}` : ""}`;
        throw new Error(`Cannot set up gcs replica "${where}"`, { cause: err });
      }
      throw err;
    }
  },
};
