"""The Ray back end: every cell a Ray task; the driver writes each outcome as it arrives.

Workers run `execute_cell` and send back its CellOutcome; only the driver (`run_study`) writes
results. Workers do write the run's content cache and judge verdicts into its SQLite file
themselves, so the run folder must be on a filesystem every node mounts at the same path (a
local cluster always is; for a remote one the back end checks and refuses otherwise). Workers
read their own environment (ALIGNPARADOX_CACHE, HF_HUB_OFFLINE, endpoint API keys): a local
cluster inherits this process's, the nodes of a remote one need theirs set.

A worker lost mid-cell (killed, out of memory, node gone) is retried by Ray up to `max_retries`
times; a cell still lost after that is stored as failed, so a rerun retries it. Resume is the
driver's: cells already finished in the store are never submitted.

Ray is imported only when the back end runs: `pip install 'alignparadox[ray]'`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignparadox.errors import UserError
from alignparadox.study.cells import Cell
from alignparadox.study.measurement import Measurement, get_measurement, register_measurement
from alignparadox.study.store import is_disk_full, library_versions

if TYPE_CHECKING:
    from alignparadox.study.runner import CellOutcome, Monitor


def _run_cell(cell: Cell, measurement_class: type[Measurement], run_dir: Path,
              threads: int) -> CellOutcome:
    """On a worker: compute one cell with `threads` CPU threads."""
    from alignparadox.study.runner import execute_cell

    # Ray sets OMP_NUM_THREADS for fresh workers; a reused worker may hold torch already.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    # The driver's class: a measurement registered only in the driver's process (a script's
    # own, a plugin imported there) runs on workers too.
    register_measurement(measurement_class)
    return execute_cell(cell, run_dir)


def _holds(path: str, token: str) -> bool:
    """On a node: whether it sees the driver's probe file with the driver's token."""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


class RayBackend:
    """A `Backend` running cells as Ray tasks on `address` (None: a cluster this process
    already joined, else a local one with `num_cpus` CPUs, default all). Each cell asks for
    `cpus_per_cell` CPUs (its torch threads) and, on a cluster with GPUs, one GPU when its
    target is white-box (not an http(s) endpoint)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 cpus_per_cell: int = 1, max_retries: int = 3):
        self.address, self.num_cpus = address, num_cpus
        self.cpus_per_cell, self.max_retries = cpus_per_cell, max_retries

    def __call__(self, cells: Sequence[Cell], run_dir: Path, monitor: Monitor
                 ) -> Iterator[CellOutcome]:
        if not cells:
            return
        ray = _import_ray()
        started = self._connect(ray)
        pending: list[Any] = []
        try:
            run_dir = run_dir.resolve()  # workers do not share this process's cwd
            _check_shared_folder(ray, run_dir)
            gpus = ray.cluster_resources().get("GPU", 0) >= 1
            task = ray.remote(_run_cell)
            submitted: dict[Any, tuple[Cell, str, float]] = {}
            for cell in cells:
                white_box = not cell.target.startswith(("http://", "https://"))
                ref = task.options(
                    num_cpus=self.cpus_per_cell, num_gpus=1 if white_box and gpus else 0,
                    max_retries=self.max_retries, name=f"{cell.measurement}:{cell.target}",
                ).remote(cell, type(get_measurement(cell.measurement)), run_dir,
                         self.cpus_per_cell)
                submitted[ref] = (cell, _now(), time.perf_counter())
            pending = list(submitted)
            while pending:
                [ready], pending = ray.wait(pending, num_returns=1)
                yield self._outcome(ray, ready, *submitted.pop(ready))
        finally:
            for ref in pending:  # stopped early (Ctrl-C, a UserError): free the cluster
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join the cluster; True when this call started Ray (and so must shut it down)."""
        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "logging_level": logging.ERROR}
        if self.address is None:
            options["num_cpus"] = self.num_cpus
        else:
            _check_reachable(self.address)
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = f"at {self.address}" if self.address else "on this machine"
            raise UserError(f"cannot start or join a Ray cluster {where}: {error}") from None
        return True

    def _outcome(self, ray: Any, ready: Any, cell: Cell, started_at: str,
                 clock: float) -> CellOutcome:
        from alignparadox.study.runner import CellOutcome

        try:
            return ray.get(ready)
        except ray.exceptions.RayTaskError as error:
            # What execute_cell lets through stops the study, as with `local`.
            if isinstance(error.cause, UserError) or is_disk_full(error.cause):
                raise error.cause from None
            message = str(error).rstrip()  # not the measurement's: the remote traceback
            if message.splitlines()[-1].startswith("ModuleNotFoundError"):  # unpickling
                message += ("; Ray workers import each measurement's module: install it on "
                            "every worker or put it on their PYTHONPATH.")
        except ray.exceptions.RayError as error:
            first = (str(error).strip().splitlines() or [""])[0]
            message = (f"the Ray worker computing this cell was lost {self.max_retries + 1} "
                       f"times ({type(error).__name__}: {first}); a rerun retries the cell.")
        return CellOutcome(cell, None, message, library_versions(), started_at, _now(),
                           time.perf_counter() - clock)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray back end needs Ray: pip install 'alignparadox[ray]'.") from None
    return ray


def _check_reachable(address: str) -> None:
    """Refuse at once a HOST:PORT (or ray://HOST:PORT) nobody listens on: Ray itself retries
    for minutes before it gives up."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto", "local": Ray finds the cluster itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise UserError(f"no Ray cluster answers at {address} ({error.strerror or error}); "
                        "start one with `ray start --head`, or check the address.") from None


def _check_shared_folder(ray: Any, run_dir: Path) -> None:
    """Refuse a cluster with a node that does not see the run folder: its workers would write
    cache and verdicts into a store of their own, and find no models the driver prepared."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    others = [node for node in ray.nodes() if node["Alive"] and node["NodeID"] != here]
    if not others:
        return
    token = secrets.token_hex(8)
    probe = run_dir / f".ray-probe-{token}"
    probe.write_text(token)
    try:
        holds = ray.remote(_holds)
        seen = ray.get([holds.options(
            num_cpus=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote(str(probe), token) for node in others])
    finally:
        probe.unlink(missing_ok=True)
    blind = [node["NodeManagerAddress"] for node, ok in zip(others, seen, strict=True) if not ok]
    if blind:
        raise UserError(f"the run folder {run_dir} is not visible at the same path on Ray "
                        f"node(s) {', '.join(blind)}; put it on a filesystem every node mounts "
                        "(e.g. NFS), or use --backend local.")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")  # as the runner's
