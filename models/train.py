#!/usr/bin/env python3
"""Train Callguard's classification head on the frozen multilingual-e5-small encoder.

Steps (each cached under models/work/ by input hash):
1. build the encoder-only ONNX (models/convert.py, no head) from the pinned E5S1 weights;
2. embed models/data/train.jsonl and dev.jsonl with it (the same int8 graph the service runs,
   so the head learns on exactly the features it will see);
3. train the head: standardise, one hidden ReLU layer, five sigmoid outputs, BCE with
   pos_weight sqrt(neg/pos), Adam with weight decay, fixed seed; standardisation is folded
   into the first layer;
4. print dev F1 at 0.5 beside the frozen-encoder logistic-regression baseline;
5. write models/head.npz (small: ~400 KB).

Thresholds are tuned afterwards on the served scores by models/tune.py.
Usage: train.py [--hidden 256] [--epochs 60] [--seed 13]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(HERE, "build")
WORK = os.path.join(HERE, "work")
LABELS = ["threat", "harassment", "profanity", "self_harm", "warning"]
MAX_TOKENS = 128


def sha(*paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def encoder_path():
    """The encoder without a head, rebuilt when convert.py or the weights change."""
    src = os.path.join(BUILD, "e5-small-q4.bin")
    if not os.path.exists(src):
        raise SystemExit("run models/build.sh first (it fetches the base weights)")
    out = os.path.join(WORK, f"encoder-{sha(src, os.path.join(HERE, 'convert.py'))}.onnx")
    if not os.path.exists(out):
        subprocess.run([sys.executable, os.path.join(HERE, "convert.py"), src, out], check=True)
    return out


def read(split):
    with open(os.path.join(HERE, "data", f"{split}.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def embed(rows, cache_key):
    """Mean-pooled, L2-normalised sentence embeddings, cached."""
    path = os.path.join(WORK, f"emb-{cache_key}.npy")
    if os.path.exists(path):
        return np.load(path)
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(BUILD, "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(encoder_path(), opts, providers=["CPUExecutionProvider"])
    texts = [r["text"] for r in rows]
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), 384), np.float32)
    started = time.time()
    for i in range(0, len(texts), 64):
        idx = order[i : i + 64]
        enc = tok.encode_batch(["query: " + texts[j] for j in idx])
        width = max(len(e.ids) for e in enc)
        ids = np.ones((len(idx), width), np.int64)
        mask = np.zeros_like(ids)
        for k, e in enumerate(enc):
            ids[k, : len(e.ids)] = e.ids
            mask[k, : len(e.ids)] = 1
        out[idx] = sess.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    print(f"embedded {len(texts)} lines in {time.time() - started:.0f} s", file=sys.stderr)
    np.save(path, out)
    return out


def targets(rows):
    return np.array([[label in r["labels"] for label in LABELS] for r in rows], np.float32)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def train_mlp(x, y, hidden, epochs, seed, lr=1e-3, decay=1e-4, batch=64, dropout=0.1):
    """One hidden ReLU layer; returns [w0, b0, w1, b1]. Plain numpy Adam, deterministic."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    pos = y.sum(0)
    pos_weight = np.sqrt((n - pos) / np.maximum(pos, 1)).astype(np.float32)
    params = [
        (rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d)).astype(np.float32),
        np.zeros(hidden, np.float32),
        (rng.standard_normal((hidden, y.shape[1])) * np.sqrt(1.0 / hidden)).astype(np.float32),
        np.zeros(y.shape[1], np.float32),
    ]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb, yb = x[idx], y[idx]
            keep = (rng.random(xb.shape) >= dropout).astype(np.float32) / (1 - dropout)
            xd = xb * keep
            h = xd @ params[0] + params[1]
            a = np.maximum(h, 0)
            p = sigmoid(a @ params[2] + params[3])
            # d/dlogit of pos_weight-weighted BCE
            g = (p * (1 + (pos_weight - 1) * yb) - pos_weight * yb) / len(idx)
            grads = [None, None, a.T @ g, g.sum(0)]
            ga = (g @ params[2].T) * (h > 0)
            grads[0] = xd.T @ ga
            grads[1] = ga.sum(0)
            step += 1
            for i, (p_, g_) in enumerate(zip(params, grads)):
                if i % 2 == 0:
                    g_ = g_ + decay * p_
                m[i] = 0.9 * m[i] + 0.1 * g_
                v[i] = 0.999 * v[i] + 0.001 * g_ * g_
                mhat = m[i] / (1 - 0.9**step)
                vhat = v[i] / (1 - 0.999**step)
                p_ -= lr * mhat / (np.sqrt(vhat) + 1e-8)
    return params


