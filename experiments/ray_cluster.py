"""Reaching Ray, an optional extra (`pip install 'lathadapter[ray]'`): the import with its install hint, the probe of a
cluster's address, and a connection for a block. Ray is imported here only, when a Ray backend is asked for, never at
package import; grids on Ray are `ray_backend`, cache builds on Ray `builds`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from lathadapter.adapter.options import StateError

INSTALL_HINT = "--backend ray needs Ray, which is not installed: pip install 'lathadapter[ray]'"


class RayMissingError(StateError):
    """`--backend ray` without Ray installed."""


class RayBackendError(ValueError):
    """The Ray cluster cannot run the grid (storage not shared, a chunk lost for good)."""


def import_ray() -> Any:
    """The `ray` module, or RayMissingError with the install hint."""
    # Ray's own INFO and WARNING lines (token auth, GCS retries) drowned the grid's output; read when Ray is imported
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
    except ImportError:
        raise RayMissingError(INSTALL_HINT) from None
    return ray


REACH_SECONDS = 10.0  # how long `check_reachable` waits for the cluster's port


def check_reachable(address: str, timeout: float = REACH_SECONDS) -> None:
    """Refuse at once a `--address HOST:PORT` (or ray://HOST:PORT) where nothing listens: Ray itself retried for over
    5 minutes, printing GCS warnings. Other forms (auto, local) are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error)).lower()
        raise RayBackendError(f"--address {address}: cannot reach a Ray cluster there ({reason}); check the head "
                              "node's address (HEAD:6379) and that it runs (`ray start --head`), or leave --address "
                              "out to start a local one") from None


def keep_sigterm(raised: list[BaseException]) -> Callable[[], None]:
    """A call, for after `ray.init`, that puts back this process's SIGTERM handler, noting in `raised` what it raises.
    `ray.init` replaces it (a stack dump, then abort or exit 15), and Ray turns what a handler raises inside `ray.wait`
    into a plain KeyboardInterrupt: a command stopped by SIGTERM lost its `interrupted:` line and exit 143. Without a
    handler of its own (SIG_DFL) the process keeps Ray's, which exits through `connect`'s shutdown."""
    if threading.current_thread() is not threading.main_thread():  # no handler can be set there
        return lambda: None
    handler = signal.getsignal(signal.SIGTERM)
    if not callable(handler):
        if handler == signal.SIG_IGN:
            return lambda: signal.signal(signal.SIGTERM, handler)
        return lambda: signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))  # Ray's, over its C one

    def on_sigterm(signum: int, frame: Any) -> None:
        try:
            handler(signum, frame)
        except BaseException as error:
            raised.append(error)
            raise

    return lambda: signal.signal(signal.SIGTERM, on_sigterm)


@contextlib.contextmanager
def connect(address: str | None = None, init_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """Ray, initialised for the block: an existing connection is reused and left open; one made here is closed.
    `address` None: a running cluster Ray finds, else a local one; `init_options`: more `ray.init` keywords."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.ERROR,
              **(init_options or {})}
    if address is not None:
        check_reachable(address)
        kwargs["address"] = address
        kwargs.pop("num_cpus", None)
        kwargs.pop("num_gpus", None)
    raised: list[BaseException] = []
    restore = keep_sigterm(raised)
    try:
        ray.init(**kwargs)
    except ConnectionError as error:
        raise RayBackendError(f"cannot connect to the Ray cluster at {address}: {error}") from None
    finally:
        restore()
    try:
        yield ray
    except KeyboardInterrupt as stop:
        if raised and stop is not raised[-1]:  # the SIGTERM handler's own exception (the cli's: exit 143)
            raise raised[-1] from None
        raise
    finally:
        ray.shutdown()
