#!/usr/bin/env python3
"""Choose per-label (and, where it clearly pays, per-language) thresholds on the dev set from
the scores the service itself produces (`callguard score`: model + lexicon as configured).

- Global threshold per label: the one maximising dev F1; ties go to the higher threshold.
- Alerting labels (threat, harassment, self_harm) are chosen together: the combination with
  the best summed F1 whose false-alert rate on no-label customer lines is <= 1 %.
- Per-language override: only where that variety's F1 gains >= 0.03 with >= 15 positives,
  and the false-alert cap still holds.
- Honest estimate: the same procedure tuned on one dev writer and scored on the other
  (cross-fitted), printed beside the in-sample figure.

--write replaces the [thresholds.*] block of src/default_config.toml.
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics  # noqa: E402
from metrics import ALERTING, LABELS, LANGS  # noqa: E402

GRID = [round(0.05 * i, 2) for i in range(1, 20)] + [0.97, 0.99]
CONFIG = os.path.join(metrics.ROOT, "src", "default_config.toml")


def may_carry(speaker, label):
    return speaker != "customer" if label == "warning" else speaker != "agent"


def predict(rows, outs, thresholds):
    """thresholds: {(lang or None, label): t}."""
    preds = []
    for r, o in zip(rows, outs):
        labels = set()
        for label in LABELS:
            t = thresholds.get((r["lang"], label), thresholds[(None, label)])
            if may_carry(r["speaker"], label) and o["scores"][label] >= t:
                labels.add(label)
        preds.append(labels)
    return preds


def label_f1(rows, outs, label, t, lang=None):
    idx = [i for i, r in enumerate(rows) if lang is None or r["lang"] == lang]
    gold = [label in rows[i]["labels"] for i in idx]
    pred = [may_carry(rows[i]["speaker"], label) and outs[i]["scores"][label] >= t for i in idx]
    return metrics.prf(gold, pred)[2], sum(gold)


def tune(rows, outs):
    thresholds = {}
    for label in LABELS:
        best = max(GRID, key=lambda t: (round(label_f1(rows, outs, label, t)[0], 4), t))
        thresholds[(None, label)] = best
    # the alerting labels jointly: the best summed F1 whose false-alert rate is <= 1 %
    negatives = [i for i, r in enumerate(rows) if r["speaker"] == "customer" and not r["labels"]]
    alerting = sorted(ALERTING)
    f1_at = {l: {t: label_f1(rows, outs, l, t)[0] for t in GRID} for l in alerting}
    fires = {l: {t: {i for i in negatives if outs[i]["scores"][l] >= t} for t in GRID} for l in alerting}
    best, best_key = None, None
    for a in GRID:
        for b in GRID:
            for c in GRID:
                ts = dict(zip(alerting, (a, b, c)))
                false = len(set().union(*(fires[l][ts[l]] for l in alerting)))
                if false > 0.01 * len(negatives):
                    continue
                key = (round(sum(f1_at[l][ts[l]] for l in alerting), 4), a + b + c)
                if best_key is None or key > best_key:
                    best, best_key = ts, key
    if best:
        for l in alerting:
            thresholds[(None, l)] = best[l]
    # per-variety overrides where they clearly pay and keep the false-alert cap
    for label in LABELS:
        for lang in LANGS:
            base, positives = label_f1(rows, outs, label, thresholds[(None, label)], lang)
            own = max(GRID, key=lambda t: (round(label_f1(rows, outs, label, t, lang)[0], 4), t))
            if positives >= 15 and label_f1(rows, outs, label, own, lang)[0] >= base + 0.03:
                trial = dict(thresholds)
                trial[(lang, label)] = own
                if metrics.evaluate(rows, predict(rows, outs, trial))["false_alert_rate"] <= 0.01:
                    thresholds = trial
    return thresholds


def write_config(thresholds):
    text = open(CONFIG, encoding="utf-8").read()
    lines = ["[thresholds.default]"]
    lines += [f"{l} = {thresholds[(None, l)]}" for l in LABELS]
    for lang in LANGS:
        lines += ["", f"[thresholds.{lang}]"]
        lines += [f"{l} = {thresholds[(lang, l)]}" for l in LABELS if (lang, l) in thresholds]
    block = "\n".join(lines) + "\n"
    new, n = re.subn(r"\[thresholds\.default\].*?(?=\n\[crisis_lines\])", block, text, flags=re.S)
    if n != 1:
        raise SystemExit("could not find the thresholds block in " + CONFIG)
    open(CONFIG, "w", encoding="utf-8").write(new)
    print(f"wrote thresholds to {CONFIG}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = metrics.read_jsonl(os.path.join(metrics.HERE, "data", "dev.jsonl"))
    outs = metrics.score(rows)
    thresholds = tune(rows, outs)
    print(metrics.SUMMARY_HEADER)
    print(metrics.summary_line("tuned on dev, scored on dev", metrics.evaluate(rows, predict(rows, outs, thresholds))))
    writers = sorted({r["source"].split("-")[0] for r in rows})
    if len(writers) == 2:
        crossed = [None] * len(rows)
        for w in writers:
            fit = [i for i, r in enumerate(rows) if not r["source"].startswith(w)]
            held = [i for i, r in enumerate(rows) if r["source"].startswith(w)]
            t = tune([rows[i] for i in fit], [outs[i] for i in fit])
            for i, p in zip(held, predict([rows[i] for i in held], [outs[i] for i in held], t)):
                crossed[i] = p
        print(metrics.summary_line("cross-fitted (tuned on one dev writer, scored on the other)",
                                   metrics.evaluate(rows, crossed)))
    for key in sorted(thresholds, key=lambda k: (k[0] or "", k[1])):
        print(f"threshold {key[0] or 'default'} {key[1]} = {thresholds[key]}", file=sys.stderr)
    if args.write:
        write_config(thresholds)


if __name__ == "__main__":
    main()
