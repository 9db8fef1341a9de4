/**
 * S3 and S3-compatible stores. The client (`src/clients/s3.ts`, the only importer of the AWS
 * SDK) parses `s3://` URLs itself: host rules for MinIO, Backblaze, DigitalOcean, … live
 * there.
 *
 * @module
 */
import { type Backend, bool, str } from "./backend.ts";
import { UsageError } from "../errors.ts";

export const s3Backend: Backend = {
  type: "s3",
  title: "an s3 replica",
  keys: {
    bucket: { kind: "string" },
    region: { kind: "string" },
    endpoint: { kind: "string" },
    "force-path-style": { kind: "bool" },
    "skip-verify": { kind: "bool" },
    "access-key-id": { kind: "string", secret: true, global: true },
    "secret-access-key": { kind: "string", secret: true, global: true },
  },
  checkUrl(url, shown) {
    return url.hostname === "" ? `replica URL "${shown}" has no bucket` : {};
  },
  check(replica) {
    if (replica.url !== undefined && replica.settings.bucket !== undefined) {
      return { message: "cannot set both url and bucket", key: "bucket" };
    }
    if (replica.url === undefined && replica.settings.bucket === undefined) {
      return { message: "is an s3 replica and needs a bucket or a url" };
    }
    return undefined;
  },
  async create(replica) {
    const s3 = await import("../clients/s3.ts");
    const s = replica.settings;
    const fromUrl = replica.url ? s3.parseS3Url(replica.url) : undefined;
    const bucket = fromUrl?.bucket ?? str(s.bucket);
    if (!bucket) throw new UsageError("S3 replica needs a bucket or an s3:// url");
    return new s3.S3ReplicaClient({
      ...fromUrl,
      bucket,
      path: fromUrl?.path ?? replica.path ?? "",
      // Explicit keys win over what the URL implies, as in v0.3.13.
      region: str(s.region) ?? fromUrl?.region,
      endpoint: str(s.endpoint) ?? fromUrl?.endpoint,
      forcePathStyle: bool(s["force-path-style"]) ?? fromUrl?.forcePathStyle,
      skipVerify: bool(s["skip-verify"]) ?? fromUrl?.skipVerify,
      accessKeyId: str(s["access-key-id"]),
      secretAccessKey: str(s["secret-access-key"]),
    });
  },
};
