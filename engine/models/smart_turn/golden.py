#!/usr/bin/env python3
"""Reference clips and outputs for the Rust Smart Turn tests (engine/src/smart_turn/).

    golden.py clips OUTDIR [N]     16 kHz WAV clips cut from fixtures/turns/scenes/pauses.wav:
                                   for each of the first N utterances, the audio up to 300 ms into
                                   its inner pause (`NN_pause.wav`: an unfinished sentence) and up
                                   to 300 ms after its end (`NN_end.wav`: a finished one), each from
                                   500 ms before the utterance starts.
    golden.py golden MODEL.onnx WEIGHTS.bin
                                   writes golden_*.f32 (log-mel 80x800 f32 LE) and golden.json for
                                   the committed golden_*.wav clips: per clip, `onnxruntime_float`
                                   (onnxruntime on MODEL's float graph, float_onnx.py: what the Rust
                                   code reproduces), `numpy_f32` (extract.forward on WEIGHTS.bin),
                                   and, for information only, `onnxruntime_int8_qdq` (MODEL itself,
                                   with its uint8 activation quantisation).

8 kHz -> 16 kHz: zero-stuffing and a 127-tap Kaiser-windowed sinc low-pass at 3.8 kHz.
"""
import json
import os
import sys
import wave

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, HERE)


def read_wav(path):
    with wave.open(path) as w:
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)


def write_wav(path, rate, x):
    with wave.open(path, "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
        w.writeframes(np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes())


def up2(x):
    taps = 127
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * (3800 / 16000) * np.sinc(2 * (3800 / 16000) * n) * np.kaiser(taps, 8.0)
    y = np.zeros(2 * len(x)); y[::2] = x
    return np.convolve(y, 2 * h, mode="same")


def clips(outdir, count):
    scenes = json.load(open(os.path.join(ROOT, "fixtures/turns/scenes.json")))["scenes"]["pauses"]
    rate, x = read_wav(os.path.join(ROOT, "fixtures/turns", scenes["file"]))
    assert rate == 8000
    os.makedirs(outdir, exist_ok=True)
    ms = lambda t: int(t * 8)
    for i, u in enumerate(scenes["utterances"][:count]):
        start = max(0, u["start_ms"] - 500)
        write_wav(f"{outdir}/{i:02}_pause.wav", 16000, up2(x[ms(start): ms(u["pause"][0] + 300)]))
        write_wav(f"{outdir}/{i:02}_end.wav", 16000, up2(x[ms(start): ms(u["end_ms"] + 300)]))
        print(i, u["text"], "| pause after:", u["pause"][0] - u["start_ms"], "ms")


def golden(model, weights):
    import onnx
    import onnxruntime as ort
    import extract
    from features import log_mel
    from float_onnx import float_graph
    W = extract.read(weights)
    ort.set_default_logger_severity(3)
    sess = ort.InferenceSession(float_graph(onnx.load(model)).SerializeToString())
    sess_q = ort.InferenceSession(model)
    out = {}
    for name in sorted(os.listdir(HERE)):
        if not (name.startswith("golden_") and name.endswith(".wav")):
            continue
        rate, x = read_wav(os.path.join(HERE, name))
        assert rate == 16000
        f = log_mel((x / 32768.0).astype(np.float32))
        f.astype("<f4").tofile(os.path.join(HERE, name[:-4] + ".f32"))
        ref = sess.run(None, {"input_features": f[None]})[0].item()
        q = sess_q.run(None, {"input_features": f[None]})[0].item()
        out[name] = {"onnxruntime_float": round(ref, 6), "numpy_f32": round(extract.forward(W, f), 6),
                     "onnxruntime_int8_qdq": round(q, 6)}
        print(name, out[name])
    json.dump(out, open(os.path.join(HERE, "golden.json"), "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    if sys.argv[1] == "clips":
        clips(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 12)
    else:
        golden(sys.argv[2], sys.argv[3])
