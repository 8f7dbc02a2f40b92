"""Mutation testing of the core (`make mutation`): mutmut over SCOPE, then a score per module.

What is mutated, which tests run and which lines are excluded (each with its reason) is the
[mutmut] section of setup.cfg. SCOPE names the mutants that count, by mutmut's mutant-name
patterns: whole modules, and only the add/remove-shots code of the cache. `--sample 147` keeps
the mutants whose number ends in 1, 4 or 7 (about 30% of each function's), for a quicker
estimate. Run from the repository root; mutmut works in ./mutants. `--fresh` forgets earlier
results and tests every mutant. Otherwise the run is incremental: it tests the mutants of
functions changed since their last run (or never run) and every mutant not killed last time (new
tests may kill it); killed mutants of unchanged functions keep their result (after removing
tests, run `--fresh`). mutmut re-tests every mutant it is given by name, so the names are chosen
here; and its map of which tests cover which function is collected afresh (about a minute), so
new functions and new tests are mapped. Exit status 1 when the total score is under `--target`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.stats import status_by_exit_code

SHOTS = ["xǁCacheǁadd_shots", "xǁCacheǁremove_shots", "xǁCacheǁ_carry_index"]
SCOPE: dict[str, tuple[str, list[str]]] = {
    # label: (module file, mutant-name patterns that count)
    "method/affinity.py": ("method/affinity.py", ["tipretrieval.method.affinity.*"]),
    "method/adapter.py": ("method/adapter.py", ["tipretrieval.method.adapter.*"]),
    "method/tune.py": ("method/tune.py", ["tipretrieval.method.tune.*"]),
    "method/finetune.py": ("method/finetune.py", ["tipretrieval.method.finetune.*"]),
    "util/atomic.py": ("util/atomic.py", ["tipretrieval.util.atomic.*"]),
    "util/jsonfile.py": ("util/jsonfile.py", ["tipretrieval.util.jsonfile.*"]),
    "store/manifest.py": ("store/manifest.py", ["tipretrieval.store.manifest.*"]),
    "jobs/classify/journal.py": ("jobs/classify/journal.py",
                                 ["tipretrieval.jobs.classify.journal.*"]),
    "cache/cache.py (add/remove shots)": (
        "cache/cache.py", [f"tipretrieval.cache.cache.{f}" for f in SHOTS]),
    "cache/state.py (plus/without)": (
        "cache/state.py", [f"tipretrieval.cache.state.xǁCacheStateǁ{f}"
                           for f in ("plus", "without")]),
}
# A mutant that makes the tests overrun mutmut's time limit (an endless loop) is caught too, as
# mutmut's own score counts it; the table shows such time-outs in their own column.
DETECTED = ("killed", "caught by type check", "timeout")


def mutant_patterns(prefixes: list[str], sample: str) -> list[str]:
    """mutmut name patterns of the mutants of `prefixes`, numbers ending in `sample` digits."""
    return [f"{p}__mutmut_*" + (f"[{sample}]" if sample else "") for p in prefixes]


def in_scope(name: str, prefixes: list[str], sample: str) -> bool:
    """Whether the mutant `name` counts (its module's SCOPE patterns and the sample)."""
    return any(fnmatch.fnmatch(name, p) for p in mutant_patterns(prefixes, sample))


def to_test(sample: str) -> list[str]:
    """Names and patterns of the mutants an incremental run tests (module docstring)."""
    names: list[str] = []
    for module, prefixes in SCOPE.values():
        meta = Path("mutants/tipretrieval") / f"{module}.meta"
        if not meta.exists():
            names += mutant_patterns(prefixes, sample)
            continue
        data = json.loads(meta.read_text())
        before = data["hash_by_function_name"]
        dotted = "tipretrieval." + module.removesuffix(".py").replace("/", ".")
        path = Path("tipretrieval") / module  # mutmut's own hashes of the functions it mutates
        mutated = mutate_file_contents(str(path), path.read_text())
        # a function is changed when its code is, or its mutants are (an exclusion changed:
        # mutmut would keep the old results under shifted mutant numbers)
        counts = Counter(n.rpartition("__mutmut_")[0] for n in mutated.mutant_names)
        old_counts = Counter(k.rpartition("__mutmut_")[0].rpartition(".")[2]
                             for k in data["exit_code_by_key"])
        changed = {f"{dotted}.{f}" for f, h in mutated.hash_by_function_name.items()
                   if before.get(f) != h or counts[f] != old_counts[f]}
        changed = {f for f in changed if in_scope(f"{f}__mutmut_1", prefixes, "")}
        names += mutant_patterns(sorted(changed), sample)
        names += [k for k, code in data["exit_code_by_key"].items()
                  if k.rpartition("__mutmut_")[0] not in changed and in_scope(k, prefixes, sample)
                  and (code is None or status_by_exit_code[code] not in DETECTED)]
    return names


def results(sample: str) -> dict[str, dict[str, str]]:
    """{module label: {mutant name: status}} for the mutants in SCOPE (and the sample)."""
    out: dict[str, dict[str, str]] = {}
    for label, (module, prefixes) in SCOPE.items():
        meta = Path("mutants/tipretrieval") / f"{module}.meta"
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        out[label] = {k: status_by_exit_code[v] for k, v in codes.items()
                      if in_scope(k, prefixes, sample)}
    return out


def table(found: dict[str, dict[str, str]]) -> str:
    """Markdown table: mutants, killed, survived, timeout, other; score = detected / mutants."""
    lines = ["| module | mutants | killed | survived | timeout | other | score |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total: Counter[str] = Counter()
    for label, statuses in [*found.items(), ("**total**", None)]:
        counts = total if statuses is None else Counter(statuses.values())
        if statuses is not None:
            total.update(counts)
        n = sum(counts.values())
        detected = sum(counts[s] for s in DETECTED)
        killed = detected - counts["timeout"]
        other = n - detected - counts["survived"]
        score = f"{100 * detected / n:.1f}%" if n else "-"
        lines.append(f"| {label} | {n} | {killed} | {counts['survived']} | "
                     f"{counts['timeout']} | {other} | {score} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MUTATION_JOBS", 2)),
                        help="mutants tested at once (default 2, or $MUTATION_JOBS)")
    parser.add_argument("--fresh", action="store_true",
                        help="forget earlier results and test every mutant")
    parser.add_argument("--report-only", action="store_true", help="only print the table")
    parser.add_argument("--sample", default="", help="only mutants whose number ends in one "
                        "of these digits, e.g. 147 (default: all)")
    parser.add_argument("--target", type=float, default=90.0, help="minimum total score %%")
    args = parser.parse_args()
    if not args.report_only:
        if args.fresh:
            shutil.rmtree("mutants", ignore_errors=True)
        Path("mutants/mutmut-stats.json").unlink(missing_ok=True)  # the test map, recollected
        mutmut = Path(sys.executable).with_name("mutmut")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        start = time.monotonic()
        names = to_test(args.sample)
        print(f"testing {len(names)} mutant names and patterns")
        if names:
            subprocess.run([str(mutmut), "run", "--max-children", str(args.jobs), *names],
                           env=env, check=False)
        print(f"\nmutmut run took {time.monotonic() - start:.0f} s")
    found = results(args.sample)
    print(table(found))
    survivors = [k for statuses in found.values() for k, s in statuses.items()
                 if s not in DETECTED]
    if survivors:
        print("\nnot killed (see each with `mutmut show NAME`):")
        for name in survivors:
            print(f"  {name}")
    killed = sum(s in DETECTED for statuses in found.values() for s in statuses.values())
    n = sum(len(statuses) for statuses in found.values())
    return 0 if n and 100 * killed / n >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
