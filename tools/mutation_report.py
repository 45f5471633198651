"""Mutation score per module from mutmut's results (the `mutants/**/*.py.meta` files).

    python tools/mutation_report.py [--survivors .local/mutation/survivors.txt] [MODULE ...]

Prints one row per mutated module: mutants, killed (a test failed or timed out), survived,
no tests (no selected test runs the function), not checked yet, the score
killed / (killed + survived + no tests), and the score of the tested functions,
killed / (killed + survived) (functions only the slower tests reach count as untested
here). With --survivors, writes the surviving and untested
mutant names (one per line, `mutmut show NAME` prints the diff) to that file. MODULE
filters by dotted-name prefix, e.g. `prediction_pipeline.store.predictions`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# mutmut 3.8's exit codes (mutmut.stats.status_by_exit_code), folded into what a score needs.
KILLED = {1: "killed", 3: "killed", 36: "killed", -24: "killed", 24: "killed", 152: "killed",
          255: "killed", 37: "killed"}  # fmt: skip
SURVIVED = {0: "survived"}
NO_TESTS = {5: "no tests", 33: "no tests"}
COLUMNS = ("mutants", "killed", "survived", "no tests", "not checked", "other")


def status(exit_code: int | None) -> str:
    if exit_code is None:
        return "not checked"
    for table in (KILLED, SURVIVED, NO_TESTS):
        if exit_code in table:
            return table[exit_code]
    return "other"  # suspicious, skipped, segfault, interrupted


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "     -"


def module_results(mutants_dir: Path) -> dict[str, dict[str, int | None]]:
    """{dotted module: {mutant name: exit code}} for every module that has mutants."""
    found = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if codes:
            module = str(meta.relative_to(mutants_dir)).removesuffix(".py.meta")
            found[module.replace("/", ".")] = codes
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="dotted module prefixes to report")
    parser.add_argument("--mutants-dir", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", type=Path, help="write surviving mutant names here")
    args = parser.parse_args()
    results = module_results(args.mutants_dir)
    if args.modules:
        results = {m: r for m, r in results.items() if m.startswith(tuple(args.modules))}
    if not results:
        print(f"no mutmut results under {args.mutants_dir}/ (run `make mutation` first)")
        return 1
    width = max(len(m) for m in results)
    header = "  ".join(f"{c:>11}" for c in COLUMNS)
    print(f"{'module':<{width}}  {header}   score  tested")
    survivors = []
    for module, codes in results.items():
        counts = Counter(status(code) for code in codes.values())
        judged = counts["killed"] + counts["survived"] + counts["no tests"]
        tested = counts["killed"] + counts["survived"]
        row = [len(codes), *(counts[c] for c in COLUMNS[1:])]
        cells = "  ".join(f"{n:>11}" for n in row)
        print(f"{module:<{width}}  {cells}  {percent(counts['killed'], judged)}"
              f"  {percent(counts['killed'], tested)}")  # fmt: skip
        survivors += sorted(
            f"{name}\t{status(code)}"
            for name, code in codes.items()
            if status(code) in ("survived", "no tests")
        )
    if args.survivors:
        args.survivors.parent.mkdir(parents=True, exist_ok=True)
        args.survivors.write_text("".join(f"{line}\n" for line in survivors))
        print(f"{len(survivors)} surviving or untested mutants listed in {args.survivors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
