"""Mutation score per module from mutmut's results (the `mutants/**/*.py.meta` files).

    python tools/mutation_report.py [--survivors FILE] [--equivalent FILE] [MODULE ...]

Prints one row per mutated module: mutants, killed (a test failed or timed out), survived,
equivalent (survivors listed in the equivalents file: they change no behaviour a caller can
see), no tests (no selected test runs the function), not checked yet, and the score
killed / (killed + survived + no tests), equivalent survivors left out. With --survivors,
writes the surviving (not equivalent) and untested mutant names to that file (one per line;
`mutmut show NAME` prints the diff). MODULE selects that module and the modules under it,
e.g. `prediction_pipeline.store.predictions` or `prediction_pipeline.store` (not
`prediction_pipeline.store.predictions_extra`).

The equivalents file has one mutant per line, `NAME  why it is equivalent`; `#` starts a
comment. Mutant names number the mutations of a function, so the file belongs to a commit:
names listed there that were killed or no longer exist are reported as stale.
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
COLUMNS = ("mutants", "killed", "survived", "equivalent", "no tests", "not checked", "other")


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


def read_equivalents(path: Path | None) -> dict[str, str]:
    """{mutant name: why it is equivalent} from the equivalents file."""
    if path is None:
        return {}
    found = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, why = line.strip().partition(" ")
            found[name] = why.strip()
    return found


def classify(code: int | None, name: str, equivalents: dict[str, str]) -> str:
    kind = status(code)
    return "equivalent" if kind == "survived" and name in equivalents else kind


def within(name: str, modules) -> bool:
    """`name` (a module or a mutant) is one of `modules` or lies under one of them."""
    return any(name == m or name.startswith(f"{m}.") for m in modules)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="dotted module prefixes to report")
    parser.add_argument("--mutants-dir", type=Path, default=Path("mutants"))
    parser.add_argument("--survivors", type=Path, help="write surviving mutant names here")
    parser.add_argument("--equivalent", type=Path, help="the equivalent mutants, with why")
    args = parser.parse_args()
    results = module_results(args.mutants_dir)
    if args.modules:
        results = {m: r for m, r in results.items() if within(m, args.modules)}
    if not results:
        print(f"no mutmut results under {args.mutants_dir}/ (run `make mutation` first)")
        return 1
    equivalents = read_equivalents(args.equivalent)
    width = max(len(m) for m in results)
    header = "  ".join(f"{c:>11}" for c in COLUMNS)
    print(f"{'module':<{width}}  {header}   score")
    survivors, seen = [], {}
    for module, codes in results.items():
        kinds = {name: classify(code, name, equivalents) for name, code in codes.items()}
        seen.update(kinds)
        counts = Counter(kinds.values())
        judged = counts["killed"] + counts["survived"] + counts["no tests"]
        cells = "  ".join(f"{n:>11}" for n in [len(codes), *(counts[c] for c in COLUMNS[1:])])
        print(f"{module:<{width}}  {cells}  {percent(counts['killed'], judged)}")
        survivors += sorted(
            f"{name}\t{kind}" for name, kind in kinds.items() if kind in ("survived", "no tests")
        )
    for name in sorted(equivalents):
        kind = seen.get(name, "gone")
        if within(name, results) and kind not in ("equivalent", "not checked"):
            print(f"stale equivalent: {name} is {kind}")
    if args.survivors:
        args.survivors.parent.mkdir(parents=True, exist_ok=True)
        args.survivors.write_text("".join(f"{line}\n" for line in survivors))
        print(f"{len(survivors)} surviving or untested mutants listed in {args.survivors}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
