"""Vapi's `artifactPlan`: what a call leaves behind besides its record (here: the recording).

`recordingEnabled` (default true, as Vapi) records the call in stereo, caller left and assistant
right; `recordingFormat` is `wav;l16` (16-bit PCM WAV, Vapi's default) or `mp3` (encoded after the
call: a stereo file and the mono mix; the single channels are kept for `wav;l16` only). Vapi's
other fields (`videoRecordingEnabled`,
`transcriptPlan`, custom storage paths, …) are accepted and kept, not acted on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator
from pydantic.alias_generators import to_camel

__all__ = ["RECORDING_FORMATS", "ArtifactPlan"]

RECORDING_FORMATS = ("wav;l16", "mp3")


class ArtifactPlan(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", validate_assignment=True
    )

    recording_enabled: bool = True
    recording_format: str = "wav;l16"

    @field_validator("recording_format")
    @classmethod
    def _supported(cls, value: Any) -> Any:
        if value not in RECORDING_FORMATS:
            raise ValueError(f"must be one of {', '.join(RECORDING_FORMATS)}")
        return value
