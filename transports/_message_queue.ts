/**
 * A FIFO of received messages for adapters whose transport delivers by
 * callback (memory, WebSocket): O(1) take without `Array.shift`, compacted
 * once the consumed head is at least half the array.
 */
export class MessageQueue {
  #items: Uint8Array[] = [];
  #head = 0;

  /** Messages waiting. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  push(message: Uint8Array): void {
    this.#items.push(message);
  }

  /** The oldest message, or undefined if none waits. */
  take(): Uint8Array | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const message = this.#items[this.#head];
    this.#items[this.#head++] = EMPTY; // release it for GC
    if (this.#head >= 64 && this.#head * 2 >= this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return message;
  }
}

const EMPTY = new Uint8Array(0);
