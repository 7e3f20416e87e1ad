import type { Worker } from "node:worker_threads";

/** Worker threads of this process that have not exited (Node lists none among its active resources). */
let running = 0;

/** Counts a worker thread until it exits: the resource watch reports the number beside RSS and handles. */
export function countWorker(worker: Worker): void {
  running += 1;
  worker.once("exit", () => {
    running -= 1;
  });
}

/** How many worker threads run now (the task pool's and a runtime probe's). */
export function workerThreads(): number {
  return running;
}
