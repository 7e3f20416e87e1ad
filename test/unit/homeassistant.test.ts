// Issue 14, item 8: Home Assistant discovery payloads, checked against the rules of Home Assistant's MQTT
// documentation written down as a JSON Schema. Each rule carries the documentation's words:
//   [D] https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery
//   [S] https://www.home-assistant.io/integrations/sensor.mqtt/
//   [B] https://www.home-assistant.io/integrations/binary_sensor.mqtt/
//   [C] https://www.home-assistant.io/integrations/sensor/#device-class (units per device class)
// Home Assistant cannot run here and its site cannot be fetched: the quotes are the pages' wording as of 2025;
// those this machine's stored copies of the pages contain (state_topic's, the discovery topic format, "checked
// like an entry in your configuration.yaml") were checked against them.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import fc from "fast-check";
import { DEVICE_ID } from "../../src/core/patterns.ts";
import { discoveryConfigs, nodeId } from "../../src/homeassistant/discovery.ts";
import { fixtureSample } from "../helpers/boards.ts";

const ajv = new Ajv2020.default({ allErrors: true, strict: false });

/** [D] "<discovery_prefix>/<component>/[<node_id>/]<object_id>/config" */
const TOPIC = /^homeassistant\/(sensor|binary_sensor)\/[a-zA-Z0-9_-]+\/[a-zA-Z0-9_-]+\/config$/;

const UNITS: Record<string, string[]> = {
  // [C] "temperature: Temperature in °C, °F or K"
  temperature: ["°C", "°F", "K"],
  // [C] "data_size: Data size in bit, kbit, Mbit, Gbit, B, kB, MB, GB, TB, PB, EB, ZB, YB, KiB, MiB, GiB, TiB, PiB, EiB, ZiB or YiB"
  data_size: [
    "bit",
    "kbit",
    "Mbit",
    "Gbit",
    "B",
    "kB",
    "MB",
    "GB",
    "TB",
    "PB",
    "EB",
    "ZB",
    "YB",
    "KiB",
    "MiB",
    "GiB",
    "TiB",
    "PiB",
    "EiB",
    "ZiB",
    "YiB",
  ],
  // [C] "duration: Duration in d, h, min, s, ms, or µs"
  duration: ["d", "h", "min", "s", "ms", "µs"],
  // [C] "frequency: Frequency in Hz, kHz, MHz, or GHz"
  frequency: ["Hz", "kHz", "MHz", "GHz"],
  // [C] "power: Power in mW, W, kW, MW, GW or TW"
  power: ["mW", "W", "kW", "MW", "GW", "TW"],
};

const device = {
  description:
    '[D] "device: Information about the device this sensor is a part of to tie it into the device registry. Only works when unique_id is set. At least one of identifiers or connections must be present to identify the device."',
  type: "object",
  required: ["identifiers"],
  properties: {
    identifiers: {
      description: '[D] "identifiers (list | string): A list of IDs that uniquely identify the device."',
      anyOf: [
        { type: "string", minLength: 1 },
        { type: "array", minItems: 1, items: { type: "string", minLength: 1 } },
      ],
    },
    name: { type: "string", description: '[D] "name: The name of the device."' },
    model: { type: "string", description: '[D] "model: The model of the device."' },
    manufacturer: { type: "string", description: '[D] "manufacturer: The manufacturer of the device."' },
    sw_version: { type: "string", description: '[D] "sw_version: The firmware version of the device."' },
  },
};

