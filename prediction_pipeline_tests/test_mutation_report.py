"""tools/mutation_report.py: the score per module that `make mutation` prints, with the
equivalent mutants (listed with why) left out of it, and stale entries of that list named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation_report.py"
MODULE = "prediction_pipeline.store.credits"


def write_results(
    mutants: Path, codes: dict[str, int | None], module: str = MODULE, function: str = "x_debit"
) -> None:
    *folders, name = module.split(".")
    meta = mutants.joinpath(*folders, f"{name}.py.meta")
    meta.parent.mkdir(parents=True, exist_ok=True)
    by_key = {f"{module}.{function}__mutmut_{n}": code for n, code in codes.items()}
    meta.write_text(json.dumps({"exit_code_by_key": by_key}))


def report(tmp_path: Path, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--mutants-dir", str(tmp_path / "mutants"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def test_score_leaves_out_listed_equivalents_and_names_stale_ones(tmp_path):
    # 1-6 killed (test failure, timeout), 7-8 survived, 9 no tests, 10 not run yet.
    codes = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: -24, 7: 0, 8: 0, 9: 33, 10: None}
    write_results(tmp_path / "mutants", codes)
    equivalents = tmp_path / "equivalent.txt"
    equivalents.write_text(
        "# name  why\n"
        f"{MODULE}.x_debit__mutmut_8  upper-cased ON CONFLICT target: same SQL on SQLite\n"
        f"{MODULE}.x_debit__mutmut_1  killed since: stale\n"
        "prediction_pipeline.store.other.x_f__mutmut_1  another module: not judged here\n"
    )
    survivors = tmp_path / "survivors.txt"

    lines = report(tmp_path, "--equivalent", str(equivalents), "--survivors", str(survivors))

    row = next(line for line in lines if line.startswith(MODULE)).split()
    # mutants, killed, survived, equivalent, no tests, not checked, other, score
    assert row[1:] == ["10", "6", "1", "1", "1", "1", "0", "75.0%"]
    assert f"stale equivalent: {MODULE}.x_debit__mutmut_1 is killed" in lines
    assert not any("store.other" in line for line in lines)
    assert survivors.read_text().splitlines() == [
        f"{MODULE}.x_debit__mutmut_7\tsurvived",
        f"{MODULE}.x_debit__mutmut_9\tno tests",
    ]


def test_without_an_equivalents_file_every_survivor_counts(tmp_path):
    write_results(tmp_path / "mutants", {1: 1, 2: 0})
    row = next(line for line in report(tmp_path) if line.startswith(MODULE)).split()
    assert row[1:] == ["2", "1", "1", "0", "0", "0", "0", "50.0%"]


def test_a_module_selects_itself_and_its_submodules_not_a_longer_name(tmp_path):
    mutants = tmp_path / "mutants"
    write_results(mutants, {1: 1})
    write_results(mutants, {1: 0}, module=f"{MODULE}_extra")
    write_results(mutants, {1: 1}, module="prediction_pipeline.services.predict")
    equivalents = tmp_path / "equivalent.txt"
    equivalents.write_text(f"{MODULE}_extra.x_debit__mutmut_1  another module: not judged\n")

    lines = report(tmp_path, "--equivalent", str(equivalents), MODULE)
    assert [line.split()[0] for line in lines[1:]] == [MODULE]
    lines = report(tmp_path, "prediction_pipeline.store")
    assert sorted(line.split()[0] for line in lines[1:]) == [MODULE, f"{MODULE}_extra"]


def test_no_results_is_one_line_and_exit_1(tmp_path):
    done = subprocess.run(
        [sys.executable, str(TOOL), "--mutants-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert (
        done.stdout == f"no mutmut results under {tmp_path / 'none'}/ (run `make mutation` first)\n"
    )
