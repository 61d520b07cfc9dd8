"""`flipgate compare`: every variant side by side, written to a new report folder."""

from __future__ import annotations

from harness.cli import add_command, output_dir

from ._common import DEFAULT_REPORT_DIR, add_source_options, collect_verdicts, gate_list, say

FORMATS = ("terminal", "md", "html", "json", "csv")


def register(sub) -> None:
    p = add_command(
        sub, "compare", help="compare gates side by side; write HTML, Markdown, JSON, CSV and plots to a folder",
        description="Run the gates (oracle, candidates and controls as needed, reusing cached traces) or read "
                    "saved verdicts, and write a comparison — table, position matrix, cosine and margin plots, "
                    "flip report — to a new timestamped folder under --report-dir, whose path is printed. "
                    "Exits 0 whatever the gates say: a comparison reports, it does not judge.",
        example="flipgate compare                                   # bundled fixture, every gate\n"
                "flipgate compare --gates int8hu,fp16,int4lin --model ~/ckpt/Qwen3.6-27B --cases cases.jsonl\n"
                "flipgate compare --verdicts int8hu.json fp16.json --format md")
    add_source_options(p, gates_help="gates to compare (default: all defined gates)")
    output_dir(p, "--report-dir", metavar="DIR", default=DEFAULT_REPORT_DIR,
                   help=f"where the report folder goes (default: {DEFAULT_REPORT_DIR})")
    p.add_argument("--format", choices=FORMATS, default="terminal",
                   help="what to print on standard output (the folder always holds every format)")
    p.add_argument("--title", default="flipgate comparison", help="the report's title")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.cli import write_data
    from reports import build_report, render, write_comparison
    from reports.terminal import print_report

    verdicts = collect_verdicts(args, gate_list(args.gates))
    if verdicts is None:  # a launched rank other than 0: its share of the traces is in the cache
        return 0
    report = build_report(verdicts, title=args.title,
                          all_positions=args.all_positions)
    folder, files = write_comparison(args.report_dir, report)
    if args.format == "terminal":
        if not args.quiet:
            print_report(report)
        print(f"report folder: {folder}  (open {files['html']})")
    else:
        write_data(render(report, args.format))
        say(args, f"report folder: {folder}")
    return 0
