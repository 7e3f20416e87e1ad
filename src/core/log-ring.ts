/** The longest line the ring (and the tail) keeps as it is, in characters. */
export const MAX_LINE = 16 * 1024;

/**
 * A line as kept: a huge one (a problem list, a stack) becomes a short JSON line of its own, its head a copy: a
 * slice would keep the whole original alive, and a cut line would no longer parse.
 */
export function keptLine(text: string): string {
  return text.length > MAX_LINE ? JSON.stringify({ cut: true, chars: text.length, head: text.slice(0, 4096) }) : text;
}

/**
 * The agent's recent log lines, as written (JSON, secrets already scrubbed), in a ring bounded by bytes: the
 * oldest lines go first, and how many went is counted, so that a reader can say where its view has a gap. The
 * bound counts characters: JSON lines are ASCII but for what was logged, and V8 keeps a string with other
 * characters at two bytes each.
 */
export class LogRing {
  private readonly maxBytes: number;
  private lines: string[] = [];
  /** Index of the oldest line kept in `lines` (lines before it were dropped; compacted now and then). */
  private head = 0;
  private bytes = 0;
  /** Lines dropped to stay under maxBytes since the start, and every line ever added: a line's sequence number. */
  private dropped = 0;
  private added = 0;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  push(line: string): void {
    const text = line.endsWith("\n") ? line.slice(0, -1) : line;
    const kept = keptLine(text);
    this.lines.push(kept);
    this.bytes += kept.length;
    this.added += 1;
    while (this.bytes > this.maxBytes && this.head < this.lines.length) {
      this.bytes -= this.lines[this.head]?.length ?? 0;
      this.head += 1;
      this.dropped += 1;
    }
    if (this.head > 1024 && this.head * 2 > this.lines.length) {
      this.lines = this.lines.slice(this.head);
      this.head = 0;
    }
  }

  /**
   * The lines kept, oldest first, each with its sequence number (1 for the process's first line), and the
   * number of the first line that was not dropped: a reader that last saw line n and gets `first > n + 1` missed
   * the lines between.
   */
  read(after = 0): { first: number; lines: { seq: number; text: string }[]; dropped: number } {
    const first = this.dropped + 1;
    const out: { seq: number; text: string }[] = [];
    for (let i = this.head; i < this.lines.length; i++) {
      const seq = first + (i - this.head);
      if (seq > after) out.push({ seq, text: this.lines[i] ?? "" });
    }
    return { first, lines: out, dropped: this.dropped };
  }

  stats(): { lines: number; bytes: number; maxBytes: number; dropped: number; added: number } {
    return {
      lines: this.lines.length - this.head,
      bytes: this.bytes,
      maxBytes: this.maxBytes,
      dropped: this.dropped,
      added: this.added,
    };
  }
}
