"""The hold rule (cube/worker/holds.py) on plain numbers: a hold ends at the first poll after an answer given after
it began; without a manager, after HOLD_MAX seconds, except a disconnect hold."""

from cube.worker.holds import DISCONNECT, HOLD_MAX, Holds


def test_a_hold_ends_at_the_poll_that_follows_an_answer_given_after_it():
    holds = Holds(started=0.0)
    holds.polled(1.0)  # a long poll is waiting when the hold begins
    holds.hold("t", "engine", 1.5)
    assert holds.polled(1.6) is False and "t" in holds, "no answer since the hold: the manager has not seen it"
    holds.answered()  # the answer to that poll, given after the hold: it shows the new situation
    assert "t" in holds
    assert holds.polled(1.7) is True and "t" not in holds


def test_an_answer_given_before_the_hold_does_not_count():
    holds = Holds(started=0.0)
    holds.polled(1.0)
    holds.answered()
    holds.hold("t", "worker restarted", 1.1)
    assert holds.polled(1.2) is False and "t" in holds


def test_without_a_manager_a_hold_ends_by_the_clock_but_a_disconnect_hold_does_not():
    holds = Holds(started=0.0)
    holds.hold("engine-task", "engine", 0.0)
    holds.hold("cut-off-task", DISCONNECT, 0.0)
    assert holds.release(HOLD_MAX - 0.1) is False
    assert holds.release(HOLD_MAX) is True
    assert holds.held() == frozenset({"cut-off-task"})
    assert holds.release(HOLD_MAX * 10) is False and "cut-off-task" in holds


def test_a_manager_that_polls_keeps_clock_releases_off():
    holds = Holds(started=0.0)
    holds.hold("t", "engine", 0.0)
    for second in range(1, 15):
        holds.polled(float(second))  # polls with no answer between them (never happens, but must not release)
    assert "t" in holds


def test_renew_restarts_the_holds_of_one_reason():
    holds = Holds(started=0.0)
    holds.hold("a", "engine", 0.0)
    holds.hold("b", DISCONNECT, 0.0)
    holds.polled(0.5)
    holds.answered()
    holds.renew("engine", 1.0)  # the engine came back: the manager must see that first
    holds.answered()
    holds.polled(1.1)
    assert holds.held() == frozenset(), "both were answered about since"
