#!/usr/bin/env python3
"""Reference speech probabilities of Silero VAD at 8 kHz, from onnxruntime, for the Rust tests.

Usage (from the repository root):
    python3 engine/models/silero/golden.py SILERO_VAD_ONNX

For each of fixtures/audio/{jfk,line-noise}-8k.ulaw (headerless G.711 mu-law, 8000 Hz) writes
engine/models/silero/golden_{jfk,line_noise}_8k.f32: one little-endian f32 per 256-sample window.

Mirrors silero_vad 6.2.3 `OnnxWrapper.audio_forward` / `__call__` (silero_vad/utils_vad.py) for
sr=8000, batch 1, without torch: reset (state zeros [2, 1, 128], context empty), zero-pad the
audio to a multiple of 256 samples, then per window: input = concat(context, window) [1, 288]
with context = 32 zeros for the first window, run the session (1 intra-op and 1 inter-op
thread, like the wrapper), carry `stateN` as the next `state`, and keep the last 32 samples of
that 288-sample input as the next context. Samples: audioop.ulaw2lin(bytes, 2) -> int16 / 32768.
"""
import audioop
import os
import sys

import numpy as np
import onnxruntime as ort

WINDOW, CONTEXT, SR = 256, 32, 8000
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
FILES = [
    ("fixtures/audio/jfk-8k.ulaw", "engine/models/silero/golden_jfk_8k.f32"),
    ("fixtures/audio/line-noise-8k.ulaw", "engine/models/silero/golden_line_noise_8k.f32"),
]


def load_ulaw(path):
    pcm = np.frombuffer(audioop.ulaw2lin(open(path, "rb").read(), 2), "<i2")
    return pcm.astype(np.float32) / 32768.0


def probabilities(sess, audio):
    if len(audio) % WINDOW:
        audio = np.concatenate([audio, np.zeros(WINDOW - len(audio) % WINDOW, np.float32)])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, CONTEXT), np.float32)
    out = []
    for i in range(0, len(audio), WINDOW):
        x = np.concatenate([context, audio[None, i : i + WINDOW]], axis=1)
        p, state = sess.run(None, {"input": x, "state": state, "sr": np.array(SR, np.int64)})
        context = x[:, -CONTEXT:]
        out.append(p[0, 0])
    return np.array(out, "<f4")


def main():
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"], sess_options=opts)
    print("onnxruntime", ort.__version__)
    for src, dst in FILES:
        p = probabilities(sess, load_ulaw(os.path.join(ROOT, src)))
        p.tofile(os.path.join(ROOT, dst))
        print("%s: %d windows, %d > 0.5 -> %s" % (src, len(p), int((p > 0.5).sum()), dst))


if __name__ == "__main__":
    main()
