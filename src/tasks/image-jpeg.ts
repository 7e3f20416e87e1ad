// A JPEG decoder that never holds the image. Its header is read first (the markers are walked, past APPn
// segments of any size, to SOF) so the size is known before any pixel is decoded. A baseline JPEG (what cameras
// write) is then decoded block by block in file order: each block the sampler needs is transformed back to
// pixels (a float IDCT) and only the pixels it needs are kept; every other block is only read past. Memory is
// the sampler's pixels and the tables, whatever the image's size. A progressive JPEG keeps one DC coefficient per
// block (its AC scans are skipped), which is the image at 1/8 scale, the way libjpeg's scaled decode gives it.
import { Bits, type Huffman, huffman, invalid, scanEnd } from "./jpeg-entropy.ts";

export interface JpegHeader {
  width: number;
  height: number;
  components: number;
  progressive: boolean;
}

/** The pixels a caller needs: `rows`/`cols` list image coordinates (sorted, unique); `put` takes their colour. */
export interface PixelGrid {
  rows: readonly number[];
  cols: readonly number[];
  put(ri: number, ci: number, r: number, g: number, b: number): void;
}

const ZIGZAG = Uint8Array.from([
  0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
  35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47,
  55, 62, 63,
]);

/** cos[x * 8 + u] = C(u)/2 * cos((2x + 1) u pi / 16): the 2-D IDCT is this applied along rows, then columns. */
const COS = new Float64Array(64);
for (let x = 0; x < 8; x++)
  for (let u = 0; u < 8; u++)
    COS[x * 8 + u] = ((u === 0 ? Math.SQRT1_2 : 1) / 2) * Math.cos(((2 * x + 1) * u * Math.PI) / 16);

/** Scans in one file (progressive files have about 10), and of those, scans actually decoded. */
const MAX_SCANS = 64;
const MAX_DECODED_SCANS = 16;

export const isJpeg = (b: Uint8Array) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;

interface Segment {
  marker: number;
  /** The segment's payload (after its length), or for SOS the header; `next` is where the following data begins. */
  data: Buffer;
  next: number;
}

/** The marker segment at `at` (fill bytes skipped); EOI and a missing marker end the walk. */
function segmentAt(b: Buffer, at: number): Segment | undefined {
  while (at < b.length && b[at] === 0xff && b[at + 1] === 0xff) at += 1;
  if (at + 1 >= b.length || b[at] !== 0xff) return undefined;
  const marker = b[at + 1] ?? 0;
  if (marker === 0xd9) return undefined;
  if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01)
    return { marker, data: b.subarray(0, 0), next: at + 2 };
  if (at + 4 > b.length) throw invalid("is truncated (in a marker)");
  const length = b.readUInt16BE(at + 2);
  if (length < 2 || at + 2 + length > b.length) throw invalid("is truncated (a segment runs past the end)");
  return { marker, data: b.subarray(at + 4, at + 2 + length), next: at + 2 + length };
}

interface Component {
  id: number;
  h: number;
  v: number;
  tq: number;
}

interface Frame extends JpegHeader {
  comps: Component[];
}

function parseFrame(marker: number, d: Buffer): Frame {
  if (marker !== 0xc0 && marker !== 0xc1 && marker !== 0xc2)
    throw invalid(`uses an unsupported coding (SOF${marker - 0xc0}: lossless, hierarchical or arithmetic)`);
  if (d.length < 6) throw invalid("has a short SOF");
  if (d[0] !== 8) throw invalid(`has ${d[0]}-bit samples (8 supported)`);
  const height = d.readUInt16BE(1);
  const width = d.readUInt16BE(3);
  const n = d[5] ?? 0;
  if (width === 0 || height === 0) throw invalid(`declares ${width}x${height}`);
  if (n !== 1 && n !== 3 && n !== 4) throw invalid(`has ${n} components`);
  if (d.length < 6 + 3 * n) throw invalid("has a short SOF");
  const comps: Component[] = [];
  for (let i = 0; i < n; i++) {
    const hv = d[7 + 3 * i] ?? 0;
    const c = { id: d[6 + 3 * i] ?? 0, h: hv >> 4, v: hv & 15, tq: d[8 + 3 * i] ?? 0 };
    if (c.h < 1 || c.h > 4 || c.v < 1 || c.v > 4 || c.tq > 3) throw invalid("has invalid sampling factors");
    comps.push(c);
  }
  return { width, height, components: n, progressive: marker === 0xc2, comps };
}

