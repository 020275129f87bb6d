"""`make run`'s restart policy on a fake clock: the delay grows and is capped, a crash loop is
given up, exits older than the window are forgotten, and the policy comes from mesh.yaml (its
bad values are refused in test_runtime_process.py, with the other numbers)."""
from __future__ import annotations

import signal

from services.runtime.config import RestartPolicy, load_topology
from services.supervision import RestartBudget, describe_exit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def budget(**policy) -> tuple[RestartBudget, Clock]:
    clock = Clock()
    return RestartBudget(RestartPolicy(**policy), clock=clock), clock


def test_the_delay_doubles_per_exit_and_the_fifth_exit_within_a_minute_gives_up():
    restarts, clock = budget()                       # the defaults: 1 s doubling, 5 exits in 60 s
    seen = []
    for _ in range(5):
        decision = restarts.exited()
        seen.append((decision.restart, decision.attempt, decision.delay))
        clock.now += decision.delay + 2              # restarted, ran two seconds, died again
    assert seen == [(True, 1, 1.0), (True, 2, 2.0), (True, 3, 4.0), (True, 4, 8.0), (False, 5, 0.0)]


def test_the_delay_is_capped():
    restarts, clock = budget(initial_delay_seconds=0.5, multiplier=3, max_delay_seconds=10, crash_loop_exits=100,
                             crash_loop_seconds=3600)
    delays = []
    for _ in range(6):
        delays.append(restarts.exited().delay)
        clock.now += 1
    assert delays == [0.5, 1.5, 4.5, 10, 10, 10]


def test_exits_older_than_the_window_are_forgotten():
    restarts, clock = budget(crash_loop_exits=3, crash_loop_seconds=60)
    assert restarts.exited().attempt == 1
    clock.now += 30
    assert restarts.exited().attempt == 2
    clock.now += 31                                  # the first exit is now 61 s old
    decision = restarts.exited()
    assert decision.restart and decision.attempt == 2 and decision.delay == 2.0
    clock.now += 60                                  # up for a whole window: the shortest delay again
    assert restarts.exited().delay == 1.0


def test_exactly_the_window_apart_is_outside_it():
    restarts, clock = budget(crash_loop_exits=2, crash_loop_seconds=10)
    restarts.exited()
    clock.now += 10
    assert restarts.exited().restart


def test_three_quick_exits_with_a_limit_of_three_give_up_and_reset_starts_over():
    restarts, clock = budget(crash_loop_exits=3)
    assert restarts.exited().restart and restarts.exited().restart
    assert not restarts.exited().restart
    assert not restarts.exited().restart             # still in the loop: stays given up
    restarts.reset()                                 # the operator fixed it and asks again
    decision = restarts.exited()
    assert decision.restart and decision.attempt == 1 and decision.delay == 1.0


def test_one_exit_allowed_gives_up_at_the_first():
    restarts, _ = budget(crash_loop_exits=1)
    assert not restarts.exited().restart


def test_a_huge_limit_does_not_overflow_the_delay():
    restarts, clock = budget(crash_loop_exits=5000, crash_loop_seconds=1e9, max_delay_seconds=30)
    for _ in range(2000):
        decision = restarts.exited()
        clock.now += 1
    assert decision.restart and decision.delay == 30


def test_exits_are_described_by_code_or_signal():
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
    assert describe_exit(-200) == "killed by signal 200"


def test_the_policy_comes_from_mesh_yaml_with_overrides():
    assert load_topology(env={}).defaults.restart == RestartPolicy(1.0, 30.0, 2.0, 5, 60.0)
    policy = load_topology(env={"DIBOAS_RESTART_INITIAL_DELAY": "0.2", "DIBOAS_RESTART_MAX_DELAY": "5",
                                "DIBOAS_RESTART_MULTIPLIER": "3", "DIBOAS_RESTART_CRASH_LOOP_EXITS": "3",
                                "DIBOAS_RESTART_CRASH_LOOP_SECONDS": "20"}).defaults.restart
    assert policy == RestartPolicy(0.2, 5.0, 3.0, 3, 20.0)
