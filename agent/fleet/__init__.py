"""A fleet on one machine: the runner, enrollment and the data dir, keys on disk, where samples
come from, restore of a wiped device, and the live view."""
