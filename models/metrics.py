"""Shared evaluation helpers for models/tune.py and models/eval.py: run `callguard score`,
compute per-label / per-variety precision, recall and F1, and the false-alert rate."""
import json
import os
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(ROOT, "target", "release", "callguard")
LABELS = ["threat", "harassment", "profanity", "self_harm", "warning"]
LANGS = ["sv", "nb", "nn", "da"]
# customer labels that raise an alert on their own (profanity alone does not)
ALERTING = {"threat", "harassment", "self_harm"}


def read_jsonl(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def score(rows, config_text=None):
    """Run the release binary's `score` on rows; returns its output lines in order."""
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "in.jsonl")
        out = os.path.join(tmp, "out.jsonl")
        with open(inp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps({k: r[k] for k in ("id", "text", "lang", "speaker")}, ensure_ascii=False) + "\n")
        cmd = [BIN, "score", "--input", inp, "--output", out]
        if config_text is not None:
            cfg = os.path.join(tmp, "config.toml")
            with open(cfg, "w", encoding="utf-8") as fh:
                fh.write(config_text)
            cmd += ["--config", cfg]
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "RUST_LOG": "error"})
        return read_jsonl(out)


def prf(gold, pred):
    tp = sum(1 for g, p in zip(gold, pred) if g and p)
    fp = sum(1 for g, p in zip(gold, pred) if not g and p)
    fn = sum(1 for g, p in zip(gold, pred) if g and not p)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return precision, recall, f1


def evaluate(rows, predicted):
    """predicted: list of label sets aligned with rows. Returns a dict of figures."""
    out = {"label": {}, "lang": {}, "cell": {}}
    for label in LABELS:
        gold = [label in r["labels"] for r in rows]
        pred = [label in p for p in predicted]
        out["label"][label] = prf(gold, pred)
        for lang in LANGS:
            idx = [i for i, r in enumerate(rows) if r["lang"] == lang]
            out["cell"][(lang, label)] = prf([gold[i] for i in idx], [pred[i] for i in idx])
    out["macro_f1"] = sum(out["label"][l][2] for l in LABELS) / len(LABELS)
    for lang in LANGS:
        out["lang"][lang] = sum(out["cell"][(lang, l)][2] for l in LABELS) / len(LABELS)
    negatives = [i for i, r in enumerate(rows) if r["speaker"] == "customer" and not r["labels"]]
    alerts = sum(1 for i in negatives if ALERTING & set(predicted[i]))
    out["false_alert_rate"] = alerts / max(1, len(negatives))
    out["negatives"] = len(negatives)
    return out


def summary_line(name, m):
    langs = " ".join(f"{l} {m['lang'][l]:.3f}" for l in LANGS)
    return (f"| {name} | {m['macro_f1']:.3f} | {langs} | "
            + " | ".join(f"{m['label'][l][2]:.3f}" for l in LABELS)
            + f" | {100 * m['false_alert_rate']:.1f} % |")


SUMMARY_HEADER = ("| system | macro-F1 | per variety (macro-F1) | "
                  + " | ".join(LABELS) + " | false alerts |\n|---|---|---|"
                  + "---|" * len(LABELS) + "---|")