/** SOF0-SOF15: the markers C0-CF but DHT (C4), JPG (C8) and DAC (CC). */
const isFrameHeader = (marker: number) =>
  marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;

/** The frame header alone: the markers are walked to SOF by their lengths; no image data is read. */
export function jpegHeader(b: Buffer): JpegHeader {
  let at = 2;
  for (let s = segmentAt(b, at); s; s = segmentAt(b, at)) {
    if (isFrameHeader(s.marker)) {
      const { comps: _, ...header } = parseFrame(s.marker, s.data);
      return header;
    }
    if (s.marker === 0xda) break;
    at = s.next;
  }
  throw invalid("has no frame header (SOF) before its image data");
}

interface Plane extends Component {
  /** Blocks per line and per column, padded to whole MCUs. */
  bpl: number;
  bpc: number;
  /** The component's pixel rows/columns the grid needs, each mapped to its place in `pixels` (or -1). */
  rowAt: Int32Array;
  colAt: Int32Array;
  rowBlocks: Uint8Array;
  colBlocks: Uint8Array;
  nc: number;
  pixels: Uint8Array;
  /** Progressive: one DC coefficient per block. */
  dc?: Int32Array;
  pred: number;
}

const clamp = (v: number) => (v < 0 ? 0 : v > 255 ? 255 : Math.round(v));

/**
 * Decodes a baseline or progressive JPEG (1 or 3 components) into `grid`: the colour of each pixel it lists.
 * Chroma is taken from the nearest sample (as jpeg-js does); YCbCr is converted as JFIF says (an Adobe file
 * that says its 3 components are RGB is taken as is).
 */
