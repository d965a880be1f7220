"""`call-me` (and `call-me-client`, the original's name): the command line.

Only argparse and the standard library load before a command runs, so `--help` and argument
errors stay fast; httpx and the client load when a command needs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .constants import REQUEST_DEFAULT_TTL, RUN_DEFAULT_TTL

TYPE_CHECKING = False  # as in __init__.py: typing stays out of `--help`
if TYPE_CHECKING:
    from typing import NoReturn

_EPILOG = """\
configuration (flags win):
  CALL_ME_URL, or the original's HOST (host:port means http://host:port)
  CALL_ME_API_KEY, or the original's API_KEY
  CALL_ME_STATE_FILE   where `request` keeps the leases it took (for `release ENV`)
  CALL_ME_RETRY_FOR    seconds one call keeps retrying an unreachable server (default 60)

exit codes:
  0 done, 1 other error, 2 bad usage or input, 3 not granted (--no-wait),
  4 --timeout passed (the queue was left), 5 server unreachable, 6 key or token refused,
  7 no such environment, lease or ticket, 8 `run`: the lease was lost while the command ran,
  130/143 interrupted by SIGINT/SIGTERM; `run` otherwise exits with its command's code.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Take turns on shared test environments: request, run, release.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_options(parser, None)
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, parents=[common])

    request = command("request", "wait for a slot of ENV (or of any environment with --label) and hold it")
    _add_target(request)
    _add_acquire_options(request, ttl=REQUEST_DEFAULT_TTL)
    _add_output(request, ("text", "json", "env"))

    release = command("release", "release the lease that `request` took for ENV here (or --lease/--token)")
    release.add_argument("environment", nargs="?", metavar="ENV")
    release.add_argument("--lease", metavar="ID", help="the lease to release")
    release.add_argument("--token", metavar="TOKEN", help="its token (from `request --output env|json`)")
    release.add_argument(
        "--force",
        action="store_true",
        help="with --lease: end that lease without its token; with ENV: the oldest lease there, whoever took it "
        "(admin key)",
    )

    run = command("run", "hold ENV (or any with --label) while CMD runs: renew, then release whatever happens")
    run.usage = f"{prog} run [options] (ENV | --label LABEL) -- CMD [ARG ...]"
    _add_target(run)
    _add_acquire_options(run, ttl=RUN_DEFAULT_TTL)

    renew = command("renew", "extend the lease that `request` took for ENV here (or --lease/--token)")
    renew.add_argument("environment", nargs="?", metavar="ENV")
    renew.add_argument("--lease", metavar="ID")
    renew.add_argument("--token", metavar="TOKEN")
    renew.add_argument("--ttl", type=_positive_int, metavar="SECONDS", help="new length (default: its TTL)")

    status = command("status", "show environments, who holds them since when, and who waits")
    status.add_argument("environment", nargs="?", metavar="ENV")
    _add_output(status, ("text", "json"))

    history = command("history", "show the audit log, newest first")
    history.add_argument("environment", nargs="?", metavar="ENV")
    history.add_argument("--limit", type=_positive_int, default=20, help="how many events (default 20)")
    _add_output(history, ("text", "json"))

    env = command("env", "manage environments (admin key)")
    env_commands = env.add_subparsers(dest="env_command", metavar="ACTION", required=True)
    env_set = env_commands.add_parser("set", help="create or change an environment", parents=[common])
    env_set.add_argument("name", metavar="ENV")
    env_set.add_argument("--slots", type=_positive_int, help="how many may hold it at once")
    env_set.add_argument("--label", dest="labels", action="append", metavar="LABEL", help="repeat for more")
    env_set.add_argument("--no-labels", action="store_true", help="remove every label")
    env_set.add_argument("--description")
    env_set.add_argument("--property", dest="properties", action="append", metavar="KEY=VALUE", help="repeat for more")
    env_delete = env_commands.add_parser("delete", help="delete an environment", parents=[common])
    env_delete.add_argument("name", metavar="ENV")
    env_delete.add_argument("--force", action="store_true", help="even with leases or waiters (revoked, dropped)")
    env_maintenance = env_commands.add_parser(
        "maintenance", help="stop (on) or resume (off) new grants on an environment", parents=[common]
    )
    env_maintenance.add_argument("name", metavar="ENV")
    env_maintenance.add_argument("switch", choices=("on", "off"))
    env_maintenance.add_argument("--note", help="why, shown to waiters and in status")
    return parser


