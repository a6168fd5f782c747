"""Real sensors on serial lines and sysfs: sans-I/O frame parsers, drivers, one pyserial adapter.

Layout (one concern per module):

- ``errors``: the package's error base and stable codes.
- ``stats``: parser counters and the chunked-feed base every parser shares.
- ``rfid``: RDM6300 / ID-12LA EM4100 frames (encode, parse).
- ``tracker``: "tag arrived" / "tag left" from repeated RFID frames, time as an argument.
- ``modbus``: CRC-16/MODBUS, RTU request builders and response/request parsers.
- ``profiles``: register maps of Modbus temperature/humidity sensors (XY-MD02 and variants).
- ``w1``: DS18B20 through the Linux ``w1_slave`` file (parse, Dallas CRC-8, render).
- ``bridge``: the microcontroller bridge line ``$T,<id>,<milli-C>,<seq>*<crc16>`` (encode, parse).
- ``sim``: simulated devices that answer or emit the same bytes as the real ones.
- ``link``: the byte-link interface drivers use, and an in-memory twin.
- ``port``: the ONLY module importing pyserial; maps its errors to ours.
- ``driver``: ``SerialSensor``, the blocking ``read(timeout_s) -> list[Sample]`` every driver has;
  ``rfid_driver``, ``xymd02_driver``, ``ds18b20_driver``, ``bridge_driver``: frames to samples.
- ``factory``: ``open_sensor(driver, port, **options)``.

docs/SERIAL.md is the byte-exact reference for every format here.
"""
