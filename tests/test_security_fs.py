"""A hostile local user against the server's files (issue 12, items 1 and 2).

The tests run as root; the attacker is ``nobody``, reached with ``setpriv`` in a subprocess.
They work in a directory under /tmp that ``nobody`` can enter (pytest's own tmp_path is 0700),
with a sticky world-writable corner like /tmp itself where ``nobody`` can create things.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Master, read_records, wait_until

from prefork_work.connection import redis_from_url
from prefork_work.embedded import EmbeddedRedis, check_state_dir, find_redis_server
from prefork_work.errors import ConfigError

BIN = Path(sys.executable).parent
SETPRIV = shutil.which("setpriv")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None,
                                reason="needs root and setpriv to act as a second user")


def as_nobody(script: str, cwd: Path | None = None) -> None:
    subprocess.run([SETPRIV or "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                    "sh", "-ec", script], check=True, timeout=30, cwd=cwd)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 15,
            umask: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "prefork-work"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


@pytest.fixture
def area() -> Iterator[Path]:
    """A root-owned 0755 directory; ``area/pub`` is sticky and world-writable, like /tmp."""
    path = Path(tempfile.mkdtemp(prefix="pw-sec-"))
    path.chmod(0o755)
    (path / "pub").mkdir()
    (path / "pub").chmod(0o1777)
    (path / "precious").write_text("root's file\n")
    (path / "precious").chmod(0o600)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config_for(area: Path, state_dir: Path, extra: str = "") -> Path:
    config = area / "work.toml"
    config.write_text(f'[server]\nstate_dir = "{state_dir}"\nconcurrency = 1\n{extra}')
    config.chmod(0o644)
    return config


def refused(config: Path, message: str) -> None:
    """Both --check and a start exit 78, saying why, and start no redis-server."""
    for args in (["--check"], []):
        result = run_cli("-c", str(config), *args)
        assert result.returncode == 78, (args, result.stdout, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def refused_in_process(state: Path, message: str) -> None:
    """What --check runs and what a start runs both raise ConfigError (exit 78), saying why."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_state_dir(state)
    server = EmbeddedRedis.for_state_dir(state)
    with pytest.raises(ConfigError, match=re.escape(message)):
        server.start()
    assert server.process is None


# --- #12.1 the state directory --------------------------------------------------------------------
def test_state_dir_another_user_made_is_refused(area) -> None:
    # nobody gets there first and points redis.log at root's file
    as_nobody(f"mkdir -p {area}/pub/state/redis && chmod 700 {area}/pub/state "
              f"&& ln -s {area}/precious {area}/pub/state/redis/redis.log")
    refused(config_for(area, area / "pub" / "state"), "is owned by nobody")
    assert (area / "precious").read_text() == "root's file\n"


def test_state_dir_others_can_write_to_is_refused(area) -> None:
    state = area / "state"
    state.mkdir()
    state.chmod(0o777)
    as_nobody(f"mkdir {state}/redis")  # what nobody could do with it
    refused_in_process(state, f"{state} is writable by others (mode 0777)")


def test_parent_of_the_state_dir_others_can_write_to_is_refused(area) -> None:
    # not sticky: nobody could rename our state dir away and put theirs in its place
    (area / "shared").mkdir()
    (area / "shared").chmod(0o777)
    refused_in_process(area / "shared" / "state", f"{area / 'shared'} is writable by others")
    assert not (area / "shared" / "state").exists()  # refused before creating anything
    (area / "shared" / "state").mkdir(mode=0o700)
    refused_in_process(area / "shared" / "state",
                       f"{area / 'shared'} (a parent of {area / 'shared' / 'state'}) is writable")


