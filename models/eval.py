#!/usr/bin/env python3
"""Dev-set evaluation (`make eval`): the served system against two baselines.

- served: `callguard score` with the default config (model + lexicon, tuned thresholds);
- lexicon only: the same binary with every label's source set to the lexicon;
- frozen encoder + logistic regression: per-label LR on standardised e5 embeddings, at 0.5.

Prints precision, recall and F1 per label per variety, macro-F1 overall and per variety, and the
false-alert rate on no-label customer lines (share that would raise an alert). --card writes the
tables into models/MODEL_CARD.md between its EVAL markers.
"""
import argparse
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics  # noqa: E402
import features  # noqa: E402
from metrics import LABELS, LANGS  # noqa: E402

LEXICON_ONLY = "[scoring]\n" + "".join(f'{l} = "lexicon"\n' for l in LABELS)


def logreg_baseline(dev):
    tr = features.read("train")
    enc = features.encoder_path()
    xtr = features.embed(tr, "train-" + features.sha(enc, os.path.join(features.HERE, "data", "train.jsonl")))
    xdv = features.embed(dev, "dev-" + features.sha(enc, os.path.join(features.HERE, "data", "dev.jsonl")))
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    w, b = features.train_logreg((xtr - mu) / sd, features.targets(tr))
    prob = features.sigmoid(((xdv - mu) / sd) @ w + b)
    mask = features.speaker_mask(dev)
    return [{l for j, l in enumerate(LABELS) if prob[i, j] >= 0.5 and mask[i, j]} for i in range(len(dev))]


def cell_table(m):
    lines = ["| label | " + " | ".join(f"{lang} P / R / F1" for lang in LANGS) + " | all P / R / F1 |",
             "|---" * (len(LANGS) + 2) + "|"]
    for label in LABELS:
        cells = [m["cell"][(lang, label)] for lang in LANGS] + [m["label"][label]]
        lines.append(f"| {label} | " + " | ".join(f"{p:.2f} / {r:.2f} / {f:.3f}" for p, r, f in cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--card", action="store_true", help="write the tables into models/MODEL_CARD.md")
    args = ap.parse_args()
    dev = metrics.read_jsonl(os.path.join(metrics.HERE, "data", "dev.jsonl"))
    served = metrics.evaluate(dev, [set(o["labels"]) for o in metrics.score(dev)])
    lexicon = metrics.evaluate(dev, [set(o["labels"]) for o in metrics.score(dev, LEXICON_ONLY)])
    logreg = metrics.evaluate(dev, logreg_baseline(dev))
    langs = {lang: sum(1 for r in dev if r["lang"] == lang) for lang in LANGS}
    summary = "\n".join([
        f"Dev set: {len(dev)} lines ({', '.join(f'{k} {v}' for k, v in langs.items())}), "
        f"{served['negatives']} no-label customer lines.",
        "",
        metrics.SUMMARY_HEADER,
        metrics.summary_line("served (model + lexicon)", served),
        metrics.summary_line("baseline: lexicon only", lexicon),
        metrics.summary_line("baseline: frozen e5 + logistic regression", logreg),
        "",
        "Served system, per label and variety:",
        "",
        cell_table(served),
    ])
    print(summary)
    if args.card:
        path = os.path.join(metrics.HERE, "MODEL_CARD.md")
        text = open(path, encoding="utf-8").read()
        new, n = re.subn(r"(<!-- EVAL -->\n).*?(<!-- /EVAL -->)", lambda m: m.group(1) + summary + "\n" + m.group(2),
                         text, flags=re.S)
        if n != 1:
            raise SystemExit(f"no EVAL markers in {path}")
        open(path, "w", encoding="utf-8").write(new)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
