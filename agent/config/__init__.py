"""devices.yaml: the schema, the safe reading of the file, the expansion of device groups, and the
composition of firmware_sim's specs.

``devices`` holds the entry points (``load_fleet``, ``parse_fleet``); ``yamlload`` is the only
YAML reader of the project. docs/DEVICES.md documents the file and its limits.
"""
