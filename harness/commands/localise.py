"""`flipgate localise GATE`: which quantized modules cause each defect, and the cheapest recipe that removes them."""

from __future__ import annotations

import sys

from ..cli import add_command, input_path, output_dir, output_path

DEFAULT_REPORT_DIR = "flipgate-reports"

EXAMPLE = """\
flipgate localise int4lin                              # the bundled fixture, restoring to fp16
flipgate localise int4lin --safe int8lin --budget 60   # restore to int8 instead, at most 60 case runs
flipgate localise my-int4 --config flipgate.toml --model ~/models/Qwen3.6-27B --cases cases.jsonl"""

DESCRIPTION = """\
For every defect of the gate (its candidate recipe against the oracle), find the smallest set of
module groups whose restoration to the safe recipe (--safe, default fp16) turns the position back
into a match, tie-flip or oracle-artifact. Groups go from coarse to fine: kind (attention,
GatedDeltaNet, MLP, head), then a kind over a range of layers, then single layers, by bisection.
Each trial decodes only the cases holding defects, S=1 as the emulated candidate does, up to the
last defect, and reuses the layers below the first restored one from earlier trials.

The suggested recipe restores the union of every defect's culprits; it is checked on the defect
cases, then captured over the whole case set and judged with the gate's policy (--no-verify skips
that); defects it still has are localised on top of it. A new folder under --report-dir receives
localise.html, localise.md, localise.json (flipgate.localise/1) and the recipe file NAME.toml,
which holds the recipe and a gate of the same name:
    flipgate compare --config NAME.toml --gates NAME

Memory: localise holds the model in fp16 with both recipes' weights for every restorable module
(the candidate's and the safe recipe's), as an in-memory capture would; it has no --stream. It
needs the in-memory path because a trial only swaps weights in place and replays the layers above
the first restored one from stored hidden states: with layers streamed from disk every trial would
re-read and re-quantize every layer from there up (tens of trials, each a pass over most of the
checkpoint). For a model this machine cannot hold (the 27B), gate with `capture --stream`, and
localise on a machine that holds the fp16 model twice over.

Exit status: 0 when every defect was localised and the suggested recipe removes them all (or the
gate has no defects), 1 when something is left (a budget too small, a defect the safe recipe does
not repair, a suggested recipe whose gate still fails), 2 on bad input."""


def register(sub) -> None:
    p = add_command(sub, "localise", help="find the quantized modules behind each defect and a recipe that removes them",
                    description=DESCRIPTION, example=EXAMPLE)
    p.add_argument("gate", metavar="GATE", help="a gate whose candidate is a recipe (e.g. int4lin)")
    input_path(p, "--config", metavar="F", help="flipgate.toml: gates and recipes adding to the bundled ones")
    p.add_argument("--safe", metavar="RECIPE", default="fp16",
                   help="the recipe a restored module takes its weight from (default: fp16)")
    p.add_argument("--budget", type=int, metavar="N", default=None,
                   help="at most N trial runs, one restoration decoded over one case (default: 200)")
    input_path(p, "--model", kind="any", metavar="DIR", help="checkpoint folder (default: the bundled fixture model)")
    input_path(p, "--cases", kind="cases", metavar="FILE", help='case set, JSONL, or a bundled set by name: fixture (default), big')
    input_path(p, "--oracle", metavar="TRACE", help="oracle trace to use instead of running the oracle")
    p.add_argument("--cache", metavar="DIR", help="trace cache folder (default: .flipgate, or $FLIPGATE_CACHE)")
    p.add_argument("--refresh", action="store_true", help="recompute traces even if the cache has them")
    p.add_argument("--name", metavar="NAME", help="name of the suggested recipe and its gate (default: GATE's "
                                                   "candidate + '-localised')")
    p.add_argument("--no-verify", action="store_true",
                   help="do not capture the suggested recipe over the whole case set and judge it")
    output_dir(p, "--report-dir", metavar="DIR", default=DEFAULT_REPORT_DIR,
                   help=f"where the new report folder goes (default: {DEFAULT_REPORT_DIR})")
    output_path(p, "--json", metavar="OUT", help="also write the record (flipgate.localise/1) here")
    output_path(p, "--out-recipe", metavar="OUT", help="also write the suggested recipe file here")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads while decoding (default: 1 for a small model, else torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.errors import InputError
    from harness.localise import DEFAULT_BUDGET, localise

    if args.budget is not None and args.budget < 1:
        raise InputError(f"--budget {args.budget}: at least 1 trial run is needed")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads}: at least 1")
    loc = localise(args.gate, config=args.config, safe=args.safe,
                   budget=DEFAULT_BUDGET if args.budget is None else args.budget, model=args.model,
                   cases=args.cases, cache_dir=args.cache, oracle=args.oracle, refresh=args.refresh,
                   verify=not args.no_verify, suggested_name=args.name, quiet=args.quiet, threads=args.threads)
    record = loc.to_dict()
    print_summary(record)
    if loc.no_defects:
        return 0
    folder = write_outputs(record, args.report_dir)
    print(f"report folder: {folder}  (open {folder / 'localise.html'})")
    if args.json:
        loc.write_json(args.json)
        print(f"record written to {args.json}")
    if args.out_recipe and loc.suggested_text:
        from harness.fileio import write_text_atomic

        write_text_atomic(args.out_recipe, loc.suggested_text)
        print(f"suggested recipe written to {args.out_recipe}")
    if loc.suggested_name:
        recipe_file = args.out_recipe or str(folder / f"{loc.suggested_name}.toml")
        print(f"run it:  flipgate compare --config {recipe_file} --gates {loc.suggested_name}")
    return 0 if loc else 1


