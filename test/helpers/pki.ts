import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

function openssl(dir: string, args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

/**
 * A throwaway CA (ca.pem), a server certificate (server.pem, server.key) for 127.0.0.1, localhost and `names`,
 * and a client certificate (client.pem, client.key) for `clientCn`, made with openssl in `dir`.
 */
export function makePki(dir: string, { names = [] as string[], clientCn = "dev-tls" } = {}): void {
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(dir, [
    "req",
    "-x509",
    ...key,
    "-days",
    "2",
    "-subj",
    "/CN=outpost test CA",
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
  ]);
  const san = ["IP:127.0.0.1", "DNS:localhost", ...names.map((n) => `DNS:${n}`)].join(",");
  for (const [name, cn, ext] of [
    ["server", "127.0.0.1", `subjectAltName=${san}`],
    ["client", clientCn, "extendedKeyUsage=clientAuth"],
  ] as const) {
    openssl(dir, ["req", ...key, "-subj", `/CN=${cn}`, "-keyout", `${name}.key`, "-out", `${name}.csr`]);
    writeFileSync(join(dir, `${name}.ext`), `${ext}\n`);
    openssl(dir, [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      "ca.pem",
      "-CAkey",
      "ca.key",
      "-CAcreateserial",
      "-days",
      "2",
      "-extfile",
      `${name}.ext`,
      "-out",
      `${name}.pem`,
    ]);
  }
}

/** makePki's client side in `dir`: the files an agent names in mqtt.ca, mqtt.cert and mqtt.key. */
export function clientFiles(dir: string): { ca: string; cert: string; key: string } {
  return { ca: join(dir, "ca.pem"), cert: join(dir, "client.pem"), key: join(dir, "client.key") };
}

/** A mosquitto listener on 127.0.0.1 with makePki's server certificate, requiring a client certificate of its CA. */
export function clientCertListener(dir: string): (port: number) => string[] {
  return (port) => [
    `listener ${port} 127.0.0.1`,
    "allow_anonymous true",
    `cafile ${join(dir, "ca.pem")}`,
    `certfile ${join(dir, "server.pem")}`,
    `keyfile ${join(dir, "server.key")}`,
    "require_certificate true",
  ];
}

/** MQTT.js options that connect to such a listener with makePki's client certificate. */
export function clientTlsOptions(dir: string): { protocol: "mqtts"; ca: Buffer; cert: Buffer; key: Buffer } {
  const f = clientFiles(dir);
  return { protocol: "mqtts", ca: readFileSync(f.ca), cert: readFileSync(f.cert), key: readFileSync(f.key) };
}
