"""Chapter 10's expensive computations: the map of where task vectors appear in trained causal transformers.

A *configuration* is a dict of the factors the map varies (``FACTORS``): ``depth`` (blocks), ``width``
(d_model), ``m`` (basis functions), ``every_length`` (training prompts of every length 0..N, or all of length N),
``arrow`` (the ``x -> y`` format, or ``x y`` without arrows) and ``tvp`` (None, or the block of the
task-vector-prompting loss). A *size* is a dict of what the edition fixes (``SIZE_KEYS``): the dictionary (K
tokens in R^d), N, tau, the training run (steps, batch, learning rate) and the evaluation (prompts, learned-vector
steps); the chapter sets one per edition.

:func:`run_config` trains a configuration over several seeds (each model cached on disk, so a cut-off run resumes)
and evaluates every model with :func:`icllib.bridge.evaluate_model`; the chapter records one call per configuration
(``records.result("ch10/grid/<name>", run_config, ...)``). :func:`ci_grid` varies one factor at a time around a
base configuration; :func:`full_grid` crosses all of them.
"""

from __future__ import annotations

import itertools

import torch

from icllib import basis, cache
from icllib._checks import check_bool, check_int
from icllib.bridge.emergence import ModelReport, evaluate_model
from icllib.bridge.sequences import SequenceLayout
from icllib.bridge.training import train_sequence_model
from icllib.models.causal import CausalTransformer

__all__ = ["FACTORS", "TRAIN_KEYS", "SIZE_KEYS", "check_size", "configuration", "config_name", "ci_grid", "full_grid", "tvp_configs",
           "record_order", "train_model", "run_config"]

FACTORS = ("depth", "width", "m", "every_length", "arrow", "tvp")
#: What a size fixes — the dictionary (K tokens in R^d), N demonstrations, tau, heads per block, the training run
#: (steps, batch, learning rate, warm-up, evaluation interval, weight of the TVP term; ``TRAIN_KEYS``) and the
#: evaluation (dev, test and learned-vector prompts, learned-vector steps).
TRAIN_KEYS = ("K", "N", "d", "tau", "heads", "steps", "batch", "lr", "warmup", "eval_every", "tvp_weight")
SIZE_KEYS = (*TRAIN_KEYS, "n_dev", "n_test", "n_fit", "learned_steps")
BASE = {"depth": 2, "width": 16, "m": 1, "every_length": False, "arrow": True, "tvp": None}


def check_size(size: dict) -> dict:
    """A size: a dict with exactly the keys of ``SIZE_KEYS`` (the chapter sets one per edition)."""
    if not isinstance(size, dict) or set(size) != set(SIZE_KEYS):
        got = sorted(size) if isinstance(size, dict) else type(size).__name__
        raise ValueError(f"size must be a dict with the keys {list(SIZE_KEYS)}, got {got}")
    return size


def configuration(base: dict | None = None, **changes) -> dict:
    """A configuration: ``base`` (default ``BASE``) with ``changes``, checked."""
    config = {**(BASE if base is None else base), **changes}
    if set(config) != set(FACTORS):
        raise ValueError(f"a configuration has exactly the factors {list(FACTORS)}, got {sorted(config)}")
    for name in ("depth", "width", "m"):
        check_int(name, config[name], minimum=1)
    check_bool("every_length", config["every_length"])
    check_bool("arrow", config["arrow"])
    if config["tvp"] is not None:
        check_int("tvp", config["tvp"], minimum=0, maximum=config["depth"] - 1)
        if config["every_length"]:
            raise ValueError("the task-vector-prompting loss (tvp) trains on full-length prompts only")
    return config


def config_name(config: dict) -> str:
    """A short name such as ``d4-w32-m1-full-arrow`` (``-tvp1`` with the auxiliary loss at block 1)."""
    config = configuration(config)
    parts = [f"d{config['depth']}", f"w{config['width']}", f"m{config['m']}",
             "every" if config["every_length"] else "full", "arrow" if config["arrow"] else "noarrow"]
    return "-".join(parts) + ("" if config["tvp"] is None else f"-tvp{config['tvp']}")


def ci_grid() -> list[dict]:
    """One factor at a time around ``BASE``: depth 4, m = 2, every length, no arrow (width and depth 8 are
    varied in the full grid only)."""
    changes = [{}, {"depth": 4}, {"m": 2}, {"every_length": True}, {"arrow": False}]
    return [configuration(**c) for c in changes]


