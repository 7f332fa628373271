// Re-exported so tests read the same everywhere (no @std here).
export {
  deepStrictEqual as assertEquals,
  ok as assert,
  throws as assertThrows,
} from "node:assert/strict";
