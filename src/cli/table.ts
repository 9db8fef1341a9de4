/**
 * Column-aligned listings, as the `databases`, `generations`, `snapshots` and `wal`
 * commands print them.
 *
 * @module
 */

/**
 * Formats a table the way v0.3.13's Go `tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)` does:
 * each column is as wide as its widest cell (counted in code points) plus two spaces, and
 * the last column is not padded. Unlike tabwriter, trailing spaces are removed, so an empty
 * last cell leaves none.
 *
 * Tabs and line breaks inside a cell become spaces so they cannot break the alignment.
 * Rows may have fewer cells than `headers`; columns align across the whole table.
 *
 * @returns The header line and one line per row, each ending with `"\n"`.
 *
 * @example
 * ```ts
 * formatTable(["path", "replicas"], [["/data/app.db", "file,s3"]]);
 * // "path          replicas\n/data/app.db  file,s3\n"
 * ```
 */
export function formatTable(headers: string[], rows: string[][]): string {
  const lines = [headers, ...rows].map((cells) =>
    cells.map((cell) => cell.replace(/[\t\r\n]/g, " "))
  );
  const widths: number[] = [];
  for (const cells of lines) {
    // The last cell of a line does not take part in alignment.
    for (let i = 0; i < cells.length - 1; i++) {
      widths[i] = Math.max(widths[i] ?? 0, width(cells[i]));
    }
  }
  return lines.map((cells) => {
    const padded = cells.map((cell, i) =>
      i < cells.length - 1 ? cell + " ".repeat(widths[i] - width(cell) + 2) : cell
    );
    return padded.join("").trimEnd() + "\n";
  }).join("");
}

/** Display width as tabwriter counts it: one per code point. */
function width(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}
