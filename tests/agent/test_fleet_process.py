"""Process settings of a fleet run (agent/fleet/process.py)."""

from __future__ import annotations

import resource

from agent.fleet.process import raise_fd_limit


def test_raise_fd_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        now = raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == now
        assert now == hard or (hard == resource.RLIM_INFINITY and now >= 65536)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, now), hard))
