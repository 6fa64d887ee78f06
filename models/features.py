#!/usr/bin/env python3
"""Frozen-encoder features shared by training and evaluation (numpy + onnxruntime, no torch).

- `encoder_path()`: the encoder-only ONNX (models/convert.py, no head), the graph the service
  runs, cached under models/work/;
- `embed(rows, key)`: mean-pooled, L2-normalised e5 embeddings, cached by input hash;
- `train_logreg`: the frozen-encoder + logistic-regression baseline `make eval` reports.
"""
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

    tok = Tokenizer.from_file(os.path.join(BUILD, "tokenizer-full.json"))
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


def speaker_mask(rows):
    """1 where the speaker can carry the label (warning: agent; others: customer)."""
    agent = np.array([r.get("speaker") == "agent" for r in rows])
    mask = np.ones((len(rows), len(LABELS)), bool)
    mask[agent, :4] = False
    mask[~agent, 4] = False
    return mask
