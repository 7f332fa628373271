/** A growable list of u32 values, so hot loops can record indices without allocating per item. */
export class U32List {
  data: Uint32Array;
  length = 0;
  constructor(capacity = 1024) {
    this.data = new Uint32Array(capacity);
  }
  /** Appends a value, doubling the storage when full. */
  push(value: number): void {
    if (this.length === this.data.length) {
      const next = new Uint32Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = value;
  }
  /** Empties the list, keeping the storage. */
  clear(): void {
    this.length = 0;
  }
}
