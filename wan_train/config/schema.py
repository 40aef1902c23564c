"""Typed schemas of every conf/ group: the one place each default lives. Hydra composes conf/ + recipes/ over
these (ConfigStore), then `validate` checks values across fields and fails at start with the key, the value
and what is allowed."""

from dataclasses import dataclass, field
from typing import Any

from wan_train.data.datamodule import DataConfig


@dataclass
class ModelConfig:
    size: str = "tiny"  # a name from wan_train.models.SIZES
    # a Wan folder (official or diffusers) or a DiT file; None trains the DiT from random init (tiny sizes)
    checkpoint: str | None = None
    # where the frozen encoders come from for raw-video training: a Wan folder; "builtin" = the zero-download
    # stand-ins of the quickstart (pixel-space VAE, tiny random umT5); None = the checkpoint folder
    encoders: str | None = None
    activation_checkpointing: bool = False
    # torch.compile per DiT block (regional: one block's compile serves every layer; wan_train.models.dit.compile),
    # in a torch.compile mode without CUDA graphs: default | max-autotune-no-cudagraphs
    compile: bool = False
    compile_mode: str = "default"
    # the attention kernel: sdpa (torch picks) | flash | cudnn (SDPA pinned to that kernel, CUDA) | flex
    # (FlexAttention; wan_train.models.dit.layers)
    attention: str = "sdpa"
    trainable: str = "all"  # full fine-tune parameter preset (wan_train.training.trainable.TRAINABLE)
    # reference-to-video: reference slots (@Video1..) added to the base, zero-initialised and trained with the rest
    # (a LoRA run trains them beside the adapter); 0: none. The data's references fill them (data.references)
    references: int = 0
    # multi-shot: shot-index embeddings (and per-shot captions) for up to this many shots, added to the base like
    # references; 0: none
    shots: int = 0
    # sound (a twin-tower audio-video model, models/dit/fusion.py). On a Wan T2V / TI2V size: "mel" (the weight-free
    # stand-in) or a folder with MMAudio's v1-16.pth and best_netG.pt (or an Ovi folder) adds an audio tower of the
    # base's widths, the video tower's fusion values zero, so the video output is the base's until they train. On a
    # twin size (quickstart-av, tiny-ovi, ovi-11b): where its audio latents come from (None: the size's own, "mel"
    # for quickstart-av, the model.encoders / model.checkpoint folder for Ovi)
    audio: str | None = None
    # false: the towers of an audio-video model never read each other (every fusion projection frozen, the values
    # at zero): the no-fusion ablation of the sync demo, where the sound can only guess when the picture flashes
    fusion: bool = True
    # reference voices: audio reference slots (@Video1..) added to an audio-video model's audio tower, zero-initialised
    # and trained with the rest; batches' `audio_refs` fill them (clean latents, timestep 0, no loss); 0: none
    audio_references: int = 0


@dataclass
class ExpertConfig:
    # "high_noise" | "low_noise": one A14B expert; "both": the two in alternating phases (two outputs);
    # None for dense models. The sigma range of each comes from the model's boundary, never typed by hand.
    name: str | None = None
    alternate_every: int = 100  # steps per phase with name=both
    high_noise_lr: float | None = None  # per-expert learning rates with name=both (None: optim.lr)
    low_noise_lr: float | None = None


@dataclass
class SamplerConfig:
    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0


@dataclass
class FlowConfig:
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    weighting: str = "none"
    exclude_conditioning_frames: bool = True  # I2V/FLF2V: leave the given frames out of the loss
    image_condition_probability: float = 0.5  # TI2V: fraction of samples trained image-to-video
    held_out_quantiles: int = 4  # sigmas per held-out sample (quantiles of the expert's sigma distribution)
    held_out_samples: int = 4  # clips from the stream kept aside at start as the fixed validation set
    held_out_seed: int = 1234
    # twin-tower (audio-video) models: each modality's noise level drawn on its own ("independent", as LTX-2's
    # trainer does) or the video's for both ("shared"); loss = video + audio_weight x audio
    audio_sigma: str = "independent"
    audio_weight: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant"  # "constant" | "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    gradient_clip_val: float | None = 1.0


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    precision: str = "32-true"  # "32-true" (CPU) | "bf16-mixed" (GPU)
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    log_every_n_steps: int = 10
    val_every_n_steps: int = 100
    checkpoint_every_n_steps: int = 500
    seed: int = 0
    ema_decay: float | None = None  # e.g. 0.999; exported as run_dir/dit_ema
    enable_progress_bar: bool = True