def test_a_redis_folder_that_is_a_symlink_is_refused(area) -> None:
    (area / "state").mkdir(mode=0o700)
    (area / "elsewhere").mkdir(mode=0o700)  # root's, safe in itself: the link decides where
    (area / "state" / "redis").symlink_to(area / "elsewhere")
    refused_in_process(area / "state", f"{area / 'state' / 'redis'} is a symlink")
    assert list((area / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("name", ["redis.pid", "redis.log", "redis.sock", "appendonlydir"])
def test_symlinks_in_the_state_dir_are_refused(area, name) -> None:
    # planted while the directory was open to all, then the directory was tightened: the
    # symlink stays, and Redis (running as root) would write through it
    redis_dir = area / "state" / "redis"
    redis_dir.mkdir(parents=True)
    redis_dir.chmod(0o777)
    as_nobody(f"ln -s {area}/precious {redis_dir}/{name}")
    redis_dir.chmod(0o700)
    (area / "state").chmod(0o700)
    refused_in_process(area / "state", f"{redis_dir / name} is a symlink")
    assert (area / "precious").read_text() == "root's file\n"


def test_state_dir_and_redis_files_are_private(area) -> None:
    """Created 0700, and redis-server's files 0600 even when started with umask 022."""
    config = config_for(area, area / "state")
    process = subprocess.Popen([str(BIN / "prefork-work"), "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: os.umask(0o022))
    redis_dir = area / "state" / "redis"
    try:
        wait_until(lambda: (redis_dir / "redis.sock").exists() and (redis_dir / "redis.pid").exists()
                   and list((redis_dir / "appendonlydir").glob("*.aof")), 20,
                   message="the embedded redis and its files")
        client = redis_from_url(f"unix://{redis_dir / 'redis.sock'}")
        wait_until(lambda: client.exists("work:worker_pools"), 20, message="the server running")
        client.close()
    finally:
        process.terminate()
        assert process.wait(20) == 0
    for directory in (area / "state", redis_dir, redis_dir / "appendonlydir"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    files = [redis_dir / "redis.log", *(redis_dir / "appendonlydir").iterdir()]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_a_state_dir_the_user_cannot_create_is_a_config_error(area) -> None:
    """As nobody, under a root-owned 0755 directory: what --check runs and what a start runs
    both say so (ConfigError: exit 78). In a forked child that drops to nobody, because the
    test venv's interpreter may live where nobody cannot read it."""
    expected = f"server.state_dir: cannot create {area / 'state'}: permission denied"
    (area / "root-made").mkdir(mode=0o755)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                check_state_dir(area / "state")
            except ConfigError as err:
                code = 0 if expected in str(err) else 2
            if code == 0:
                try:
                    EmbeddedRedis.for_state_dir(area / "state").start()
                    code = 3
                except ConfigError as err:
                    code = 0 if "server.state_dir: cannot create" in str(err) else 4
            if code == 0:  # it exists (root made it) but nobody cannot write to it
                try:
                    check_state_dir(area / "root-made")
                    code = 5
                except ConfigError as err:
                    code = 0 if f"cannot write to {area / 'root-made'}" in str(err) else 6
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_cli_refuses_a_socket_our_redis_does_not_serve(area) -> None:
    """Someone else's Redis answering on redis.sock gets no job: the CLI checks that the
    socket's peer is the redis-server whose pid the state dir records."""
    redis_dir = area / "state" / "redis"
    redis_dir.mkdir(parents=True, mode=0o700)
    (area / "state").chmod(0o700)
    impostor_dir = area / "impostor"
    impostor_dir.mkdir(mode=0o700)
    impostor = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--unixsocket", str(redis_dir / "redis.sock"),
         "--dir", str(impostor_dir), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until((redis_dir / "redis.sock").exists, 10, message="the impostor's socket")
        (redis_dir / "redis.pid").write_text(f"{os.getpid()}\n")  # not the impostor's pid
        config = config_for(area, area / "state")
        result = run_cli("-c", str(config), "enqueue", "hello", '{"name": "secret"}')
        assert result.returncode == 78, result.stdout + result.stderr
        assert f"is served by pid {impostor.pid}" in result.stderr
        client = redis_from_url(f"unix://{redis_dir / 'redis.sock'}")
        assert client.dbsize() == 0  # the impostor received nothing
        client.close()
    finally:
        impostor.kill()
        impostor.wait(10)


# --- #12.2 the import path --------------------------------------------------------------------------
def test_a_module_planted_in_the_working_directory_does_not_run(area) -> None:
    jobs = area / "jobs"
    jobs.mkdir(mode=0o755)
    (jobs / "myjobs.py").write_text(textwrap.dedent('''
        import calendar  # job code importing the standard library
        from prefork_work.app import App
        app = App()
        app.register("hello", lambda job: calendar.isleap(2024))
    '''))
    config = config_for(area, area / "state", 'app = "myjobs:app"\npython_path = ["jobs"]\n')
    planted = area / "pub" / "cwd"
    as_nobody(f"mkdir {planted} && printf \"open('{planted}/ran', 'w').write('x')\\n\" "
              f"> {planted}/calendar.py")
    result = run_cli("-c", str(config), "--check", cwd=planted)
    assert result.returncode == 0, result.stderr
    assert not (planted / "ran").exists(), "a calendar.py in the working directory ran"


def test_python_path_others_can_write_to_is_refused(area) -> None:
    (area / "pub" / "jobs").mkdir()
    (area / "pub" / "jobs").chmod(0o777)
    config = config_for(area, area / "state", 'python_path = ["pub/jobs"]\n')
    result = run_cli("-c", str(config), "--check")
    assert result.returncode == 78, result.stderr
    assert f"server.python_path: {area / 'pub' / 'jobs'} is writable by others" in result.stderr


def test_python_path_another_user_owns_is_refused(area) -> None:
    as_nobody(f"mkdir -m 755 {area}/pub/nobodys")
    config = config_for(area, area / "state", 'python_path = ["pub/nobodys"]\n')
    result = run_cli("-c", str(config), "--check")
    assert result.returncode == 78, result.stderr
    assert "server.python_path:" in result.stderr and "is owned by nobody" in result.stderr


def test_python_path_that_does_not_exist_is_refused(area) -> None:
    config = config_for(area, area / "state", 'python_path = ["nope"]\n')
    result = run_cli("-c", str(config), "--check")
    assert result.returncode == 78
    assert f"server.python_path: {area / 'nope'} does not exist" in result.stderr


def test_a_child_refuses_a_socket_swapped_under_the_server(area) -> None:
    """A replacement child checks the socket before it connects: a Redis that took over
    redis.sock (here root plays the attacker) gets no worker connection."""
    config = config_for(area, area / "state")
    redis_dir = area / "state" / "redis"
    log = area / "server.log"
    with log.open("w") as log_file:
        master = subprocess.Popen([str(BIN / "prefork-work"), "-c", str(config)],
                                  stdout=log_file, stderr=subprocess.STDOUT)
    impostor = None
    try:
        wait_until((redis_dir / "redis.sock").exists, 20, message="the embedded redis")
        client = redis_from_url(f"unix://{redis_dir / 'redis.sock'}")
        wait_until(lambda: client.exists("work:worker_pools"), 20, message="the server running")
        client.close()
        not_redis = lambda child: "redis" not in child.name()  # noqa: E731
        children = Master(master).children_where(not_redis)
        (redis_dir / "redis.sock").unlink()
        for child in children:  # dead before the impostor listens: any child it sees is new
            child.kill()
            child.wait(10)
        impostor = subprocess.Popen(
            [find_redis_server(), "--port", "0", "--unixsocket", str(redis_dir / "redis.sock"),
             "--dir", str(area), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until((redis_dir / "redis.sock").exists, 10, message="the impostor's socket")
        # a refusing child lives ~10 ms, too short to catch by polling the process table:
        # wait for its refusal of the impostor in the master's log instead
        refusal = f"is served by pid {impostor.pid} "
        wait_until(lambda: [e for e in read_records(log) if e.get("event") == "child failed"
                            and refusal in (e.get("error") or "")], 20,
                   message="a replacement child refusing the impostor")
        time.sleep(1.0)  # give a replacement child the time to connect, if it were going to
        spy = redis_from_url(f"unix://{redis_dir / 'redis.sock'}")
        names = [c.get("name", "") for c in spy.client_list()]
        spy.close()
        assert not [n for n in names if "child" in n], names
    finally:
        master.kill()
        master.wait(10)
        if impostor is not None:
            impostor.kill()
            impostor.wait(10)


def test_group_write_is_refused_unless_the_group_is_the_owners_own(area) -> None:
    """umask 002 with user private groups (Debian, Ubuntu) makes directories 0775: fine while
    the group is the owner's alone, refused when it is shared."""
    state = area / "state"
    state.mkdir(mode=0o700)
    state.chmod(0o770)  # root:root, root's own group
    check_state_dir(state)
    os.chown(state, 0, 65534)  # nogroup: not root's own group
    with pytest.raises(ConfigError, match=re.escape(f"{state} is writable by its group (mode 0770)")):
        check_state_dir(state)
