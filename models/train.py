#!/usr/bin/env python3
"""Train Callguard's classifier: fine-tune the top layers of multilingual-e5-small + a head.

The encoder is rebuilt in PyTorch from the same pinned E5S1 weights the service converts
(models/convert.py reads them), so training starts from exactly the served base model.

1. The bottom (12 - top) layers stay frozen: their outputs for every train/dev line are computed
   once and cached in memory, so each epoch runs only the top layers.
2. The top `--top` layers and the head (standardise -> 256 ReLU -> 5 sigmoid) train with AdamW
   (lr 1e-4 for layers, 1e-3 for the head, one-cycle schedule), BCE with pos_weight
   sqrt(neg/pos), batches of 32 lines of similar length, fixed seeds.
   `--top 0` trains the head alone on the frozen encoder (the comparison the model card reports).
3. Dev F1 per label at 0.5 is printed after every epoch (the model alone, no lexicon).
4. models/head.npz gets the head (standardisation folded into its first layer) and, for
   `--top > 0`, the fine-tuned layers: linear weights as int8 per output channel (exactly what
   the served graph computes with), norms and biases in fp16. models/build.sh merges both into
   the ONNX graph.

Thresholds are tuned afterwards on the served scores by models/tune.py (`make train` runs all).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from convert import dequant, f32, q4_blocks, read_e5s1  # noqa: E402

LABELS = ["threat", "harassment", "profanity", "self_harm", "warning"]
MAX_TOKENS = 128
LINEARS = ["q", "k", "v", "ao", "fi", "fo"]
NORMS = ["aln", "oln"]


class Layer(nn.Module):
    """One post-LayerNorm BERT layer, initialised from the E5S1 tensors of layer `index`."""

    def __init__(self, hp, tensors, index):
        super().__init__()
        h, ffn = hp["hidden"], hp["ffn"]
        self.heads = hp["heads"]
        shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ffn, h), "fo": (h, ffn)}
        for name, (out_dim, in_dim) in shapes.items():
            lin = nn.Linear(in_dim, out_dim)
            nib, scale = q4_blocks(tensors, f"l{index}.{name}.w", out_dim, in_dim)
            lin.weight.data = torch.tensor(dequant(nib, scale))
            lin.bias.data = torch.tensor(f32(tensors, f"l{index}.{name}.b"))
            setattr(self, name, lin)
        for name in NORMS:
            norm = nn.LayerNorm(h, eps=hp["eps"])
            norm.weight.data = torch.tensor(f32(tensors, f"l{index}.{name}.w"))
            norm.bias.data = torch.tensor(f32(tensors, f"l{index}.{name}.b"))
            setattr(self, name, norm)

    def forward(self, x, mask):
        b, t, h = x.shape
        split = lambda y: y.view(b, t, self.heads, h // self.heads).transpose(1, 2)  # noqa: E731
        att = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)),
                                             attn_mask=mask[:, None, None, :].bool())
        x = self.aln(x + self.ao(att.transpose(1, 2).reshape(b, t, h)))
        return self.oln(x + self.fo(F.gelu(self.fi(x))))


def read(split):
    with open(os.path.join(HERE, "data", f"{split}.jsonl"), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def batches(rows, tokenizer, size):
    """Lines sorted by length, padded per batch: [(row indices, ids, mask)]."""
    order = np.argsort([len(r["text"]) for r in rows], kind="stable")
    out = []
    for start in range(0, len(rows), size):
        idx = order[start : start + size]
        enc = tokenizer.encode_batch(["query: " + rows[i]["text"] for i in idx])
        width = max(len(e.ids) for e in enc)
        ids = torch.ones(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width)
        for k, e in enumerate(enc):
            ids[k, : len(e.ids)] = torch.tensor(e.ids)
            mask[k, : len(e.ids)] = 1
        out.append((torch.tensor(idx), ids, mask))
    return out


class Encoder:
    """The frozen part: embeddings and the bottom layers."""

    def __init__(self, hp, tensors, frozen):
        nib, scale = q4_blocks(tensors, "emb.word", hp["vocab"], hp["hidden"])
        self.word = torch.tensor(dequant(nib, scale))
        self.pos = torch.tensor(f32(tensors, "emb.pos", (hp["max_pos"], hp["hidden"]))
                                + f32(tensors, "emb.type", (hp["type_vocab"], hp["hidden"]))[0])
        self.norm = nn.LayerNorm(hp["hidden"], eps=hp["eps"])
        self.norm.weight.data = torch.tensor(f32(tensors, "emb.ln.w"))
        self.norm.bias.data = torch.tensor(f32(tensors, "emb.ln.b"))
        self.layers = [Layer(hp, tensors, i) for i in range(frozen)]

    @torch.no_grad()
    def __call__(self, ids, mask):
        x = self.norm(self.word[ids] + self.pos[: ids.shape[1]])
        for layer in self.layers:
            x = layer(x, mask)
        return x


def quantise_rows(prefix, weight):
    """A linear weight [out, in] as int8 per output channel in the 7-bit range the served graph
    uses (models/convert.py, rowint8), so storing it this way loses nothing that serving keeps."""
    scale = np.maximum(np.abs(weight).max(axis=1), 1e-12) / 63.0
    q = np.clip(np.round(weight / scale[:, None]), -63, 63).astype(np.int8)
    return {prefix + ".q": q, prefix + ".s": scale.astype(np.float32)}


def pool(x, mask):
    e = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    return F.normalize(e, dim=-1)


def f1(gold, pred):
    tp = int((gold & pred).sum())
    return 2 * tp / max(1, 2 * tp + int((~gold & pred).sum()) + int((gold & ~pred).sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=4, help="layers to fine-tune (0: head only)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=os.path.join(HERE, "head.npz"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    hp, tensors = read_e5s1(os.path.join(HERE, "build", "e5-small-q4.bin"))
    tokenizer = Tokenizer.from_file(os.path.join(HERE, "build", "tokenizer-full.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    train, dev = read("train"), read("dev")
    first_top = hp["layers"] - args.top
    started = time.time()
    bottom = Encoder(hp, tensors, first_top)
    cache = lambda bs: [(idx, bottom(ids, mask).half(), mask) for idx, ids, mask in bs]  # noqa: E731
    train_b = cache(batches(train, tokenizer, 32))
    dev_b = cache(batches(dev, tokenizer, 64))
    print(f"cached {first_top} frozen layers for {len(train) + len(dev)} lines in "
          f"{time.time() - started:.0f} s", file=sys.stderr)

    top = nn.ModuleList([Layer(hp, tensors, i) for i in range(first_top, hp["layers"])])
    head = nn.Sequential(nn.Linear(hp["hidden"], 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, len(LABELS)))

    def embed(x, mask):
        x = x.float()
        for layer in top:
            x = layer(x, mask)
        return pool(x, mask)

    with torch.no_grad():
        pooled = torch.cat([embed(x, m) for _, x, m in train_b])
    mu, sd = pooled.mean(0), pooled.std(0) + 1e-6
    y_train = torch.tensor([[l in r["labels"] for l in LABELS] for r in train], dtype=torch.float32)
    pos = y_train.sum(0)
    pos_weight = torch.sqrt((len(train) - pos) / pos.clamp(min=1))
    groups = [{"params": head.parameters(), "lr": 1e-3}]
    if args.top:
        groups.append({"params": top.parameters(), "lr": args.lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=args.epochs * len(train_b), pct_start=0.1)
    gold = np.array([[l in r["labels"] for l in LABELS] for r in dev])
    agent = np.array([r["speaker"] == "agent" for r in dev])

    def evaluate():
        top.eval()
        head.eval()
        prob = np.zeros((len(dev), len(LABELS)), np.float32)
        with torch.no_grad():
            for idx, x, m in dev_b:
                prob[idx.numpy()] = torch.sigmoid(head((embed(x, m) - mu) / sd)).numpy()
        top.train()
        head.train()
        prob[agent, :4] = 0
        prob[~agent, 4] = 0
        return [f1(gold[:, j], prob[:, j] >= 0.5) for j in range(len(LABELS))]

    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        for b in rng.permutation(len(train_b)):
            idx, x, m = train_b[b]
            logits = head((embed(x, m) - mu) / sd)
            loss = F.binary_cross_entropy_with_logits(logits, y_train[idx], pos_weight=pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        scores = evaluate()
        print(f"epoch {epoch} ({time.time() - t0:.0f} s): dev F1 at 0.5 "
              + " ".join(f"{l} {s:.3f}" for l, s in zip(LABELS, scores)) + f" | macro {np.mean(scores):.3f}",
              file=sys.stderr)

    # standardisation folded into the head's first layer: ((e - mu) / sd) W^T = e (W/sd)^T - ...
    w0 = head[0].weight.detach().numpy().T / sd.numpy()[:, None]
    b0 = head[0].bias.detach().numpy() - (mu.numpy() / sd.numpy()) @ head[0].weight.detach().numpy().T
    out = {
        "w0": w0.astype(np.float32), "b0": b0.astype(np.float32),
        "w1": head[3].weight.detach().numpy().T.astype(np.float32),
        "b1": head[3].bias.detach().numpy().astype(np.float32),
        "labels": np.array(LABELS),
        "layers": np.arange(first_top, hp["layers"], dtype=np.int32),
    }
    for layer, index in zip(top, range(first_top, hp["layers"])):
        for name in LINEARS + NORMS:
            mod = getattr(layer, name)
            out[f"l{index}.{name}.b"] = mod.bias.detach().numpy().astype(np.float16)
            weight = mod.weight.detach().numpy()
            if name in NORMS:
                out[f"l{index}.{name}.w"] = weight.astype(np.float16)
            else:
                out.update(quantise_rows(f"l{index}.{name}", weight))
    np.savez(args.out, **out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) in {time.time() - started:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
