#!/usr/bin/env python3
"""Smart Turn v3.2 (pipecat-ai 1.14.0, BSD-2): weights for hark's pure-Rust forward pass.

    extract.py extract MODEL.onnx OUT.bin   write the weight file read by engine/src/smart_turn/
    extract.py check MODEL.onnx OUT.bin WAV...
        run this file's numpy forward pass (float32 weights, no activation quantisation: what
        the Rust code computes) and onnxruntime on the model, on each 16 kHz mono WAV, and print
        both probabilities.

The model is a QDQ-quantised ONNX graph (onnxruntime.quant): int8 weights with one scale per
output channel (zero points all 0), uint8 fake-quantised activations. It is a Whisper-Tiny
encoder (conv 80->384 k3, GELU, conv 384->384 k3 stride 2, GELU, + 400x384 positions, four
pre-LN transformer layers of width 384 with 6 heads of 64 and an MLP of 1536, a final LN)
followed by attention pooling (384->256 tanh ->1, softmax over time) and a classifier
(384->256, LN, GELU, ->64, GELU, ->1, sigmoid).

Weight file (little-endian): b"HSTW", u32 version = 1, u32 tensor count, then per tensor:
  u16 name length, name (ASCII), u8 kind (0 = f32, 1 = int8 with f32 scale per output column),
  u8 rank, u32 dims[rank], for kind 1: f32 scales[dims[-1]], then the data (f32 or i8, row-major).
Linear and convolution weights are stored as [inputs, outputs] (a convolution's inputs are
in_channels*3, index c*3+k), so y = x @ W (+ b) for every one of them.
"""
import struct
import sys
import wave

import numpy as np
import onnx
from onnx import numpy_helper


def load(path):
    m = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return m, inits, producers, consumers


def dequant_weight(inits, producers, name):
    """(int8 array, per-channel scales, axis) for a DequantizeLinear output of a weight."""
    n = producers[name]
    assert n.op_type == "DequantizeLinear", n
    q, s, z = (inits[i] for i in n.input)
    assert not np.any(z), f"{name}: non-zero weight zero point"
    axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
    return q, s, axis


def dequant_bias(inits, producers, name):
    if name in inits:
        return inits[name].astype(np.float32)
    n = producers[name]
    q, s, z = (inits[i] for i in n.input)
    return ((q.astype(np.float64) - z) * s).astype(np.float32)


def collect(path):
    """Named tensors: (kind, array[, scales]) with linear weights as int8 [in, out]."""
    m, inits, producers, consumers = load(path)
    out = {}

    def strip_dq(name):
        return name[: -len("_DequantizeLinear_Output")] if name.endswith("_DequantizeLinear_Output") else name

    def first_consumer(name, op):
        # follow QuantizeLinear -> DequantizeLinear pairs
        frontier = [name]
        while frontier:
            cur = frontier.pop(0)
            for c in consumers.get(cur, []):
                if c.op_type == op:
                    return c
                if c.op_type in ("QuantizeLinear", "DequantizeLinear"):
                    frontier.extend(c.output)
        return None

    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    for idx, n in enumerate(convs, 1):
        q, s, axis = dequant_weight(inits, producers, n.input[1])
        assert axis == 0 and q.shape[2] == 3
        w = q.reshape(q.shape[0], -1).T.copy()  # [in*3, out]
        out[f"conv{idx}.w"] = (1, w, s)
        out[f"conv{idx}.b"] = (0, dequant_bias(inits, producers, n.input[2]))
    out["pos"] = (0, inits["inner.encoder.embed_positions.weight"])

    for n in m.graph.node:
        if n.op_type == "LayerNormalization":
            w = n.input[1]
            base = w[: -len(".weight")]
            key = (base.replace("inner.encoder.layers.", "layers.")
                   .replace("self_attn_layer_norm", "attn_ln").replace("final_layer_norm", "ffn_ln")
                   .replace("inner.encoder.layer_norm", "ln").replace("inner.classifier.1", "cls.ln"))
            out[key + ".w"] = (0, inits[w])
            out[key + ".b"] = (0, inits[n.input[2]])

    layer_of = {}
    for n in m.graph.node:
        if n.op_type == "MatMul" and n.input[1].endswith("_DequantizeLinear_Output") and \
                strip_dq(n.input[1]) in {k[: -len("_quantized")] for k in inits if k.endswith("_quantized")}:
            q, s, axis = dequant_weight(inits, producers, n.input[1])
            assert axis == 1
            add = first_consumer(n.output[0], "Add")
            bias = next((i for i in add.input if i in inits), None) if add is not None else None
            if bias is None or "bias" not in bias:
                # k_proj has no bias: its layer is the one whose attention LN feeds it
                ln = producers[strip_dq(n.input[0])]
                key = ln.input[1].replace("inner.encoder.layers.", "layers.").replace(
                    ".self_attn_layer_norm.weight", ".k")
                out[key + ".w"] = (1, q, s)
                continue
            key = (bias[: -len(".bias")].replace("inner.encoder.layers.", "layers.")
                   .replace("self_attn.q_proj", "q").replace("self_attn.v_proj", "v")
                   .replace("self_attn.out_proj", "o").replace("inner.pool_attention.", "pool"))
            out[key + ".w"] = (1, q, s)
            out[key + ".b"] = (0, inits[bias].astype(np.float32).reshape(-1))
    for n in m.graph.node:
        if n.op_type == "Gemm":
            q, s, axis = dequant_weight(inits, producers, n.input[1])
            assert axis == 0
            key = n.input[2].replace("inner.classifier.", "cls").replace(".bias", "")
            out[key + ".w"] = (1, q.T.copy(), s)
            out[key + ".b"] = (0, dequant_bias(inits, producers, n.input[2]))
    return out


