#!/usr/bin/env python3
"""Check corpus JSONL files against models/data/WRITING-GUIDE.md and print a label table.

Exit status 1 when any line is malformed, so writers and CI can rely on it.
"""
import collections
import json
import sys

LANGS = {"sv", "nb", "nn", "da"}
CUSTOMER_LABELS = {"threat", "harassment", "profanity", "self_harm"}
AGENT_LABELS = {"warning"}
KEYS = {"id", "text", "lang", "speaker", "labels", "source", "notes"}


def check_line(obj):
    """Return a list of problems with one parsed line (empty when fine)."""
    problems = []
    missing = {"id", "text", "lang", "speaker", "labels", "source"} - obj.keys()
    if missing:
        problems.append(f"missing keys {sorted(missing)}")
        return problems
    extra = obj.keys() - KEYS
    if extra:
        problems.append(f"unknown keys {sorted(extra)}")
    if obj["lang"] not in LANGS:
        problems.append(f"lang {obj['lang']!r}")
    if obj["speaker"] not in ("customer", "agent"):
        problems.append(f"speaker {obj['speaker']!r}")
    allowed = CUSTOMER_LABELS if obj["speaker"] == "customer" else AGENT_LABELS
    if not isinstance(obj["labels"], list):
        problems.append("labels must be a list")
    else:
        bad = [label for label in obj["labels"] if label not in allowed]
        if bad:
            problems.append(f"labels {bad} not allowed for {obj['speaker']}")
        if len(set(obj["labels"])) != len(obj["labels"]):
            problems.append("repeated label")
    words = len(str(obj["text"]).split())
    if not 3 <= words <= 40:
        problems.append(f"{words} words (3-40)")
    return problems


def main(paths):
    ok = True
    seen = set()
    table = collections.Counter()
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as err:
                    print(f"{path}:{number}: not JSON: {err}")
                    ok = False
                    continue
                problems = check_line(obj)
                if obj.get("id") in seen:
                    problems.append(f"duplicate id {obj.get('id')}")
                seen.add(obj.get("id"))
                if problems:
                    ok = False
                    print(f"{path}:{number}: {'; '.join(problems)}")
                    continue
                table[(obj["lang"], obj["speaker"], "none")] += not obj["labels"]
                for label in obj["labels"]:
                    table[(obj["lang"], obj["speaker"], label)] += 1
                table[(obj["lang"], "all", "lines")] += 1
    for key in sorted(table):
        print("\t".join(key), table[key], sep="\t")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
