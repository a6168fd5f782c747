"""The closed-form compartment model against a naive Euler reference, and its invariants."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.appliances.thermal import NEVER, WATER_J_PER_G_K, Compartment

temps = st.integers(min_value=-40_000, max_value=40_000)


def euler(c: Compartment, temp: float, dt_ms: float, steps: int = 20_000) -> float:
    """Reference: integrate C dT/dt = sum of flows with tiny explicit steps (tests only)."""
    h = dt_ms / 1000 / steps
    g_amb = c.leak_w_per_k + (c.door_w_per_k if c.door_open else 0.0)
    g_evap = c.evap_w_per_k if c.cooling else 0.0
    for _ in range(steps):
        flow = (
            g_amb * (c.ambient_mc - temp) / 1000
            + g_evap * (c.evaporator_mc - temp) / 1000
            + c.heater_w
        )
        temp += 1000 * flow / c.capacity_j_per_k * h
    return temp


def make(temp: float, ambient: float = 21_000, evaporator: float = -25_000) -> Compartment:
    return Compartment(
        temp_mc=temp,
        ambient_mc=ambient,
        capacity_j_per_k=30_000,
        leak_w_per_k=0.6,
        evap_w_per_k=2.0,
        evaporator_mc=evaporator,
        door_w_per_k=6.0,
    )


@settings(max_examples=25, deadline=None)
@given(
    temp=temps,
    cooling=st.booleans(),
    door=st.booleans(),
    heater=st.sampled_from([0.0, 20.0]),
    dt_s=st.integers(min_value=1, max_value=20_000),
)
def test_closed_form_matches_euler_reference(
    temp: int, cooling: bool, door: bool, heater: float, dt_s: int
) -> None:
    c = make(temp)
    c.set_mode(cooling=cooling, door_open=door, heater_w=heater)
    expected = euler(c, float(temp), dt_s * 1000)
    c.evolve(dt_s * 1000)
    assert c.temp_mc == pytest.approx(expected, abs=5.0)  # 5 m°C


@settings(max_examples=40, deadline=None)
@given(temp=temps, threshold=temps, cooling=st.booleans(), door=st.booleans())
def test_time_to_lands_on_the_threshold(
    temp: int, threshold: int, cooling: bool, door: bool
) -> None:
    c = make(temp)
    c.set_mode(cooling=cooling, door_open=door)
    dt = c.time_to(threshold)
    teq = c.teq_mc
    ahead = temp < threshold < teq or temp > threshold > teq
    if not ahead:
        assert dt == NEVER
        return
    assert dt > 0
    assert c.temp_after(dt) == pytest.approx(threshold, abs=1e-6)
    # Before that instant the threshold has not been reached yet.
    before = c.temp_after(dt * 0.999)
    assert (before < threshold) if temp < threshold else (before > threshold)


@settings(max_examples=30, deadline=None)
@given(
    temp=temps,
    modes=st.lists(
        st.tuples(st.booleans(), st.booleans(), st.integers(min_value=0, max_value=10**8)),
        min_size=1,
        max_size=20,
    ),
)
def test_without_heater_stays_between_evaporator_and_ambient(
    temp: int, modes: list[tuple[bool, bool, int]]
) -> None:
    c = make(temp)
    low = min(c.evaporator_mc, temp)
    high = max(c.ambient_mc, temp)
    for cooling, door, dt in modes:
        c.set_mode(cooling=cooling, door_open=door)
        c.evolve(dt)
        assert low - 1e-6 <= c.temp_mc <= high + 1e-6


def test_evolving_in_pieces_equals_one_step() -> None:
    one, pieces = make(4_000), make(4_000)
    one.evolve(3_600_000)
    for _ in range(60):
        pieces.evolve(60_000)
    assert pieces.temp_mc == pytest.approx(one.temp_mc, abs=1e-6)


def test_time_constant_and_equilibrium_follow_the_conductances() -> None:
    c = make(4_000)
    assert c.teq_mc == pytest.approx(21_000)
    assert c.tau_ms == pytest.approx(1000 * 30_000 / 0.6)
    c.set_mode(cooling=True, door_open=False)
    assert c.teq_mc == pytest.approx((0.6 * 21_000 + 2.0 * -25_000) / 2.6)
    # After one time constant 1/e of the distance to equilibrium remains.
    c2 = make(4_000)
    c2.evolve(c2.tau_ms)
    assert c2.temp_mc - 21_000 == pytest.approx((4_000 - 21_000) / math.e)


def test_mix_conserves_heat() -> None:
    c = make(4_000)
    c.mix(500, 21_000)
    c_item = 500 * WATER_J_PER_G_K
    before = 30_000 * 4_000 + c_item * 21_000
    after = (30_000 + c_item) * c.temp_mc
    assert after == pytest.approx(before)
    assert 4_000 < c.temp_mc < 21_000


def test_invalid_compartment_is_rejected() -> None:
    with pytest.raises(ValueError, match="capacity > 0 and leak > 0"):
        Compartment(
            temp_mc=0,
            ambient_mc=0,
            capacity_j_per_k=0,
            leak_w_per_k=1,
            evap_w_per_k=1,
            evaporator_mc=-1,
        )
