"""Why a sample was skipped. Every bad sample raises `SampleError` with a short `reason` (the counter it goes
into) and a message naming the sample; the stream catches it, counts it, names it in the run's skipped.jsonl and
moves on. `FLAGS` are counted and named the same way but the sample is still trained."""

REASONS = ("undecodable", "too_short", "bad_metadata", "timeout", "missing_field", "unreadable_shard",
           # the .json's size / frame rate / length disagree with the stream's (the loader trusts the stream)
           "metadata_mismatch",
           # decoding would pass the sample's memory bound (data.decode_memory), or a member is over
           # data.max_sample_mb (not even read)
           "memory_limit", "too_large",
           # tar members that make no sample: a name without an extension, a member twice in one sample
           "stray_member", "duplicate_member",
           # reference-to-video samples (wan_train.data.references)
           "no_subjects", "subject_not_in_caption", "no_reference_moment",
           # multi-shot samples (wan_train.data.multishot)
           "no_shots",
           # the clip's sound (data.audio, wan_train.data.audio): it does not decode (or is absurd), or it does not
           # cover the clip's time span
           "bad_audio", "audio_too_short")
# counted and named, but trained: an empty caption is the unconditional branch's prompt; a sample without sound
# (data.audio) trains with has_audio False; one whose source has no room for a reference voice away from the clip
# (data.voices, wan_train.data.voices) trains with that voice absent
FLAGS = ("empty_caption", "no_audio", "no_voice_moment")


class SampleError(Exception):
    """count: how many samples the error stands for (a shard damaged part-way loses all the samples after the
    damage, where its stats say how many); url / key: the shard and sample, where the raiser knows them better
    than the stream."""

    def __init__(self, reason: str, message: str, *, count: int = 1, url: str | None = None, key: str | None = None):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        super().__init__(message)
        self.reason, self.count, self.url, self.key = reason, count, url, key
