"""The ``prefork-work`` command: run the server, check a config, enqueue a job.

Exit codes: 0 ok; 2 usage; 69 (EX_UNAVAILABLE) Redis unreachable; 78 (EX_CONFIG) bad config
or a job module that fails to import, which systemd's RestartPreventExitStatus=78 keeps
from a restart loop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefork_work import __version__
from prefork_work.config import Config, config_warnings, load_config
from prefork_work.errors import ConfigError, InvalidJobArguments, RedisUnavailable
from prefork_work.safepath import prepare_imports

EX_USAGE = 2
EX_UNAVAILABLE = 69  # a required service (Redis) could not be reached
EX_CONFIG = 78  # bad configuration: systemd's RestartPreventExitStatus keeps it from looping


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefork-work",
        description="Redis-backed prefork job server, wire-compatible with gocraft/work.",
    )
    parser.add_argument("-c", "--config", help="TOML config file (see conf/work.toml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and import the app, start nothing")
    parser.add_argument("--version", action="version", version=f"prefork-work {__version__}")
    commands = parser.add_subparsers(dest="command")
    enqueue = commands.add_parser("enqueue", help="enqueue one job")
    enqueue.add_argument("name", help="job name")
    enqueue.add_argument("args", nargs="?", default="{}",
                         help="arguments as a JSON object; - reads them from standard input "
                              "(so they do not show in ps)")
    enqueue.add_argument("--any-name", action="store_true",
                         help="allow a name the app does not register (a job for another service)")
    web = commands.add_parser(
        "web", help="serve the dashboard, JSON API and /metrics (needs prefork-work[web])")
    web.add_argument("--listen", metavar="HOST:PORT",
                     help="address to bind (default: [web] listen, else 127.0.0.1:5040)")
    from prefork_work import admin_cli

    admin_cli.add_commands(commands)  # queues, workers, jobs, status, drain, ... (README "Admin CLI")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config:
        print("prefork-work: -c CONFIG is required", file=sys.stderr)
        return EX_USAGE
    try:
        config = load_config(args.config)
        if args.command in _admin_commands():
            return _admin(config, args)
        prepare_imports(config.server.python_path)
        if args.command == "web":
            return _web(config, args.listen)
        from prefork_work.server import load_app

        app = load_app(config.server.app)
        if args.command == "enqueue":
            if args.name not in app.job_types and not args.any_name:
                known = ", ".join(sorted(app.job_types))
                print(f"prefork-work: unknown job name {args.name!r} (the app registers: {known}; "
                      "--any-name enqueues it anyway)", file=sys.stderr)
                return EX_USAGE
        if args.check:  # before any subcommand runs: --check enqueue validates, enqueues nothing
            _print_warnings(config)
            if args.command == "enqueue" and not _valid_job_args(args.args):
                return EX_USAGE
            redis_line = _check_redis(config)
            print(f"config ok: {len(app.job_types)} job types, {len(app.periodic_jobs)} periodic")
            print(redis_line)
            if args.command:
                print(f"{args.command} not run (--check)")
            return 0
        if args.command == "enqueue":
            _print_warnings(config)
            return _enqueue(config, args.name, args.args)
        from prefork_work.logging import configure_logging
        from prefork_work.server import run

        configure_logging(config.log.format, config.log.level)
        _log_warnings(config)
        return run(config, app)
    except ConfigError as err:
        print(f"prefork-work: {err}", file=sys.stderr)
        return EX_CONFIG
    except RedisUnavailable as err:
        print(f"prefork-work: {err}", file=sys.stderr)
        return EX_UNAVAILABLE


def _admin_commands() -> tuple[str, ...]:
    from prefork_work.admin_cli import COMMANDS

    return COMMANDS


def _admin(config: Config, args: argparse.Namespace) -> int:
    """An operator's command: needs the config and Redis, not the job module."""
    from prefork_work import admin_cli
    from prefork_work.client import Client
    from prefork_work.connection import redis_from_url
    from prefork_work.logging import configure_logging

    configure_logging(config.log.format, config.log.level)  # stderr: stdout is the output

    def connect() -> Client:
        client = redis_from_url(redis_url_for(config), client_name="prefork-work:admin",
                                socket_timeout=config.redis.socket_timeout,
                                cluster=config.redis.cluster, settings=config.redis)
        return Client(config.server.namespace, client)

    try:
        return admin_cli.run(args, connect)
    except admin_cli.UsageError as err:
        print(f"prefork-work {args.command}: {err}", file=sys.stderr)
        return EX_USAGE


