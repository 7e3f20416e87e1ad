/**
 * What a log line may never carry, enforced on the line as written (after pino made it JSON), so that no call
 * site has to remember: the values of the configuration's secrets wherever they appear (as they are, as JSON
 * escapes them, as a URL encodes them), the password of any URL (`scheme://user:password@`), and a private key
 * in PEM.
 */
export const REDACTED = "[redacted]";

/** Shorter secrets cannot be told from ordinary text: scrubbing them would eat the logs (docs/diagnostics.md). */
export const MIN_SECRET_LENGTH = 4;

/**
 * `scheme://user:password@`. Bounded everywhere and anchored where a scheme may begin, so that a hostile line
 * (a long run of letters, many `://`) costs linear time: an unbounded scheme was retried from every letter.
 * The password may hold `/` (base64 passwords do, unencoded) but not a quote or a backslash, so a match never
 * leaves the JSON string it is in.
 */
const URL_PASSWORD = /(?<![a-z0-9+.-])([a-z][a-z0-9+.-]{0,31}:\/\/[^\s/@:"'\\]{0,256}):[^\s@"'\\]{1,256}@/gi;
const PEM_PRIVATE_KEY =
  /-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----[\s\S]{0,20000}?-----END [A-Z0-9 ]{0,40}PRIVATE KEY-----/g;

/** Any URL's password in `text` replaced (a value shown cut short must lose it first, or a part would stay). */
export function redactUrlPasswords(text: string): string {
  return text.includes("://") ? text.replace(URL_PASSWORD, `$1:${REDACTED}@`) : text;
}

/** A string as it reads inside a JSON string, escaped `times` over (JSON text carried in a field, in a line). */
const escaped = (s: string, times: number): string => {
  let out = s;
  for (let i = 0; i < times; i++) out = JSON.stringify(out).slice(1, -1);
  return out;
};

/** Every form a secret may take in a JSON log line: as it is or URL-encoded, escaped up to three times. */
function forms(secret: string): string[] {
  return [...new Set([secret, encodeURIComponent(secret)].flatMap((s) => [0, 1, 2, 3].map((n) => escaped(s, n))))];
}

const replaceAll = (text: string, forms: readonly string[]): string => {
  let out = text;
  for (const form of forms) if (out.includes(form)) out = out.split(form).join(REDACTED);
  return out;
};

/** Every string of a parsed line, keys too, with `fix` applied. */
function mapStrings(value: unknown, fix: (s: string) => string): unknown {
  if (typeof value === "string") return fix(value);
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, fix));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [fix(k), mapStrings(v, fix)]));
  }
  return value;
}

export class LogScrubber {
  private readonly secrets: () => readonly string[];
  private cachedFrom: readonly string[] | undefined;
  private cached: string[] = [];

  /** `secrets` is read for every line: the configuration may change them (a reload, `config.set`). */
  constructor(secrets: () => readonly string[]) {
    this.secrets = secrets;
  }

  scrub(line: string): string {
    let out = line;
    const found = this.forms().filter((f) => out.includes(f));
    if (found.length > 0) {
      // Inside the line's strings only: a secret that is also a key, a number or an escape sequence of the JSON
      // (a password "1000", "time") replaced in the text would leave a line no reader can parse.
      try {
        const end = out.endsWith("\n") ? "\n" : "";
        out = `${JSON.stringify(mapStrings(JSON.parse(out), (s) => replaceAll(s, this.cached)))}${end}`;
      } catch {
        out = replaceAll(out, found);
      }
    }
    out = redactUrlPasswords(out);
    if (out.includes("PRIVATE KEY-----")) out = out.replace(PEM_PRIVATE_KEY, `${REDACTED} private key`);
    return out;
  }

  /** A string's own text (not a JSON line): every secret's forms, any URL's password, any PEM private key. */
  scrubText(text: string): string {
    let out = replaceAll(text, this.forms());
    out = redactUrlPasswords(out);
    if (out.includes("PRIVATE KEY-----")) out = out.replace(PEM_PRIVATE_KEY, `${REDACTED} private key`);
    return out;
  }

  /**
   * A string of a heap snapshot: V8 keeps at most its first 1024 characters, and a joined string appears as its
   * pieces, so a secret may be cut at either end. Besides what scrubText takes: an end that is the start of a
   * secret's form, a start that is its end (4 characters or more), and a PEM key whose END line was cut off.
   */
  scrubPiece(text: string): string {
    let out = this.scrubText(text);
    for (const form of this.forms()) {
      // Cheap first: a cut secret's 4 characters at the string's end are 4 of the secret's.
      const tail = out.length >= MIN_SECRET_LENGTH && form.includes(out.slice(-MIN_SECRET_LENGTH));
      const head = out.length >= MIN_SECRET_LENGTH && form.includes(out.slice(0, MIN_SECRET_LENGTH));
      if (!tail && !head) continue;
      for (let n = tail ? Math.min(form.length - 1, out.length) : 0; n >= MIN_SECRET_LENGTH; n--) {
        if (out.endsWith(form.slice(0, n))) {
          out = `${out.slice(0, -n)}${REDACTED}`;
          break;
        }
      }
      for (let n = head ? Math.min(form.length - 1, out.length) : 0; n >= MIN_SECRET_LENGTH; n--) {
        if (out.startsWith(form.slice(-n))) {
          out = `${REDACTED}${out.slice(n)}`;
          break;
        }
      }
    }
    const begin = out.search(/-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----/);
    if (begin >= 0) out = `${out.slice(0, begin)}${REDACTED} private key`;
    return out;
  }

  private forms(): string[] {
    const secrets = this.secrets();
    if (secrets !== this.cachedFrom) {
      this.cachedFrom = secrets;
      // Longest first: a secret that contains another is replaced whole.
      this.cached = [...new Set(secrets.filter((s) => s.length >= MIN_SECRET_LENGTH).flatMap(forms))].sort(
        (a, b) => b.length - a.length,
      );
    }
    return this.cached;
  }
}
