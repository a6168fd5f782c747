"""devices.yaml: the schema, the expansion of device groups, and the specs handed to firmware_sim.

``devices`` is the only YAML reader of the project.
"""
