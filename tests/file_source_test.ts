import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { FileSource } from "../src/file_source.ts";
import { openSource } from "../src/open_source.ts";
import { SourceError } from "../src/source.ts";

function pattern(size: number, seed: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

Deno.test("file: each capture copies the file's current contents; writes, growth, replacement and shrinking", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/vm.img`;
  try {
    await Deno.writeFile(path, pattern(3 * 4096 + 100, 1));
    const source = await openSource(`file:${path}`);
    assert(source instanceof FileSource);
    assertEquals(source.images, [{ id: "vm", size: 3 * 4096 + 100 }]);
    const buf = new Uint8Array(3 * 4096 + 100);
    await source.capture([buf]);
    assertEquals(buf, pattern(buf.length, 1));

    // Written in place: the next capture sees it.
    const f = await Deno.open(path, { write: true });
    await f.seek(5000, Deno.SeekMode.Start);
    await f.write(new Uint8Array([9, 9, 9]));
    f.close();
    await source.capture([buf]);
    const expected = pattern(buf.length, 1);
    expected.set([9, 9, 9], 5000);
    assertEquals(buf, expected);

    // Grown: captured at its first size.
    await Deno.writeFile(path, new Uint8Array(64), { append: true });
    await source.capture([buf]);
    assertEquals(buf, expected);

    // Replaced by another file (write-to-temp + rename): the new one is read.
    await Deno.writeFile(`${dir}/new`, pattern(buf.length, 2));
    await Deno.rename(`${dir}/new`, path);
    await source.capture([buf]);
    assertEquals(buf, pattern(buf.length, 2));

    // Shrunk: a clear error, and nothing mapped past the end is touched.
    await Deno.truncate(path, 4096);
    const e = await assertRejects(() => source.capture([buf]), SourceError);
    assert(/shrank to 4096 bytes, expected 12388/.test(e.message), e.message);
    await source.close();

    const missing = await assertRejects(
      () => openSource(`file:${dir}/none`),
      SourceError,
    );
    assert(/cannot open for reading/.test(missing.message), missing.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