def mlp_predict(params, x):
    return sigmoid(np.maximum(x @ params[0] + params[1], 0) @ params[2] + params[3])


def train_logreg(x, y, l2=30.0, iters=400, seed=13):
    """Per-label logistic regression with L2, balanced classes, full-batch Adam: the
    frozen-encoder baseline that `make eval` reports."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    pos = y.sum(0)
    pos_weight = ((n - pos) / np.maximum(pos, 1)).astype(np.float32)  # balanced classes
    w = (rng.standard_normal((d, y.shape[1])) * 0.01).astype(np.float32)
    b = np.zeros(y.shape[1], np.float32)
    mw, vw, mb, vb = 0, 0, 0, 0
    for step in range(1, iters + 1):
        p = sigmoid(x @ w + b)
        g = (p * (1 + (pos_weight - 1) * y) - pos_weight * y) / n
        gw = x.T @ g + l2 / n * w
        gb = g.sum(0)
        mw = 0.9 * mw + 0.1 * gw
        vw = 0.999 * vw + 0.001 * gw * gw
        mb = 0.9 * mb + 0.1 * gb
        vb = 0.999 * vb + 0.001 * gb * gb
        w -= 0.05 * (mw / (1 - 0.9**step)) / (np.sqrt(vw / (1 - 0.999**step)) + 1e-8)
        b -= 0.05 * (mb / (1 - 0.9**step)) / (np.sqrt(vb / (1 - 0.999**step)) + 1e-8)
    return w, b


def f1(y, p):
    tp = float((y & p).sum())
    fp = float((~y & p).sum())
    fn = float((y & ~p).sum())
    return 2 * tp / max(1.0, 2 * tp + fp + fn)


def speaker_mask(rows):
    """1 where the speaker can carry the label (warning: agent; others: customer)."""
    agent = np.array([r.get("speaker") == "agent" for r in rows])
    mask = np.ones((len(rows), len(LABELS)), bool)
    mask[agent, :4] = False
    mask[~agent, 4] = False
    return mask


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", default=os.path.join(HERE, "head.npz"))
    args = ap.parse_args()
    os.makedirs(WORK, exist_ok=True)
    train, dev = read("train"), read("dev")
    key = sha(encoder_path(), os.path.join(HERE, "data", "train.jsonl"))
    xtr = embed(train, "train-" + key)
    xdv = embed(dev, "dev-" + sha(encoder_path(), os.path.join(HERE, "data", "dev.jsonl")))
    ytr, ydv = targets(train), targets(dev)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ztr, zdv = (xtr - mu) / sd, (xdv - mu) / sd

    started = time.time()
    params = train_mlp(ztr, ytr, args.hidden, args.epochs, args.seed)
    print(f"head trained in {time.time() - started:.0f} s", file=sys.stderr)
    w_lr, b_lr = train_logreg(ztr, ytr)
    mask = speaker_mask(dev)
    ybool = ydv.astype(bool)
    for name, prob in [("mlp head", mlp_predict(params, zdv)), ("logreg", sigmoid(zdv @ w_lr + b_lr))]:
        scores = [f1(ybool[:, j] & mask[:, j], (prob[:, j] >= 0.5) & mask[:, j]) for j in range(5)]
        print(f"dev F1 at 0.5, {name}: " + " ".join(f"{l} {s:.3f}" for l, s in zip(LABELS, scores))
              + f" | macro {np.mean(scores):.3f}", file=sys.stderr)

    # fold standardisation into the first layers: (x - mu)/sd @ w = x @ (w/sd) - (mu/sd) @ w
    w0 = params[0] / sd[:, None]
    b0 = params[1] - (mu / sd) @ params[0]
    np.savez(
        args.out,
        w0=w0.astype(np.float32), b0=b0.astype(np.float32),
        w1=params[2].astype(np.float32), b1=params[3].astype(np.float32),
        labels=np.array(LABELS),
    )
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
