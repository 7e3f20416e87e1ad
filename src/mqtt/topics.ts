/** Topic names of the contract in DESIGN.md (P = prefix, D = device id). */
export interface DeviceTopics {
  status: string;
  telemetry: string;
  update: string;
  event(type: string): string;
  alarm(type: string): string;
  result(task: string): string;
  command(name: string): string;
  commandReply(name: string): string;
  /** Subscription filter for every command of this device. */
  commands: string;
}

export function deviceTopics(prefix: string, deviceId: string): DeviceTopics {
  const base = `${prefix}/${deviceId}`;
  return {
    status: `${base}/status`,
    telemetry: `${base}/telemetry`,
    update: `${base}/update`,
    event: (type) => `${base}/events/${type}`,
    alarm: (type) => `${base}/alarms/${type}`,
    result: (task) => `${base}/results/${task}`,
    command: (name) => `${base}/cmd/${name}`,
    commandReply: (name) => `${base}/cmd/${name}/reply`,
    commands: `${base}/cmd/#`,
  };
}
