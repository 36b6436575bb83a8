"""``index PATH...`` (and ``index --beir / --vidore DIR``); what ``run`` indexes too: options, ``--ray``, ``--rebuild``
into a sibling collection swapped in only on success."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ..errors import EXIT_FAILED, UsageError
from . import common

NAME = "index"
HELP = "index files and folders (or a BEIR / ViDoRe corpus)"


def add_parser(sub: Any, parent: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, parents=[parent], help=HELP)
    p.add_argument("paths", nargs="*")
    common.index_options(p)
    common.dataset_options(p)
    common.ray_options(p)
    common.watch_options(p)
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep the collection equal to PATH...: reconcile, then follow file-system changes until Ctrl-C",
    )
    return p


def run(args: argparse.Namespace, store: Any) -> int:
    if getattr(args, "watch", False):
        from ..ingest.watch import check_not_watched

        check_not_watched(store)  # said as such, before the collection's own lock says "in use"
    pipeline = common.make_pipeline(args, store, new_layout=True)
    common.announce(args)
    report = index_command(args, pipeline)
    if not getattr(args, "watch", False):
        common.output(args, report.to_dict(), report.summary())
    return 0 if report.ok else EXIT_FAILED  # everything failed: not a success


def index_command(args: argparse.Namespace, pipeline: Any) -> Any:
    """``index PATH...`` or ``index --beir / --vidore DIR`` (a dataset's corpus, its ids kept)."""
    dataset = common.dataset(args)
    if dataset is None:
        if not args.paths:
            raise UsageError("index needs PATH... (or --beir / --vidore DIR)")
        if getattr(args, "watch", False):
            for flag in ("rebuild", "ray"):
                if getattr(args, flag, False):
                    raise UsageError(f"--watch follows the folders in this process: leave out --{flag}")
            return watch_paths(args, pipeline, args.paths)
        return index_paths(args, pipeline, args.paths)
    from ..evaluate import index_dataset

    if args.paths:
        raise UsageError("index a dataset (--beir / --vidore) or PATH..., one per run")
    if getattr(args, "watch", False):
        raise UsageError("--watch follows folders (PATH...), not a dataset")
    if args.ray:
        raise UsageError("--ray indexes files and folders (PATH...); index a dataset's corpus without it")
    if not dataset.corpus:
        raise ValueError("the dataset has no corpus to index")
    return index_dataset(pipeline.indexer(), dataset, show_progress_bar=not (args.quiet or args.json))


def ingest_options(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    """The ingest options and ``--metadata`` of ``index`` (and ``serve --watch``)."""
    from ..ingest import IngestOptions

    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f'--metadata is not valid JSON ({exc}); give a JSON object, e.g. \'{{"team": "x"}}\''
        ) from None
    if metadata is not None and not isinstance(metadata, dict):
        raise UsageError("--metadata must be a JSON object")
    options = IngestOptions(
        recursive=not args.no_recursive,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        video_segment_seconds=args.video_segment,
        chunk_chars=args.chunk_chars,
        chunk_overlap=min(200, args.chunk_chars // 4),
        max_text_bytes=args.max_text_mb * 1024 * 1024,
        max_pages=args.max_pages,
        render_html=args.render_html,
    )
    return options, metadata


def index_paths(args: argparse.Namespace, pipeline: Any, paths: list[str]) -> Any:
    options, metadata = ingest_options(args)
    ray_options = None
    if getattr(args, "ray", False):  # checked before --rebuild deletes anything
        from ..ingest.distributed import RayOptions, parse_actors

        try:
            ray_options = RayOptions(
                address=args.ray_address,
                actors=parse_actors(args.ray_actors),
                gpus_per_actor=args.ray_gpus_per_actor,
                cpus_per_actor=args.ray_cpus_per_actor,
                batch_size=args.ray_batch_size,
            )
        except ValueError as exc:  # a --ray-* value: a usage error
            raise UsageError(str(exc)) from None
    if args.rebuild:
        report = _rebuild(args, pipeline, paths, options, metadata, ray_options)
        new = True
    else:
        new = not pipeline.store.exists()
        report = _run_index(args, pipeline, paths, options, metadata, ray_options)
    spec = pipeline.store.spec
    if new and spec is not None and not (args.quiet or args.json):
        chosen = "as asked" if common.layout(args) else f"the default for {spec.dim}-d vectors"
        print(
            f"collection {pipeline.store.collection!r}: {spec.vectors.describe(spec.dim)} ({chosen})", file=sys.stderr
        )
    return report


def watch_paths(args: argparse.Namespace, pipeline: Any, paths: list[str]) -> Any:
    """``index PATH... --watch``: reconcile, then follow the folders until Ctrl-C / SIGTERM (the sync under way
    finishes first); a line per sync on the terminal (``--json``: a JSON object per line on stdout). Returns the
    reconcile's report, whose ``ok`` decides the exit code."""
    from ..ingest.watch import FolderWatcher

    options, metadata = ingest_options(args)
    watcher = FolderWatcher(
        pipeline.indexer(),
        paths,
        options=options,
        metadata=metadata,
        debounce_ms=args.debounce_ms,
        settle_s=args.settle,
        show_progress_bar=not (args.quiet or args.json),
    )
    first = None
    with common.stop_on_signals(watcher.stop), watcher:
        if not (args.quiet or args.json):
            print(
                f"watching {', '.join(map(str, watcher.roots))} into collection {pipeline.store.collection!r} "
                "(Ctrl-C to stop)",
                file=sys.stderr,
                flush=True,
            )
        for report in watcher:
            if first is None:
                first = report
            elif not report.changed:
                continue
            if args.json:
                print(json.dumps(report.to_dict()), flush=True)
            elif not args.quiet:
                print(report.summary(), file=sys.stderr, flush=True)
    if not (args.quiet or args.json):
        print(f"stopped watching ({watcher.pending} changes left for the next start)", file=sys.stderr)
    return first


def _run_index(
    args: argparse.Namespace, pipeline: Any, paths: list[str], options: Any, metadata: Any, ray_options: Any
) -> Any:
    show = not (args.quiet or args.json)
    if ray_options is not None:
        with pipeline.timed("index"):
            return pipeline.ray_indexer(ray_options).index_paths(
                paths, options=options, metadata=metadata, show_progress_bar=show, prune=args.prune
            )
    return pipeline.index(paths, options=options, metadata=metadata, show_progress_bar=show, prune=args.prune)


def _rebuild(
    args: argparse.Namespace, pipeline: Any, paths: list[str], options: Any, metadata: Any, ray_options: Any
) -> Any:
    """``--rebuild``: index into a sibling collection and put it in place of the old one only when the run
    succeeded (something indexed, nothing raised). Any failure (a model that does not load, a path that does not
    exist, Ctrl-C, a store error) leaves the old collection as it was."""
    log = logging.getLogger(__name__)
    original = pipeline.store
    original.close()
    staged = original.staging()
    pipeline.store = staged
    try:
        report = _run_index(args, pipeline, paths, options, metadata, ray_options)
    except BaseException:
        pipeline.store = original
        _discard(staged)
        log.warning("rebuild of collection %r abandoned: it is left as it was", original.collection)
        raise
    pipeline.store = original
    staged.close()
    if not report.ok:
        _discard(staged)
        log.warning(
            "rebuild of collection %r abandoned (nothing was indexed): it is left as it was", original.collection
        )
        return report
    original.replace_with(staged.collection)
    log.warning("rebuilt collection %r", original.collection)
    return report


def _discard(staged: Any) -> None:
    try:
        staged.drop()
    except Exception as exc:  # noqa: BLE001 - the old collection is intact; the leftover is deleted next time
        logging.getLogger(__name__).warning("could not delete %s: %s", staged.location, exc)
