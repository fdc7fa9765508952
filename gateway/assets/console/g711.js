// G.711 μ-law, the same algorithm as hark's codec (codecs/src/mulaw.rs, Sun's g711.c as in
// CPython's audioop): 16-bit linear PCM → 14 bits, biased, segment and mantissa, inverted.
// Checked code for code against hark-codecs by gateway/tests/console_browser.rs.

const BIAS = 0x84;
const CLIP = 8159;
const SEG_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

/** One 16-bit sample (an integer in -32768..32767) → one μ-law code (0..255). */
export function encodeSample(sample) {
  let pcm = sample >> 2;
  let mask = 0xff;
  if (pcm < 0) {
    pcm = -pcm;
    mask = 0x7f;
  }
  if (pcm > CLIP) pcm = CLIP;
  pcm += BIAS >> 2;
  let seg = 0;
  while (seg < 8 && pcm > SEG_END[seg]) seg++;
  if (seg >= 8) return (0x7f ^ mask) & 0xff;
  return (((seg << 4) | ((pcm >> (seg + 1)) & 0x0f)) ^ mask) & 0xff;
}

/** One μ-law code (0..255) → one 16-bit sample (±32124). */
export function decodeSample(code) {
  const u = ~code & 0xff;
  let t = ((u & 0x0f) << 3) + BIAS;
  t <<= (u & 0x70) >> 4;
  return u & 0x80 ? BIAS - t : t - BIAS;
}

const DECODE = new Int16Array(256);
for (let c = 0; c < 256; c++) DECODE[c] = decodeSample(c);
const ENCODE = new Uint8Array(65536);
for (let s = -32768; s < 32768; s++) ENCODE[s & 0xffff] = encodeSample(s);

/** Float samples (-1..1) → μ-law codes, into `out` (a Uint8Array as long as `samples`). */
export function encodeFloats(samples, out) {
  for (let i = 0; i < samples.length; i++) {
    let v = Math.round(samples[i] * 32768);
    if (v > 32767) v = 32767;
    else if (v < -32768) v = -32768;
    out[i] = ENCODE[v & 0xffff];
  }
  return out;
}

/** μ-law codes → float samples (-1..1), into `out` (a Float32Array as long as `codes`). */
export function decodeToFloats(codes, out) {
  for (let i = 0; i < codes.length; i++) out[i] = DECODE[codes[i]] / 32768;
  return out;
}

/** μ-law codes (Uint8Array) → base64 text, as Twilio's `media.payload`. */
export function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

/** base64 text → bytes (Uint8Array). */
export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
