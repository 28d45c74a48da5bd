"""The speed ratio of the path integral against sampled Shapley, measured at equal error rather than predicted.

    python -m benchmarks.speed_ratio                       # n = 1e3 and 1e4, cascade and reach, both samplers
    python -m benchmarks.speed_ratio --sizes 1000 --budget 120
    python -m benchmarks.speed_ratio --sizes 10000 --indicators reach --reference-factor 4

For each population size, indicator and sampler (``blackbox``: v re-evaluated on every prefix; ``incremental``:
the indicator's sequential evaluator), at 5 % relative L2 error each against its own target:

1. a pilot of sampled Shapley gives the per-agent spread of the marginals, hence P*, the permutations predicted to
   reach 5 % (``benchmarks.kernels``' prediction);
2. sampled Shapley is then **run at P*** (another seed), and the error it actually reached is measured against a
   reference estimate of the Shapley value: the incremental sampler (the same estimator, cheaper) with
   ``--reference-factor`` × P* permutations (a third seed), whose own error is about 5 % / sqrt(factor). A run that
   would take longer than ``--budget`` seconds is run at the permutations that fit, its error at that count
   measured, and its time to P* extrapolated from it (the row says so);
3. the path integral's time to 5 %: the fewest Gauss–Legendre nodes (1, 2, 4, ...) within 5 % of a 256-node float64
   attribution (reach: of its closed form), timed in steady state.

The ratio is sampled Shapley's measured time at P* over the path integral's. Rows are printed as Markdown.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import kernels

TARGET = 0.05


def path_integral_to_target(name: str, pop: kernels.Population) -> tuple[int, float, float]:
    """(nodes, steady seconds, error) of the fewest nodes within 5 % of the reference attribution."""
    if name == "reach":
        ref = kernels.reach_closed_form(pop.x, pop.graph)
    else:
        ref = np.asarray(kernels.attribute(name, pop.x, pop.graph, nodes=256, dtype="float64", rule="uniform").phi)
    for m in (1, 2, 4, 8, 16, 32, 64):
        kernels.attribute(name, pop.x, pop.graph, nodes=m, rule="uniform")  # compile
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            out = kernels.attribute(name, pop.x, pop.graph, nodes=m, rule="uniform")
            np.asarray(out.phi)
            best = min(best, time.perf_counter() - t0)
        err = float(np.linalg.norm(np.asarray(out.phi) - ref) / np.linalg.norm(ref))
        if err <= TARGET:
            return m, best, err
    raise RuntimeError(f"{name}: the path integral did not reach 5 % with 64 nodes")


def predicted(name: str, pop: kernels.Population, mode: str, budget: float) -> tuple[int, float, int]:
    """(P*, seconds per permutation, pilot permutations) from a pilot of ``mode``."""
    kernels.sampled_shapley(name, pop.x, pop.graph, permutations=2, seed=99, mode=mode)  # compile / warm up
    pilot = 4
    while True:
        est = kernels.sampled_shapley(name, pop.x, pop.graph, permutations=pilot, seed=1, mode=mode)
        if est.seconds > budget / 20 or pilot >= 256:
            break
        pilot *= 4
    return max(2, math.ceil(pilot * (est.relative_error / TARGET) ** 2)), est.seconds / pilot, pilot


def measured_row(
    name: str, pop: kernels.Population, mode: str, budget: float, reference: np.ndarray
) -> dict[str, object]:
    """Sampled Shapley run at P* (or, when that would take longer than ``budget``, at the permutations that fit,
    its time to P* then extrapolated and said so), its error against ``reference``."""
    p_star, per_perm, pilot = predicted(name, pop, mode, budget)
    run_perms = p_star if p_star * per_perm <= budget else max(2, int(budget / per_perm))
    run = kernels.sampled_shapley(name, pop.x, pop.graph, permutations=run_perms, seed=2, mode=mode)
    err = float(np.linalg.norm(run.phi - reference) / np.linalg.norm(reference))
    if run_perms == p_star:
        return {"p_star": p_star, "pilot": pilot, "seconds": run.seconds, "error": f"{err:.1%}", "measured": True}
    seconds = run.seconds / run_perms * p_star
    return {"p_star": p_star, "pilot": pilot, "seconds": seconds, "measured": False,
            "error": f"{err:.1%} at {run_perms:,} permutations (extrapolated: time to P*)"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--indicators", nargs="+", default=["cascade", "reach"])
    parser.add_argument("--budget", type=float, default=240.0, help="most seconds of one reference run")
    parser.add_argument("--reference-factor", type=int, default=16)
    parser.add_argument(
        "--samplers", nargs="+", default=["incremental", "blackbox"], choices=["incremental", "blackbox"],
        help="the samplers to run (one at a time keeps a run within a time bound)",
    )  # fmt: skip
    args = parser.parse_args()
    print("| n | edges | indicator | sampler | P* (pilot) | Shapley to P*: s | error reached | path integral: nodes, "
          "s, error | ratio |")  # fmt: skip
    print("|---:|---:|---|---|---:|---:|---|---|---:|")
    for n in args.sizes:
        pop = kernels.heavy_tailed_population(n, 8.0, seed=0)
        for name in args.indicators:
            nodes, as_s, as_err = path_integral_to_target(name, pop)
            p_ref, _, _ = predicted(name, pop, "incremental", args.budget)
            ref = kernels.sampled_shapley(
                name, pop.x, pop.graph, permutations=p_ref * args.reference_factor, seed=3, mode="incremental"
            ).phi
            for mode in args.samplers:
                r = measured_row(name, pop, mode, args.budget, ref)
                secs = float(r["seconds"])  # type: ignore[arg-type]
                print(
                    f"| {n:,} | {pop.graph.edges:,} | {name} | {mode} | {r['p_star']:,} ({r['pilot']}) | "
                    f"{secs:.3g}{'' if r['measured'] else ' (extrap.)'} | {r['error']} | {nodes}, {as_s:.3g}, "
                    f"{as_err:.1%} | {secs / as_s:,.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
