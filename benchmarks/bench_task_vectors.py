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

    python benchmarks/bench_task_vectors.py            # 16 queries x all layers
    python benchmarks/bench_task_vectors.py --quick    # 4 queries (CI smoke test)
    ICL_MODEL=EleutherAI/pythia-2.8b python benchmarks/bench_task_vectors.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch

from icllib import llm, settings
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


def forward_flops(model, n_tokens: int, context: int, with_unembedding: bool) -> float:
    """Approximate FLOPs of ``n_tokens`` new tokens attending to ``context`` positions: 2 x (block weights) per
    token, attention scores and mixing (4 x context x d per block), plus the unembedding when logits are needed."""
    parts = llm.model_parts(model)
    block_params = sum(p.numel() for block in parts.blocks for p in block.parameters())
    d = parts.hidden_size
    unembed = sum(p.numel() for p in parts.unembedding.parameters())
    per_token = 2 * block_params + 4 * context * d * parts.n_layers
    return n_tokens * per_token + (2 * unembed * (n_tokens if with_unembedding else 0))


def useful_flops(model, prompt_lengths: list[int], n_layers_swept: int) -> float:
    """FLOPs of the least work that answers the sweep: each prefix once, the last token once per layer."""
    total = 0.0
    for t in prompt_lengths:
        total += forward_flops(model, t - 1, t - 1, with_unembedding=False)
        total += n_layers_swept * forward_flops(model, 1, t, with_unembedding=True)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or settings.device()
    n_queries = 4 if args.quick else args.queries
    n_naive = 2 if args.quick else min(4, n_queries)

    model, tokenizer = llm.load_model(settings.model_name(), device=device)
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

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    record = {
        "model": name, "device": device, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "matmul_flops": peak_flops, "peak_memory_mib": peak_memory, "agree": agree,
        "methods": {m: {k: v for k, v in r.items() if k != "ids"} for m, r in results.items()},
    }
    (out / "bench_task_vectors.json").write_text(json.dumps(record, indent=2))
    if not agree:
        raise SystemExit("the three sweep methods disagree")


if __name__ == "__main__":
    main()