def _check_redis(config: Config) -> str:
    """--check's view of the Redis the server would use: the embedded one's binary (refused if
    too old) and a state dir it could create and write, all without starting anything."""
    if config.redis.url:
        return "redis: [redis] url"
    from prefork_work.embedded import check_state_dir, find_redis_server, inspect_server

    binary = inspect_server(find_redis_server())
    check_state_dir(Path(config.server.state_dir))
    return f"embedded redis: {binary}, state dir {config.server.state_dir}"


def _valid_job_args(raw_args: str) -> bool:
    """For --check enqueue: the arguments _enqueue would accept ("-": read when it runs)."""
    if raw_args == "-":
        return True
    try:
        valid = isinstance(json.loads(raw_args), dict)
    except (ValueError, RecursionError):
        valid = False
    if not valid:
        print("prefork-work: args must be a JSON object", file=sys.stderr)
    return valid


def redis_url_for(config: Config) -> str:
    """The configured URL, or the socket of the embedded Redis a running server started for
    this config file (found even when the server's state dir came from systemd's
    $STATE_DIRECTORY, which this shell does not have)."""
    if config.redis.url:
        return config.redis.url
    from prefork_work.embedded import running_url

    return running_url(config.server.state_dir, config.path)


def _web(config: Config, listen: str | None) -> int:
    """The web app alone; it needs no job module, only the config and Redis."""
    try:
        from prefork_work.web.run import serve
    except ImportError as err:
        print(f"prefork-work: the web app needs its extra: pip install 'prefork-work[web]' "
              f"({err})", file=sys.stderr)
        return EX_CONFIG
    from prefork_work.logging import configure_logging

    configure_logging(config.log.format, config.log.level)
    return serve(config, listen, redis_url_for(config))


def _print_warnings(config: Config) -> None:
    for warning in config_warnings(config):
        print(f"prefork-work: warning: {warning}", file=sys.stderr)


def _log_warnings(config: Config) -> None:
    import structlog

    for warning in config_warnings(config):
        structlog.get_logger("prefork_work.config").warning("config warning", problem=warning)


def _enqueue(config: Config, name: str, raw_args: str | bytes) -> int:
    from prefork_work.connection import redis_from_url
    from prefork_work.enqueuer import Enqueuer

    if raw_args == "-":
        # stdin rather than argv: another local user can read any process's argv (ps)
        if sys.stdin is None:
            print("prefork-work: args '-' reads standard input, which is closed", file=sys.stderr)
            return EX_USAGE
        raw_args = sys.stdin.buffer.read()
    try:
        job_args = json.loads(raw_args)
    except (ValueError, RecursionError) as err:
        print(f"prefork-work: args must be a JSON object: {err}", file=sys.stderr)
        return EX_USAGE
    if not isinstance(job_args, dict):
        print("prefork-work: args must be a JSON object", file=sys.stderr)
        return EX_USAGE
    client = redis_from_url(redis_url_for(config), client_name="prefork-work:cli",
                            socket_timeout=config.redis.socket_timeout, cluster=config.redis.cluster,
                            settings=config.redis)
    try:
        job = Enqueuer(config.server.namespace, client).enqueue(name, job_args)
    except InvalidJobArguments as err:
        print(f"prefork-work: {err}", file=sys.stderr)
        return EX_USAGE
    print(job.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
