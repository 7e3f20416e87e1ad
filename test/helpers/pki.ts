import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
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