@dataclass
class StrategyConfig:
    """How ranks share the work (wan_train.parallel.strategy); pick a preset with strategy=ddp | fsdp |
    deepspeed_zero2 | deepspeed_zero2_offload | deepspeed_zero3 | deepspeed_zero3_offload."""

    name: str = "auto"  # auto | ddp | fsdp | deepspeed
    timeout_minutes: int = 30  # collective timeout (a slow first compile or a shared-filesystem stall)
    find_unused_parameters: bool = False  # ddp
    sharding_strategy: str = "FULL_SHARD"  # fsdp: FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD
    state_dict_type: str = "sharded"  # fsdp: sharded (each rank its shard) | full (gathered on rank 0)
    stage: int = 2  # deepspeed: ZeRO stage 2 (optimizer + gradients sharded) or 3 (+ parameters)
    offload_optimizer: bool = False  # deepspeed: optimizer state on the CPU (DeepSpeedCPUAdam)
    offload_parameters: bool = False  # deepspeed ZeRO-3 / fsdp: parameters on the CPU between uses
    bucket_size: int = 200_000_000  # deepspeed: elements per all-reduce / all-gather bucket
    # Ulysses sequence parallelism: this many consecutive ranks share each sample's tokens (all-to-all over heads
    # in self-attention); data parallelism runs over world / sequence_parallel groups. 1: off
    sequence_parallel: int = 1


@dataclass
class LoraConfig:
    """LoRA fine-tuning (peft adapters on a frozen base; model.checkpoint is the base): with expert=both each A14B
    expert trains its own adapter. With client and name set, the finished run lands as a new registry version
    <root>/<client>/<name>/vNNNN (python -m wan_train.lora list | show | export ...)."""

    enabled: bool = False
    target: str = "attn_qkvo_ffn"  # a preset of wan_train.lora.TARGET_PRESETS
    # twin-tower (audio-video) models: the towers whose blocks `target` adapts, and whether the fusion projections
    # (cross_attn.k_fusion / v_fusion, which read the other modality) get an adapter too
    towers: list[str] = field(default_factory=lambda: ["video", "audio"])
    fusion: bool = True
    rank: int = 16
    alpha: float = 16.0  # scale alpha / rank (alpha / sqrt(rank) with rslora)
    dropout: float = 0.0
    rslora: bool = False
    dora: bool = False  # trains and loads from the run folder; the registry's export formats cannot carry it
    client: str | None = None
    name: str | None = None
    kind: str = "style"  # style | character (registry metadata)
    trigger_words: list[str] = field(default_factory=list)  # words the captions use for the subject or style
    root: str = "adapters"  # the registry
    use_ema: bool = True  # with trainer.ema_decay set, register the EMA weights