export function decodeJpeg(b: Buffer, grid: PixelGrid): void {
  const quant: (Float64Array | undefined)[] = [];
  const dcTables: (Huffman | undefined)[] = [];
  const acTables: (Huffman | undefined)[] = [];
  let frame: Frame | undefined;
  let planes: Plane[] = [];
  let restartInterval = 0;
  let adobeRgb = false;
  let scans = 0;
  let decodedScans = 0;
  let mcusX = 0;
  let mcusY = 0;
  let hmax = 1;
  let vmax = 1;
  const coef = new Float64Array(64);
  const tmp = new Float64Array(64);

  const setup = (f: Frame) => {
    hmax = Math.max(...f.comps.map((c) => c.h));
    vmax = Math.max(...f.comps.map((c) => c.v));
    mcusX = Math.ceil(f.width / (8 * hmax));
    mcusY = Math.ceil(f.height / (8 * vmax));
    planes = f.comps.map((c) => {
      const bpl = mcusX * c.h;
      const bpc = mcusY * c.v;
      // The component's samples the grid's pixels need (nearest: image x maps to floor(x * h / hmax)).
      const rowAt = new Int32Array(bpc * 8).fill(-1);
      const colAt = new Int32Array(bpl * 8).fill(-1);
      const rowBlocks = new Uint8Array(bpc);
      const colBlocks = new Uint8Array(bpl);
      let nr = 0;
      let nc = 0;
      for (const y of grid.rows) {
        const cy = Math.floor((y * c.v) / vmax);
        if (rowAt[cy] === -1) {
          rowAt[cy] = nr++;
          rowBlocks[cy >> 3] = 1;
        }
      }
      for (const x of grid.cols) {
        const cx = Math.floor((x * c.h) / hmax);
        if (colAt[cx] === -1) {
          colAt[cx] = nc++;
          colBlocks[cx >> 3] = 1;
        }
      }
      return {
        ...c,
        bpl,
        bpc,
        rowAt,
        colAt,
        rowBlocks,
        colBlocks,
        nc,
        pixels: new Uint8Array(nr * nc),
        dc: f.progressive ? new Int32Array(bpl * bpc) : undefined,
        pred: 0,
      };
    });
  };

  /** A baseline block's coefficients (natural order, in `coef`) become the pixels the grid needs. */
  const emit = (p: Plane, br: number, bc: number) => {
    if (!p.rowBlocks[br] || !p.colBlocks[bc]) return;
    const q = quant[p.tq];
    if (!q) throw invalid(`uses quantization table ${p.tq}, which it does not define`);
    for (let v = 0; v < 8; v++) {
      let any = false;
      for (let u = 0; u < 8; u++) if ((coef[v * 8 + u] ?? 0) !== 0) any = true;
      for (let x = 0; x < 8; x++) {
        let s = 0;
        if (any) for (let u = 0; u < 8; u++) s += (coef[v * 8 + u] ?? 0) * (q[v * 8 + u] ?? 0) * (COS[x * 8 + u] ?? 0);
        tmp[v * 8 + x] = s;
      }
    }
    for (let y = 0; y < 8; y++) {
      const r = p.rowAt[br * 8 + y] ?? -1;
      if (r < 0) continue;
      for (let x = 0; x < 8; x++) {
        const c = p.colAt[bc * 8 + x] ?? -1;
        if (c < 0) continue;
        let s = 0;
        for (let v = 0; v < 8; v++) s += (COS[y * 8 + v] ?? 0) * (tmp[v * 8 + x] ?? 0);
        p.pixels[r * p.nc + c] = clamp(s + 128);
      }
    }
  };

  const scan = (header: Buffer, start: number): number => {
    if (!frame) throw invalid("has image data before its frame header");
    // Each scan costs a pass over the image's blocks: their number is bounded (libjpeg bounds it too), and a
    // progressive AC scan, which is only read past, counts only toward the total.
    scans += 1;
    if (scans > MAX_SCANS) throw invalid(`has more than ${MAX_SCANS} scans`);
    const n = header[0] ?? 0;
    if (n < 1 || n > 4 || header.length < 4 + 2 * n) throw invalid("has a malformed scan header (SOS)");
    const inScan: { p: Plane; dc?: Huffman; ac?: Huffman }[] = [];
    for (let i = 0; i < n; i++) {
      const id = header[1 + 2 * i];
      const t = header[2 + 2 * i] ?? 0;
      const p = planes.find((c) => c.id === id);
      if (!p) throw invalid(`scans component ${id}, which its frame does not have`);
      inScan.push({ p, dc: dcTables[t >> 4], ac: acTables[t & 15] });
    }
    const ss = header[1 + 2 * n] ?? 0;
    const ah = (header[3 + 2 * n] ?? 0) >> 4;
    const al = (header[3 + 2 * n] ?? 0) & 15;
    // A progressive AC scan is not needed at 1/8 scale: read past.
    if (frame.progressive && ss > 0) return scanEnd(b, start);
    decodedScans += 1;
    if (decodedScans > MAX_DECODED_SCANS) throw invalid(`has more than ${MAX_DECODED_SCANS} scans to decode`);
    const bits = new Bits(b, start);
    for (const s of inScan) s.p.pred = 0;

    const block = (s: (typeof inScan)[number], br: number, bc: number) => {
      const p = s.p;
      if (frame?.progressive) {
        const dc = p.dc as Int32Array;
        const i = br * p.bpl + bc;
        if (ah === 0) {
          if (!s.dc) throw invalid("uses a Huffman table it does not define");
          p.pred += bits.extend(bits.decode(s.dc));
          dc[i] = p.pred * (1 << al);
        } else if (bits.bit()) dc[i] = (dc[i] ?? 0) | (1 << al);
        return;
      }
      if (!s.dc || !s.ac) throw invalid("uses a Huffman table it does not define");
      coef.fill(0);
      p.pred += bits.extend(bits.decode(s.dc));
      coef[0] = p.pred;
      for (let k = 1; k < 64; ) {
        const rs = bits.decode(s.ac);
        const size = rs & 15;
        const run = rs >> 4;
        if (size === 0) {
          if (run < 15) break;
          k += 16;
          continue;
        }
        k += run;
        if (k > 63) throw invalid("has a coefficient past the end of its block");
        coef[ZIGZAG[k] ?? 0] = bits.extend(size);
        k += 1;
      }
      emit(p, br, bc);
    };

    const single = inScan.length === 1 ? inScan[0] : undefined;
    // A scan of one component covers only its own blocks (not padded to MCUs); each block is an MCU.
    const perLine = single ? Math.ceil(Math.ceil((frame.width * single.p.h) / hmax) / 8) : mcusX;
    const lines = single ? Math.ceil(Math.ceil((frame.height * single.p.v) / vmax) / 8) : mcusY;
    const total = perLine * lines;
    for (let m = 0; m < total; m++) {
      // Valid data never needs a bit past its scan: a scan that does is cut short, and is not walked to its end
      // on zeros (which would let a few bytes cost a pass over 24 MP).
      if (bits.marker || bits.eof) throw invalid("has a scan that ends before its last block");
      if (restartInterval > 0 && m > 0 && m % restartInterval === 0) {
        bits.restart();
        for (const s of inScan) s.p.pred = 0;
      }
      const my = Math.floor(m / perLine);
      const mx = m % perLine;
      if (single) block(single, my, mx);
      else
        for (const s of inScan)
          for (let j = 0; j < s.p.v; j++) for (let i = 0; i < s.p.h; i++) block(s, my * s.p.v + j, mx * s.p.h + i);
    }
    if (bits.eof) throw invalid("is truncated (in its image data)");
    return scanEnd(b, bits.pos);
  };

  let at = 2;
  for (let s = segmentAt(b, at); s; s = segmentAt(b, at)) {
    at = s.next;
    const d = s.data;
    switch (s.marker) {
      case 0xdb: {
        // DQT: tables in zigzag order, 8- or 16-bit, stored in natural order.
        for (let i = 0; i < d.length; ) {
          const pq = (d[i] ?? 0) >> 4;
          const tq = (d[i] ?? 0) & 15;
          if (tq > 3 || i + 1 + 64 * (pq + 1) > d.length) throw invalid("has a malformed DQT");
          const table = new Float64Array(64);
          for (let k = 0; k < 64; k++) table[ZIGZAG[k] ?? 0] = pq ? d.readUInt16BE(i + 1 + 2 * k) : (d[i + 1 + k] ?? 0);
          quant[tq] = table;
          i += 1 + 64 * (pq + 1);
        }
        break;
      }
      case 0xc4: {
        for (let i = 0; i < d.length; ) {
          const tc = (d[i] ?? 0) >> 4;
          const th = (d[i] ?? 0) & 15;
          if (i + 17 > d.length || th > 3 || tc > 1) throw invalid("has a malformed DHT");
          const counts = d.subarray(i + 1, i + 17);
          const n = counts.reduce((a, c) => a + c, 0);
          if (n > 256 || i + 17 + n > d.length) throw invalid("has a malformed DHT");
          (tc === 0 ? dcTables : acTables)[th] = huffman(counts, d.subarray(i + 17, i + 17 + n));
          i += 17 + n;
        }
        break;
      }
      case 0xdd:
        if (d.length < 2) throw invalid("has a malformed DRI");
        restartInterval = d.readUInt16BE(0);
        break;
      case 0xee:
        // Adobe APP14: transform 0 with 3 components means RGB, not YCbCr.
        if (d.length >= 12 && d.toString("latin1", 0, 5) === "Adobe") adobeRgb = d[11] === 0;
        break;
      case 0xda:
        at = scan(d, s.next);
        break;
      default:
        if (isFrameHeader(s.marker)) {
          if (frame) throw invalid("has a second frame");
          frame = parseFrame(s.marker, d);
          if (frame.components === 4) throw invalid("has 4 components (CMYK), which are not decoded this way");
          setup(frame);
        }
    }
  }
  if (!frame) throw invalid("has no frame header");

  // Each listed pixel's colour, from its nearest sample of each component.
  const value = (p: Plane, y: number, x: number): number => {
    const cy = Math.floor((y * p.v) / vmax);
    const cx = Math.floor((x * p.h) / hmax);
    if (p.dc) {
      const q0 = quant[p.tq]?.[0];
      if (q0 === undefined) throw invalid(`uses quantization table ${p.tq}, which it does not define`);
      return clamp(((p.dc[(cy >> 3) * p.bpl + (cx >> 3)] ?? 0) * q0) / 8 + 128);
    }
    return p.pixels[(p.rowAt[cy] ?? 0) * p.nc + (p.colAt[cx] ?? 0)] ?? 0;
  };
  const [p0, p1, p2] = planes;
  if (!p0) throw invalid("has no components");
  for (const [ri, y] of grid.rows.entries()) {
    for (const [ci, x] of grid.cols.entries()) {
      const Y = value(p0, y, x);
      if (!p1 || !p2) {
        grid.put(ri, ci, Y, Y, Y);
        continue;
      }
      const cb = value(p1, y, x);
      const cr = value(p2, y, x);
      if (adobeRgb) grid.put(ri, ci, Y, cb, cr);
      else
        grid.put(
          ri,
          ci,
          clamp(Y + 1.402 * (cr - 128)),
          clamp(Y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128)),
          clamp(Y + 1.772 * (cb - 128)),
        );
    }
  }
}