def _add_connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--url", default=default, help="the server (default: CALL_ME_URL or HOST)")
    group.add_argument("--api-key", default=default, help="the key (default: CALL_ME_API_KEY or API_KEY)")
    group.add_argument(
        "--retry-for", type=_seconds, default=default, metavar="SECONDS", help="keep retrying an outage this long"
    )
    group.add_argument("--state-file", default=default, metavar="PATH", help="where leases taken here are kept")
    group.add_argument("-q", "--quiet", action="store_true", default=default, help="print retries and warnings less")


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("environment", nargs="?", metavar="ENV", help="the environment")
    parser.add_argument("--label", metavar="LABEL", help="any environment with this label instead")
    parser.add_argument(
        "--and",
        dest="also",
        action="append",
        metavar="ENV",
        help="another environment, granted at once with the first (all or nothing); repeat for more",
    )
    parser.add_argument(
        "--and-label",
        dest="also_labels",
        action="append",
        metavar="LABEL",
        help="another environment with this label, granted at once with the rest; repeat for more",
    )


def _add_acquire_options(parser: argparse.ArgumentParser, *, ttl: int) -> None:
    parser.add_argument(
        "--ttl", type=_positive_int, default=ttl, metavar="SECONDS", help=f"lease length (default {ttl})"
    )
    parser.add_argument("--holder", help="who holds it (default: the key's name)")
    parser.add_argument("--priority", type=int, help="served before lower priorities (default 0)")
    parser.add_argument("--meta", action="append", metavar="KEY=VALUE", help="metadata; repeat for more")
    parser.add_argument("--metadata", metavar="JSON", help="metadata as one JSON object")
    parser.add_argument("--no-wait", action="store_true", help="fail at once (exit 3) if no slot is free")
    parser.add_argument("--timeout", type=_seconds, metavar="SECONDS", help="give up waiting after this long")


def _add_output(parser: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    parser.add_argument("--output", "-o", choices=choices, default="text", help="default text")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} is not 0 or more")
    return value


class _VersionAction(argparse.Action):
    # importlib.metadata costs tens of milliseconds: only pay for it when asked.
    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("call-me")
    except PackageNotFoundError:
        return "unknown"


def _program_name(argv0: str) -> str:
    return "call-me-client" if os.path.basename(argv0).startswith("call-me-client") else "call-me"


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    # `run`'s command is everything after the first `--`, untouched by argparse. For the other commands `--` is
    # argparse's own: what follows is positional (`env set -- -x` names the environment "-x").
    if "--" in argv and "run" in argv[: argv.index("--")]:
        split = argv.index("--")
        args = parser.parse_args(argv[:split])
        if args.command == "run":
            args.cmd = argv[split + 1 :]
            if not args.cmd:
                _usage_of(parser, "run").error("run: give the command to run after --")
            return args
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        shown = " ".join([*(a for a in argv if a not in extra), "--", *extra]) if extra else "run uat -- make test"
        _usage_of(parser, "run").error(f"run: give the command to run after --, as in: {shown}")
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _usage_of(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-command's own parser, so that an error about `request` shows `call-me request`'s usage."""
    for action in parser._actions:  # argparse keeps its sub-parsers there and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser | None = action.choices.get(command)
            if found is not None:
                return found
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    prog = _program_name(sys.argv[0])
    parser = build_parser(prog)
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if args.command in ("request", "run") and (args.environment is None) == (args.label is None):
        _usage_of(parser, args.command).error(f"{args.command}: give exactly one of ENV and --label")
    from . import interrupt
    from .imports import import_httpx_without_its_cli

    import_httpx_without_its_cli()
    from .commands import dispatch

    interrupt.install()

    sys.exit(dispatch(prog, args))


if __name__ == "__main__":
    main()
