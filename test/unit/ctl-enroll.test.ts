// Issue 25 item 5: ctl enroll writes mosquitto 2.0's own password lines and ACLs that confine each device.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { devicesAcl, mosquittoPasswordLine } from "../../src/cli/ctl-enroll.ts";

describe("ctl enroll's broker files", () => {
  it("a password line is what mosquitto_passwd 2.0.11 wrote for the same password and salt", () => {
    // mosquitto_passwd -c -b pw dev-a s3cret, on this project's machine.
    const line =
      "dev-a:$7$101$umA8aMgBzCbWhnFg$j1kKAJXOX7YUN+JBPy2Edeics3oynkfEkVwGhpUqyk3rnwqd/+XdYPWYyiypfAHXq3/+fy/NZbH/LVvb5N0E9g==";
    const salt = Buffer.from(line.split("$")[3] ?? "", "base64");
    assert.equal(mosquittoPasswordLine("dev-a", "s3cret", salt), line);
  });

  it("the devices' ACL: %u patterns, groups and a dotted id's Home Assistant node by name", () => {
    const acl = devicesAcl({
      prefix: "outpost/v1",
      homeassistant: "homeassistant",
      devices: { "pi.3": { groups: ["line-3"], enrolled: "" }, "pi-4": { groups: [], enrolled: "" } },
      operators: {},
      readers: { grafana: { enrolled: "" } },
    });
    assert.match(acl, /^pattern write outpost\/v1\/%u\/status$/m);
    // Not its own command topics, which it reads: a retained message there would outlive a revoke.
    assert.doesNotMatch(acl, /^pattern write outpost\/v1\/%u\/(#|cmd\/\+)$/m);
    assert.match(acl, /^user grafana\ntopic read outpost\/v1\/#\ntopic read homeassistant\/#$/m);
    assert.doesNotMatch(acl, /%c/, "the client id is the client's to choose");
    assert.match(
      acl,
      /^user pi\.3\ntopic read outpost\/v1\/_group\/line-3\/cmd\/\+\ntopic write homeassistant\/\+\/outpost__pi_d3\/#$/m,
    );
  });
});
