"""Operator CLI for digest recipients: users and watchlists, one at a time and from CSV."""

import datetime as dt

import pytest
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.core.markets import Market
from prediction_pipeline.store import markets as market_store
from prediction_pipeline.store import users as user_store

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
