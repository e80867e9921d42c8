"""Refuse paths that another local user could tamper with: the state dir, ``python_path``.

The server often runs as root (or as a service user) and trusts what it finds on disk: the
embedded Redis's append-only file (jobs it will run), its pid, log and socket files, and the
modules on ``sys.path`` (code it will run). A local user who can write to one of these, or to
a directory above it (rename it away and put their own in its place), gets to run code as the
server. The rule is OpenSSH's StrictModes: every directory from the path up to ``/`` is owned
by the running user or root and is not writable by group or others, except that an *ancestor*
may be a sticky directory such as ``/tmp`` (others may add entries there, but cannot rename or
remove ours). Every refusal is a ConfigError naming the key, so the CLI exits 78.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from prefork_work.errors import ConfigError


def trusted_uids() -> frozenset[int]:
    """Owners whose files we may trust: ourselves and root (root can do anything anyway)."""
    return frozenset({os.geteuid(), 0})


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def _private_group(st: os.stat_result) -> bool:
    """The file's group is its owner's own (user private groups, umask 002 on Debian and
    Ubuntu): no other member can use its write bit. Debian's OpenSSH makes the same exception."""
    try:
        import grp
        import pwd

        owner = pwd.getpwuid(st.st_uid)
        group = grp.getgrgid(st.st_gid)
    except (KeyError, ImportError):
        return False
    if group.gr_mem:
        return group.gr_mem == [owner.pw_name]
    return owner.pw_gid == group.gr_gid


def _problem(st: os.stat_result, trusted: frozenset[int], *, allow_sticky: bool) -> str | None:
    if st.st_uid not in trusted:
        return f"is owned by {_owner_name(st.st_uid)}, not by the user running prefork-work or root"
    writable = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and not _private_group(st))
    if writable and not (allow_sticky and st.st_mode & stat.S_ISVTX and stat.S_ISDIR(st.st_mode)):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        return f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}); chmod go-w it"
    return None


def check_path(path: Path, key: str, *, trusted: frozenset[int] | None = None,
               trusted_leaf: frozenset[int] | None = None, symlink_ok: bool = True) -> None:
    """Refuse ``path`` (which must exist) if it or a directory above it is unsafe.

    ``trusted_leaf`` widens the owners accepted for ``path`` itself (the CLI run by root
    accepts a state dir owned by the service user); ancestors always need ``trusted``.
    ``symlink_ok=False``: ``path`` itself may not be a symlink (whoever planted it chose
    where we write; the configured state dir may be one, its ``redis/`` folder may not).
    """
    trusted = trusted or trusted_uids()
    if not symlink_ok and os.path.islink(path):
        raise ConfigError(f"{key}: {path} is a symlink (to {os.readlink(path)}); "
                          "nothing in the state directory may be a symlink: remove it")
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError as err:
        raise ConfigError(f"{key}: {path}: {err.strerror}") from None
    problem = _problem(st, trusted_leaf or trusted, allow_sticky=False)
    if problem:
        raise ConfigError(f"{key}: {real} {problem}")
    for parent in real.parents:
        try:
            st = os.stat(parent)
        except OSError as err:
            raise ConfigError(f"{key}: {parent}: {err.strerror}") from None
        problem = _problem(st, trusted, allow_sticky=True)
        if problem:
            raise ConfigError(f"{key}: {parent} (a parent of {real}) {problem}")


def check_entries(directory: Path, key: str, *, trusted: frozenset[int] | None = None,
                  depth: int = 1) -> None:
    """Refuse a symlink, or an entry another user owns, directly in ``directory`` (and in its
    subdirectories down to ``depth``): Redis would follow a ``redis.log`` symlink to any file
    and append to it with the server's rights."""
    trusted = trusted or trusted_uids()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {directory}: {err.strerror}") from None
    for entry in entries:
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise ConfigError(f"{key}: {entry.path} is a symlink (to {os.readlink(entry.path)}); "
                              "nothing in the state directory may be a symlink: remove it")
        if st.st_uid not in trusted:
            raise ConfigError(f"{key}: {entry.path} is owned by {_owner_name(st.st_uid)}, "
                              "not by the user running prefork-work: remove it")
        if stat.S_ISDIR(st.st_mode) and depth > 0:
            check_entries(Path(entry.path), key, trusted=trusted, depth=depth - 1)


def check_creatable(path: Path, key: str) -> None:
    """For ``--check``: ``path`` exists as a safe writable directory, or it can be created
    (its nearest existing ancestor is a writable directory) — without creating anything."""
    real = Path(os.path.realpath(path))
    existing = real
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: cannot create {real}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "write to" if existing == real else "create"
        raise ConfigError(f"{key}: cannot {verb} {real}: permission denied on {existing}")
    check_path(existing, key)


def prepare_imports(python_path: Iterable[str], key: str = "server.python_path") -> None:
    """Put the configured directories first on sys.path, each checked like the state dir.

    The working directory is never added (a ``calendar.py`` left in whatever directory an
    admin runs ``prefork-work`` from would otherwise run as root, even for ``--check``), and
    the one Python adds itself for ``python -m prefork_work.cli`` is taken out again.
    """
    cwd = os.getcwd()
    if sys.path and sys.path[0] in ("", cwd) and cwd not in python_path:
        del sys.path[0]
    entries = list(python_path)
    for entry in entries:
        if not os.path.exists(entry):
            raise ConfigError(f"{key}: {entry} does not exist")
        check_path(Path(entry), key)
    for entry in reversed(entries):
        if entry not in sys.path:
            sys.path.insert(0, entry)
