"""Rate control (`deepstd.ratecontrol.largest_within`): the one-knob budget search every codec shares,
checked on synthetic monotone `build(t)` functions whose output length is known in closed form."""

from __future__ import annotations

import pytest

from deepstd.ratecontrol import STEPS, largest_by_target, largest_within


class Build:
    """b"x" * int(lo + (hi - lo) * t): a monotone knob; remembers every t it was asked for."""

    def __init__(self, lo: int = 100, hi: int = 1000):
        self.lo, self.hi, self.calls, self.outputs = lo, hi, [], []

    def __call__(self, t: float) -> bytes:
        assert 0.0 <= t <= 1.0
        self.calls.append(t)
        self.outputs.append(b"x" * int(self.lo + (self.hi - self.lo) * t))
        return self.outputs[-1]


@pytest.mark.parametrize("budget", [101, 250, 500, 777, 999])
def test_result_fits_the_budget_and_stops_within_the_tolerance(budget):
    build = Build()
    best, smallest = largest_within(build, budget, tolerance=0.02)
    assert smallest == b"x" * 100
    assert best is not None and len(best) <= budget
    assert len(best) >= 0.98 * budget, (len(best), budget)
    assert any(best is out for out in build.outputs)  # one of build's own outputs
    assert len(build.calls) < 2 + STEPS + 1  # stopped early, not a full sweep


def test_zero_tolerance_bisects_to_the_largest_that_fits():
    build = Build()
    best, _ = largest_within(build, 500, tolerance=0.0)
    assert len(best) == 500  # t = 400/900 is reachable to 2**-18
    best, _ = largest_within(Build(), 500, tolerance=0.0, steps=3)  # 3 halvings: 1/2 too big, 1/4, 3/8
    assert len(best) == int(100 + 900 * 0.375)


def test_too_small_a_budget_returns_none_and_the_smallest_output():
    build = Build()
    best, smallest = largest_within(build, 99)
    assert best is None and smallest == b"x" * 100
    assert build.calls == [0.0]  # nothing else is tried


def test_a_budget_that_holds_the_largest_output_returns_it_without_searching():
    for budget in (1000, 5000):
        build, steps = Build(), []
        best, smallest = largest_within(build, budget, on_step=steps.append)
        assert best == b"x" * 1000 and smallest == b"x" * 100
        assert build.calls == [0.0, 1.0] and steps == []


def test_budget_equal_to_the_smallest_output_fits():
    best, smallest = largest_within(Build(), 100)
    assert best == smallest == b"x" * 100


def test_on_step_is_called_once_per_bisection_step_in_order():
    build, steps = Build(), []
    best, _ = largest_within(lambda t: build(t) * 2, 501, tolerance=0.0, on_step=steps.append)
    assert steps == list(range(STEPS))  # even lengths never hit 501 exactly: every step runs
    assert len(build.calls) == 2 + STEPS and len(best) == 500
    steps.clear()
    largest_within(Build(), 500, tolerance=0.02, on_step=steps.append)
    assert steps and steps == list(range(len(steps))) and len(steps) < STEPS


def test_a_step_function_build_never_returns_an_oversized_output():
    """Output lengths that jump (like entropy-coded streams) still never exceed the budget."""

    def build(t: float) -> bytes:
        return b"y" * (200 + 100 * int(t * 8))  # 200, 300, ... 1000

    for budget in (250, 399, 650, 999):
        best, _ = largest_within(build, budget, tolerance=0.0)
        assert len(best) <= budget and len(best) > budget - 100


# --- largest_by_target: coders with their own rate control -------------------------------------------
class TargetCoder:
    """A coder whose output misses its byte target by a size-dependent factor, like a real rate
    control: `gain(target)` bytes per target byte."""

    def __init__(self, gain):
        self.gain, self.targets = gain, []

    def __call__(self, target: float) -> bytes:
        self.targets.append(target)
        return b"x" * max(1, int(target * self.gain(target)))


@pytest.mark.parametrize(
    "gain",
    [lambda t: 1.0, lambda t: 1.07, lambda t: 0.8, lambda t: 0.5 + 0.0007 * t],
    ids=["exact", "overshoots", "undershoots", "nonlinear"],
)
def test_largest_by_target_lands_within_the_tolerance_in_few_tries(gain):
    coder = TargetCoder(gain)
    data = largest_by_target(coder, 1000, tolerance=0.02, tries=8)
    assert data is not None and 980 <= len(data) <= 1000
    assert len(coder.targets) <= 4


def test_largest_by_target_keeps_the_largest_fit_and_says_when_none_fits():
    sizes = iter([1100, 900, 1050, 950])  # never within 2 %: the best fit of the tries is kept
    data = largest_by_target(lambda target: b"x" * next(sizes), 1000, tolerance=0.02, tries=4)
    assert data is not None and len(data) == 950
    assert largest_by_target(lambda target: b"x" * 2000, 1000, tries=3) is None
