"""Speed of the causal-mediation pass of function vectors: indirect effects per second, batched against one by one.

Todd et al. (2024) patch one attention head at a time into a prompt with shuffled labels: one forward per (prompt,
block, head), 270 per prompt on SmolLM2-135M (30 blocks x 9 heads), 448 on GPT-J. The three implementations of
``icllib.function_vectors.indirect_effects``, timed in the same run on the same prompts:

* ``naive``   one forward of the whole prompt per head: the baseline (the reference code's loop);
* ``batched`` the prompt repeated once per head in one batch (any model);
* ``kv``      the prompt without its last token once, its KV cache repeated for every head, and only the last
  position recomputed, starting each group of blocks from the unpatched state entering it.

The naive loop runs on a few blocks only (all their heads) and its time per head is extrapolated; the other two
run on every head. The script prints heads per second, the speed-up over ``naive`` (target: at least 10x for
``kv``), and the largest difference between the methods' indirect effects on the blocks they share.

    python benchmarks/bench_function_vectors.py            # 2 prompts of 10 demonstrations, naive on 4 blocks
    python benchmarks/bench_function_vectors.py --quick    # 1 prompt of 5 demonstrations, naive on 2 blocks, no
                                                           # batched (about a minute on 2 cores)
    ICL_MODEL=EleutherAI/gpt-j-6b python benchmarks/bench_function_vectors.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from icllib import function_vectors as fv
from icllib import lang_tasks, llm, settings
from icllib import task_vectors as tv


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn, *args, **kwargs):
    """``(seconds, fn(*args, **kwargs))``."""
    _sync(device)
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    _sync(device)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 prompt of 5 demonstrations, naive on 2 blocks, batched left out")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--demos", type=int, default=10)
    parser.add_argument("--naive-blocks", type=int, default=4, help="blocks the naive loop runs (all their heads)")
    parser.add_argument("--task", default="antonyms")
    parser.add_argument("--device", default=None, help="torch device (default: settings.device())")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_prompts, n_demos, n_naive = (1, 5, 2) if args.quick else (args.prompts, args.demos, args.naive_blocks)
    device = args.device or settings.device()

    model, tokenizer = llm.load_model(settings.model_name(), device=device, dtype=settings.dtype())
    outputs = fv.attention_outputs(model)
    task = lang_tasks.filter_single_token(lang_tasks.load_task(args.task), tokenizer)
    fmt = tv.format_for_task(task, tv.DEFAULT_FORMAT)
    rng = np.random.default_rng(0)
    clean = fv.draw_prompts(task.pairs, 8, n_demos, rng)
    means = fv.head_activations(model, tokenizer, [fmt.prompt(d, q[0]) for d, q in clean], fmt).mean(0)
    corrupted = fv.draw_prompts(task.pairs, n_prompts, n_demos, rng, shuffle_labels=True)
    prompts = [fmt.prompt(d, q[0]) for d, q in corrupted]
    answers = fv.answer_ids(tokenizer, [q[1] for _, q in corrupted], fmt)
    naive_blocks = [int(b) for b in np.linspace(0, outputs.n_layers - 1, n_naive).round()]

    fv.indirect_effects(model, tokenizer, prompts[:1], answers[:1], means, fmt, layers=[0], method="kv")  # warm-up
    results, effects = {}, {}
    methods = [("kv", None), ("naive", naive_blocks)] + ([] if args.quick else [("batched", None)])
    for method, layers in methods:
        seconds, effects[method] = timed(device, fv.indirect_effects, model, tokenizer, prompts, answers, means, fmt,
                                         layers=layers, method=method)
        heads = n_prompts * (outputs.n_layers if layers is None else len(layers)) * outputs.n_heads
        results[method] = {"heads": heads, "seconds": seconds, "heads_per_s": heads / seconds}
    gap = max(float((effects[m][:, naive_blocks] - effects["naive"]).abs().max()) for m in effects if m != "naive")
    scale = float(effects["naive"].abs().max())

    name = settings.model_name() or llm.DEFAULT_MODEL
    lengths = [len(llm.encode(tokenizer, p)) for p in prompts]
    print(f"model {name} ({outputs.n_layers} blocks x {outputs.n_heads} heads, {next(model.parameters()).dtype}), "
          f"device {device}, {torch.get_num_threads()} threads; {n_prompts} prompt(s) of {n_demos} demonstrations, "
          f"{min(lengths)}-{max(lengths)} tokens; naive on blocks {naive_blocks}")
    print(f"{'method':<8} {'heads':>6} {'seconds':>8} {'heads/s':>9} {'vs naive':>9}")
    base = results["naive"]["heads_per_s"]
    for method, r in results.items():
        print(f"{method:<8} {r['heads']:>6} {r['seconds']:>8.2f} {r['heads_per_s']:>9.1f} "
              f"{r['heads_per_s'] / base:>8.1f}x")
    ratio = results["kv"]["heads_per_s"] / base
    print(f"kv speed-up over one head per forward: {ratio:.1f}x (target >= 10x)")
    print(f"largest difference between methods: {gap:.2e} (largest |effect| {scale:.2e})")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    record = {"model": name, "device": device, "threads": torch.get_num_threads(), "prompts": n_prompts,
              "demos": n_demos, "naive_blocks": naive_blocks, "methods": results, "kv_speedup": ratio,
              "max_difference": gap}
    (out / "bench_function_vectors.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
