"""nanovla's cached decode against transformers' `generate()` on the same pretrained-decoder
weights, the same prompt and the same image tokens: time to first token (TTFT) and time per
output token, side by side; and nanovla's onnxruntime bundle where the export module is present.

    python benchmarks/bench_hf_generate.py                      # a SmolLM2-135M-shaped decoder, random weights
    python benchmarks/bench_hf_generate.py --decoder /data/models/SmolLM2-135M   # real local weights
    python benchmarks/bench_hf_generate.py --shape tiny        # overhead-dominated: a 2-layer d=64 decoder

Speed does not depend on the weights' values, so the default builds the SmolLM2-135M architecture
(30 layers, d=576, 9/3 heads, 49,152-token vocabulary, tied) with random weights; nothing is
downloaded. Both sides get the same input embeddings (nanovla's embedding of
<|bos|><|user_start|><|image|>*N question <|user_end|><|assistant_start|> with the image tokens of
one frame in place) and decode greedily for --new-tokens tokens (no early stop); the token ids are
checked to be equal.

    TTFT cold  : the whole prompt (image tokens + question) prefilled, first token out
    TTFT warm  : nanovla only: the frame's image prefix already in the KV cache (the runtime's image
                 context, reused for every question about a frame), only the question prefilled
    per token  : mean time of each further token

Prints a table; writes JSON (machine, versions, settings, results) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024, max_position_embeddings=1024, rope_theta=10000.0,
                 rms_norm_eps=1e-5, tie_word_embeddings=True),
}


def build_random_decoder(path: str, shape: str) -> str:
    """A Llama-architecture directory of the given shape with random weights and a byte-level
    tokenizer.json of exactly vocab_size entries (so the output head costs what the real one does)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = SHAPES[shape]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for word in ("the", "red", "cube", "is", "what", "colour", "how", "many", "are", "there", "?", "Ġthe",
                 "Ġred", "Ġcube", "Ġis", "Ġcolour", "Ġmany", "Ġare", "Ġthere"):
        vocab.setdefault(word, len(vocab))
    while len(vocab) < cfg["vocab_size"]:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**cfg, bos_token_id=0, eos_token_id=0)).eval().save_pretrained(path)
    tok.save(os.path.join(path, "tokenizer.json"))
    return path


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder", default="", help="a local HF Llama/Qwen2/SmolLM2 directory (default: random weights)")
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--image-tokens", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--question", default="what colour is the red cube?")
    parser.add_argument("--onnx", nargs="*", default=None, metavar="FORMAT",
                        help="also export bundles (onnx, onnx-int8; none named = onnx) and time onnxruntime")
    parser.add_argument("--out", default="bench_hf_generate.json")
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers

    from nanovla.model.checkpoint import load_checkpoint
    from nanovla.data.scenes import generate as render_scene
    from nanovla.runtime.engine import Engine, SamplingConfig
    from nanovla.runtime.preprocess import preprocess
    from nanovla.model.pretrained import init_checkpoint

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench-hf-")
    decoder_dir = args.decoder or build_random_decoder(os.path.join(work, "decoder"), args.shape)
    checkpoint = os.path.join(work, "checkpoint")
    init_checkpoint("yolov9t", decoder_dir, checkpoint, image_tokens=args.image_tokens, max_seq_len=1024,
                    log=lambda m: print(m, file=sys.stderr))
    model, tokenizer, _ = load_checkpoint(checkpoint)
    engine = Engine(model, tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(decoder_dir, local_files_only=True,
                                                           dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    frame, _ = render_scene("eval", 0, 0)
    v = model.cfg.vision
    pixels = torch.from_numpy(preprocess(frame, v.image_height, v.image_width))
    context = engine.encode(pixels)
    prefix = tokenizer.image_prefix(model.image_tokens)
    question = tokenizer.question_suffix(args.question)
    ids = torch.tensor([prefix + question])
    with torch.inference_mode():
        embeds = model.embed(ids, context.image_tokens)  # (1, T, C): the same input for both sides
    n = args.new_tokens

    # ---------------------------------------------------------------- nanovla (torch)
    def nanovla_cold(tokens: int):
        with torch.inference_mode():
            logits, cache = model.decoder(embeds, hidden_positions=torch.tensor([embeds.shape[1] - 1]))
            out = [int(torch.argmax(logits[0]))]
            pos = embeds.shape[1]
            for _ in range(tokens - 1):
                logits, cache = model.prefill(torch.tensor([[out[-1]]]), None, past=cache, start_pos=pos)
                out.append(int(torch.argmax(logits[0])))
                pos += 1
        return out

    def nanovla_warm(tokens: int):
        return engine.generate_ids(context, question, SamplingConfig(max_new_tokens=tokens))

    def hf_generate(tokens: int):
        with torch.inference_mode():
            out = hf.generate(inputs_embeds=embeds, attention_mask=torch.ones(ids.shape, dtype=torch.long),
                              max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        return out[0].tolist()[-tokens:]

    nanovla_tokens, warm_tokens, hf_tokens = nanovla_cold(n), nanovla_warm(n), hf_generate(n)  # + warm-up
    same = nanovla_tokens == hf_tokens and warm_tokens == nanovla_tokens
    rows = {}
    variants = (("transformers generate()", hf_generate), ("nanovla torch (cold)", nanovla_cold),
                ("nanovla torch (warm image context)", nanovla_warm))
    samples = {name: ([], []) for name, _ in variants}
    for _ in range(args.repeats):  # round-robin, so a busy moment of a shared machine hits every variant
        for name, fn in variants:
            samples[name][0].append(median_ms(lambda: fn(1), 1))
            samples[name][1].append(median_ms(lambda: fn(n), 1))
    for name, (firsts, fulls) in samples.items():
        first, full = statistics.median(firsts), statistics.median(fulls)
        rows[name] = {"ttft_ms": first, "per_token_ms": (full - first) / (n - 1), "total_ms": full}

    for fmt in (args.onnx or ["onnx"]) if args.onnx is not None else []:
        name = f"nanovla onnxruntime {fmt} (warm image context)"
        try:
            from nanovla.export.exporter import export_bundle
            from nanovla.export.formats import ExportOptions
            from nanovla.runtime import load_runtime

            bundle = os.path.join(work, f"bundle-{fmt}")
            # random weights: parity is measured but not required (a trained checkpoint's export checks it)
            options = ExportOptions(parity_scenes=1, parity_questions=0, allow_drift=True, calibration_count=4)
            export_bundle(checkpoint, fmt, bundle, options, log=lambda m: print(m, file=sys.stderr))
            runtime = load_runtime(bundle, backend="onnxruntime", threads=args.threads)
            ort_context = runtime.encode(frame)
            answers = [runtime.generate(ort_context, args.question, max_new_tokens=n) for _ in range(args.repeats + 1)][1:]
            ttft = statistics.median(a.first_token_ms for a in answers)
            total = statistics.median(a.latency_ms for a in answers)
            k = max(2, len(answers[0].token_ids))
            rows[name] = {"ttft_ms": ttft, "per_token_ms": (total - ttft) / (k - 1), "total_ms": total,
                          "tokens": len(answers[0].token_ids),
                          "tokens_equal_torch": answers[0].token_ids == warm_tokens[: len(answers[0].token_ids)]}
        except Exception as e:  # the export module is optional here; say why it was left out
            rows[name] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}

    base = rows["transformers generate()"]
    print(f"\n{args.shape if not args.decoder else args.decoder}: prompt {ids.shape[1]} tokens "
          f"({model.image_tokens} image tokens), {n} new tokens, {args.threads} thread(s), greedy tokens equal: {same}")
    print(f"{'':52s} {'TTFT ms':>9s} {'per token ms':>13s} {'TTFT x':>7s} {'decode x':>9s}")
    for name, r in rows.items():
        if "skipped" in r:
            print(f"{name:52s} skipped: {r['skipped']}")
            continue
        r["ttft_speedup"] = base["ttft_ms"] / r["ttft_ms"]
        r["decode_speedup"] = base["per_token_ms"] / r["per_token_ms"]
        print(f"{name:52s} {r['ttft_ms']:9.1f} {r['per_token_ms']:13.2f} {r['ttft_speedup']:7.2f} "
              f"{r['decode_speedup']:9.2f}")
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "load_average": os.getloadavg()},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "numpy": np.__version__},
              "settings": vars(args), "prompt_tokens": ids.shape[1], "greedy_tokens_equal": same, "results": rows}
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
