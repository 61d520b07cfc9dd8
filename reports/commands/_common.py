"""Options and steps shared by `flipgate compare` and `flipgate signoff` (not a command itself)."""

from __future__ import annotations

import sys

from harness.caseset import check_verdicts_one_case_set
from harness.cli import input_path
from harness.errors import InputError

DEFAULT_REPORT_DIR = "flipgate-reports"
_RUN_OPTIONS = ("config", "model", "cases", "cache", "refresh")


def add_source_options(p, *, gates_help: str) -> None:
    src = p.add_argument_group("what to report (saved verdicts, or run the gates)")
    input_path(src, "--verdicts", nargs="+", metavar="V.json",
                     help="render these saved verdict files; nothing is run (a comparison's or sign-off's JSON works too)")
    input_path(src, "--config", metavar="F", help="flipgate.toml: gates (and recipes) that override or add to the defaults")
    src.add_argument("--gates", metavar="a,b|all", default="all", help=gates_help)
    input_path(src, "--model", kind="any", metavar="DIR", help="oracle checkpoint folder (default: the bundled fixture model)")
    input_path(src, "--cases", kind="cases", metavar="FILE", help="case set, JSONL, or a bundled set by name: fixture (default), big")
    src.add_argument("--cache", metavar="DIR", help="trace cache folder (default: .flipgate, or $FLIPGATE_CACHE)")
    src.add_argument("--refresh", action="store_true", help="recompute traces even if the cache has them")
    p.add_argument("--all-positions", action="store_true", help="list matching positions too, not only flips")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def gate_list(spec: str | None) -> list[str] | None:
    """`a,b` -> ['a', 'b']; `all` or nothing -> None (every defined gate)."""
    if spec is None or spec.strip() == "all":
        return None
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise InputError(f"--gates {spec!r}: name gates separated by commas, or 'all'")
    return names


def collect_verdicts(args, names: list[str] | None) -> list | None:
    """Verdicts from --verdicts files (filtered by --gates), or from running the gates. Under a launcher
    every rank helps to run them and only rank 0 gets the verdicts: the others get None."""
    if args.verdicts:
        given = [f"--{o}" for o in _RUN_OPTIONS if getattr(args, o)]
        if given:
            raise InputError(f"--verdicts renders saved verdicts; {', '.join(given)} only applies when running gates")
        from reports import load_verdicts

        verdicts = load_verdicts(args.verdicts)
        check_verdicts_one_case_set(verdicts)  # side by side only if judged on one case set
        if names is None:
            return verdicts
        have = {v["gate"]: v for v in verdicts}
        missing = [n for n in names if n not in have]
        if missing:
            raise InputError(f"gate {missing[0]!r} is not in the verdict files given (they hold: {', '.join(have)})")
        return [have[n] for n in names]

    from harness.distributed import from_env
    from harness.pipeline import fill_cache, run_gates

    launch = from_env()
    if launch is not None:  # the ranks fill the trace cache; rank 0 judges and renders
        fill_cache(launch, names, config=args.config, model=args.model, cases=args.cases, cache_dir=args.cache,
                   refresh=args.refresh, quiet=args.quiet)
        if not launch.is_main:
            return None
        args.refresh = False  # rank 0 reads what the ranks just made
    run = run_gates(names, config=args.config, model=args.model, cases=args.cases, cache_dir=args.cache,
                    refresh=args.refresh, quiet=args.quiet)
    check_verdicts_one_case_set(list(run.verdicts.values()))
    return list(run.verdicts.values())


def say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)
