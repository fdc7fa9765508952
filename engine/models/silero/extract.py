#!/usr/bin/env python3
"""Extract the 8 kHz branch of Silero VAD (silero_vad.onnx, MIT) into silero_vad_8k.bin.

Usage:
    python3 extract.py extract SILERO_VAD_ONNX OUT_BIN   # write the weight file
    python3 extract.py check   SILERO_VAD_ONNX OUT_BIN   # numpy forward pass of OUT_BIN vs onnxruntime

The ONNX graph has `If(sr == 16000)`; its else branch is the 8 kHz model. Its weights are
`Constant` nodes inside that subgraph (the graph has no initializers). Names are the ONNX ones with
the `If_0_else_branch__Inline_0__` prefix removed; layouts are ONNX's (row-major), unchanged.

File format (all little-endian), read by engine/src/vad/silero.rs:
    magic      8 bytes  b"HSVAD8K\\0"
    version    u32      1
    count      u32      number of tensors
    count x:   name_len u16, name (UTF-8, name_len bytes), ndim u8, dims u32 x ndim
    data       f32 x sum(prod(dims)), the tensors in manifest order, each row-major
"""
import struct
import sys

import numpy as np
import onnx
from onnx import numpy_helper

MAGIC = b"HSVAD8K\0"
PREFIX = "If_0_else_branch__Inline_0__"
# The tensors of the 8 kHz branch, in file order, with the shapes the Rust side expects.
TENSORS = [
    ("stft.forward_basis_buffer", (130, 1, 128)),
    ("encoder.0.reparam_conv.weight", (128, 65, 3)),
    ("encoder.0.reparam_conv.bias", (128,)),
    ("encoder.1.reparam_conv.weight", (64, 128, 3)),
    ("encoder.1.reparam_conv.bias", (64,)),
    ("encoder.2.reparam_conv.weight", (64, 64, 3)),
    ("encoder.2.reparam_conv.bias", (64,)),
    ("encoder.3.reparam_conv.weight", (128, 64, 3)),
    ("encoder.3.reparam_conv.bias", (128,)),
    ("decoder.rnn.weight_ih", (512, 128)),
    ("decoder.rnn.weight_hh", (512, 128)),
    ("decoder.rnn.bias_ih", (512,)),
    ("decoder.rnn.bias_hh", (512,)),
    ("decoder.decoder.2.weight", (1, 128, 1)),
    ("decoder.decoder.2.bias", (1,)),
]


def else_branch(model):
    """The 8 kHz subgraph: the else branch of the top-level If on `sr == 16000`."""
    (node,) = [n for n in model.graph.node if n.op_type == "If"]
    (eq,) = [n for n in model.graph.node if n.op_type == "Equal"]
    (const,) = [n for n in model.graph.node if n.output[0] in eq.input and n.op_type == "Constant"]
    assert int(numpy_helper.to_array(const.attribute[0].t)) == 16000, "If is not on sr == 16000"
    (g,) = [a.g for a in node.attribute if a.name == "else_branch"]
    return g


def branch_weights(path):
    g = else_branch(onnx.load(path))
    found = {}
    for n in g.node:
        if n.op_type == "Constant" and n.output[0].startswith(PREFIX):
            name = n.output[0][len(PREFIX):]
            found[name] = numpy_helper.to_array(n.attribute[0].t)
    out = []
    for name, shape in TENSORS:
        a = found[name]
        assert a.dtype == np.float32 and a.shape == shape, (name, a.dtype, a.shape)
        out.append((name, a))
    return out


def write_bin(tensors, path):
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<II", 1, len(tensors)))
        for name, a in tensors:
            nb = name.encode()
            f.write(struct.pack("<H", len(nb)) + nb + struct.pack("<B", a.ndim))
            f.write(struct.pack("<%dI" % a.ndim, *a.shape))
        for _, a in tensors:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())


