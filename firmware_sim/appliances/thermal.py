"""Lumped thermal model of one cooled compartment, integrated in closed form.

The compartment (air, walls and contents) is one heat capacity ``C`` exchanging heat with the
ambient air through ``G_leak`` (plus ``G_door`` while the door is open), with the evaporator at
``T_evap`` through ``G_evap`` while the compressor serves it, and receiving ``Q`` watts from a
heater (defrost)::

    C dT/dt = (G_leak + G_door) (T_amb - T) + G_evap (T_evap - T) + Q

With the mode fixed this is linear: T relaxes exponentially towards ``T_eq`` with time constant
``tau = C / G_total``, so any interval is one exact step and the time at which T reaches a
threshold has a closed form. Models therefore jump from event to event instead of integrating.
Without a heater T always stays between the evaporator and the ambient temperature.
"""

from __future__ import annotations

import math

WATER_J_PER_G_K = 4.186
NEVER = float("inf")


class Compartment:
    """One heat capacity; temperatures in milli-degrees C (float inside, ints at the edge)."""

    __slots__ = (
        "ambient_mc",
        "capacity_j_per_k",
        "cooling",
        "door_open",
        "door_w_per_k",
        "evap_w_per_k",
        "evaporator_mc",
        "heater_w",
        "leak_w_per_k",
        "tau_ms",
        "temp_mc",
        "teq_mc",
    )

    def __init__(
        self,
        *,
        temp_mc: float,
        ambient_mc: float,
        capacity_j_per_k: float,
        leak_w_per_k: float,
        evap_w_per_k: float,
        evaporator_mc: float,
        door_w_per_k: float = 0.0,
    ) -> None:
        if capacity_j_per_k <= 0 or leak_w_per_k <= 0:
            raise ValueError(
                f"compartment needs capacity > 0 and leak > 0, found {capacity_j_per_k} J/K, "
                f"{leak_w_per_k} W/K"
            )
        self.temp_mc = float(temp_mc)
        self.ambient_mc = float(ambient_mc)
        self.capacity_j_per_k = float(capacity_j_per_k)
        self.leak_w_per_k = float(leak_w_per_k)
        self.evap_w_per_k = float(evap_w_per_k)
        self.evaporator_mc = float(evaporator_mc)
        self.door_w_per_k = float(door_w_per_k)
        self.cooling = False
        self.door_open = False
        self.heater_w = 0.0
        self.teq_mc = 0.0
        self.tau_ms = 1.0
        self._update()

    def set_mode(self, *, cooling: bool, door_open: bool, heater_w: float = 0.0) -> None:
        """Change what drives the compartment from now on."""
        self.cooling = cooling
        self.door_open = door_open
        self.heater_w = heater_w
        self._update()

    def _update(self) -> None:
        g_amb = self.leak_w_per_k + (self.door_w_per_k if self.door_open else 0.0)
        g_evap = self.evap_w_per_k if self.cooling else 0.0
        g = g_amb + g_evap
        self.teq_mc = (
            g_amb * self.ambient_mc + g_evap * self.evaporator_mc + 1000.0 * self.heater_w
        ) / g
        self.tau_ms = 1000.0 * self.capacity_j_per_k / g

    def evolve(self, dt_ms: float) -> None:
        """Advance ``dt_ms`` milliseconds in the current mode (exact)."""
        if dt_ms > 0:
            teq = self.teq_mc
            self.temp_mc = teq + (self.temp_mc - teq) * math.exp(-dt_ms / self.tau_ms)

    def temp_after(self, dt_ms: float) -> float:
        """The temperature ``dt_ms`` from now in the current mode, without changing state."""
        if dt_ms <= 0:
            return self.temp_mc
        teq = self.teq_mc
        return teq + (self.temp_mc - teq) * math.exp(-dt_ms / self.tau_ms)

    def time_to(self, threshold_mc: float) -> float:
        """Milliseconds until T reaches ``threshold_mc`` in the current mode; NEVER if it won't.

        Only thresholds strictly between T and the equilibrium count: a threshold T sits on or
        has passed is not "reached" again.
        """
        t, teq = self.temp_mc, self.teq_mc
        if t < threshold_mc < teq or t > threshold_mc > teq:
            return self.tau_ms * math.log((t - teq) / (threshold_mc - teq))
        return NEVER

    def mix(self, mass_g: float, item_temp_mc: float) -> None:
        """An item of ``mass_g`` (heat capacity of water) at ``item_temp_mc`` is put inside.

        The item exchanges heat with the compartment until both share one temperature (fast
        compared with the leak); the compartment's capacity is unchanged afterwards.
        """
        if mass_g <= 0:
            return
        c_item = mass_g * WATER_J_PER_G_K
        self.temp_mc += c_item * (item_temp_mc - self.temp_mc) / (self.capacity_j_per_k + c_item)
