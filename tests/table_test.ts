/** Tests of src/cli/table.ts against output of Go's tabwriter as v0.3.13 configures it. */
import assert from "node:assert/strict";
import { formatTable } from "../src/cli/table.ts";

Deno.test("formatTable() pads every column but the last to its widest cell plus two spaces", () => {
  // Byte-for-byte what `litestream databases` printed for two databases (verified with v0.3.13).
  assert.equal(
    formatTable(["path", "replicas"], [["/data/app.db", "file,s3"], ["/data/x.db", "s3"]]),
    "path          replicas\n" +
      "/data/app.db  file,s3\n" +
      "/data/x.db    s3\n",
  );
});

Deno.test("formatTable() aligns a wider header and many columns", () => {
  assert.equal(
    formatTable(
      ["replica", "generation", "index", "size", "created"],
      [
        ["s3", "b16ddcf5c697540f", "0", "4096", "2024-01-02T03:04:05Z"],
        ["file", "b16ddcf5c697540f", "12", "93", "2024-01-02T03:05:00Z"],
      ],
    ),
    "replica  generation        index  size  created\n" +
      "s3       b16ddcf5c697540f  0      4096  2024-01-02T03:04:05Z\n" +
      "file     b16ddcf5c697540f  12     93    2024-01-02T03:05:00Z\n",
  );
});

Deno.test("formatTable() leaves no trailing spaces when the last cell is empty", () => {
  const text = formatTable(["path", "replicas"], [["/a.db", ""]]);
  assert.equal(text, "path   replicas\n/a.db\n");
  for (const line of text.split("\n")) assert.equal(line, line.trimEnd());
});

Deno.test("formatTable() prints only the header for no rows", () => {
  assert.equal(formatTable(["name", "generation", "lag"], []), "name  generation  lag\n");
});

Deno.test("formatTable() counts code points, not UTF-16 units or bytes", () => {
  assert.equal(
    formatTable(["a", "b"], [["µs", "1"], ["😀", "2"]]),
    "a   b\nµs  1\n😀   2\n", // one code point, so one more space than "µs"
  );
});

Deno.test("formatTable() turns tabs and newlines inside cells into spaces", () => {
  assert.equal(formatTable(["a", "b"], [["x\ty", "1\n2"]]), "a    b\nx y  1 2\n");
});
