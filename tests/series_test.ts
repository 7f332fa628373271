import assert from "node:assert/strict";
import {
  imageFileName,
  isSeriesDir,
  openSeries,
  type SeriesMeta,
  SeriesWriter,
} from "../src/series.ts";

const SIZE = 3 * 4096 + 100;

function image(seed: number): Uint8Array {
  const b = new Uint8Array(SIZE);
  for (let i = 0; i < SIZE; i++) b[i] = (i * 31 + seed * 7) & 0xff;
  return b;
}

async function writeSeries(epochs = 3): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "series_test_" });
  const w = await SeriesWriter.create(dir, {
    name: "t",
    source: "synthetic",
    pageSize: 4096,
    size: SIZE,
    intervalMs: 50,
    notes: "unit test",
  });
  for (let i = 0; i < epochs; i++) assert.equal(await w.append(image(i)), i);
  await w.close();
  return dir;
}

async function writeMeta(dir: string, meta: unknown): Promise<void> {
  await Deno.writeTextFile(`${dir}/meta.json`, JSON.stringify(meta));
}

Deno.test("imageFileName pads to 4 digits and allows more", () => {
  assert.equal(imageFileName(0), "0000.img");
  assert.equal(imageFileName(42), "0042.img");
  assert.equal(imageFileName(12345), "12345.img");
});

Deno.test("series round trip: write, open, read every image", async () => {
  const dir = await writeSeries(3);
  try {
    assert.equal(await isSeriesDir(dir), true);
    const s = await openSeries(dir);
    const expected: SeriesMeta = {
      name: "t",
      source: "synthetic",
      pageSize: 4096,
      size: SIZE,
      epochs: 3,
      intervalMs: 50,
      notes: "unit test",
    };
    assert.deepEqual(s.meta, expected);
    assert.equal(s.imagePath(1), `${dir}/0001.img`);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual(await s.readImage(i), image(i));
    }
    const big = new Uint8Array(SIZE + 50).fill(9);
    const view = await s.readImage(2, big);
    assert.equal(view.length, SIZE);
    assert.equal(view.buffer, big.buffer);
    assert.deepEqual(view, image(2));
    assert.equal(big[SIZE], 9);
    await assert.rejects(
      () => s.readImage(0, new Uint8Array(SIZE - 1)),
      /too small, expected at least/,
    );
    assert.throws(() => s.imagePath(3), /epoch 3 out of range.*0\.\.2/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SeriesWriter rejects a wrong-size image and an empty close", async () => {
  const dir = await Deno.makeTempDir({ prefix: "series_test_" });
  try {
    const w = await SeriesWriter.create(dir, {
      name: "t",
      source: "s",
      pageSize: 4096,
      size: 4096,
      intervalMs: 0,
      notes: "",
    });
    await assert.rejects(
      () => w.append(new Uint8Array(4095)),
      /4095 bytes, expected exactly 4096/,
    );
    await assert.rejects(() => w.close(), /no images appended/);
    assert.equal(await isSeriesDir(dir), false);
    await assert.rejects(
      () =>
        SeriesWriter.create(dir, {
          name: "t",
          source: "s",
          pageSize: 512,
          size: 4096,
          intervalMs: 0,
          notes: "",
        }),
      /"pageSize" must be 4096, got 512/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openSeries rejects bad meta.json with a clear message", async () => {
  const dir = await writeSeries(1);
  const good: SeriesMeta = JSON.parse(
    await Deno.readTextFile(`${dir}/meta.json`),
  );
  try {
    const cases: [unknown, RegExp][] = [
      [{ ...good, pageSize: 8192 }, /"pageSize" must be 4096, got 8192/],
      [{ ...good, size: 0 }, /"size" must be an integer >= 1, got 0/],
      [{ ...good, epochs: 0 }, /"epochs" must be an integer >= 1, got 0/],
      [{ ...good, epochs: 1.5 }, /"epochs" must be an integer/],
      [{ ...good, size: "4096" }, /"size" must be an integer >= 1, got "4096"/],
      [{ ...good, name: 3 }, /"name" must be a string, got number/],
      [{ ...good, notes: undefined }, /"notes" must be a string, got nothing/],
      [[1, 2], /expected a JSON object, got an array/],
    ];
    for (const [meta, re] of cases) {
      await writeMeta(dir, meta);
      await assert.rejects(() => openSeries(dir), (e: Error) => {
        assert.match(e.message, re);
        assert.match(e.message, /meta\.json/);
        return true;
      });
    }
    await Deno.writeTextFile(`${dir}/meta.json`, "{not json");
    await assert.rejects(() => openSeries(dir), /meta\.json: invalid JSON/);
    await Deno.remove(`${dir}/meta.json`);
    await assert.rejects(
      () => openSeries(dir),
      /meta\.json: not found, expected an image series directory/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openSeries rejects a wrong-size or missing image, naming it", async () => {
  const dir = await writeSeries(3);
  try {
    await Deno.truncate(`${dir}/0001.img`, SIZE - 1);
    await assert.rejects(
      () => openSeries(dir),
      new RegExp(
        `0001\\.img: ${SIZE - 1} bytes, expected exactly ${SIZE} bytes`,
      ),
    );
    await Deno.remove(`${dir}/0001.img`);
    await assert.rejects(
      () => openSeries(dir),
      /0001\.img: missing, expected 3 images/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
