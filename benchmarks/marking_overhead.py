"""What marking adds to generation: generate.py's whole run (load, denoise, write) with marking on and with
marking.enabled=false, alternated in one process, and the time of the marking itself (record, watermark, C2PA
signing) inside save_video.

    python benchmarks/marking_overhead.py --ckpt runs/quickstart           # the quickstart's model and settings
    python benchmarks/marking_overhead.py --ckpt runs/quickstart --repeats 5 --num-frames 81

Each repeat runs both orders' halves (on, off, off, on, ...) after one warm-up of each; the ratio is the median of
on over the median of off. The installation's signer and key exist after the warm-up, as they do after the first
generation on a machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wan_train.config import GenerateConfig  # noqa: E402
from wan_train.inference import cli  # noqa: E402
from wan_train.marking import marker as marking  # noqa: E402

PROMPT = "a large red circle moves from left to right on a black background"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a training run folder or model (generate.py's ckpt=)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-frames", type=int, default=None, help="default: the model's official count")
    args = parser.parse_args(argv)
    spent = {"mark": 0.0}
    for name in ("record", "watermark", "sign"):  # time the marker's own work inside save_video
        original = getattr(marking.Marker, name)

        def timed(self, *a, _original=original, **k):
            began = time.perf_counter()
            try:
                return _original(self, *a, **k)
            finally:
                spent["mark"] += time.perf_counter() - began
        setattr(marking.Marker, name, timed)
    times = {True: [], False: []}
    marks = []
    with tempfile.TemporaryDirectory() as out:
        def once(enabled: bool) -> float:
            cfg = OmegaConf.structured(GenerateConfig)
            cfg.ckpt, cfg.prompt, cfg.out = args.ckpt, PROMPT, str(Path(out) / f"{enabled}.mp4")
            cfg.marking.enabled = enabled
            if args.num_frames:
                cfg.num_frames = args.num_frames
            spent["mark"] = 0.0
            began = time.perf_counter()
            cli.run(cfg)
            seconds = time.perf_counter() - began
            if enabled:
                marks.append(spent["mark"])
            return seconds
        once(True), once(False)  # warm-up: imports, the signer and key made once, caches
        marks.clear()
        for i in range(args.repeats):
            for enabled in ((True, False) if i % 2 == 0 else (False, True)):
                times[enabled].append(once(enabled))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"generate.py run, median of {args.repeats}: marking on {on:.2f} s, off {off:.2f} s, "
          f"ratio {on / off:.3f} (+{100 * (on / off - 1):.1f}%); marking itself {statistics.median(marks):.3f} s "
          f"per video ({100 * statistics.median(marks) / off:.1f}% of the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
