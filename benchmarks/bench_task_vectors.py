"""Speed of the task-vector layer sweep: patched (query, layer) evaluations per second.

The dev-set layer choice of Hendel et al. (2023) needs one patched prediction ``f(x; theta_l(S))`` for every dev
query x and every block l. Three implementations in ``icllib.task_vectors.patched_predictions``:

* ``naive``   one forward of the bare query per (query, layer): the baseline;
* ``batched`` the query repeated once per layer in one batch, row l patched at block l;
* ``kv``      the query without its last token run once, its KV cache repeated for every layer, and only the last
  position recomputed (the patch changes nothing before it).

All three are timed in the same run on the same queries (and checked to agree); the script prints evaluations per
second, the ratio to ``naive``, the useful FLOP/s (the arithmetic the ``kv`` method needs, divided by each method's
time) against this machine's measured dense-matmul FLOP/s, and the peak memory.

``--part2`` then times what Chapters 5-8 compute with ``ICL_FULL=1`` from an empty cache, with the chapters' own
library calls and sizes (18 tasks, 50 dev + 50 test sets, 100 zero-shot queries, every block): Chapter 5's
``evaluate_task`` per task; Chapter 6's four other prompt formats per task (its fifth is Chapter 5's, read from the
cache); Chapter 7's task vectors of 50 sets per task; Chapter 8's five evaluations of task B (100 -> 50 zero-shot
queries, so not Chapter 5's cache entries), its five conflict runs of 100 prompts and its mean vectors. With
``--part2-tasks K`` the per-task parts run on K evenly spaced tasks and are scaled by 18 / K (printed as
extrapolated); Chapter 8's two per-pair parts always run in full. Plots, t-SNE and tables are not timed (seconds).

    python benchmarks/bench_task_vectors.py            # 16 queries x all layers
    python benchmarks/bench_task_vectors.py --quick    # 4 queries (CI smoke test)
    python benchmarks/bench_task_vectors.py --part2    # + the whole of Part II at full size, timed (minutes)
    python benchmarks/bench_task_vectors.py --part2 --part2-tasks 6   # ... measured on 6 of 18 tasks, extrapolated
    python benchmarks/bench_task_vectors.py --part2 --skip-sweep --part2-dtypes float32,bfloat16   # both, one run
    ICL_MODEL=EleutherAI/pythia-2.8b python benchmarks/bench_task_vectors.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from icllib import lang_tasks, llm, settings
from icllib import task_vectors as tv

WORDS = ["apple", "river", "green", "house", "music", "table", "light", "stone", "cloud", "dream", "tiger", "paper",
         "glass", "chair", "ocean", "plant", "bread", "horse", "smile", "train", "watch", "money", "night", "water"]


def matmul_flops(device: str, dtype: torch.dtype, size: int = 1024, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a dense (size x size) @ (size x size) product: the machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    _sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    _sync(device)
    return 2.0 * size**3 * n / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def forward_flops(model, n_tokens: int, context: int, with_unembedding: bool, n_blocks: int | None = None) -> float:
    """Approximate FLOPs of ``n_tokens`` new tokens attending to ``context`` positions through ``n_blocks`` blocks
    (default all): 2 x (block weights) per token, attention scores and mixing (4 x context x d per block), plus
    the unembedding when logits are needed."""
    parts = llm.model_parts(model)
    n_blocks = parts.n_layers if n_blocks is None else n_blocks
    block_params = sum(p.numel() for block in parts.blocks for p in block.parameters()) / parts.n_layers
    d = parts.hidden_size
    unembed = sum(p.numel() for p in parts.unembedding.parameters())
    per_token = n_blocks * (2 * block_params + 4 * context * d)
    return n_tokens * per_token + (2 * unembed * (n_tokens if with_unembedding else 0))


def useful_flops(model, prompt_lengths: list[int], n_layers_swept: int) -> float:
    """FLOPs of the least work that answers the sweep: each prefix once, then the last token once per layer l,
    through blocks l+1 .. L-1 only (replacing h_l makes the blocks before it irrelevant), and the unembedding."""
    total = 0.0
    n_layers = llm.n_layers(model)
    for t in prompt_lengths:
        total += forward_flops(model, t - 1, t - 1, with_unembedding=False)
        for layer in range(n_layers_swept):
            total += forward_flops(model, 1, t, with_unembedding=True, n_blocks=n_layers - 1 - layer)
    return total


def time_method(
    model, tokenizer, prompts, theta, method: str, fmt, device: str, repeats: int
) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` sweeps with ``method``, and the predicted ids."""
    best, ids = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        ids = tv.patched_predictions(model, tokenizer, prompts, theta, fmt=fmt, method=method)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 queries, naive on 2 of them (smoke test)")
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--device", default=None, help="torch device (default: settings.device())")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=2, help="timing repeats; the best is kept")
    parser.add_argument("--part2", action="store_true", help="also time the whole Part II at full size")
    parser.add_argument("--part2-tasks", type=int, default=18,
                        help="measure Part II's per-task work on this many of the 18 tasks and extrapolate")
    parser.add_argument("--skip-sweep", action="store_true", help="only the --part2 timing")
    parser.add_argument("--part2-dtypes", default=None,
                        help="comma-separated LLM dtypes to time Part II in, one after another, e.g. "
                             "float32,bfloat16 (default: ICL_DTYPE, i.e. settings.dtype())")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or settings.device()
    n_queries = 4 if args.quick else args.queries
    n_naive = 2 if args.quick else min(4, n_queries)

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    if args.part2 and args.skip_sweep:
        dtypes = (args.part2_dtypes or settings.dtype()).split(",")
        totals = {}
        for dtype_name in dtypes:
            model, tokenizer = llm.load_model(settings.model_name(), device=device, dtype=dtype_name)
            totals[dtype_name] = part2(model, tokenizer, args.part2_tasks, out)
            del model
        if len(totals) > 1:
            slowest = max(totals, key=totals.get)
            print("Part II, same run: " + ", ".join(
                f"{d} {m:.1f} min ({totals[slowest] / m:.2f}x as fast as {slowest})" for d, m in totals.items()))
        return
    model, tokenizer = llm.load_model(settings.model_name(), device=device, dtype=settings.dtype())
    parts = llm.model_parts(model)
    dtype = next(model.parameters()).dtype
    fmt = tv.FORMATS["example"]
    demos = [("a", "A"), ("b", "B"), ("k", "K"), ("q", "Q"), ("z", "Z")]
    prompts = [tv.format_prompt([], w, fmt) for w in (WORDS * 10)[:n_queries]]
    theta = tv.extract_task_vectors(model, tokenizer, [demos] * n_queries,
                                    [["m", "n"]] * n_queries, fmt)  # (n_queries, L, d)
    lengths = [len(llm.encode(tokenizer, p)) + int(fmt.bos) for p in prompts]
    n_layers = parts.n_layers

    peak_flops = matmul_flops(device, dtype)
    results = {}
    for method, n in (("kv", n_queries), ("batched", n_queries), ("naive", n_naive)):
        tv.patched_predictions(model, tokenizer, prompts[:1], theta[:1], fmt=fmt, method=method)  # warm-up
        seconds, ids = time_method(model, tokenizer, prompts[:n], theta[:n], method, fmt, device,
                                   1 if method == "naive" else args.repeats)
        evals = n * n_layers
        results[method] = {
            "queries": n,
            "evaluations": evals,
            "seconds": seconds,
            "evals_per_s": evals / seconds,
            "useful_flops_per_s": useful_flops(model, lengths[:n], n_layers) / seconds,
            "ids": ids,
        }
    reference = results["naive"]["ids"]
    agree = all(torch.equal(results[m]["ids"][: len(reference)], reference) for m in ("kv", "batched"))
    if device.startswith("cuda"):
        peak_memory = torch.cuda.max_memory_allocated() / 2**20
        memory_label = "peak CUDA memory"
    else:
        peak_memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        memory_label = "peak RSS"

    name = settings.model_name() or llm.DEFAULT_MODEL
    print(f"model {name} ({n_layers} blocks, d={parts.hidden_size}, {dtype}), device {device}, "
          f"{torch.get_num_threads()} threads; prompts of {min(lengths)}-{max(lengths)} tokens")
    print(f"dense matmul: {peak_flops / 1e9:.1f} GFLOP/s")
    print(f"{'method':<8} {'queries':>7} {'evals':>6} {'seconds':>8} {'evals/s':>9} {'vs naive':>9} "
          f"{'useful GFLOP/s':>15} {'% of matmul':>11}")
    base = results["naive"]["evals_per_s"]
    for method, r in results.items():
        print(f"{method:<8} {r['queries']:>7} {r['evaluations']:>6} {r['seconds']:>8.2f} {r['evals_per_s']:>9.1f} "
              f"{r['evals_per_s'] / base:>8.1f}x {r['useful_flops_per_s'] / 1e9:>15.2f} "
              f"{100 * r['useful_flops_per_s'] / peak_flops:>10.1f}%")
    print(f"kv / batched speed ratio: {results['kv']['evals_per_s'] / results['batched']['evals_per_s']:.1f}x")
    print(f"predictions agree across methods: {agree}")
    print(f"{memory_label}: {peak_memory:.0f} MiB")

    record = {
        "model": name, "device": device, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "matmul_flops": peak_flops, "peak_memory_mib": peak_memory, "agree": agree,
        "methods": {m: {k: v for k, v in r.items() if k != "ids"} for m, r in results.items()},
    }
    (out / "bench_task_vectors.json").write_text(json.dumps(record, indent=2))
    if not agree:
        raise SystemExit("the three sweep methods disagree")
    if args.part2:
        part2(model, tokenizer, args.part2_tasks, out)


