"""``enclap-search``: find sounds in a folder of your own by describing them.

    enclap-search index FOLDER [--index DIR] [--clap SPEC] [--dtype float16|float32] [--rebuild]
    enclap-search query "a dog barks" ["rain on a roof" ...] [--index DIR] [--top 10] [--json]
    enclap-search info [--index DIR]

``index`` embeds every audio file below FOLDER once with the CLAP audio tower (a rerun embeds only new
or changed files and drops deleted ones; files that cannot be read are listed with the reason).
``query`` embeds each sentence with the same CLAP's text tower and prints the best-matching files with
their cosine similarity. The index directory defaults to ``$ENCLAP_SEARCH_INDEX`` or
``./enclap-search-index``; the CLAP defaults to ``laion/clap-htsat-fused`` for ``index`` and to the
one the index was built with for ``query``.

Exit status: 0 done (also when some files could not be read: they are listed), 2 usage or set-up
error (no index, a CLAP that cannot be loaded, an index built for another folder or CLAP).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from ..errors import EnclapError

DEFAULT_INDEX = "enclap-search-index"


def default_index() -> str:
    return os.environ.get("ENCLAP_SEARCH_INDEX") or DEFAULT_INDEX


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="enclap-search", description="Text-to-audio search over your own folder with CLAP embeddings."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--index", default=None, help=f"index directory (default: $ENCLAP_SEARCH_INDEX or ./{DEFAULT_INDEX})")
    common.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")

    index = sub.add_parser("index", parents=[common], help="embed the audio files of a folder (incremental)")
    index.add_argument("folder", help="folder whose audio files (any depth) are indexed")
    index.add_argument("--clap", default=None, help="CLAP: hub id, HF directory or LAION .pt (default: laion/clap-htsat-fused)")
    index.add_argument("--dtype", choices=("float16", "float32"), default=None,
                       help="stored precision (default: the index's, else float16, which halves the size; cosines change by ~1e-3)")
    index.add_argument("--batch-size", type=int, default=16)
    index.add_argument("--max-seconds", type=float, default=None, help="embed at most the first S seconds of each file")
    index.add_argument("--rebuild", action="store_true", help="start the index over (another folder, CLAP or dtype)")
    index.add_argument("--no-progress", action="store_true")

    query = sub.add_parser("query", parents=[common], help="the files that best match a description")
    query.add_argument("text", nargs="+", help="one or more descriptions, e.g. \"a dog barks\"")
    query.add_argument("--top", type=int, default=10, help="results per query (default 10)")
    query.add_argument("--json", action="store_true", help="one JSON object per query: {query, results: [{rank, score, path}]}")
    query.add_argument("--clap", default=None, help="text tower to use (default: the CLAP the index was built with)")
    query.add_argument("--tokenizer", default=None, help="CLAP text tokenizer (default: the CLAP's own)")

    sub.add_parser("info", parents=[common], help="what an index holds")
    return parser


def run_index(args: argparse.Namespace) -> int:
    from ..features.clap_embed import DEFAULT_CLAP, ClapAudioEmbedder
    from ..pipeline import resolve_device
    from ..search import SearchIndex, update_index

    index_dir = args.index or default_index()
    if not os.path.isdir(args.folder):  # before loading a CLAP for nothing
        raise EnclapError(f"{args.folder}: not a directory (nothing to index)")
    clap = args.clap
    if clap is None:  # an existing index keeps its CLAP; a new one gets the default
        try:
            clap = SearchIndex(index_dir).clap if not args.rebuild else DEFAULT_CLAP
        except EnclapError:
            clap = DEFAULT_CLAP
    embedder = ClapAudioEmbedder.from_pretrained(clap, device=str(resolve_device(args.device)), batch_size=args.batch_size)
    report = update_index(
        args.folder, index_dir, embedder, clap=clap, dtype=args.dtype, batch_size=args.batch_size,
        max_seconds=args.max_seconds, rebuild=args.rebuild, progress=not args.no_progress,
    )
    print(
        f"{report.index}: {report.total} file(s) indexed from {report.folder} — {len(report.added)} new, "
        f"{len(report.updated)} changed, {len(report.removed)} removed, {report.unchanged} unchanged "
        f"({report.seconds:.1f} s)"
    )
    if report.failed:
        print(f"{len(report.failed)} file(s) could not be indexed:", file=sys.stderr)
        for rel, reason in report.failed.items():
            print(f"  {rel}: {reason}", file=sys.stderr)
    return 0


def run_query(args: argparse.Namespace) -> int:
    from ..features.clap_text import load_text_embedder
    from ..pipeline import resolve_device
    from ..search import SearchIndex, search_text

    if args.top < 1:
        raise EnclapError(f"--top must be >= 1, got {args.top}")
    index = SearchIndex(args.index or default_index())
    text = load_text_embedder(args.clap or index.clap, str(resolve_device(args.device)), tokenizer=args.tokenizer)
    results = search_text(index, text, args.text, args.top)
    for query, hits in zip(args.text, results):
        if args.json:
            print(json.dumps({"query": query, "results": [
                {"rank": h.rank, "score": round(h.score, 6), "path": h.path} for h in hits]}, ensure_ascii=False))
            continue
        if len(args.text) > 1:
            print(f"# {query}")
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:+.4f}  {hit.path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..search import SearchIndex

    index = SearchIndex(args.index or default_index())
    print(f"index:   {index.directory}\nfolder:  {index.folder}\nclap:    {index.clap}\n"
          f"files:   {len(index)} ({index.dim}-d {index.dtype}, {len(index.segments)} segment(s))")
    if index.failed:
        print(f"failed:  {len(index.failed)} file(s)")
        for rel, entry in sorted(index.failed.items()):
            print(f"  {rel}: {entry['reason']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return {"index": run_index, "query": run_query, "info": run_info}[args.command](args)
    except (EnclapError, ValueError) as err:
        print(f"enclap-search: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
