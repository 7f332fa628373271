/**
 * Opens sources from their specs (`--source` on the primary).
 * @module
 */

import { openSeriesSet } from "./series.ts";
import { parseSyntheticSpec, SyntheticWorkload } from "./synthetic.ts";
import { type Source, SourceError } from "./source.ts";
import { FileSource } from "./file_source.ts";
import { MultiSource } from "./multi_source.ts";
import { ProcSource } from "./proc_source.ts";
import { QemuSource } from "./qemu_source.ts";
import { SeriesSource } from "./series_source.ts";
import { SyntheticSource } from "./synthetic_source.ts";

/**
 * Opens a source from its spec.
 * @example
 * ```ts
 * const source = await openSource("synthetic:images=2,size=4M");
 * source.images; // [{ id: "img0", size: 4194304 }, { id: "img1", ... }]
 * ```
 */
export async function openSource(spec: string): Promise<Source> {
  const colon = spec.indexOf(":");
  const kind = colon < 0 ? "" : spec.slice(0, colon);
  const rest = colon < 0 ? spec : spec.slice(colon + 1);
  switch (kind) {
    case "file":
      if (!rest) throw new SourceError(`"${spec}": expected file:PATH`);
      return await FileSource.open(rest);
    case "series":
      if (!rest) throw new SourceError(`"${spec}": expected series:DIR`);
      try {
        return new SeriesSource(await openSeriesSet(rest), spec);
      } catch (e) {
        throw new SourceError(`${spec}: ${(e as Error).message}`);
      }
    case "synthetic":
      try {
        return new SyntheticSource(
          new SyntheticWorkload(parseSyntheticSpec(rest)),
          rest,
        );
      } catch (e) {
        throw new SourceError(`${spec}: ${(e as Error).message}`);
      }
    case "qemu":
      return await QemuSource.open(spec);
    case "proc":
      return await ProcSource.open(spec);
    default:
      throw new SourceError(
        `unknown source "${spec}": expected file:PATH, qemu:QMP_SOCKET?mem=PATH, proc:PID, series:DIR or synthetic:SPEC`,
      );
  }
}

/** Opens every spec; several become one {@linkcode MultiSource}. */
export async function openSources(specs: string[]): Promise<Source> {
  if (specs.length === 0) {
    throw new SourceError("no --source given: expected at least one");
  }
  const parts: Source[] = [];
  for (const s of specs) parts.push(await openSource(s));
  return parts.length === 1 ? parts[0] : new MultiSource(parts);
}
