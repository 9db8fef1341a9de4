/**
 * Tests of src/internal/fetch_handler.ts against real sockets on loopback: what the AWS SDK
 * gets back for an answer, a refused connection, a connection closed mid-answer and a
 * server that stops sending.
 *
 * @module
 */
import assert from "node:assert/strict";
import { FetchHandler, type SdkHttpRequest } from "../src/internal/fetch_handler.ts";
import { closedPort } from "./_helpers.ts";

function get(port: number, path = "/bucket/key"): SdkHttpRequest {
  return {
    method: "GET",
    protocol: "http:",
    hostname: "127.0.0.1",
    port,
    path,
    query: { "x-id": "GetObject", "list-type": "2", prefix: "a b/c" },
    headers: { host: `127.0.0.1:${port}`, "x-amz-date": "20261201T000000Z" },
  };
}

/** A raw TCP server answering each connection with `answer` (bytes, then maybe nothing more). */
function rawServer(answer: (conn: Deno.TcpConn) => Promise<void>) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const served = (async () => {
    for await (const conn of listener) {
      const buf = new Uint8Array(4096);
      await conn.read(buf); // the request (small: one read)
      await answer(conn).catch(() => {});
    }
  })();
  return {
    port,
    async [Symbol.asyncDispose]() {
      listener.close();
      await served.catch(() => {});
    },
  };
}

async function readAll(s: ReadableStream<Uint8Array> | undefined): Promise<string> {
  return s ? await new Response(s).text() : "";
}

Deno.test("FetchHandler sends the signed request as given and streams the answer", async () => {
  let seen: { url: string; date: string | null } | undefined;
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    (r) => {
      seen = { url: r.url, date: r.headers.get("x-amz-date") };
      return new Response("hello", { status: 206, headers: { "x-amz-request-id": "r1" } });
    },
  );
  try {
    const h = new FetchHandler({ idleTimeoutMs: 5000 });
    const { response } = await h.handle(get(server.addr.port));
    assert.equal(response.statusCode, 206);
    assert.equal(response.headers["x-amz-request-id"], "r1");
    assert.equal(await readAll(response.body), "hello");
    const url = new URL(seen!.url);
    // The query in the SDK's signing order and encoding (RFC 3986: space as %20).
    assert.equal(url.search, "?list-type=2&prefix=a%20b%2Fc&x-id=GetObject");
    assert.equal(seen!.date, "20261201T000000Z");
  } finally {
    ac.abort();
    await server.finished;
  }
});

Deno.test("FetchHandler: a refused connection carries ECONNREFUSED", async () => {
  const port = closedPort();
  const err = await new FetchHandler({ idleTimeoutMs: 5000 }).handle(get(port)).then(
    () => assert.fail("no error"),
    (e) => e,
  );
  assert.equal(err.code, "ECONNREFUSED");
  assert.equal(err.address, "127.0.0.1");
  assert.doesNotMatch(err.message, /x-id=|error sending request/);
});

Deno.test("FetchHandler: a connection closed before the answer carries ECONNRESET", async () => {
  await using server = rawServer((conn) => Promise.resolve(conn.close()));
  const err = await new FetchHandler({ idleTimeoutMs: 5000 }).handle(get(server.port)).then(
    () => assert.fail("no error"),
    (e) => e,
  );
  assert.equal(err.code, "ECONNRESET");
  assert.doesNotMatch(err.message, /127\.0\.0\.1|x-id=/, "the reason alone, no URL");
});

Deno.test("FetchHandler: a body that stops moving fails as a TimeoutError after the idle timeout", async () => {
  await using server = rawServer(async (conn) => {
    const head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
    await conn.write(new TextEncoder().encode(head));
    await new Promise((r) => setTimeout(r, 3000)); // then nothing more
    conn.close();
  });
  const { response } = await new FetchHandler({ idleTimeoutMs: 300 }).handle(get(server.port));
  assert.equal(response.statusCode, 200);
  const err = await readAll(response.body).then(() => assert.fail("no error"), (e) => e);
  assert.equal(err.name, "TimeoutError");
  assert.match(err.message, /no data for 300 ms/);
});
