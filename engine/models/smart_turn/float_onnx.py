#!/usr/bin/env python3
"""The "float" Smart Turn graph: what hark's pure-Rust forward pass computes.

    float_onnx.py IN.onnx OUT.onnx

Removes every QuantizeLinear/DequantizeLinear pair on activations (onnxruntime then runs them in
f32, with no uint8 fake quantisation) and replaces each DequantizeLinear of a constant (the int8
weights, per-channel scales) by its f32 value, computed in float64 and rounded once to f32.
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper


def float_graph(m):
    """Rewrites `m` (an onnx.ModelProto, QDQ-quantised) in place and returns it."""
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    rename = {}
    keep = []
    new_inits = []
    for n in g.node:
        if n.op_type == "QuantizeLinear":
            rename[n.output[0]] = n.input[0]
            continue
        if n.op_type == "DequantizeLinear":
            if n.input[0] in inits:
                q, s, z = (inits[i] for i in n.input)
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                shape = [1] * q.ndim
                if s.ndim == 1 and s.size > 1:
                    shape[axis] = -1
                w = (q.astype(np.float64) - z.reshape(shape) if z.ndim else q.astype(np.float64) - z) * s.reshape(shape)
                new_inits.append(numpy_helper.from_array(w.astype(np.float32), n.output[0]))
            else:
                rename[n.output[0]] = n.input[0]
            continue
        keep.append(n)

    def res(x):
        while x in rename:
            x = rename[x]
        return x

    for n in keep:
        for i, x in enumerate(n.input):
            n.input[i] = res(x)
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    return m


if __name__ == "__main__":
    onnx.save(float_graph(onnx.load(sys.argv[1])), sys.argv[2])
