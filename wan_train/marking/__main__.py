"""python -m wan_train.marking verify FILE... [--json] [--key KEY]... [--trust-anchors CA.pem]...

Exit status: 0 every file is marked as AI-generated, 1 a file has no mark, 2 a file's C2PA manifest does not
validate (tampered), 2 as well for a file that cannot be read (named on stderr)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wan_train.marking import watermark as wm
from wan_train.marking.verify import exit_code, verify


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wan_train.marking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("verify", help="report every AI-generation mark of each file")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--key", action="append", default=[],
                       help="a watermark key to look for (repeatable; this installation's is always tried)")
    check.add_argument("--trust-anchors", action="append", default=[], type=Path, metavar="PEM",
                       help="CA certificates whose C2PA signers read as Trusted (repeatable)")
    check.add_argument("--threshold", type=float, default=wm.THRESHOLD,
                       help="watermark score above which a file counts as marked")
    check.add_argument("--json", action="store_true", help="one JSON document (a list, one entry per file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reports, failed = [], False
    for path in args.files:
        try:
            reports.append(verify(path, keys=args.key, trust_anchors=args.trust_anchors, threshold=args.threshold))
        except (OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
        else:
            if not args.json:
                print(reports[-1].text(), flush=True)
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 2 if failed else exit_code(reports)


if __name__ == "__main__":
    sys.exit(main())
