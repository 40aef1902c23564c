"""Sampling settings: the official defaults of each released model (wan_arch.md §4.2 table), the fast preset
used for validation during training, and the official negative prompt.

`Sampling` holds everything that decides a video except the prompts, images and seed. Guidance follows
diffusers' names: `guidance_scale` is the high-noise expert's scale (or the only one, for dense models),
`guidance_scale_2` the low-noise expert's (None: the same); 1.0 skips the unconditional pass. `guidance_interval`
[low, high] limits guidance to the steps whose sigma lies in it (Kynkaanniemi et al. 2024, "Applying guidance in a
limited interval"); the other steps run the conditional pass alone."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from wan_train.models import SIZES, DiTConfig

# W21/W22 shared_config.py sample_neg_prompt, the negative prompt of every official run
OFFICIAL_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True, kw_only=True)
class Sampling:
    solver: str = "unipc"  # a name in wan_train.inference.solvers.SOLVERS
    steps: int = 50
    shift: float = 5.0
    guidance_scale: float = 5.0
    guidance_scale_2: float | None = None
    guidance_interval: tuple[float, float] | None = None  # [low, high] sigma; None: every step is guided
    # reference-to-video: the weight of the references against no references (Phantom's g_img; guidance_scale is
    # then the text's weight given the references, its g_text)
    reference_guidance_scale: float = 5.0
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    width: int = 832
    height: int = 480
    num_frames: int = 81  # 1 + 4k
    fps: float = 16.0  # only for writing the video
    # audio-video models (Ovi): the audio tower's own guidance scale and negative prompt, the block both towers
    # skip on the unconditional pass (Ovi's skip-layer guidance; -1: none), and the sound's length in audio
    # latents (None: the video's duration, num_frames / fps, in latents of the audio autoencoder)
    audio_guidance_scale: float = 3.0
    audio_negative_prompt: str = ""
    slg_layer: int = -1
    audio_latent_length: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps={self.steps!r} must be an integer >= 1")
        for name in ("shift", "guidance_scale", "reference_guidance_scale", "fps", "audio_guidance_scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                problems.append(f"{name}={value!r} must be a number > 0")
        if self.guidance_scale_2 is not None and not self.guidance_scale_2 > 0:
            problems.append(f"guidance_scale_2={self.guidance_scale_2!r} must be > 0 or None")
        interval = self.guidance_interval
        if interval is not None and not (isinstance(interval, (tuple, list)) and len(interval) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in interval)
                and 0 <= interval[0] < interval[1] <= 1):
            shown = list(interval) if isinstance(interval, (tuple, list)) else interval
            problems.append(f"guidance_interval={shown!r} must be [low, high] with 0 <= low < high <= 1")
        for name in ("width", "height", "num_frames"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                problems.append(f"{name}={getattr(self, name)!r} must be a positive integer")
        if isinstance(self.slg_layer, bool) or not isinstance(self.slg_layer, int) or self.slg_layer < -1:
            problems.append(f"slg_layer={self.slg_layer!r} must be a block index, or -1 for none")
        length = self.audio_latent_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            problems.append(f"audio_latent_length={length!r} must be a positive integer or None")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))

    def guidance_for(self, expert: str | None) -> float:
        """The CFG scale of a step run by `expert` (None: a dense model)."""
        if expert == "low_noise" and self.guidance_scale_2 is not None:
            return self.guidance_scale_2
        return self.guidance_scale

    def guided_at(self, sigma: float) -> bool:
        """Whether a step at noise level `sigma` is guided (guidance_interval)."""
        return self.guidance_interval is None or self.guidance_interval[0] <= sigma <= self.guidance_interval[1]

    def replace(self, **changes) -> Sampling:
        return dataclasses.replace(self, **changes)


_480P, _720P, _704P = dict(width=832, height=480), dict(width=1280, height=720), dict(width=1280, height=704)

# W21 generate.py / README and W22 wan/configs/*.py (wan_arch.md §4.2)
OFFICIAL: dict[str, Sampling] = {
    "wan2.1-t2v-1.3b": Sampling(steps=50, shift=5.0, guidance_scale=5.0, **_480P),
    "wan2.1-t2v-14b": Sampling(steps=50, shift=5.0, guidance_scale=5.0, **_720P),
    # the 480P and 720P I2V checkpoints share the architecture; official shift is 3 at 480p, 5 at 720p
    "wan2.1-i2v-14b": Sampling(steps=40, shift=5.0, guidance_scale=5.0, **_720P),
    "wan2.1-flf2v-14b": Sampling(steps=50, shift=16.0, guidance_scale=5.0, **_720P),
    "wan2.2-t2v-a14b": Sampling(steps=40, shift=12.0, guidance_scale=4.0, guidance_scale_2=3.0, **_720P),
    "wan2.2-i2v-a14b": Sampling(steps=40, shift=5.0, guidance_scale=3.5, guidance_scale_2=3.5, **_720P),
    "wan2.2-ti2v-5b": Sampling(steps=50, shift=5.0, guidance_scale=5.0, num_frames=121, fps=24.0, **_704P),
    # Ovi 720x720 5 s (ovi/configs/inference/inference_fusion.yaml; 157 audio latents: NAME_TO_MODEL_SPECS_MAP);
    # the 960x960 checkpoints take width=960 height=960 (and num_frames=241 audio_latent_length=314 for 10 s)
    "ovi-11b": Sampling(steps=50, shift=5.0, guidance_scale=4.0, audio_guidance_scale=3.0, slg_layer=11,
                        negative_prompt="jitter, bad hands, blur, distortion",
                        audio_negative_prompt="robotic, muffled, echo, distorted", width=720, height=720,
                        num_frames=121, fps=24.0, audio_latent_length=157),
    # the zero-download quickstart model, at the size of its demo clips (144p, 2 s at 16 fps); its unconditional
    # branch is the empty prompt it saw through caption dropout (its small tokenizer has no Chinese)
    "quickstart": Sampling(steps=30, shift=3.0, guidance_scale=3.0, negative_prompt="", width=256, height=144,
                           num_frames=33),
    # its audio-video twin (the sync demo): the same picture settings, the empty prompt for both towers' negatives
    "quickstart-av": Sampling(steps=30, shift=3.0, guidance_scale=3.0, audio_guidance_scale=3.0, negative_prompt="",
                              audio_negative_prompt="", width=256, height=144, num_frames=33),
}
OFFICIAL["quickstart-ti2v"] = OFFICIAL["quickstart"]  # the same DiT as a TI2V model
GENERIC = Sampling()  # tiny test sizes and unrecognised checkpoints
FAST_STEPS = 20  # the validation preset: the model's own settings with at most this many steps


def official(size: str | None, *, width: int | None = None, height: int | None = None) -> Sampling:
    """The official settings of a named size (GENERIC for other names), at width x height when given; Wan2.1
    I2V uses shift 3 at 480p and 5 above (W21 generate.py)."""
    settings = OFFICIAL.get(size or "", GENERIC)
    changes = {k: v for k, v in (("width", width), ("height", height)) if v is not None}
    if size == "wan2.1-i2v-14b" and changes:
        area = changes.get("width", settings.width) * changes.get("height", settings.height)
        changes["shift"] = 3.0 if area <= 832 * 480 else 5.0
    return settings.replace(**changes)


def fast(settings: Sampling) -> Sampling:
    """The preset of validation videos during training: the same settings with at most FAST_STEPS steps."""
    return settings.replace(steps=min(settings.steps, FAST_STEPS))


def size_name(config: DiTConfig, *, moe: bool) -> str | None:
    """The named size whose DiT architecture (and expert count) a loaded checkpoint has, or None."""
    plain = config.replace(references=0)  # a reference-extended DiT samples like its base
    for name, size in SIZES.items():
        if size.dit == plain and size.is_moe == moe and not size.has_audio:
            return name
    return None


def twin_size_name(video: DiTConfig, audio: DiTConfig) -> str | None:
    """The named audio-video size (Ovi) whose towers a loaded twin-tower DiT has, or None."""
    return next((name for name, size in SIZES.items() if size.dit == video and size.audio == audio), None)


def with_overrides(settings: Sampling, overrides) -> Sampling:
    """`settings` with every Sampling field that `overrides` (a mapping or config) sets to a value other than None."""
    names = [f.name for f in dataclasses.fields(Sampling)]
    changes = {n: overrides[n] for n in names if n in overrides and overrides[n] is not None}
    if "guidance_interval" in changes:  # a list from a config or the command line
        changes["guidance_interval"] = tuple(changes["guidance_interval"])
    return settings.replace(**changes)