def full_grid() -> list[dict]:
    """Every combination of depth 2, 4, 8; width 16, 32; m = 1, 2; every length or not; arrow or not."""
    grid = itertools.product((2, 4, 8), (16, 32), (1, 2), (False, True), (True, False))
    return [configuration(depth=d, width=w, m=m, every_length=e, arrow=a) for d, w, m, e, a in grid]


def tvp_configs(full: bool) -> list[dict]:
    """The positive control: the base configuration (2 blocks) trained with the auxiliary loss at block 0, with
    arrows (CI) or in both formats (full, which adds 4 blocks with the loss at block 1)."""
    check_bool("full", full)
    if not full:
        return [configuration(tvp=0)]
    return [configuration(tvp=0), configuration(tvp=0, arrow=False), configuration(depth=4, tvp=1),
            configuration(depth=4, tvp=1, arrow=False)]


def record_order(full: bool) -> list[dict]:
    """Every configuration an edition records, cheapest first: width 16 by depth, the controls, then width 32."""
    if not full:
        return [*ci_grid(), *tvp_configs(False)]
    grid = full_grid()
    narrow = sorted((c for c in grid if c["width"] == 16), key=lambda c: c["depth"])
    wide = sorted((c for c in grid if c["width"] != 16), key=lambda c: c["depth"])
    return [*narrow, *tvp_configs(True), *wide]


def _dictionary(config: dict, size: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + seed)
    tokens = basis.gaussian_dictionary(size["K"], size["d"], gen)
    return tokens.float(), basis.GaussianLookupFeatures(tokens, config["m"], gen)(tokens)


def _model(config: dict, size: dict, seed: int) -> CausalTransformer:
    layout = SequenceLayout(size["d"], True, config["arrow"])
    return CausalTransformer(layout.d_input, layout.length(size["N"]), config["width"], config["depth"],
                             size["heads"], 2 * config["width"], generator=torch.Generator().manual_seed(2000 + seed),
                             rotary_base=30.0)


def train_model(config: dict, training: dict, seed: int) -> dict:
    """Train one model of ``config`` from ``seed`` (dictionary, initialisation and prompts), ``training`` holding
    the ``TRAIN_KEYS`` of a size: ``{"state_dict": ..., "history": TrainingHistory}`` (demonstrations in a random
    order per prompt)."""
    config = configuration(config)
    if not isinstance(training, dict) or set(training) != set(TRAIN_KEYS):
        raise ValueError(f"training must be a dict with the keys {list(TRAIN_KEYS)}")
    tokens, Z_all = _dictionary(config, training, seed)
    model = _model(config, training, seed)
    history = train_sequence_model(
        model, tokens, Z_all, training["N"], training["tau"], training["steps"], training["batch"], training["lr"],
        generator=torch.Generator().manual_seed(3000 + seed), shuffle=True, arrow=config["arrow"],
        min_demos=0 if config["every_length"] else None, tvp_block=config["tvp"],
        tvp_weight=training["tvp_weight"], warmup=training["warmup"], eval_every=training["eval_every"], n_eval=500,
        progress=False)
    return {"state_dict": model.state_dict(), "history": history}


def run_config(config: dict, size: dict, seeds: list[int]) -> dict:
    """Train ``config`` once per seed (cached per model) and evaluate each model: ``{"config", "reports" (one
    :class:`~icllib.bridge.ModelReport` per seed), "training" (per seed: final query error / predicting 0, ridge
    floor / predicting 0, training seconds)}``."""
    config, size = configuration(config), check_size(size)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct seeds, got {seeds}")
    reports: list[ModelReport] = []
    training = []
    for seed in seeds:
        check_int("seed", seed, minimum=0)
        keys = {k: size[k] for k in TRAIN_KEYS}
        if config["tvp"] is None:
            keys["tvp_weight"] = 0.0  # unused without the TVP term: a plain model does not depend on it
        trained = cache.cached_call(train_model, config, keys, seed)
        model = _model(config, size, seed)
        model.load_state_dict(trained["state_dict"])
        tokens, Z_all = _dictionary(config, size, seed)
        reports.append(evaluate_model(model, tokens, Z_all, size["N"], size["tau"], arrow=config["arrow"],
                                      n_dev=size["n_dev"], n_test=size["n_test"],
                                      learned_steps=size["learned_steps"], n_fit=size["n_fit"], seed=4000 + seed))
        h = trained["history"]
        training.append({"query": h.query_mse[-1] / h.zero_mse, "floor": h.ridge_floor / h.zero_mse,
                         "seconds": h.elapsed_s[-1]})
    return {"config": config, "reports": reports, "training": training}
