"""``python -m builders.zoo.translation``: rebuild the corpus and the tokenizer.

python -m builders.zoo.translation extract      # catalogs → data/{train,heldout,calibration}.tsv
python -m builders.zoo.translation tokenizer    # train split → assets/spm.model + tokenizer.json

Training and evaluation go through the zoo CLI (``python -m builders.zoo train translation``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from builders.zoo.translation import corpus, tokenizer


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m builders.zoo.translation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="regenerate the committed splits from gettext catalogs")
    ex.add_argument("--locale-dir", type=Path, default=corpus.DEFAULT_LOCALE_DIR)
    ex.add_argument("--out", type=Path, default=corpus.DATA_DIR)
    tok = sub.add_parser("tokenizer", help="retrain the sentencepiece model on the train split")
    tok.add_argument("--out", type=Path, default=tokenizer.ASSETS_DIR)
    args = parser.parse_args(argv)

    if args.command == "extract":
        sources = corpus.extract(args.locale_dir, args.out)
        summary = {"pairs": sources["pairs"], "splits": sources["splits"]}
    else:
        summary = tokenizer.build(corpus.read_split("train"), args.out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