def write_outputs(record: dict, report_dir):
    """A new folder: localise.{html,md,json} and the suggested recipe file."""
    from pathlib import Path

    from harness.fileio import write_text_atomic
    from reports.localise import render_html, render_json, render_markdown
    from reports.output import publish_folder, safe_name

    title = f"flipgate localise {record['gate']}"

    def build(tmp: Path) -> None:
        write_text_atomic(tmp / "localise.html", render_html(record, title))
        write_text_atomic(tmp / "localise.md", render_markdown(record, title))
        write_text_atomic(tmp / "localise.json", render_json(record))
        sug = record.get("suggested")
        if sug and sug.get("recipe"):
            write_text_atomic(tmp / f"{safe_name(sug['name'])}.toml", sug["recipe"])

    return publish_folder(report_dir, f"localise-{safe_name(record['gate'])}", build)


def print_summary(record: dict) -> None:
    """The terminal view: the summary, each defect and its culprits, the grid, sizes."""
    from reports.escape import visible
    from reports.localise import culprits_text, grid, kind_label, position_key, sizes_items, stats_text, summary_line

    out = sys.stdout
    print(visible(summary_line(record)), file=out)
    for note in record.get("notes", []):
        print(f"  note: {visible(note)}", file=out)
    if not record["positions"]:
        return
    print(file=out)
    for p in record["positions"]:
        print(f"  {position_key(p):24s} position {p['position']:<5d} {p['status']:14s} "
              f"culprits: {visible(culprits_text(p))}  ({len(p['trials'])} trials)", file=out)
    kinds, rows = grid(record)
    print(file=out)
    print("  layer  " + "".join(f"{kind_label(k):>15s}" for k in kinds), file=out)
    sym = {"restorable": "·", "fixed": "=", "none": ""}
    for label, cells in rows:
        print(f"  {label:>5s}  " + "".join(
            f"{('X' * min(len(keys), 9)) if state == 'culprit' else sym[state]:>15s}" for state, keys in cells),
              file=out)
    print("  (X: a culprit, one X per defect; ·: restorable, not a culprit; =: nothing to restore)", file=out)
    print(file=out)
    for name, size in sizes_items(record):
        print(f"  {visible(name):40s} {size}", file=out)
    ver = record.get("verification")
    if ver is not None:
        print(f"  verified: {visible(ver['one_line'])}", file=out)
    for u in record.get("untried", []):
        print(f"  not tried: {visible(u)}", file=out)
    st = stats_text(record)
    if st:
        print(f"  {st}", file=out)
