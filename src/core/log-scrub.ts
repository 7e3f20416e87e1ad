/**
 * What a log line may never carry, enforced on the line as written (after pino made it JSON), so that no call
 * site has to remember: the values of the configuration's secrets wherever they appear (as they are, as JSON
 * escapes them, as a URL encodes them), the password of any URL (`scheme://user:password@`), and a private key
 * in PEM.
 */
export const REDACTED = "[redacted]";

/** Shorter secrets cannot be told from ordinary text: scrubbing them would eat the logs (docs/diagnostics.md). */
export const MIN_SECRET_LENGTH = 4;

const URL_PASSWORD = /([a-z][a-z0-9+.-]*:\/\/[^\s/@:"'\\]*):[^\s/@"'\\]*@/gi;
const PEM_PRIVATE_KEY = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----/g;

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
    for (const form of this.forms()) if (out.includes(form)) out = out.split(form).join(REDACTED);
    if (out.includes("://")) out = out.replace(URL_PASSWORD, `$1:${REDACTED}@`);
    if (out.includes("PRIVATE KEY-----")) out = out.replace(PEM_PRIVATE_KEY, `${REDACTED} private key`);
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
