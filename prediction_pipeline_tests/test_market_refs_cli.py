"""Market references typed by operators or sent by the web app (item 17 of the hardening
issue): anything that is not one of our ids or a stored source id is an unknown market, a
clear LookupError or one line from the CLI, on both databases; never ValueError or
OverflowError from parsing it."""

import pytest
from click.testing import CliRunner

from prediction_pipeline.cli import main
from prediction_pipeline.services import on_demand

REFS = ["²", "9" * 30, "2147483648", "a\x00b"]
USER = "ada@example.com"


@pytest.mark.parametrize("ref", REFS)
def test_request_for_a_ref_that_is_no_market_is_a_lookup_error(engine, ref):
    on_demand.grant(engine, USER, 1)
    with pytest.raises(LookupError, match="no market"):
        on_demand.request_prediction(engine, ref, "baseline/market", user_email=USER)


@pytest.mark.parametrize("ref", ["²", "9" * 30])
def test_cli_predict_says_no_market_in_one_line(database_url, engine, ref):
    on_demand.grant(engine, USER, 1)
    args = ["--database-url", database_url, "predict", ref, "x/y", "--user", USER]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert f"no market {ref!r}" in result.output
    assert "Traceback" not in result.output