def read_bin(path):
    b = open(path, "rb").read()
    assert b[:8] == MAGIC
    version, count = struct.unpack_from("<II", b, 8)
    assert version == 1
    off, manifest = 16, []
    for _ in range(count):
        (nl,) = struct.unpack_from("<H", b, off)
        name = b[off + 2 : off + 2 + nl].decode()
        off += 2 + nl
        nd = b[off]
        dims = struct.unpack_from("<%dI" % nd, b, off + 1)
        off += 1 + 4 * nd
        manifest.append((name, dims))
    w = {}
    for name, dims in manifest:
        n = int(np.prod(dims))
        w[name] = np.frombuffer(b, "<f4", n, off).reshape(dims)
        off += 4 * n
    assert off == len(b)
    return w


def conv1d(x, w, b, stride, pad):
    """x [C_in, T], w [C_out, C_in, K] -> [C_out, T_out] (zero padding, like ONNX Conv)."""
    x = np.pad(x, ((0, 0), (pad, pad)))
    k = w.shape[2]
    t_out = (x.shape[1] - k) // stride + 1
    cols = np.stack([x[:, t * stride : t * stride + k] for t in range(t_out)], axis=-1)
    y = np.einsum("oik,ikt->ot", w.astype(np.float64), cols.astype(np.float64))
    return y + (0 if b is None else b[:, None])


def reference(w, x, state):
    """Numpy forward pass of the 8 kHz branch. x [288] (32 context + 256), state [2, 128]."""
    xp = np.pad(x, (0, 32), mode="reflect")  # Pad mode=reflect, pads [0, 0, 0, 32]
    spec = conv1d(xp[None], w["stft.forward_basis_buffer"], None, 64, 0)  # [130, 4]
    mag = np.sqrt(spec[:65] ** 2 + spec[65:] ** 2)
    h = mag
    for i, stride in enumerate([1, 2, 2, 1]):
        p = "encoder.%d.reparam_conv." % i
        h = np.maximum(conv1d(h, w[p + "weight"], w[p + "bias"], stride, 1), 0)
    xin = h[:, 0]  # [128]
    h0, c0 = state[0], state[1]
    gates = (
        w["decoder.rnn.weight_ih"] @ xin + w["decoder.rnn.bias_ih"]
        + w["decoder.rnn.weight_hh"] @ h0 + w["decoder.rnn.bias_hh"]
    )
    i, f, g, o = np.split(gates, 4)  # PyTorch LSTMCell gate order
    sig = lambda v: 1 / (1 + np.exp(-v))
    c1 = sig(f) * c0 + sig(i) * np.tanh(g)
    h1 = sig(o) * np.tanh(c1)
    logit = w["decoder.decoder.2.weight"][0, :, 0] @ np.maximum(h1, 0) + w["decoder.decoder.2.bias"][0]
    return sig(logit), np.stack([h1, c1])


def check(onnx_path, bin_path):
    import onnxruntime as ort

    w = read_bin(bin_path)
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, sess_options=opts)
    rng = np.random.default_rng(1)
    state = np.zeros((2, 1, 128), np.float32)
    my_state = np.zeros((2, 128))
    worst = 0.0
    for k in range(50):
        x = (rng.standard_normal(288) * (0.02 if k % 2 else 0.3)).astype(np.float32)
        out, state = sess.run(None, {"input": x[None], "state": state, "sr": np.array(8000, np.int64)})
        p, my_state = reference(w, x.astype(np.float64), my_state)
        worst = max(worst, abs(float(out[0, 0]) - p), float(np.abs(state[:, 0] - my_state).max()))
    print("numpy reference vs onnxruntime over 50 random windows: max |diff| = %.3g" % worst)
    assert worst < 1e-4


def main():
    cmd, onnx_path, bin_path = sys.argv[1:4]
    if cmd == "extract":
        write_bin(branch_weights(onnx_path), bin_path)
        print("wrote", bin_path)
    elif cmd == "check":
        check(onnx_path, bin_path)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