def part2(model, tokenizer, n_tasks: int, out: Path) -> float:
    """Time the library work of Chapters 5-8 at full size (see the module docstring); print, save and return the
    total minutes (wall)."""
    names = list(lang_tasks.TASK_NAMES)
    if not 1 <= n_tasks <= len(names):
        raise SystemExit(f"--part2-tasks must be between 1 and {len(names)}, got {n_tasks}")
    picked = [names[round(i * (len(names) - 1) / max(1, n_tasks - 1))] for i in range(n_tasks)] \
        if n_tasks < len(names) else names
    scale = len(names) / len(picked)
    full = dict(n_demos=5, n_dev=50, n_test=50, seed=41, progress=False)
    pairs8 = [("next_letter", "to_upper"), ("list_last", "list_first"), ("prev_letter", "next_letter"),
              ("present_past", "present_gerund"), ("en_es", "en_fr")]
    seconds: dict[str, float] = {}
    measured: dict[str, float] = {}
    scaled_keys = ("ch05 evaluate_task x18", "ch06 4 more formats x18", "ch07 task vectors 18x50",
                   "ch08 mean vectors 18x50")

    cpu: dict[str, float] = {}

    def timed(key: str, fn, factor: float = 1.0):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        spent = time.perf_counter() - start
        measured[key] = measured.get(key, 0.0) + spent
        seconds[key] = seconds.get(key, 0.0) + spent * factor
        cpu[key] = cpu.get(key, 0.0) + (time.process_time() - cpu_start) * factor
        return result

    dtype_name = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"\nPart II at full size, {dtype_name}, {torch.get_num_threads()} threads; per-task work on "
          f"{'all 18 tasks' if scale == 1 else f'{len(picked)} of 18 tasks {picked}, scaled by {scale:.1f}'}")
    # an empty cache, so that the chapters' reuse (Chapter 6 of Chapter 5's runs) is what a fresh build gets
    with tempfile.TemporaryDirectory() as tmp:
        previous = os.environ.get("ICL_CACHE_DIR")
        os.environ["ICL_CACHE_DIR"] = tmp
        try:
            for name in picked:
                timed("ch05 evaluate_task x18", lambda: tv.evaluate_task(model, tokenizer, name, n_baseline=100,
                                                                        **full), scale)
                for fmt in ("bare", "bare+bos", "example+bos", "qa+bos"):
                    timed("ch06 4 more formats x18", lambda: tv.evaluate_task(model, tokenizer, name, fmt=fmt,
                                                                             n_baseline=100, **full), scale)
            timed("ch07 task vectors 18x50", lambda: tv.task_vectors_for(model, tokenizer, picked, n_sets=50,
                                                                         n_demos=4, n_dummies=2, cache=False), scale)
            results_b = {b: timed("ch08 evaluate B x5", lambda: tv.evaluate_task(model, tokenizer, b, n_baseline=50,
                                                                                 **full)) for _, b in pairs8}
            for a, b in pairs8:
                ta, tb = (lang_tasks.filter_single_token(lang_tasks.TASKS[n], tokenizer) for n in (a, b))
                timed("ch08 conflicts 5x100", lambda: tv.conflicting_tasks(
                    model, tokenizer, list(ta.pairs), list(tb.pairs), results_b[b].best_layer, n_sets=100, n_demos=4,
                    seed=41, fmt=tv.format_for_task(ta), scorer_a=ta, scorer_b=tb))
            layer = min(int(np.median([r.best_layer for r in results_b.values()])) + 2,
                        llm.n_layers(model) - 1)
            timed("ch08 mean vectors 18x50", lambda: tv.task_vectors_for(model, tokenizer, picked, n_sets=50,
                                                                         n_demos=5, n_dummies=1, layers=layer,
                                                                         cache=False), scale)
        finally:
            if previous is None:
                os.environ.pop("ICL_CACHE_DIR", None)
            else:
                os.environ["ICL_CACHE_DIR"] = previous
    total = sum(seconds.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    label = "" if scale == 1 else " (extrapolated)"
    for key, value in seconds.items():
        scaled = label if scale != 1 and key in scaled_keys else ""
        print(f"  {key:<26} {value / 60:6.2f} min{scaled}   (measured {measured[key] / 60:.2f} min wall; "
              f"{cpu[key] / 60:.2f} CPU-min{scaled})")
    # on a shared machine wall time includes waiting for the cores; CPU time / threads is what the work needs
    print(f"Part II total: {total / 60:.1f} min wall{label}, {sum(cpu.values()) / 60:.1f} CPU-min "
          f"(target: under 15 min on 2 cores); peak RSS {peak:.0f} MiB; load average {os.getloadavg()[0]:.1f}")
    record = {"dtype": dtype_name, "threads": torch.get_num_threads(), "tasks_measured": picked, "scale": scale,
              "minutes": {k: v / 60 for k, v in seconds.items()},
              "measured_minutes": {k: v / 60 for k, v in measured.items()},
              "cpu_minutes": {k: v / 60 for k, v in cpu.items()},
              "total_minutes": total / 60, "total_cpu_minutes": sum(cpu.values()) / 60, "peak_rss_mib": peak,
              "load_average": os.getloadavg()[0]}
    (out / f"bench_task_vectors_part2_{dtype_name}.json").write_text(json.dumps(record, indent=2))
    return total / 60


if __name__ == "__main__":
    main()
