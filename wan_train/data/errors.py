"""Why a sample was skipped. Every bad sample raises `SampleError` with a short `reason` (the counter it goes
into) and a message naming the sample; the stream catches it, counts it and moves on."""

REASONS = ("undecodable", "too_short", "bad_metadata", "timeout", "missing_field", "unreadable_shard",
           # reference-to-video samples (wan_train.data.references)
           "no_subjects", "subject_not_in_caption", "no_reference_moment",
           # multi-shot samples (wan_train.data.multishot)
           "no_shots")


class SampleError(Exception):
    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {REASONS}")
        super().__init__(message)
        self.reason = reason
