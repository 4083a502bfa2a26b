"""`python -m ml_backend`: start the backend on HOST:PORT with the embedded defaults (SQLite state in
MODEL_DIR, jobs in a thread of this process). `python -m ml_backend heads list|pin|export`: the
heads in MODEL_DIR's store, for a person (same environment as the backend)."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ml_backend.logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml_backend", description=__doc__)
    parser.add_argument("--host", default=None, help="default: HOST or 127.0.0.1 (0.0.0.0 to accept other machines)")
    parser.add_argument("--port", type=int, default=None, help="default: PORT or 9090")
    sub = parser.add_subparsers(dest="command")
    heads = sub.add_parser("heads", help="list, pin (roll back) or export the heads in MODEL_DIR")
    actions = heads.add_subparsers(dest="action", required=True)
    p = actions.add_parser("list", help="every head, oldest first; * marks the current one, 'superseded:' a newer "
                           "head that a pin keeps from serving, with the pin")
    p.add_argument("--project", type=int, default=None, help="only this project's heads")
    p = actions.add_parser("pin", help="make a head the current one; Label Studio then shows its version")
    p.add_argument("version", help="e.g. p7-head-2 (the name carries the project)")
    p.add_argument("--project", type=int, default=None, help="needed only for a name without its project")
    p = actions.add_parser("export", help="write a head as one file for `python -m model segment`")
    p.add_argument("version", help="e.g. p7-head-2")
    p.add_argument("--project", type=int, default=None, help="needed only for a name without its project")
    p.add_argument("--out", default=None, help="a new file, a file to replace, or a directory to write "
                   "<version>.head.pt in (default: <version>.head.pt here)")
    return parser


def heads_command(settings, args: argparse.Namespace) -> int:
    """Pinning here works like POST /versions/pin: the store changes at once and a `pin` job goes to
    the RQ queue (REDIS_URL), or into the store, where the running server's job thread finds it."""
    from ml_backend.state import versions
    from ml_backend.web.echo import quote
    from ml_backend.services import Services

    services = Services.create(settings)
    if args.action == "list":
        rows = versions.heads(services.store, args.project)
        if not rows:
            where = f"project {args.project}" if args.project is not None else "any project"
            print(f"no heads yet for {where} in {settings.model_dir}: the first is trained once round 0's queries "
                  "are answered (GET /health shows the round)")
            return 0
        print(f"{'project':>7}  {'version':<16} {'round':>5} {'labeled':>8}  {'created':<19}  {'final loss':>10}")
        for h in rows:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["created"]))
            loss, reason = h["report"].get("final_loss"), h["superseded_by_pin"]
            print(f"{h['project']:>7}  {h['version']:<16} {h['round']:>5} {h['labeled']:>8}  {created:<19}  "
                  f"{'-' if loss is None else f'{loss:.4f}':>10}{'  *' if h['current'] else ''}"
                  f"{f'  superseded: {reason}' if reason else ''}")
        return 0
    try:
        project = args.project if args.project is not None else versions.project_of(args.version)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if project is None:
        print(f"error: {quote(args.version)} does not name its project: add --project", file=sys.stderr)
        return 2
    try:
        if args.action == "pin":
            if settings.redis_url:
                from ml_backend.jobs.rq_runner import RedisRunner

                runner = RedisRunner(services.store, settings.redis_url)
            else:
                from ml_backend.jobs.runners import StoreRunner

                runner = StoreRunner(services.store)
            result = versions.pin(services, runner, project, args.version)
            print(f"{args.version} is the current head of project {project}; job {result['job']} selects a round "
                  f"with it ({'RQ workers' if settings.redis_url else 'the running server'} will run it)")
        else:
            path = versions.export(services, project, args.version, versions.export_path(args.out, args.version))
            print(f"wrote {path}")
    except (versions.UnknownVersion, ValueError) as exc:  # ValueError: a label config or an --out it cannot use
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from ml_backend.config import Settings, SettingsError

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, [settings.label_studio_api_key, settings.basic_auth_pass])
    from ml_backend.state.database import StoreUnavailable
    from ml_backend.web.server import create_app

    try:
        if args.command == "heads":
            return heads_command(settings, args)
        app = create_app(settings)
    except StoreUnavailable as exc:
        print(f"error: {exc}\n(start the database, or correct DATABASE_URL)", file=sys.stderr)
        return 2
    log = logging.getLogger("ml_backend")
    log.info("settings: %s", settings.public())
    problem = app.config["backend"].services.engine.checkpoint_problem()
    if problem:
        log.error("%s", problem)
    host, port = args.host or settings.host, args.port or settings.port
    log.info("serving on http://%s:%d", host, port)
    app.run(host=host, port=port, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
