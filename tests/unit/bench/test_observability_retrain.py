"""When bench observability runs its training job again: only when that job's agent wedged unscraped."""

from x0tta6bl4.bench.observability import SCRAPE_PERIOD_S, WEDGED_BEFORE_END_S, wedged_before_end


def test_an_agent_that_answered_through_the_end_is_not_wedged():
    assert not wedged_before_end(answered_at=100.0 - SCRAPE_PERIOD_S, ended_at=100.0, series_scraped=False)


def test_an_agent_silent_for_several_scrape_periods_before_the_end_is_wedged():
    assert wedged_before_end(answered_at=100.0 - WEDGED_BEFORE_END_S, ended_at=100.0, series_scraped=False)
    assert wedged_before_end(answered_at=None, ended_at=100.0, series_scraped=False)


def test_series_already_scraped_never_call_for_another_job():
    assert not wedged_before_end(answered_at=None, ended_at=100.0, series_scraped=True)
    assert not wedged_before_end(answered_at=10.0, ended_at=100.0, series_scraped=True)
