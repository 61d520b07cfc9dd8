"""`flipgate signoff`: the release record for one gate — HTML, Markdown and JSON, never overwritten."""

from __future__ import annotations

from harness.cli import add_command, output_dir

from ._common import add_source_options, collect_verdicts, gate_list


def register(sub) -> None:
    p = add_command(
        sub, "signoff", help="write a release sign-off for one gate (HTML, Markdown, JSON) into a new folder",
        description="The sign-off of gate NAME: verdict banner, the policy in force, the comparison with the other "
                    "gates, the flip report, provenance (model, trace, tokenizer and case-set hashes, recipes, "
                    "versions, machine, date) and an empty block for the person who decides. Each sign-off goes "
                    "to a new timestamped folder under --report-dir; none is ever overwritten. Exits 1 if the "
                    "gate failed (the sign-off is still written).",
        example="flipgate signoff int8hu --report-dir release/\n"
                "flipgate signoff int8hu --report-dir release/ --verdicts int8hu.json fp16.json")
    p.add_argument("gate", metavar="NAME", help="the gate to sign off")
    output_dir(p, "--report-dir", metavar="D", required=True, help="folder that collects sign-offs")
    add_source_options(p, gates_help="gates shown beside NAME in the comparison (default: all defined gates)")
    p.add_argument("--title", help="the report's title (default: 'flipgate sign-off: NAME')")
    p.set_defaults(func=run)


def run(args) -> int:
    from reports import build_report, made_info, write_signoff
    from reports.terminal import print_report

    names = gate_list(args.gates)
    if names is not None and args.gate not in names:
        names = [args.gate] + names
    verdicts = collect_verdicts(args, names)
    if verdicts is None:  # a launched rank other than 0: its share of the traces is in the cache
        return 0
    report = build_report(verdicts, subject=args.gate, made=made_info(),
                          title=args.title or f"flipgate sign-off: {args.gate}", all_positions=args.all_positions)
    folder, files = write_signoff(args.report_dir, report)
    if not args.quiet:
        print_report(report)
    print(f"sign-off folder: {folder}  (open {files['html']})")
    return 0 if report.subject_verdict["passed"] is True else 1
