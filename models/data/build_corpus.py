#!/usr/bin/env python3
"""Assemble models/data/raw/<writer>/*.jsonl into train.jsonl and dev.jsonl.

- Whole writers are held apart as dev (DEV_WRITERS): dev measures generalisation to text written
  apart from training, not to a random cut of the same writers.
- Exact duplicates (after normalising case, punctuation and spaces) and near-duplicates (word-set
  Jaccard >= 0.8 within a language) are dropped; a training line too close to a dev line is
  dropped from training.
- Prints the counts per variety x label that models/data/README.md reports.

Usage: build_corpus.py [--raw models/data/raw] [--out models/data]
"""
import argparse
import collections
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from validate import check_line  # noqa: E402

DEV_WRITERS = {"dv1", "dv2"}
LABELS = ["threat", "harassment", "profanity", "self_harm", "warning"]
NEAR = 0.8


def normalise(text):
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(text.split())


def read_raw(raw_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(raw_dir, "*", "*.jsonl"))):
        writer = os.path.basename(os.path.dirname(path))
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                problems = check_line(obj)
                if problems:
                    raise SystemExit(f"{path}:{number}: {'; '.join(problems)}")
                obj["writer"] = writer
                rows.append(obj)
    return rows


def dedupe(rows, against=()):
    """Drop exact and near duplicates (within `rows`, and of anything in `against`)."""
    kept, seen = [], set()
    by_lang = collections.defaultdict(list)  # lang -> word sets kept so far
    for other in against:
        seen.add(normalise(other["text"]))
        by_lang[other["lang"]].append(set(normalise(other["text"]).split()))
    dropped = 0
    for row in rows:
        norm = normalise(row["text"])
        words = set(norm.split())
        if norm in seen or any(
            len(words & w) / max(1, len(words | w)) >= NEAR
            for w in by_lang[row["lang"]]
            if abs(len(w) - len(words)) <= max(2, len(words) // 4)
        ):
            dropped += 1
            continue
        seen.add(norm)
        by_lang[row["lang"]].append(words)
        kept.append(row)
    return kept, dropped


def table(rows):
    counts = collections.Counter()
    for r in rows:
        counts[(r["lang"], "lines")] += 1
        if not r["labels"]:
            counts[(r["lang"], "none_" + r["speaker"])] += 1
        for label in r["labels"]:
            counts[(r["lang"], label)] += 1
    cols = ["lines", "none_customer", "none_agent"] + LABELS
    out = ["| variety | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for lang in ["sv", "nb", "nn", "da"]:
        out.append(f"| {lang} | " + " | ".join(str(counts[(lang, c)]) for c in cols) + " |")
    out.append("| all | " + " | ".join(str(sum(counts[(l, c)] for l in ["sv", "nb", "nn", "da"])) for c in cols) + " |")
    return "\n".join(out)


def write(rows, path):
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            out = {k: r[k] for k in ("id", "text", "lang", "speaker", "labels", "source")}
            if r.get("notes"):
                out["notes"] = r["notes"]
            fh.write(json.dumps(out, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--raw", default=os.path.join(here, "raw"))
    ap.add_argument("--out", default=here)
    args = ap.parse_args()
    rows = read_raw(args.raw)
    dev, dev_dropped = dedupe([r for r in rows if r["writer"] in DEV_WRITERS])
    train, train_dropped = dedupe([r for r in rows if r["writer"] not in DEV_WRITERS], against=dev)
    write(train, os.path.join(args.out, "train.jsonl"))
    write(dev, os.path.join(args.out, "dev.jsonl"))
    print(f"train: {len(train)} lines ({train_dropped} near-duplicates dropped)")
    print(table(train))
    print(f"\ndev: {len(dev)} lines ({dev_dropped} near-duplicates dropped)")
    print(table(dev))
    print(f"\nall: {len(train) + len(dev)} lines")
    print(table(train + dev))


if __name__ == "__main__":
    main()
