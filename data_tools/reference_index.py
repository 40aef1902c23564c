"""Which samples of video shards can serve reference-to-video (R2V) training, and why the others cannot:

    python -m data_tools.reference_index data/demo_r2v --frames 81 --fps 16 --gap 0.5 --output refs.json

A sample serves when its metadata names `subjects`, every caption contains every subject's name (the phrase its
@VideoN tag replaces), and its video has room for a `--frames`-frame clip plus a `--reference-frames`-frame
reference at least `--gap` seconds from it, or in another shot. The decisions are the loader's own
(wan_train.data.references, as ReferenceSource plans a sample); only metadata is read, nothing is decoded, unless
`--crops DIR` asks for each usable sample's reference crops as PNGs (what the model sees) and its tagged caption.

The output JSON holds the settings, the counts per reason and one entry per sample: shard (the url's file name),
key, ok, reason and message (null when ok), the subjects, the captions that tag every subject, the target clip's
bucket, `target_spans` (seconds the clip may lie in so that a reference moment exists) and `reference_spans`
(the recorded shots, or the window, long enough for a reference). Reasons: the loader's skip reasons
(`missing_field`, `bad_metadata`, `too_short`, `no_subjects`, `subject_not_in_caption`, `no_reference_moment`) and
`unreadable_shard` (key null)."""

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from data_tools.common import console, progress, shard_samples_until_damaged, shard_urls, summary, write_atomic
from wan_train.data.buckets import BucketTable
from wan_train.data.clips import CLIP_SPANS, usable_spans
from wan_train.data.errors import SampleError
from wan_train.data.metadata import ClipMeta, parse_meta
from wan_train.data.references import ReferenceSource, reference_length, tag_caption

OK = "ok"


def reference_source(*, frames: int, fps: float, reference_frames: int, gap: float, span: str) -> ReferenceSource:
    """The loader's source for these settings, planning as training does without its random drops: every subject
    (up to the 3 slots), no caption or reference dropout. The clip is `frames` frames (one bucket of 1 + 4k)."""
    if frames < 5 or (frames - 1) % BucketTable.temporal_stride:
        raise ValueError(f"--frames={frames}: a clip is 1 + {BucketTable.temporal_stride}k frames, at least 5")
    table = BucketTable(durations=(frames / fps,), fps=fps)  # the largest 1 + 4k frames in frames / fps seconds
    return ReferenceSource(table, span=span, references=3, reference_frames=reference_frames, reference_gap=gap)


def index_sample(sample: dict, *, source: ReferenceSource, crops: Path | None = None) -> dict:
    url, key = sample.get("__url__", ""), sample["__key__"]
    entry = {"shard": Path(url).name, "key": key, "ok": False, "reason": None, "message": None, "subjects": [],
             "tagged_captions": [], "bucket": None, "target_spans": [], "reference_spans": []}
    try:
        planned = source.plan(sample, rng=random.Random(0))
    except SampleError as error:
        entry.update(reason=error.reason, message=str(error))
        if "json" in sample and error.reason != "bad_metadata":
            _describe(entry, parse_meta(sample["json"], key=key), source=source)
        return entry
    entry.update(bucket=planned.bucket.key, target_spans=[list(s) for s in planned.choice["meta"].shots])
    _describe(entry, planned.choice["source_meta"], source=source)
    entry.update(ok=entry["reason"] is None)
    if crops is not None and entry["ok"]:
        entry.update(write_crops(source.load(planned, rng=random.Random(0)), crops / f"{Path(url).stem}_{key}"))
    return entry


def write_crops(item: dict, stem: Path) -> dict:
    """The loaded sample's references as PNGs (the first frame of each: what the model sees, letterboxed) beside
    its tagged caption and the subject each tag stands for: {"crops": [STEM_ref1.png, ...], "names": ["a large red
    circle", ...], "prompt": "@Video1 moves ..."}."""
    from PIL import Image

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for slot, frames in enumerate(item["refs"]):
        path = stem.with_name(f"{stem.name}_ref{slot + 1}.png")
        Image.fromarray(frames[0].numpy() if hasattr(frames[0], "numpy") else frames[0]).save(path)
        paths.append(str(path))
    return {"crops": paths, "names": list(item["ref_names"]), "prompt": item["prompt"]}