const common = {
  unique_id: {
    type: "string",
    minLength: 1,
    description:
      '[S] "unique_id: An ID that uniquely identifies this sensor. If two sensors have the same unique ID, Home Assistant will raise an exception."',
  },
  name: { type: "string", description: '[S] "name: The name of the MQTT sensor."' },
  state_topic: {
    type: "string",
    pattern: "^[^#+]+$",
    description:
      '[S] "state_topic (string)(Required): The MQTT topic subscribed to receive sensor values." A topic to subscribe to has no wildcard here: one device, one topic.',
  },
  value_template: {
    type: "string",
    pattern: "^\\{\\{.*\\}\\}$",
    description: '[S] "value_template: Defines a template to extract the value." (a Jinja2 expression)',
  },
  availability_topic: {
    type: "string",
    description:
      '[D] "availability_topic: The MQTT topic subscribed to receive availability (online/offline) updates."',
  },
  availability_template: {
    type: "string",
    description:
      "[D] \"availability_template: Defines a template to extract device's availability from the availability_topic. To determine the devices's availability result of this template will be compared to payload_available and payload_not_available.\"",
  },
  payload_available: { const: "online", description: '[D] "payload_available (Default: online)"' },
  payload_not_available: { const: "offline", description: '[D] "payload_not_available (Default: offline)"' },
  entity_category: {
    enum: ["config", "diagnostic"],
    description: '[S] "entity_category: The category of the entity." (config or diagnostic)',
  },
  icon: {
    type: "string",
    pattern: "^mdi:[a-z0-9-]+$",
    description: '[S] "icon: Icon for the entity." (Material Design Icons: mdi:name)',
  },
  origin: {
    type: "object",
    required: ["name"],
    description:
      '[D] "origin: ... name (string)(Required): The name of the application that is the origin of the discovered MQTT item."',
    properties: { name: { type: "string", minLength: 1 }, sw_version: { type: "string" } },
  },
  device,
};

/** The rules of [D], [S], [B] and [C] for the two components this agent publishes. */
const schema = {
  $schema: "https://json-schema.org/draft/2020-12/schema",
  description:
    '[D] "The payload must be a serialized JSON dictionary and will be checked like an entry in your configuration.yaml file if a new device is added."',
  type: "object",
  oneOf: [
    {
      title: "sensor",
      required: ["name", "unique_id", "state_topic", "device"],
      additionalProperties: false,
      properties: {
        ...common,
        unit_of_measurement: {
          type: "string",
          description: '[S] "unit_of_measurement: Defines the units of measurement of the sensor, if any."',
        },
        device_class: {
          enum: Object.keys(UNITS),
          description:
            '[S] "device_class: The type/class of the sensor to set the icon in the frontend." (the classes used here; [C] lists all)',
        },
        state_class: {
          enum: ["measurement", "total", "total_increasing"],
          description:
            '[S] "state_class: The state_class of the sensor." [C] "measurement", "total", "total_increasing"',
        },
      },
      allOf: Object.entries(UNITS).map(([cls, units]) => ({
        description: `[C] a sensor of device class ${cls} must use one of its units`,
        if: { required: ["device_class"], properties: { device_class: { const: cls } } },
        // biome-ignore lint/suspicious/noThenProperty: JSON Schema's if/then, not a promise
        then: { required: ["unit_of_measurement"], properties: { unit_of_measurement: { enum: units } } },
      })),
    },
    {
      title: "binary_sensor",
      required: ["name", "unique_id", "state_topic", "device", "payload_on", "payload_off"],
      additionalProperties: false,
      properties: {
        ...common,
        payload_on: {
          type: "string",
          description:
            '[B] "payload_on (Default: ON): The string that represents the on state. It will be compared to the message in the state_topic (see value_template for details)"',
        },
        payload_off: {
          type: "string",
          description: '[B] "payload_off (Default: OFF): The string that represents the off state."',
        },
        device_class: {
          enum: ["connectivity", "problem", "running", "power"],
          description:
            '[B] "device_class: Sets the class of the device, changing the device state and icon that is displayed on the frontend." (connectivity: "On means connected, Off means disconnected"; problem: "On means problem detected")',
        },
      },
    },
  ],
};
const validate = ajv.compile(schema);

function configsFor(deviceId: string, board: { kind: string; model: string }, metrics: Record<string, unknown>) {
  return discoveryConfigs(
    {
      prefix: "homeassistant",
      deviceId,
      stateTopic: `outpost/v1/${deviceId}/state`,
      statusTopic: `outpost/v1/${deviceId}/status`,
      version: "0.1.0",
      board,
    },
    metrics,
  );
}

