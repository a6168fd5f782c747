"""Settings of the process that runs a fleet (not of any one device or transport).

``raise_fd_limit`` lifts the descriptor limit: every MQTT connection is a descriptor (two for an
in-process broker), so a process with many devices runs out at a default soft limit (often 1024).
The runner calls it once when a run starts.
"""

from __future__ import annotations


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now.

    Every MQTT connection is a descriptor (two for an in-process broker). Call once at start.
    """
    import resource  # Unix only: imported here so that importing the runner works everywhere

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    targets = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16]
    for target in targets:
        if soft != resource.RLIM_INFINITY and soft >= target:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        return target
    return soft