def _describe(entry: dict, meta: ClipMeta, *, source: ReferenceSource) -> None:
    """Subjects, the captions that tag all of them (the loader skips a sample whenever it picks another one), and
    the spans references may come from."""
    names = [s.name for s in meta.subjects]
    tagged = []
    for i, caption in enumerate(meta.captions):
        try:
            tag_caption(caption, names, key=entry["key"])
            tagged.append(i)
        except SampleError:
            continue
    room = reference_length(source.reference_frames, fps=source.table.fps, src_fps=meta.fps)
    entry.update(subjects=names, tagged_captions=tagged if names else [],
                 reference_spans=[[a, b] for a, b in usable_spans(meta, span="shot") if b - a >= room])
    if names and len(tagged) < len(meta.captions) and entry["reason"] in (None, "subject_not_in_caption"):
        missing = [c for i, c in enumerate(meta.captions) if i not in tagged]
        entry.update(reason="subject_not_in_caption", message=f"{entry['key']}: {len(missing)} of "
                     f"{len(meta.captions)} captions do not name every subject {names}, e.g. {missing[0]!r}")


def index_shards(urls: Sequence[str], *, source: ReferenceSource, crops: Path | None = None) -> dict:
    entries, counts = [], Counter()
    with progress() as bar:
        task = bar.add_task("shards", total=len(urls))
        for url in urls:
            def damaged(error: Exception, url: str = url) -> None:
                entries.append({"shard": Path(url).name, "key": None, "ok": False, "reason": "unreadable_shard",
                                "message": f"{url}: {type(error).__name__}: {error}"})
                counts["unreadable_shard"] += 1

            for sample in shard_samples_until_damaged(url, damaged):
                entry = index_sample(sample, source=source, crops=crops)
                entries.append(entry)
                counts[OK if entry["ok"] else entry["reason"]] += 1
            bar.advance(task)
    settings = {"frames": source.table.frame_counts[0], "fps": source.table.fps, "gap": source.reference_gap,
                "reference_frames": source.reference_frames, "span": source.span}
    return {"settings": settings, "shards": len(urls), "samples": sum(1 for e in entries if e["key"] is not None),
            "counts": dict(counts.most_common()), "entries": entries}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools.reference_index", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", help="brace patterns, globs, directories, paths or URLs of shards")
    parser.add_argument("--output", required=True, type=Path, help="the index (JSON)")
    parser.add_argument("--frames", type=int, default=81, help="frames of the training clip (a bucket: 1 + 4k)")
    parser.add_argument("--fps", type=float, default=16.0, help="training frame rate (data.fps)")
    parser.add_argument("--gap", type=float, default=0.5,
                        help="seconds between a reference and the clip in the same shot (data.reference_gap)")
    parser.add_argument("--reference-frames", type=int, default=1,
                        help="frames per reference, 1 = an image (data.reference_frames)")
    parser.add_argument("--span", choices=CLIP_SPANS, default="shot", help="where a clip may come from (data.span)")
    parser.add_argument("--crops", type=Path, default=None, metavar="DIR",
                        help="also decode each usable sample and write its reference crops (PNG) and tagged caption")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    urls = shard_urls(parser, args.shards)
    try:
        source = reference_source(frames=args.frames, fps=args.fps, reference_frames=args.reference_frames,
                                  gap=args.gap, span=args.span)
    except ValueError as error:
        parser.error(str(error))
    index = index_shards(urls, source=source, crops=args.crops)
    write_atomic(args.output, json.dumps(index, indent=1).encode())
    usable = index["counts"].get(OK, 0)
    summary(f"reference_index -> {args.output}", {
        "shards": index["shards"], "samples": index["samples"],
        "usable for R2V": f"{usable} ({100 * usable / max(1, index['samples']):.1f}%)",
        **{f"skipped: {reason}": n for reason, n in index["counts"].items() if reason != OK},
    })
    if not usable:
        console.print("[yellow]no sample can serve R2V training[/]: see the reasons above and in the index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