def write(tensors, path):
    with open(path, "wb") as f:
        f.write(b"HSTW" + struct.pack("<II", 1, len(tensors)))
        for name in sorted(tensors):
            t = tensors[name]
            a = t[1]
            f.write(struct.pack("<H", len(name)) + name.encode())
            f.write(struct.pack("<BB", t[0], a.ndim) + struct.pack(f"<{a.ndim}I", *a.shape))
            if t[0] == 1:
                assert t[2].shape == (a.shape[-1],), (name, t[2].shape, a.shape)
                f.write(t[2].astype("<f4").tobytes())
                f.write(a.astype(np.int8).tobytes())
            else:
                f.write(a.astype("<f4").tobytes())


def read(path):
    data = open(path, "rb").read()
    assert data[:4] == b"HSTW"
    _, count = struct.unpack_from("<II", data, 4)
    off, out = 12, {}
    for _ in range(count):
        (ln,) = struct.unpack_from("<H", data, off); off += 2
        name = data[off: off + ln].decode(); off += ln
        kind, rank = struct.unpack_from("<BB", data, off); off += 2
        dims = struct.unpack_from(f"<{rank}I", data, off); off += 4 * rank
        size = int(np.prod(dims))
        if kind == 1:
            s = np.frombuffer(data, "<f4", dims[-1], off); off += 4 * dims[-1]
            q = np.frombuffer(data, np.int8, size, off).reshape(dims); off += size
            out[name] = (q.astype(np.float32) * s).astype(np.float32)
        else:
            out[name] = np.frombuffer(data, "<f4", size, off).reshape(dims).copy(); off += 4 * size
    assert off == len(data)
    return out


def gelu(x):
    from math import erf
    return (0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))).astype(np.float32)


def layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + 1e-5) * w + b).astype(np.float32)


def conv(x, w, b, stride):
    """x: [T, C] -> [T', out]; kernel 3, padding 1."""
    t, c = x.shape
    p = np.zeros((t + 2, c), np.float32)
    p[1:-1] = x
    n = (t + 2 - 3) // stride + 1
    cols = np.stack([p[i * stride: i * stride + 3].T.reshape(-1) for i in range(n)])  # [n, c*3]
    return cols @ w + b


def forward(W, feats):
    """feats: [80, 800] log-mel -> probability that the turn is complete."""
    x = gelu(conv(feats.T, W["conv1.w"], W["conv1.b"], 1))
    x = gelu(conv(x, W["conv2.w"], W["conv2.b"], 2)) + W["pos"]
    for i in range(4):
        p = f"layers.{i}."
        h = layer_norm(x, W[p + "attn_ln.w"], W[p + "attn_ln.b"])
        q = (h @ W[p + "q.w"] + W[p + "q.b"]).reshape(400, 6, 64).transpose(1, 0, 2)
        k = (h @ W[p + "k.w"]).reshape(400, 6, 64).transpose(1, 0, 2)
        v = (h @ W[p + "v.w"] + W[p + "v.b"]).reshape(400, 6, 64).transpose(1, 0, 2)
        s = (q @ k.transpose(0, 2, 1)) / 8.0
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(400, 384)
        x = x + a @ W[p + "o.w"] + W[p + "o.b"]
        h = layer_norm(x, W[p + "ffn_ln.w"], W[p + "ffn_ln.b"])
        x = x + gelu(h @ W[p + "fc1.w"] + W[p + "fc1.b"]) @ W[p + "fc2.w"] + W[p + "fc2.b"]
    x = layer_norm(x, W["ln.w"], W["ln.b"])
    e = np.tanh(x @ W["pool0.w"] + W["pool0.b"]) @ W["pool2.w"] + W["pool2.b"]  # [400, 1]
    e = np.exp(e - e.max())
    e /= e.sum()
    pooled = (x * e).sum(0)
    h = gelu(layer_norm(pooled @ W["cls0.w"] + W["cls0.b"], W["cls.ln.w"], W["cls.ln.b"]))
    h = gelu(h @ W["cls4.w"] + W["cls4.b"])
    z = (h @ W["cls6.w"] + W["cls6.b"])[0]
    return float(1.0 / (1.0 + np.exp(-z)))


def read_wav16k(path):
    with wave.open(path) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def main():
    cmd, model, out = sys.argv[1:4]
    if cmd == "extract":
        tensors = collect(model)
        write(tensors, out)
        print(f"{len(tensors)} tensors -> {out}")
        return
    import onnxruntime as ort
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from features import log_mel
    W = read(out)
    sess = ort.InferenceSession(model)
    for wav in sys.argv[4:]:
        f = log_mel(read_wav16k(wav))
        ref = sess.run(None, {"input_features": f[None]})[0].item()
        print(f"{wav}: numpy {forward(W, f):.4f}  onnxruntime {ref:.4f}")


if __name__ == "__main__":
    main()
