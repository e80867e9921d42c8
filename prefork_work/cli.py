"""The ``prefork-work`` command: run the server, check a config, enqueue a job.

Exit codes: 0 ok; 2 usage; 69 (EX_UNAVAILABLE) Redis unreachable; 78 (EX_CONFIG) bad config
or a job module that fails to import, which systemd's RestartPreventExitStatus=78 keeps
from a restart loop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from prefork_work import __version__
from prefork_work.config import Config, config_warnings, load_config
from prefork_work.errors import ConfigError, InvalidJobArguments, RedisUnavailable
from supervisor.exitcodes import EX_CONFIG, EX_UNAVAILABLE

EX_USAGE = 2


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.config:
        print("prefork-work: -c CONFIG is required", file=sys.stderr)
        return EX_USAGE
    try:
        config = load_config(args.config)
        _prepare_imports(config)
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
            _print_warnings(config)
            return _enqueue(config, args.name, args.args)
        if args.check:
            _print_warnings(config)
            print(f"config ok: {len(app.job_types)} job types, {len(app.periodic_jobs)} periodic")
            return 0
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


def _prepare_imports(config: Config) -> None:
    # Like gunicorn: the working directory and configured paths come first, so the job
    # module is found the way the operator expects.
    for path in reversed([os.getcwd(), *config.server.python_path]):
        if path not in sys.path:
            sys.path.insert(0, path)


def redis_url_for(config: Config) -> str:
    """The configured URL, or the embedded server's socket under state_dir."""
    if config.redis.url:
        return config.redis.url
    socket_path = Path(config.server.state_dir) / "redis" / "redis.sock"
    if not socket_path.exists():
        raise RedisUnavailable(
            f"no [redis] url configured and the embedded Redis is not running ({socket_path} "
            "does not exist): start the server with this config first"
        )
    return f"unix://{socket_path}"


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