@dataclass
class MemoryConfig:
    """Where a run keeps what on the device (conf/memory/; wan_train.memory): the storage dtype of a LoRA run's
    frozen base, block offload, activation offload and the encoders. memory=24gb plans these at start for a
    24 GB card (python -m wan_train.plan prints the same plan and its estimates)."""

    name: str = "default"
    # e.g. "24GB": at start, the planner picks base_dtype, offload_blocks, offload_activations and
    # model.activation_checkpointing as the fastest setting whose estimated peak fits (replacing those values)
    budget: str | None = None
    # frozen base weights (LoRA runs): auto (bfloat16 under bf16 precision, else float32) | float32 | bfloat16 |
    # float8_e4m3fn (block linears in float8 with scales, computed in bf16; the rest bf16)
    base_dtype: str = "auto"
    fp8_granularity: str = "channel"  # float8 scales: per output channel | per tensor
    offload_blocks: int = 0  # the last K blocks' frozen weights wait in pinned host memory, copied in ahead of use
    prefetch_blocks: int = 1  # offloaded blocks copied in while one runs
    offload_activations: bool = False  # saved activations (with checkpointing: each block's input) in host memory
    # the VAE and text encoder during DiT steps: device (stay there) | swap (to the device to encode, back to the
    # host after) | cpu (encode on the host; slow for umT5-XXL). Cached latents need neither.
    encoders: str = "device"


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: bool = True  # online when WANDB_API_KEY is set, offline files in the run folder otherwise
    project: str = "wan_train"
    name: str | None = None


@dataclass
class ClusterConfig:
    """Where the run executes (conf/cluster/): local, or slurm (launched by slurm/*.sbatch, one task per device).
    On SLURM the job gets requeue_signal before its time limit (sbatch --signal) and SIGTERM on preemption, at any
    moment: at the next safe point every rank saves the checkpoint of the current step, the job is requeued, and
    the new job resumes it (resume=auto; wan_train.training.requeue)."""

    name: str = "local"  # local | slurm
    requeue: bool = False  # slurm: checkpoint and requeue on requeue_signal
    requeue_signal: str = "SIGUSR1"
    # what slurm/submit and the submitit launcher ask for (wan_train.parallel.slurm): None derives it
    cpus_per_task: int | None = None  # None: data.num_workers + 1
    mem_per_task_gb: float | None = None  # None: 64 per GPU task; a CPU run takes the partition's default


@dataclass
class SamplingOverrides:
    """Sampling settings of generate.py and of validation videos; None takes the model's official value
    (wan_train.inference.presets; validation: its fast preset, at most 20 steps)."""

    steps: int | None = None
    solver: str | None = None  # unipc (official) | dpmpp_2m | euler
    shift: float | None = None
    guidance_scale: float | None = None  # the high-noise expert's (or the only) CFG scale
    guidance_scale_2: float | None = None  # the low-noise expert's
    guidance_interval: list[float] | None = None  # [low, high] sigma: guide only the steps in it
    reference_guidance_scale: float | None = None  # task=r2v: weight of the references (Phantom's g_img)
    negative_prompt: str | None = None  # None: the official Chinese negative prompt
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    fps: float | None = None
    # audio-video models (task=t2av / ti2av)
    audio_guidance_scale: float | None = None
    audio_negative_prompt: str | None = None
    slg_layer: int | None = None  # the block skipped on the unconditional pass; -1: none
    audio_latent_length: int | None = None  # None: the video's duration


@dataclass
class C2paConfig:
    """The signed C2PA manifest (names as c2patool's): your certificate chain and key, or this installation's own
    signer (made once in the config folder; readers report it as an untrusted signer)."""

    enabled: bool = True
    sign_cert: str | None = None  # PEM certificate chain, leaf first
    private_key: str | None = None  # PEM private key of the leaf
    alg: str = "es256"  # es256 | es384 | es512 | ps256 | ps384 | ps512 | ed25519
    ta_url: str | None = None  # RFC 3161 time-stamp authority URL (None: not time-stamped, nothing sent)


@dataclass
class WatermarkConfig:
    enabled: bool = True
    key: str | None = None  # the secret key (None: this installation's, made once in the config folder)
    strength: float = 2.0  # standard deviation in 8-bit levels (2.0: about 42 dB PSNR)


@dataclass
class MarkingConfig:
    """Generated videos are marked as AI-generated (EU AI Act Art. 50(2)): container tags and sidecar record, a
    signed C2PA manifest, an invisible watermark carrying the output id (wan_train.marking). false: unmarked, said
    in the log and the sidecar."""

    enabled: bool = True
    c2pa: C2paConfig = field(default_factory=C2paConfig)
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)


