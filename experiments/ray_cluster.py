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

from lathadapter.adapter.options import OptionError, StateError

INSTALL_HINT = "--backend ray needs Ray, which is not installed: pip install 'lathadapter[ray]'"


class RayMissingError(StateError):
    """`--backend ray` without Ray installed."""


class RayBackendError(ValueError):
    """The Ray cluster cannot run the grid (storage not shared, a chunk lost for good)."""


# Read by Ray when it is imported (a user's own value wins): how long the command waits for a cluster's GCS to
# answer (Ray: 30 s a try). RAY_BACKEND_LOG_LEVEL is left alone: set, it made every Ray process say so on stderr.
RAY_SETTINGS = {"RAY_py_gcs_connect_timeout_s": "10"}


def import_ray() -> Any:
    """The `ray` module, or RayMissingError with the install hint."""
    for name, value in RAY_SETTINGS.items():
        os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise RayMissingError(INSTALL_HINT) from None
    return ray


REACH_SECONDS = 10.0  # how long `check_reachable` waits for the cluster's port and its answer
ADDRESS_HINT = ("give the address `ray start --head` printed (HEAD:6379 unless its --port said otherwise), auto for a "
                "cluster started on this machine, or leave --address out to start a local one")
# What an HTTP/2 client sends first (RFC 9113 §3.4: the preface, then a SETTINGS frame, here empty), and the frame
# type a server answers with first: a Ray cluster's GCS speaks gRPC, over HTTP/2
HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS_FRAME = 4


def given_address(address: str | None) -> tuple[str | None, str]:
    """The cluster address a command connects to and where it comes from, as `ray.init` chooses it: the environment's
    RAY_ADDRESS (a cluster job's script may export it) where `--address` is not given or is auto, else `--address`;
    None: a cluster Ray finds running, or a local one."""
    exported = os.environ.get("RAY_ADDRESS")
    if exported and address in (None, "auto"):
        return exported, "RAY_ADDRESS"
    return address, "--address"


def address_hint(source: str) -> str:
    """What to give instead of an address where no cluster answers, by where it came from (`given_address`)."""
    if source == "RAY_ADDRESS":
        return ("set RAY_ADDRESS to the address `ray start --head` printed (HEAD:6379 unless its --port said "
                "otherwise), or unset it to start a local cluster")
    return ADDRESS_HINT


def check_address(address: str | None, source: str = "--address") -> None:
    """Refuse a Ray Client address (ray://HOST:PORT; `source`: `--address` or RAY_ADDRESS): chunk tasks stream their
    runs back as Ray generators, which Ray Client does not carry, and the command reads and writes caches and run
    folders at paths every node shares."""
    if address is not None and address.startswith("ray://"):
        raise OptionError(f"{source} {address}: Ray Client (ray://) is not supported; give the cluster's own "
                          "address, --address HOST:6379 (the address `ray start --head` printed), from a machine "
                          "that reaches every node")


def _answer(connection: socket.socket, size: int) -> bytes:
    """Up to `size` bytes the server sends, fewer when it closes first."""
    answer = b""
    while len(answer) < size:
        part = connection.recv(size - len(answer))
        if not part:
            break
        answer += part
    return answer


def check_reachable(address: str, timeout: float = REACH_SECONDS, source: str = "--address") -> None:
    """Refuse at once a `--address HOST:PORT` (or RAY_ADDRESS's: `source`) where no Ray cluster answers: nothing
    listens, or a server that does not speak gRPC as a cluster's GCS does (a plain TCP or HTTP server: the dashboard's
    port, say). Ray itself retried for minutes, printing GCS warnings. Other forms (auto, local) are left to Ray, as
    is a cluster that speaks TLS (RAY_USE_TLS)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error)).lower()
        raise RayBackendError(f"{source} {address}: cannot reach a Ray cluster there ({reason}); "
                              f"{address_hint(source)}") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        try:
            connection.sendall(HTTP2_HELLO)
            answer = _answer(connection, 9)
        except OSError as error:
            answer, reason = b"", "timed out" if isinstance(error, TimeoutError) else "closed the connection"
        else:
            reason = "closed the connection" if len(answer) < 9 else "not gRPC"
    if len(answer) < 9 or answer[3] != SETTINGS_FRAME:
        raise RayBackendError(f"{source} {address}: a server listens there but is not a Ray cluster ({reason}); "
                              f"{address_hint(source)}")


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


GCS_TRIES = "RAY_gcs_server_port_wait_time_s"  # how many times `ray.init` asks a cluster's GCS, a second apart


@contextlib.contextmanager
def one_try(given: bool) -> Iterator[None]:
    """For the block, when an address is `given`: `ray.init` asks the cluster's GCS once (a user's own
    RAY_gcs_server_port_wait_time_s wins), not 20 times over 10 minutes, since a GCS that is up answers at once."""
    if not given or GCS_TRIES in os.environ:
        yield
        return
    os.environ[GCS_TRIES] = "1"
    try:
        yield
    finally:
        del os.environ[GCS_TRIES]


def connection_error(address: str | None, error: ConnectionError, source: str = "--address") -> RayBackendError:
    """What `ray.init` failing to connect to `address` (given as `source`) means, and what to check: its token, or
    its address."""
    if address is None:
        return RayBackendError(f"cannot start or reach a Ray cluster: {error}")
    cause = f"{error.__cause__ or ''}"
    if "InvalidAuthToken" in cause or "Unauthenticated" in cause:
        return RayBackendError(f"{source} {address}: the Ray cluster there asks for its token; export "
                               "RAY_AUTH_MODE=token, with the cluster's token in ~/.ray/auth_token (or "
                               "RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN)")
    return RayBackendError(f"{source} {address}: no Ray cluster answered there ({error}); {address_hint(source)}")


@contextlib.contextmanager
def connect(address: str | None = None, init_options: dict[str, Any] | None = None) -> Iterator[Any]:
    """Ray, initialised for the block: an existing connection is reused and left open; one made here is closed.
    `address` None: RAY_ADDRESS's cluster (`given_address`), else a running cluster Ray finds, else a local one;
    `init_options`: more `ray.init` keywords."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs = {"include_dashboard": False, "log_to_driver": True, "logging_level": logging.ERROR,
              **(init_options or {})}
    address, source = given_address(address)
    if address is not None:
        check_address(address, source)  # `--address` was checked as it was parsed: RAY_ADDRESS's here
        check_reachable(address, source=source)
        kwargs["address"] = address
        kwargs.pop("num_cpus", None)
        kwargs.pop("num_gpus", None)
    raised: list[BaseException] = []
    restore = keep_sigterm(raised)
    try:
        with one_try(address is not None):
            ray.init(**kwargs)
    except ConnectionError as error:
        raise connection_error(address, error, source) from None
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
