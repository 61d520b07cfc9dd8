"""Held-out CPython docstrings: the corpus of the bundled `big` case set.

    python scripts/make_heldout_corpus.py            # writes scripts/cases/heldout-docstrings.jsonl
    flipgate cases build --corpus scripts/cases/heldout-docstrings.jsonl --target-confident 1024 \\
        --seed 0 --out harness/data/cases/big.jsonl

The fixture model (harness/data/fixture-model) was trained on docstrings of the modules in
scripts/make_fixture.py's TRAIN_MODULES (scripts/fixture/corpus.txt). This takes docstrings of
other standard-library modules — module, public classes, their public methods, public functions —
and drops any whose text, or whose first line, occurs in corpus.txt, so no case prompt is text
the model was trained on. One JSON object a line: {"id": "module.qualname", "text": docstring}.

The docstrings are the Python Software Foundation's (PSF License Version 2); scripts/cases/NOTICE
and harness/data/cases/NOTICE keep the notice. The corpus is committed, so that `cases build`
does not depend on the running Python's stdlib; it was made with CPython 3.11.7.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_fixture import CORPUS, TRAIN_MODULES  # noqa: E402

OUT = ROOT / "scripts" / "cases" / "heldout-docstrings.jsonl"
# Standard-library modules not in TRAIN_MODULES, chosen for prose-rich docstrings.
MODULES = (
    "statistics difflib calendar urllib.parse gzip abc bisect decimal pathlib queue string pprint "
    "fractions numbers operator posixpath glob fnmatch tempfile base64 hmac uuid datetime email.message "
    "http.client http.cookiejar ftplib smtplib sched selectors inspect ast tokenize traceback warnings "
    "weakref types typing doctest pickle shelve configparser getopt gettext locale platform sysconfig "
    "codecs io optparse cmd shlex secrets ipaddress mimetypes mailbox xml.dom.minidom zipapp filecmp "
    "linecache reprlib graphlib contextvars unittest.case unittest.mock concurrent.futures._base "
    "asyncio.queues asyncio.locks asyncio.tasks wave colorsys quopri netrc plistlib tomllib"
).split()
MIN_CHARS = 80
MAX_CHARS = 4000


def _own(obj, module_name: str) -> bool:
    return getattr(obj, "__module__", None) == module_name


def docstrings(module_name: str) -> list[tuple[str, str]]:
    """(id, docstring) of a module, its public classes and their methods, and its public functions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module(module_name)
    out = [(module_name, inspect.getdoc(mod) or "")]
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or not _own(obj, module_name):
            continue
        out.append((f"{module_name}.{name}", inspect.getdoc(obj) or ""))
        if inspect.isclass(obj):
            for mname, meth in sorted(vars(obj).items()):
                if mname.startswith("_") or not callable(meth):
                    continue
                doc = getattr(meth, "__doc__", None)
                if isinstance(doc, str):
                    out.append((f"{module_name}.{name}.{mname}", inspect.cleandoc(doc)))
    return [(i, d.strip()) for i, d in out if MIN_CHARS <= len(d.strip()) <= MAX_CHARS]


def main() -> int:
    trained = CORPUS.read_text(encoding="utf-8")
    train_set = set(TRAIN_MODULES)
    seen_text: set[str] = set()
    records = []
    dropped = 0
    for m in MODULES:
        if m in train_set or m.split(".")[0] in train_set:
            raise SystemExit(f"{m} is a training module of the fixture")
        for did, doc in docstrings(m):
            first = doc.splitlines()[0].strip()
            if doc in seen_text or doc in trained or (len(first) > 20 and first in trained):
                dropped += 1
                continue
            seen_text.add(doc)
            records.append({"id": did, "text": doc})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    print(f"{OUT}: {len(records)} docstrings from {len(MODULES)} modules, {OUT.stat().st_size} bytes "
          f"({dropped} dropped: in the training corpus or repeated); Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
