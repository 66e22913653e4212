"""Ray for a search: a local cluster sized to the workers, or one joined at an address."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.jobs.search import SearchConfig


def ray_temp_dir(out: Path) -> str:
    """Ray's sockets live under its temp dir, and Unix socket paths are limited to ~107 bytes:
    under the run folder when its path is short, else a short per-folder dir under /tmp."""
    d = out.resolve() / "ray"
    if len(str(d)) <= 40:
        return str(d)
    return f"/tmp/autoprune-ray-{hashlib.sha1(str(d).encode()).hexdigest()[:8]}"


def probe_ray(address: str | None) -> None:
    """A one-line error for a Ray address nothing answers at (``ray.init`` would wait minutes)."""
    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as e:
        raise UserError(f"Ray address {address} is unreachable ({getattr(e, 'strerror', None) or e})") from None


def connect_ray(cfg: SearchConfig) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **kwargs)
    else:
        ray.init(num_cpus=max(1, int(cfg.workers * cfg.cpus_per_worker)), num_gpus=int(cfg.workers * cfg.gpus_per_worker),
                 _temp_dir=ray_temp_dir(cfg.out), **kwargs)
