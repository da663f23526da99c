"""Goal-directed generation of a property-conditioned molecule run (data.condition, see
genlab.data.molecule_condition), as report entries of `genlab evaluate`:

- `condition_success`: n molecules sampled conditioned on the top bin ("\\n<qed:9>"); the
  success rate is the share of all n that are valid AND whose property falls in that bin
  (>= the bin's lower edge: the top bin is open above). Beside it: the bin's base rate among the
  training molecules (what an unconditioned model matching the data scores, ~1/bins), the
  conditioned samples' validity, and the share of the valid ones inside the bin.
- `condition_success_bins`: the same for every bin (n samples each); the value is the mean
  success rate over the bins, each bin's figures in `per_bin`. Costs bins x n samples: only
  when named (--metrics condition_success_bins).
"""

from __future__ import annotations

import time

from genlab.errors import ConfigError

CONDITION_METRICS = ("condition_success", "condition_success_bins")
DEFAULT_CONDITION_METRICS = ("condition_success",)  # in a conditioned run's default report


def bin_scores(run, data, cond, k: int, n: int, seed: int, temperature: float = 1.0) -> dict:
    """Sample n molecules of bin k and score them: success rate, base rate, validity, in-bin share."""
    from genlab.data.molecules import sample_molecules
    from genlab.metrics.molecules import canonical, condition_success, properties

    t0 = time.perf_counter()
    generated = sample_molecules(run.model.eval(), data.tokenizer, n, seed=seed, max_tokens=data.max_tokens(),
                                 temperature=temperature, condition=cond.tokens[k])
    valid = [canonical(s) for s in generated]
    kept = [s for s in valid if s is not None]
    props = iter(properties(kept, names=(cond.prop,))[cond.prop]) if kept else iter(())
    values = [None if s is None else float(next(props)) for s in valid]
    lo, hi = cond.bounds(k)
    success = condition_success(values, lo, hi)
    open_end = [None if abs(x) == float("inf") else x for x in (lo, hi)]  # None: the open outer end (JSON has no inf)
    return {"bin": k, "token": cond.tokens[k], "range": open_end, "success": success,
            "base_rate": cond.base_rate(k), "validity": len(kept) / n,
            "in_bin_of_valid": condition_success([v for v in values if v is not None], lo, hi) if kept else 0.0,
            "seconds": round(time.perf_counter() - t0, 3)}


def require_condition(run, wanted: list[str]):
    """The run's Condition; ConfigError when it was trained without one (before any data is read)."""
    from genlab.data.molecule_condition import run_condition

    cond = run_condition(run.meta)
    if cond is None:
        raise ConfigError(f"{', '.join(wanted)} score(s) goal-directed generation, but {run.run_dir} was trained "
                          "without data.condition; drop them, or train with --set data.condition=qed")
    return cond


def evaluate_condition(run, data, wanted: list[str], *, n: int, seed: int,
                       temperature: float = 1.0) -> dict[str, dict]:
    """The condition metrics of `wanted` as report entries (ConfigError for an unconditioned run)."""
    cond = require_condition(run, wanted)
    out = {}
    top = cond.bins - 1
    common = {"extractor": None, "n": n, "seed": seed, "property": cond.prop, "bins": cond.bins,
              "sampling": f"temperature {temperature:g}"}
    if "condition_success" in wanted:
        s = bin_scores(run, data, cond, top, n, seed, temperature)
        out["condition_success"] = {"value": s.pop("success"), **common, **s,
                                    "threshold": f"{cond.prop} >= {cond.edges[top]:.4g} (the top bin)"}
    if "condition_success_bins" in wanted:
        t0 = time.perf_counter()
        per_bin = [bin_scores(run, data, cond, k, n, seed, temperature) for k in range(cond.bins)]
        out["condition_success_bins"] = {"value": sum(b["success"] for b in per_bin) / cond.bins, **common,
                                         "seconds": round(time.perf_counter() - t0, 3), "per_bin": per_bin,
                                         "base_rate_mean": 1.0 / cond.bins}
    return out
