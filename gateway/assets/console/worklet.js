// The browser phone's audio worklets (AudioWorkletGlobalScope: `sampleRate` is the context's).
//
// hark-capture: microphone → low-pass at 3.4 kHz → 8 kHz (linear interpolation) → μ-law →
//   20 ms frames of 160 bytes, posted to the page as they fill.
// hark-playback: the agent's μ-law frames and marks, in arrival order → a small jitter buffer
//   (playing starts once 60 ms are queued or a mark follows queued audio) → 8 kHz → the
//   context's rate. A mark is echoed (posted back) once all audio queued before it has been
//   played; `clear` drops all queued audio at once and echoes every pending mark, as Twilio does.

import { decodeToFloats, encodeFloats } from "./g711.js";

const FRAME = 160; // 20 ms at 8 kHz
const RATE = 8000;

/** A biquad low-pass (RBJ cookbook) as a closure over its state: x → y. */
function lowpass(fs, f0, q) {
  const w = (2 * Math.PI * f0) / fs;
  const alpha = Math.sin(w) / (2 * q);
  const cos = Math.cos(w);
  const a0 = 1 + alpha;
  const b0 = (1 - cos) / 2 / a0;
  const b1 = (1 - cos) / a0;
  const b2 = b0;
  const a1 = (-2 * cos) / a0;
  const a2 = (1 - alpha) / a0;
  let x1 = 0, x2 = 0, y1 = 0, y2 = 0;
  return (x) => {
    const y = b0 * x + b1 * x1 + b2 * x2 - a1 * y1 - a2 * y2;
    x2 = x1; x1 = x; y2 = y1; y1 = y;
    return y;
  };
}

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / RATE; // input samples per 8 kHz sample
    this.t = 0; // position of the next 8 kHz sample, in input samples from this quantum's start
    this.prev = 0; // the previous quantum's last filtered sample (index -1)
    // 4th-order Butterworth as two biquads; no filtering needed when the context runs at 8 kHz.
    const f = sampleRate > 2 * 3400 ? [lowpass(sampleRate, 3400, 0.5412), lowpass(sampleRate, 3400, 1.3066)] : [];
    this.filter = (x) => f.reduce((v, s) => s(v), x);
    this.buf = new Float32Array(128);
    this.frame = new Float32Array(FRAME);
    this.n = 0;
    this.sending = false;
    this.port.onmessage = (e) => {
      if (e.data === "start") this.sending = true;
      if (e.data === "stop") this.sending = false;
    };
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    const len = ch ? ch.length : 128;
    if (this.buf.length !== len) this.buf = new Float32Array(len);
    const x = this.buf;
    for (let i = 0; i < len; i++) x[i] = this.filter(ch ? ch[i] : 0);
    while (this.t < len - 1) {
      const i = Math.floor(this.t);
      const f = this.t - i;
      const a = i < 0 ? this.prev : x[i];
      const b = x[i + 1];
      this.frame[this.n++] = a + (b - a) * f;
      if (this.n === FRAME) {
        this.n = 0;
        if (this.sending) {
          const out = encodeFloats(this.frame, new Uint8Array(FRAME));
          this.port.postMessage(out, [out.buffer]);
        }
      }
      this.t += this.step;
    }
    this.t -= len;
    this.prev = x[len - 1];
    return true;
  }
}

class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // {audio: Float32Array at 8 kHz, off} or {mark: name}, in arrival order
    this.buffered = 0; // 8 kHz samples queued
    this.playing = false;
    this.prebuffer = (RATE * 60) / 1000;
    this.step = RATE / sampleRate; // 8 kHz samples per output sample
    this.frac = 1;
    this.a = 0;
    this.b = 0;
    this.played = 0; // 8 kHz samples played
    this.underruns = 0;
    this.clearedSamples = 0;
    this.afterMark = true; // the last thing played was a mark (an answer's end), not audio
    this.quanta = 0;
    this.port.onmessage = (e) => this.receive(e.data);
  }

  receive(m) {
    if (m.media) {
      const audio = decodeToFloats(m.media, new Float32Array(m.media.length));
      this.queue.push({ audio, off: 0 });
      this.buffered += audio.length;
    } else if (m.mark !== undefined) {
      this.queue.push({ mark: m.mark });
      this.echoLeadingMarks();
    } else if (m.clear) {
      // Twilio: "the audio buffer is emptied and the marks still pending are sent back".
      const echoed = [];
      for (const item of this.queue) if (item.mark !== undefined) echoed.push(item.mark);
      this.clearedSamples += this.buffered;
      const cleared_ms = this.buffered / 8;
      this.queue = [];
      this.buffered = 0;
      this.playing = false;
      this.frac = 1;
      this.a = this.b = 0;
      for (const name of echoed) this.port.postMessage({ echo: name, cleared: true });
      this.port.postMessage({ cleared: cleared_ms, marks: echoed.length });
    }
  }

  /** Echoes the marks at the head of the queue: no audio is left before them. */
  echoLeadingMarks() {
    while (this.queue.length) {
      const h = this.queue[0];
      if (h.mark !== undefined) {
        this.queue.shift();
        this.afterMark = true;
        this.port.postMessage({ echo: h.mark });
      } else if (h.off >= h.audio.length) {
        this.queue.shift();
      } else {
        return;
      }
    }
  }

  /** The next 8 kHz sample, echoing the marks it passes; `null` when nothing is queued. */
  pull() {
    this.echoLeadingMarks();
    const h = this.queue[0];
    if (!h) return null;
    this.buffered--;
    this.played++;
    this.afterMark = false;
    const s = h.audio[h.off++];
    if (h.off >= h.audio.length) this.echoLeadingMarks();
    return s;
  }

  markAfterAudio() {
    let audio = false;
    for (const item of this.queue) {
      if (item.mark === undefined) audio = true;
      else if (audio) return true;
    }
    return false;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.buffered > 0 && (this.buffered >= this.prebuffer || this.markAfterAudio())) {
      this.playing = true;
    }
    for (let i = 0; i < out.length; i++) {
      if (!this.playing) {
        out[i] = 0;
        continue;
      }
      while (this.frac >= 1) {
        this.frac -= 1;
        this.a = this.b;
        const s = this.pull();
        if (s === null) {
          // Drained: the end of an answer, or audio late (an underrun when more follows).
          this.playing = false;
          this.b = 0;
          this.frac = 1;
          if (!this.afterMark) this.underruns++;
          break;
        }
        this.b = s;
      }
      out[i] = this.playing ? this.a + (this.b - this.a) * this.frac : 0;
      this.frac += this.step;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (++this.quanta % 32 === 0) {
      this.port.postMessage({
        stats: { buffered_ms: this.buffered / 8, played_ms: this.played / 8, underruns: this.underruns, cleared_ms: this.clearedSamples / 8 },
      });
    }
    return true;
  }
}

registerProcessor("hark-capture", Capture);
registerProcessor("hark-playback", Playback);
