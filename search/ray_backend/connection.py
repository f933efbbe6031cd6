"""Connecting to Ray: a local instance on loopback, or a cluster by address.

- A local instance (no --ray-address) is started with
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and node address 127.0.0.1, so every Ray
  socket listens on 127.0.0.1 only (shared/DESIGN.md); joining a loopback
  address sets the same variable (else Ray swaps 127.0.0.1 for the machine's
  outward address).
- An address that does not answer within CONNECT_TIMEOUT seconds is a
  UsageError (exit code 2), before Ray is started.
- `ray start --head` enables token authentication; a loopback address gets
  this machine's token, as Ray does for "auto".
"""
from __future__ import annotations

import os
import socket
import sys

from search.exceptions import UsageError

CONNECT_TIMEOUT = 5.0        # seconds to wait for a cluster address to answer
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None):
    """Start a local Ray instance on loopback (address None) or join `address`.

    Returns True when this call initialised Ray (the caller calls ray.shutdown()
    at the end), False when Ray was already initialised in this process (it is
    used as it is). Raises UsageError, quickly, for an address that cannot be
    reached.
    """
    if address is not None and address.startswith("ray://"):
        raise UsageError(f"--ray-address {address}: Ray Client addresses are not supported; run the "
                         "search on a cluster node with --ray-address auto or HOST:PORT")
    host_port = None
    if address not in (None, "auto", "local"):
        host_port = _parse_address(address)
        _check_reachable(*host_port)
    loopback = address in (None, "local") or (host_port is not None and _is_loopback(host_port[0]))
    if address == "auto":
        loopback = _auto_is_loopback()
    _loopback_mode(loopback)
    import logging

    import ray

    if ray.is_initialized():
        return False
    if host_port is not None and loopback:
        _local_token_auth()
    kwargs = dict(include_dashboard=False, configure_logging=True, logging_level=logging.WARNING,
                  log_to_driver=False)
    if address in (None, "local"):
        # address="local": a new instance even if RAY_ADDRESS is set in the environment.
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
        return True
    try:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot join the Ray cluster at {address}: {_first_line(e)}"
                         + _auth_hint(e)) from None
    except Exception as e:  # ray.exceptions.AuthenticationError and kin are not ConnectionErrors
        if type(e).__module__.startswith("ray"):
            raise UsageError(f"cannot join the Ray cluster at {address}: {_first_line(e)}"
                             + _auth_hint(e)) from None
        raise
    return True


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray-address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379) or auto")
    return host, int(port)


def _check_reachable(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise UsageError(f"cannot reach a Ray cluster at {host}:{port} ({why} within "
                         f"{CONNECT_TIMEOUT:g} s); start one with `ray start --head` or fix "
                         "--ray-address") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auto_is_loopback() -> bool:
    """Whether --ray-address auto finds a cluster on a loopback address (read from Ray's own files)."""
    _loopback_mode(True)  # finding the address sends nothing; decide below
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"--ray-address auto: {_first_line(e)}") from None
    if not found or found == "auto":
        raise UsageError("--ray-address auto found no running Ray cluster on this machine; "
                         "start one with `ray start --head` or give HOST:PORT")
    host, port = _parse_address(found)
    _check_reachable(host, port)
    return _is_loopback(host)


def _loopback_mode(on: bool) -> None:
    """Keep Ray on 127.0.0.1 (on) or let it use the machine's address (off).

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported, and
    the processes it starts read it from their environment; if Ray was imported
    before this call, its module constant is set to match.
    """
    if on:
        os.environ[LOOPBACK_ENV] = "0"
    elif os.environ.get(LOOPBACK_ENV) == "0":
        del os.environ[LOOPBACK_ENV]
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = not on


def _local_token_auth() -> None:
    """Use this machine's Ray token for a cluster on this machine, as Ray does for address "auto".

    `ray start --head` enables token authentication by default and keeps the
    token in ~/.ray/auth_token; Ray only picks it up by itself for "auto", not
    for an explicit address, so a loopback address gets the same treatment.
    An explicit RAY_AUTH_MODE is respected.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _auth_hint(e: BaseException) -> str:
    if "token" in str(e).lower() or "Authentication" in type(e).__name__:
        return (" (the cluster uses token authentication: set RAY_AUTH_MODE=token so that Ray reads "
                "its token from ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    return ""


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def error_line(e: BaseException | None) -> str:
    """The last line of a trial's error (Tune's text is a traceback: the exception comes last)."""
    lines = [ln.strip() for ln in str(e or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "the trial failed"


def check_resources(total: dict, config) -> None:
    """A trial that asks for more than the whole cluster has would wait for ever."""
    for key, want in (("CPU", config.cpus_per_trial), ("GPU", config.gpus_per_trial)):
        have = total.get(key, 0.0)
        if want > have:
            flag = f"--{key.lower()}s-per-trial"
            raise UsageError(f"{flag} {want:g} is more than the Ray cluster has ({have:g} {key}s)")


__all__ = ["connect", "check_resources", "error_line", "CONNECT_TIMEOUT", "LOOPBACK_ENV"]