describe("Home Assistant discovery payloads", () => {
  const common = ["online", "cpu_load", "memory_used", "disk_used", "temperature", "load_1m", "uptime"];
  for (const [name, expected] of [
    ["pi4", [...common, "under_voltage", "throttled", "arm_clock"]],
    [
      "jetson-orin-nano",
      [...common, "gpu_load", "gpu_clock", "power_mode", "power_vdd_in", "power_vdd_cpu_gpu_cv", "power_vdd_soc"],
    ],
  ] as const) {
    it(`every config for a ${name} follows the documented rules`, async () => {
      const { board, metrics } = await fixtureSample(name);
      const configs = configsFor("line-3.cam", board, metrics);
      const objects = [...configs.keys()].map((t) => t.split("/")[3]);
      assert.deepEqual(new Set(objects), new Set(expected));
      const ids = new Set<unknown>();
      for (const [topic, config] of configs) {
        assert.match(topic, TOPIC, topic);
        assert.ok(validate(config), `${topic}: ${ajv.errorsText(validate.errors)}`);
        assert.ok(!ids.has(config.unique_id), `unique_id ${String(config.unique_id)} twice`);
        ids.add(config.unique_id);
        assert.deepEqual((config.device as { identifiers: string[] }).identifiers, [nodeId("line-3.cam")]);
        assert.equal((config.device as { model: string }).model, board.model);
      }
      // Sensors read the merged state topic and are available while the status says online; the online
      // sensor itself reads the status (and must not be made unavailable by it).
      const online = configs.get(`homeassistant/binary_sensor/outpost__line-3_dcam/online/config`);
      assert.equal(online?.state_topic, "outpost/v1/line-3.cam/status");
      assert.equal(online?.availability_topic, undefined);
      const cpu = configs.get("homeassistant/sensor/outpost__line-3_dcam/cpu_load/config");
      assert.equal(cpu?.state_topic, "outpost/v1/line-3.cam/state");
      assert.equal(cpu?.value_template, "{{ value_json.metrics.cpu.load }}");
      assert.equal(cpu?.availability_topic, "outpost/v1/line-3.cam/status");
    });
  }

  it("the schema catches what Home Assistant refuses (a wrong unit, a missing state topic, a device without ids)", () => {
    const good = {
      name: "t",
      unique_id: "u",
      state_topic: "a/b",
      device: { identifiers: ["x"] },
      device_class: "temperature",
      unit_of_measurement: "°C",
    };
    assert.ok(validate(good), ajv.errorsText(validate.errors));
    assert.ok(!validate({ ...good, unit_of_measurement: "C" }));
    const { state_topic: _, ...noTopic } = good;
    assert.ok(!validate(noTopic));
    assert.ok(!validate({ ...good, device: { name: "no ids" } }));
    assert.ok(!validate({ ...good, state_topic: "a/+/b" }));
  });

  it("templates address keys that are not identifiers with brackets", async () => {
    const { board, metrics } = await fixtureSample("pi4");
    const load = configsFor("d", board, metrics).get("homeassistant/sensor/outpost_d/load_1m/config");
    assert.equal(load?.value_template, "{{ value_json.metrics.load['1m'] }}");
    const mem = configsFor("d", board, metrics).get("homeassistant/sensor/outpost_d/memory_used/config");
    assert.equal(mem?.value_template, "{{ (value_json.metrics.memory.used / 1048576) | round(1) }}");
  });
});

describe("Home Assistant node ids (issue 22, item 4)", () => {
  it("distinct device ids never share a node id; ids without a dot keep today's node id", () => {
    const tricky = ["line.3", "line_3", "line__3", "line._3", "line_.3", "a.d", "a_d", "a_dd", "a.dd", "a__d", "a._d"];
    const nodes = tricky.map(nodeId);
    assert.equal(new Set(nodes).size, tricky.length, JSON.stringify(nodes));
    assert.equal(nodeId("line_3"), "outpost_line_3");
    assert.equal(nodeId("line-3"), "outpost_line-3");
    fc.assert(
      fc.property(
        fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/),
        fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/),
        (a, b) => {
          fc.pre(DEVICE_ID.test(a) && DEVICE_ID.test(b) && a !== b);
          assert.notEqual(nodeId(a), nodeId(b));
          assert.match(nodeId(a), /^[a-zA-Z0-9_-]+$/);
          if (!a.includes(".")) assert.equal(nodeId(a), `outpost_${a}`);
        },
      ),
      { numRuns: 5000 },
    );
  });
});
