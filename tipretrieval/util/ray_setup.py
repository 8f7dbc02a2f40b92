"""Ray set-up shared by the classify and extract engines: connecting and sizing actor pools."""

from __future__ import annotations

from typing import Literal, get_args

from ..errors import BadInput

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = get_args(Engine)


def init_ray(address: str | None = None) -> None:
    """Connect to the cluster at `address`, or start a local Ray on this machine if none is up."""
    try:
        import ray  # optional dependency (the `ray` extra)
    except ImportError:
        raise BadInput("the Ray engine needs Ray", "pip install 'tipretrieval[ray]'") from None
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)  # all of this machine


def actor_resources() -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU when the cluster has GPUs, else one per CPU
    but one (left to the driver)."""
    import ray  # optional dependency (the `ray` extra)

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus:
        return gpus, 1.0
    return max(1, int(total.get("CPU", 1)) - 1), 0.0
