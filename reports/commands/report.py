"""`flipgate report`: render saved verdicts again, in any format, without the models."""

from __future__ import annotations

from harness.cli import add_command, input_path, output_path

FORMATS = ("terminal", "md", "html", "json", "csv")


def register(sub) -> None:
    p = add_command(
        sub, "report", help="render saved verdict JSON files: terminal, Markdown, HTML, JSON or CSV",
        description="Render saved verdicts (flipgate.verdict/1 JSON, or a comparison's or sign-off's JSON) "
                    "without running any model. HTML and Markdown written with --out get their plots as PNG "
                    "files beside them.",
        example="flipgate report int8hu.json fp16.json --format html --out int8hu.html")
    input_path(p, "verdicts", nargs="+", metavar="VERDICT.json", help="verdict files")
    p.add_argument("--format", choices=FORMATS, default="terminal", help="output format (default: terminal)")
    output_path(p, "--out", metavar="F", stdout=True, help="write to this file (default, or '-': standard output)")
    p.add_argument("--all-positions", action="store_true", help="list matching positions too, not only flips")
    p.add_argument("--title", default="flipgate report", help="the report's title")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.cli import write_data
    from reports import build_report, load_verdicts, render, write_report
    from reports.terminal import print_report

    from harness.caseset import check_verdicts_one_case_set

    verdicts = load_verdicts(args.verdicts)
    check_verdicts_one_case_set(verdicts)  # side by side only if judged on one case set
    report = build_report(verdicts, title=args.title, all_positions=args.all_positions)
    if args.out and args.out != "-":
        for path in write_report(args.out, report, args.format):
            print(path)
    elif args.format == "terminal":
        print_report(report)
    else:
        write_data(render(report, args.format))
    return 0
