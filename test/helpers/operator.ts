import type { MqttClient } from "mqtt";
import { type CallOptions, type CallResult, connectBroker, DeviceCaller, UNCHECKED } from "../../src/cli/ctl-client.ts";
import { type OperatorKey, operatorKey, PREFIX } from "./commands.ts";

export { PREFIX };

/** The operator side in-process: the same DeviceCaller that `outpost ctl call` uses, on one connection. */
export class Operator {
  readonly client: MqttClient;
  readonly key: OperatorKey;
  private readonly caller: DeviceCaller;

  private constructor(client: MqttClient, key: OperatorKey) {
    this.client = client;
    this.key = key;
    this.caller = new DeviceCaller(
      client,
      PREFIX,
      { privateKey: key.privateKey, publicText: key.publicText },
      UNCHECKED,
    );
  }

  static async open(port: number, key: OperatorKey = operatorKey()): Promise<Operator> {
    return new Operator(await connectBroker({ url: `mqtt://127.0.0.1:${port}` }), key);
  }

  call(device: string, command: string, params?: unknown, more: Partial<CallOptions> = {}): Promise<CallResult> {
    return this.caller.call({ device, command, params, timeoutMs: 10_000, validityMs: 60_000, ...more });
  }

  /** The final reply of a single-device call; throws when there is none. */
  async final(device: string, command: string, params?: unknown) {
    const result = await this.call(device, command, params);
    const reply = result.finals[0];
    if (!reply) throw new Error(`no reply to ${command} from ${device}`);
    return reply;
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}
