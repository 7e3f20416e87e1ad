/**
 * A FIFO whose shift is O(1): Array.prototype.shift moves every element, which made draining or trimming a
 * queue of 100,000 in-memory messages quadratic. The consumed front is compacted away now and then.
 */
export class Queue<T> {
  private items: T[] = [];
  private head = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  peek(): T | undefined {
    return this.items[this.head];
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head] = undefined as T;
    this.head += 1;
    if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** Puts an item back before the first one for which `after` is true (or at the end). */
  insertBefore(item: T, after: (other: T) => boolean): void {
    let at = this.items.length;
    for (let i = this.head; i < this.items.length; i++) {
      if (after(this.items[i] as T)) {
        at = i;
        break;
      }
    }
    this.items.splice(at, 0, item);
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }

  toArray(): T[] {
    return this.items.slice(this.head);
  }
}
