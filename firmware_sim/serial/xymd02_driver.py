"""XY-MD02 (and profile variants) over Modbus RTU: one poll per ``read``.

Each ``read`` sends one function-0x04 request for the profile's measurement registers and waits
for its answer: ``temp_mc`` (milli-degrees C) and ``humidity_pm`` (per-mille RH) stamped when the
answer arrived. No answer in time counts a ``timeout``; an exception response counts a
``device_error``; both return ``[]`` and leave a one-line ``stats.last_error``. Pacing between
polls is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware_sim.samples import Sample
from firmware_sim.serial.driver import READ_CHUNK, Clock, ReadBudget, SerialSensor
from firmware_sim.serial.link import ByteLink
from firmware_sim.serial.modbus import (
    ExceptionResponse,
    ModbusResponseParser,
    RegistersResponse,
    Request,
    Response,
)
from firmware_sim.serial.profiles import XYMD02, THProfile


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    address: int
    baud_code: int
    baud: int | None  # None when the code is not in the profile's table


class XyMd02Sensor(SerialSensor):
    driver = "xymd02"

    def __init__(
        self,
        link: ByteLink,
        *,
        profile: THProfile = XYMD02,
        address: int | None = None,
        clock: Clock | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__(clock=clock, prefix=prefix)
        self.profile = profile
        self.address = profile.default_address if address is None else address
        self._request = profile.measurement_request(self.address)  # validates the address
        self._link = link
        self._parser = ModbusResponseParser()
        self.stats.parser = self._parser.stats

    def read(self, timeout_s: float) -> list[Sample]:
        answer = self._transact(self._request, timeout_s)
        if not isinstance(answer, RegistersResponse):
            return []
        temp_mc, humidity_pm = self.profile.decode(answer.registers)
        now = self._clock()
        samples = [Sample(now, self.sensor_name("temp_mc"), temp_mc)]
        if humidity_pm is not None:
            samples.append(Sample(now, self.sensor_name("humidity_pm"), humidity_pm))
        return samples

    def read_settings(self, timeout_s: float) -> DeviceSettings | None:
        """The device's address and baud code (holding registers of the profile)."""
        answer = self._transact(self.profile.settings_request(self.address), timeout_s)
        if not isinstance(answer, RegistersResponse):
            return None
        address, code = answer.registers
        return DeviceSettings(address, code, self.profile.baud_for_code(code))

    def _transact(self, request: Request, timeout_s: float) -> Response | None:
        budget = ReadBudget(self._clock, timeout_s)
        self._link.discard_input()
        self._parser.expect(request)
        self._link.write(request.encode())
        while True:
            before = self._clock()
            chunk = self._link.read(READ_CHUNK, budget.wait_s())
            now = self._clock()
            for response in self._parser.feed(chunk):
                if isinstance(response, ExceptionResponse):
                    self.stats.device_errors += 1
                    self.stats.last_error = response.describe()
                return response
            if budget.expired() or (not chunk and now == before):
                self.stats.timeouts += 1
                self.stats.last_error = (
                    f"no valid answer from Modbus address {request.address} within {timeout_s:g} s"
                    " (check A/B wiring, address, baud and parity)"
                )
                return None

    def close(self) -> None:
        self._link.close()
