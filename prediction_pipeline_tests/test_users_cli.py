"""Operator CLI for digest recipients: users and watchlists, one at a time and from CSV."""

import datetime as dt
import subprocess
import sys

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.core.markets import Market
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import users as user_store
from prediction_pipeline.store.tables import users as users_table

DAY = dt.date(2026, 11, 2)


def cli(url: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--database-url", url, *args])
    assert result.exit_code == 0, result.output
    return result.output


def cli_fails(url: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--database-url", url, *args])
    assert result.exit_code != 0, result.output
    return result.output


@pytest.fixture
def markets(engine) -> dict[str, int]:
    batch = [
        Market(source="test", source_id="0xabc", question="Will A happen?", yes_price=0.4),
        Market(source="test", source_id="0xdef", question="Will B happen?", yes_price=0.7),
    ]
    with engine.begin() as conn:
        market_store.ingest_markets(conn, batch, DAY)
        return {m.source_id: market_store.get_market(conn, m.source_id).id for m in batch}


def test_users_add_list_unsubscribe(database_url, engine):
    assert "no users" in cli(database_url, "users", "list")
    assert "ann@example.com: added" in cli(database_url, "users", "add", " Ann@Example.com ")
    out = cli(database_url, "users", "add", "ann@example.com", "--name", "Ann")
    assert "exists" in out and "subscribed" in out
    assert "not subscribed" in cli(database_url, "users", "add", "bob@example.com", "--no-digest")
    listing = cli(database_url, "users", "list").splitlines()
    assert len(listing) == 3
    ann = next(line for line in listing if "ann@example.com" in line)
    assert ann.split()[2:] == ["on", "0", "-", "Ann"]
    assert "unsubscribed" in cli(database_url, "users", "unsubscribe", "ann@example.com")
    assert "unsubscribed" in next(
        line for line in cli(database_url, "users", "list").splitlines() if "ann@" in line
    )
    # Adding again never re-subscribes; only an explicit resubscribe does.
    cli(database_url, "users", "add", "ann@example.com")
    with engine.connect() as conn:
        assert not user_store.get_user(conn, "ann@example.com").subscribed
    cli(database_url, "users", "resubscribe", "ann@example.com")
    with engine.connect() as conn:
        assert user_store.get_user(conn, "ann@example.com").subscribed
    assert "not an email address" in cli_fails(database_url, "users", "add", "not-an-email")
    assert "no user" in cli_fails(database_url, "users", "unsubscribe", "x@example.com")


def test_watchlist_by_internal_or_source_id(database_url, markets):
    cli(database_url, "users", "add", "ann@example.com")
    a, b = markets["0xabc"], markets["0xdef"]
    assert f"now watching market {a}" in cli(
        database_url, "watchlist", "add", "ann@example.com", "0xabc"
    )
    assert f"already watching market {a}" in cli(
        database_url, "watchlist", "add", "ann@example.com", str(a)
    )
    assert f"now watching market {b}" in cli(
        database_url, "watchlist", "add", "ann@example.com", str(b)
    )
    listing = cli(database_url, "watchlist", "list", "ann@example.com")
    assert "Will A happen?" in listing and "0.400" in listing and "Will B happen?" in listing
    assert f"removed market {a}" in cli(
        database_url, "watchlist", "remove", "ann@example.com", "0xabc"
    )
    assert "was not watching" in cli(
        database_url, "watchlist", "remove", "ann@example.com", "0xabc"
    )
    assert "Will A happen?" not in cli(database_url, "watchlist", "list")
    assert "no market '0xnope'" in cli_fails(
        database_url, "watchlist", "add", "ann@example.com", "0xnope"
    )
    assert "users add zed@example.com" in cli_fails(
        database_url, "watchlist", "add", "zed@example.com", "0xabc"
    )


def test_csv_imports_validate_everything_first(database_url, engine, markets, tmp_path):
    users_csv = tmp_path / "users.csv"
    users_csv.write_text(
        "\ufeffEmail,Name,digest_opt_in\n"  # a BOM and capitalised headers, as Excel writes
        "ann@example.com,Ann,true\n"
        "BOB@example.com,Bob,false\n"
        "\n"
        "not-an-email,Nobody,\n"
        "cy@example.com,Cy,maybe\n"
    )
    out = cli_fails(database_url, "users", "import", str(users_csv))
    assert "line 5: not an email address" in out and "line 6: not a boolean" in out
    assert "nothing imported" in out
    assert "no users" in cli(database_url, "users", "list")
    out = cli(database_url, "users", "import", str(users_csv), "--skip-invalid")
    assert "users: 2 added, 0 updated, 0 unchanged, 2 invalid rows skipped" in out
    cli(database_url, "users", "unsubscribe", "ann@example.com")
    users_csv.write_text("email,name\nann@example.com,Ann B\nbob@example.com,\n")
    assert "0 added, 1 updated, 1 unchanged" in cli(database_url, "users", "import", str(users_csv))
    with engine.connect() as conn:
        ann = user_store.get_user(conn, "ann@example.com")
        assert ann.name == "Ann B" and not ann.subscribed  # an import never re-subscribes
        assert not user_store.get_user(conn, "bob@example.com").digest_opt_in

    watch_csv = tmp_path / "watch.csv"
    watch_csv.write_text(
        f"email,market_id\nann@example.com,0xabc\nann@example.com,{markets['0xdef']}\n"
        "bob@example.com,0xabc\nzed@example.com,0xabc\nbob@example.com,0xnope\n"
    )
    out = cli_fails(database_url, "watchlist", "import", str(watch_csv))
    assert "line 5: no user 'zed@example.com'" in out and "line 6: no market '0xnope'" in out
    assert "no watched markets" in cli(database_url, "watchlist", "list")
    out = cli(database_url, "watchlist", "import", str(watch_csv), "--skip-invalid")
    assert "watchlist: 3 added, 0 already watched, 2 invalid rows skipped" in out
    out = cli(database_url, "watchlist", "import", str(watch_csv), "--skip-invalid")
    assert "watchlist: 0 added, 3 already watched" in out
    assert len(cli(database_url, "watchlist", "list").splitlines()) == 3
    (tmp_path / "bad.csv").write_text("mail,market\nx,y\n")
    assert "missing column(s) email" in cli_fails(
        database_url, "watchlist", "import", str(tmp_path / "bad.csv")
    )


# -- files that are not UTF-8 CSV, and long files ------------------------------------------


def _one_clear_line(result) -> str:
    """The command failed with a usage error (exit 1, no exception left unhandled)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command", ["users", "watchlist"])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        # An Excel "CSV" export in Windows-1252/Latin-1: the é on line 3.
        (
            "email,name,market_id\nann@example.com,Ann,1\nzoe@example.com,Zoé,1\n".encode(
                "latin-1"
            ),
            "is not UTF-8 text (line 3): save it as CSV UTF-8",
        ),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "is not UTF-8 text (line 1)"),
        (
            b"email,market_id\nann@example.com,1\n\x00\x00\x00\x00\n",
            "is binary, not CSV text (line 3)",
        ),
        (b"PK\x03\x04" + b"x" * (2 << 20), "line 1 is longer than 1024 KiB"),
        # Excel's "Unicode Text" (UTF-16) and an old Mac export (lines end in a bare CR).
        ("email,name\nann@example.com,Ann\n".encode("utf-16"), "is not UTF-8 text (line 1"),
        (b"email,name\rann@example.com,Ann\r", "(line 1): lines end in a bare CR"),
    ],
)
def test_a_file_that_is_not_utf8_csv_is_one_clear_line(
    database_url, engine, markets, tmp_path, command, content, message
):
    cli(database_url, "users", "add", "keep@example.com")
    path = tmp_path / "export.csv"
    path.write_bytes(content)
    result = CliRunner().invoke(
        main, ["--database-url", database_url, command, "import", str(path)]
    )
    line = _one_clear_line(result)
    assert str(path) in line and message in line
    with engine.connect() as conn:  # nothing imported
        assert [u.email for u in user_store.list_users(conn)] == ["keep@example.com"]
        assert user_store.list_watchlist(conn) == []


def test_refs_that_are_not_ids_are_unknown_markets(database_url, markets, tmp_path):
    cli(database_url, "users", "add", "ann@example.com")
    for ref in ("²", "9" * 30):
        assert f"no market {ref!r}" in cli_fails(
            database_url, "watchlist", "add", "ann@example.com", ref
        )
    watch_csv = tmp_path / "watch.csv"
    watch_csv.write_text("email,market\nann@example.com,²\nann@example.com," + "9" * 30 + "\n")
    out = cli_fails(database_url, "watchlist", "import", str(watch_csv))
    assert "line 2: no market '²'" in out and f"line 3: no market '{'9' * 30}'" in out


def test_imports_are_all_or_nothing_across_batches(
    database_url, engine, markets, tmp_path, monkeypatch
):
    from prediction_pipeline.cli import people

    monkeypatch.setattr(people, "_IMPORT_BATCH", 2)  # seven rows: four batches
    users_csv = tmp_path / "users.csv"
    rows = [f"u{i}@example.com,U{i}" for i in range(6)] + ["bad-email,Bad"]
    users_csv.write_text("email,name\n" + "\n".join(rows) + "\n")
    assert "line 8: not an email address" in cli_fails(
        database_url, "users", "import", str(users_csv)
    )
    assert "no users" in cli(database_url, "users", "list")
    out = cli(database_url, "users", "import", str(users_csv), "--skip-invalid")
    assert "users: 6 added, 0 updated, 0 unchanged, 1 invalid rows skipped" in out

    watch_csv = tmp_path / "watch.csv"
    pairs = [f"u{i}@example.com,0xabc" for i in range(6)] + ["u0@example.com,0xdef", "x@y.z,0xabc"]
    watch_csv.write_text("email,market_id\n" + "\n".join(pairs) + "\n")
    assert "line 9: no user 'x@y.z'" in cli_fails(
        database_url, "watchlist", "import", str(watch_csv)
    )
    assert "no watched markets" in cli(database_url, "watchlist", "list")
    out = cli(database_url, "watchlist", "import", str(watch_csv), "--skip-invalid")
    assert "watchlist: 7 added, 0 already watched, 1 invalid rows skipped" in out


_MEASURE_IMPORT = r"""
import sys
from pathlib import Path

from prediction_pipeline.cli import main

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

url, path = sys.argv[1], sys.argv[2]
main(["--database-url", url, "users", "list"], standalone_mode=False)  # imports, connects
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
before = status("VmRSS")
main(["--database-url", url, "users", "import", path], standalone_mode=False)
print("GROWTH", status("VmHWM") - before)
"""


def test_a_100000_row_import_streams_in_flat_memory(database_url, engine, tmp_path):
    """The old import read the whole file into lists first: 188 MB for 200,000 rows (about
    94 MB for these 100,000, so the bound below still catches it). Peak RSS growth of the
    import alone is measured in a fresh process."""
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8") as handle:
        handle.write("email,name\n")
        handle.writelines(f"user{i}@example.com,User number {i}\n" for i in range(100_000))
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE_IMPORT)
    done = subprocess.run(
        [sys.executable, str(script), database_url, str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "users: 100000 added, 0 updated, 0 unchanged" in done.stdout
    growth = int(done.stdout.split("GROWTH")[1])
    assert growth < 50 * 2**20, f"peak RSS grew by {growth / 2**20:.0f} MB"
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(users_table)) == 100_000
