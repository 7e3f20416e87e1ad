/** Names that appear in topics and paths, and the broker URL form, shared by the config file and the CLI. */

/** Topic-safe and filename-safe: a device id appears in MQTT topics and in paths under state.dir. */
export const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** A group name (`device.groups`, a request's `group`): the same characters as a device id. */
export const GROUP_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** `mqtt://host[:port]` or `mqtts://host[:port]`. */
export const BROKER_URL = /^mqtts?:\/\/[^/]+/;

/** A URL as it may be printed or logged: a password in it replaced (anything not a URL as it is). */
export function redactUrl(text: string): string {
  try {
    const url = new URL(text);
    if (url.password) url.password = "redacted";
    return url.toString();
  } catch {
    return text;
  }
}

/** host:port only: a URL may carry credentials, and STATUS is world-readable. */
export function brokerHost(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return "the broker";
  }
}
