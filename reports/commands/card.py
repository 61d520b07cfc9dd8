"""`flipgate card`: the release's model-card section, generated from verdicts, audits and speed files."""

from __future__ import annotations

from harness.cli import add_command

from ._common import add_source_options, collect_verdicts, gate_list

EXAMPLE = """\
flipgate card int8hu --verdicts release/comparison.json --inspect int8hu=int8hu.inspect.json \\
    --speed int8hu=llm-benchmark.json --chip "M4 Max" --localise localise-int4lin.json \\
    --license apache-2.0 --base-model Qwen/Qwen3.6-27B --tag qwen3_5 --out card.md
flipgate card int8hu                                   # the bundled fixture: run the gates, print the card"""


def register(sub) -> None:
    p = add_command(
        sub, "card", help="write the release's model-card section (Markdown + YAML front matter) from verdicts",
        description="Generate a Hugging Face-style card section for the variant gate NAME ships: front matter, "
                    "a first line naming the evidence (device, Linux reference runtime or emulation), a bundle "
                    "table from `flipgate inspect --json` files, a measured table, and the numerics paragraph "
                    "made from the verdicts (which variants equal the oracle at every confident position, the "
                    "95%% upper bound on the flip rate, flips shared with the control and whether an fp32 oracle "
                    "confirms them, each defect with its position and tokens, localisation results) and the "
                    "speed from llm-benchmark output with its share of the machine's memory bandwidth. Nothing "
                    "in it is typed by hand. Exits 1 if gate NAME failed (the card is still written, saying so).",
        example=EXAMPLE)
    p.add_argument("gate", metavar="NAME", help="the gate of the variant the release ships")
    add_source_options(p, gates_help="gates shown beside NAME (default: all defined gates)")
    card = p.add_argument_group("what else the card shows")
    card.add_argument("--inspect", action="append", default=[], metavar="[VARIANT=]F",
                      help="`flipgate inspect BUNDLE --json` output of a variant's bundle (repeatable)")
    card.add_argument("--speed", action="append", default=[], metavar="[VARIANT=]F",
                      help="llm-benchmark stdout or --output-json file, or a flipgate.speed/1 record of "
                           "coreai-python (repeatable; the variant defaults to NAME's candidate)")
    card.add_argument("--localise", action="append", default=[], metavar="F",
                      help="a `flipgate localise --json` record (repeatable)")
    bw = card.add_mutually_exclusive_group()
    bw.add_argument("--chip", metavar="NAME", help="the machine's chip, e.g. 'M4 Max': Apple's published bandwidth")
    bw.add_argument("--bandwidth", metavar="X", help="the machine's memory bandwidth, e.g. 546GB/s")
    meta = p.add_argument_group("front matter")
    meta.add_argument("--license", default="unknown", help="license id (default: unknown)")
    meta.add_argument("--base-model", action="append", default=[], metavar="ID",
                      help="the source checkpoint's id (default: the oracle model folder's name)")
    meta.add_argument("--tag", action="append", default=[], metavar="T",
                      help="a tag (default: core-ai, coreai, apple, text-generation)")
    meta.add_argument("--pipeline-tag", default="text-generation")
    meta.add_argument("--library-name", default="coreai")
    p.add_argument("--title", help="the card's heading (default: 'VARIANT — Core AI bundle')")
    p.add_argument("--out", metavar="F", help="write the card here (default: standard output)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from harness.fileio import write_text_atomic
    from reports.card import CardInputs, card_exit_code, load_inspection, load_speed, render_card, speeds_by_variant
    from reports.localise import load_record
    from reports.model import as_verdicts, candidate_name
    from reports.speed import Bandwidth, chip_bandwidth, parse_bandwidth

    names = gate_list(args.gates)
    if names is not None and args.gate not in names:
        names = [args.gate] + names
    verdicts = as_verdicts(collect_verdicts(args, names))
    subject = next((v for v in verdicts if v["gate"] == args.gate), None)
    shipped = candidate_name(subject) if subject is not None else args.gate
    bandwidth = None
    if args.chip:
        bandwidth = chip_bandwidth(args.chip)
    elif args.bandwidth:
        bandwidth = Bandwidth(parse_bandwidth(args.bandwidth), "the machine",
                              f"given as --bandwidth {args.bandwidth}")
    inspections = dict(load_inspection(s, shipped) for s in args.inspect)
    inputs = CardInputs(
        verdicts, args.gate, inspections=inspections,
        speeds=speeds_by_variant(load_speed(s, shipped) for s in args.speed),
        localisations=[load_record(f) for f in args.localise], bandwidth=bandwidth, title=args.title,
        license=args.license, base_model=args.base_model, tags=args.tag, pipeline_tag=args.pipeline_tag,
        library_name=args.library_name)
    text = render_card(inputs)
    if args.out:
        _refuse_overwriting_an_input(args)
        write_text_atomic(args.out, text)
        print(args.out)
    else:
        sys.stdout.write(text)
    return card_exit_code(inputs)


def _refuse_overwriting_an_input(args) -> None:
    """--out must not name a file the card was made from (a verdict, an audit, a speed file, a record)."""
    import os

    from harness.errors import InputError
    from reports.card import _named

    inputs = list(args.verdicts or []) + [_named(s)[1] for s in args.inspect + args.speed] + list(args.localise)
    for path in inputs:
        try:
            same = os.path.samefile(path, args.out)
        except OSError:
            continue
        if same:
            raise InputError(f"--out {args.out}: that is an input of the card ({path}); write the card elsewhere")