@dataclass
class ValidationConfig(SamplingOverrides):
    """Sample videos during training: fixed prompts with fixed seeds every N steps, to run_dir/samples/ and W&B."""

    every_n_steps: int | None = None  # None: no validation videos
    prompts: list[str] = field(default_factory=list)
    seed: int = 0  # prompt i gets seed + i, the same at every validation
    preview: str = "gif"  # png (contact sheet) | gif | none, beside each mp4
    # scorers of the videos, each {_target_: CLASS, ...} built by Hydra and called as scorer(videos, prompts) ->
    # {name: [B] values}; the means are logged as val/<name> (e.g. eval.scorers.ClipScore, model: CLIP_FOLDER)
    metrics: list[Any] = field(default_factory=list)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    marking: MarkingConfig = field(default_factory=MarkingConfig)  # the validation videos
    run_dir: str = "runs/default"
    resume: str = "auto"  # "auto": the newest checkpoint in run_dir/checkpoints if any | "never" | a .ckpt path
    recipe: str | None = None


@dataclass
class GenerateConfig(SamplingOverrides):
    """python generate.py ckpt=PATH prompt="..." out=FILE.mp4 [key=value ...]"""

    ckpt: str | None = None  # a training run folder, a Wan model folder (official / diffusers) or a DiT file
    step: int | None = None  # run folders: the checkpoint of this training step (None: the newest)
    prompt: Any = None  # one prompt, or a list: prompt='[a cat, a dog]'
    prompts_file: str | None = None  # one prompt per line (instead of prompt)
    out: str = "outputs/video.mp4"  # several videos: FILE_000.mp4, FILE_001.mp4, ...
    task: str = "t2v"  # t2v | i2v | flf2v | ti2v | r2v, as the model allows; t2av | ti2av: with sound (Ovi)
    # task=r2v: one image or clip per subject, the prompt's @Video1, @Video2, @Video3 (refs='[a.png,b.mp4]')
    refs: Any = None
    # task=t2av / ti2av on a model with reference-voice slots: one sound file per subject (@Video1..), its voice
    # (voices='[alice.wav,bob.mp4]'); guided with reference_guidance_scale
    voices: Any = None
    reference_frames: int = 1  # frames taken from each clip reference (1 + 4k); images are one frame
    reference_start: float = 0.0  # seconds into each clip reference where its consecutive frames (at the fps) begin
    # models with the multi-shot extension: "Shot 1: ... Shot 2 (2s): close-up — ..." prompts, or plain ones planned
    # into `shots` shots (None: by their cut cues), all shots generated jointly (wan_train.inference.shots)
    multishot: bool = False
    shots: int | None = None
    image: str | None = None  # the first frame (i2v / ti2v / flf2v)
    last_image: str | None = None  # the last frame (flf2v)
    seed: int = 0  # video i gets seed + i
    num_videos_per_prompt: int = 1
    # adapters: a registry ref (acme/mascot, acme/mascot/v0002), a peft folder or a LoRA file, or a list of them
    # (a weighted blend); "REF:0.8" sets the strength
    lora: Any = None
    lora_root: str = "adapters"  # the registry
    fuse_lora: bool = False  # merge the adapters into the weights for the run (faster steps), restored after
    allow_base_mismatch: bool = False  # apply adapters recorded for another base model anyway
    ema: bool = False  # run folders: the EMA weights of the newest checkpoint
    encoders: str | None = None  # a Wan folder with the VAE + umT5 when ckpt has none
    boundary: float | None = None  # MoE boundary override
    device: str = "auto"  # auto: cuda if available
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on the CPU
    offload_model: bool | None = None  # the idle MoE expert waits on the CPU; None: when both do not fit
    batch_size: int = 1  # videos denoised together
    preview: str = "png"  # png (contact sheet) | gif | none
    marking: MarkingConfig = field(default_factory=MarkingConfig)
