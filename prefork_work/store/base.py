"""The Redis client wrapper every store module is built on: scripts and error translation.

Scripts are read from ``prefork_work/lua/<name>.lua`` once and run with EVALSHA, loaded
again on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException

from prefork_work.errors import ConfigError, RedisUnavailable
from prefork_work.keys import Keys, has_hash_tag
from prefork_work.outcome import Outcome

P = ParamSpec("P")
R = TypeVar("R")

# How many wake tokens may pile up while every worker is busy; enough to wake every idle
# child of a large host at once, small enough that draining stale tokens costs nothing.
WAKE_TOKENS_MAX = 64

# RedisClusterException: no node of a cluster reachable; ClusterDownError: slots uncovered
_CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError,
                      RedisClusterException, ClusterDownError)


@contextmanager
def redis_errors() -> Iterator[None]:
    """Translate connection-level failures into RedisUnavailable at the store boundary."""
    try:
        yield
    except _CONNECTION_ERRORS as err:
        raise RedisUnavailable(f"redis unavailable: {err}") from err


def translate_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of :func:`redis_errors` for store methods."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with redis_errors():
            return fn(*args, **kwargs)

    return wrapper


def check_cluster_namespace(cluster: bool, keys: Keys) -> None:
    """With Redis Cluster, the namespace must put every key of it in one slot."""
    if cluster and not has_hash_tag(keys.namespace):
        raise ConfigError(
            f"namespace {keys.namespace!r}: with Redis Cluster every key of a namespace must "
            "be in one slot; use a hash tag, e.g. '{" + keys.namespace + "}'"
        )


@functools.cache
def text(raw: bytes) -> str:
    """A name or value read from Redis, as text: untrusted bytes, so undecodable ones are
    replaced, never raised (a member another program wrote must not stop a loop or a page)."""
    return raw.decode("utf-8", "replace")


def decode_hash(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    """An HGETALL reply as text."""
    return {text(k): text(v) for k, v in raw.items()}


def lua_source(name: str) -> str:
    return resources.files("prefork_work").joinpath("lua", f"{name}.lua").read_text("utf-8")


class RedisStore:
    """A Redis client, the namespace's keys and the scripts it runs."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        check_cluster_namespace(isinstance(client, RedisCluster), keys)
        self.redis = client
        self.keys = keys
        self._held: tuple[int, Any] | None = None  # (pid, connection) of run_script_held
        self._held_lock = threading.Lock()
        _STORES.add(self)

    def run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script on NOSCRIPT (first use, a Redis restart, SCRIPT FLUSH).

        A plain EVALSHA call rather than redis-py's Script object: the enqueue and fetch
        paths run one script per call, and the wrapper cost about 15 µs each. Retrying after
        NOSCRIPT is safe: the script did not run.
        """
        sha = script_sha(name)
        try:
            return self.redis.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.redis.script_load(lua_source(name))
            return self.redis.execute_command("EVALSHA", sha, len(keys), *keys, *args)

    def wake(self, pipe: object, jobs: int) -> None:
        """Queue wake tokens for idle workers on ``pipe``: one per job, at most the cap."""
        tokens = min(jobs, WAKE_TOKENS_MAX)
        pipe.lpush(self.keys.wake(), *([b"1"] * tokens))  # type: ignore[attr-defined]
        pipe.ltrim(self.keys.wake(), 0, WAKE_TOKENS_MAX - 1)  # type: ignore[attr-defined]

    @translate_errors
    def move_due(self, zset: str, now: int, moves: Sequence[tuple[bytes, bytes, str]],
                 refused: list[int] | None = None) -> int:
        """Move members of a sorted set to queues, each only if this call removed it.

        moves: (member, new bytes, target key); a target equal to <p>dead means dead, at
        score ``now``. Used by the requeuer and by the Client's dead-job retries. A move to
        a queue key that holds another type is not made (the member stays where it is);
        its index in ``moves`` is appended to ``refused``.
        """
        if not moves:
            return 0
        keys = [zset, self.keys.wake()]
        args: list[bytes | str | int] = [now, WAKE_TOKENS_MAX]
        dead = self.keys.dead()
        for member, payload, target in moves:
            keys.append(target)
            args += [member, payload, Outcome.DEAD if target == dead else Outcome.REQUEUE]
        moved, *rejected = self.run_script("move_due", keys, args)
        if refused is not None:
            refused.extend(int(i) - 1 for i in rejected)
        return int(moved)

    def run_script_held(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """``run_script`` on a connection this store keeps for itself: the one-job enqueue path.

        Taking a connection from the pool and returning it, with redis-py's bookkeeping
        around every command, cost about a third of a one-job enqueue on a 2-core machine.
        Calls are serialized by a lock (the store may be shared by threads); a connection
        that failed mid-call is dropped, since its replies could be out of step.
        """
        pool = getattr(self.redis, "connection_pool", None)
        if pool is None:  # a Redis Cluster client routes each call itself
            return self.run_script(name, keys, args)
        sha = script_sha(name)
        with self._held_lock:
            held = self._held
            if held is None or held[0] != os.getpid():  # never a connection from before a fork
                held = self._held = (os.getpid(), pool.make_connection())
            connection = held[1]
            try:
                try:
                    connection.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return connection.read_response()
                except redis.exceptions.NoScriptError:
                    connection.send_command("SCRIPT", "LOAD", lua_source(name))
                    connection.read_response()
                    connection.send_command("EVALSHA", sha, len(keys), *keys, *args)
                    return connection.read_response()
            except redis.exceptions.ResponseError:
                raise  # a clean error reply: the connection is still in step
            except BaseException:
                connection.disconnect()
                raise

    def close(self) -> None:
        with self._held_lock:
            if self._held is not None:
                self._held[1].disconnect()
                self._held = None


# A fork while another thread holds a store's lock would leave the child's copy locked for
# ever; the child gets fresh locks (and never uses the parent's connection: see the pid).
_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._held_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@functools.cache
def script_sha(name: str) -> str:
    return hashlib.sha1(lua_source(name).encode("utf-8")).hexdigest()
