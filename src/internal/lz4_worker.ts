/**
 * Worker side of {@linkcode Lz4Pool}: decodes independent LZ4 blocks handed over as
 * transferred buffers and transfers the decoded bytes back.
 *
 * @module
 */
import { decodeFramedBlock } from "../lz4.ts";

/** A block to decode: 4 spare bytes, then the compressed block, filling `buffer`. */
export interface Lz4WorkerRequest {
  id: number;
  buffer: ArrayBuffer;
  maxSize: number;
  sizeHint?: number;
}

/** The decoded block, or why it could not be decoded. */
export type Lz4WorkerResponse =
  | { id: number; ok: true; buffer: ArrayBuffer; byteOffset: number; byteLength: number }
  | { id: number; ok: false; name: string; message: string; cause?: string };

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<Lz4WorkerRequest>) => void) | null;
  postMessage(message: Lz4WorkerResponse, transfer?: Transferable[]): void;
};

scope.onmessage = (e) => {
  const { id, buffer, maxSize, sizeHint } = e.data;
  let res: Lz4WorkerResponse;
  try {
    const out = decodeFramedBlock(new Uint8Array(buffer), maxSize, sizeHint);
    // Free the compressed block now: V8 returns a dead buffer's memory only at its next
    // collection, which large buffers do not hasten (RSS 135 → 104 MiB in a snapshot restore).
    if (out.buffer !== buffer) buffer.transfer(0);
    res = {
      id,
      ok: true,
      buffer: out.buffer as ArrayBuffer,
      byteOffset: out.byteOffset,
      byteLength: out.byteLength,
    };
    scope.postMessage(res, [res.buffer]);
    return;
  } catch (err) {
    res = {
      id,
      ok: false,
      name: err instanceof Error ? err.name : "Error",
      message: err instanceof Error ? err.message : String(err),
      cause: err instanceof Error && err.cause !== undefined ? String(err.cause) : undefined,
    };
  }
  scope.postMessage(res);
};
