"""`artifactPlan` on an assistant: Vapi's defaults, and formats validated at configuration."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from voice.assistant import Assistant


def test_recording_is_on_by_default_in_wav() -> None:
    plan = Assistant.model_validate({}).artifact_plan
    assert plan.recording_enabled is True and plan.recording_format == "wav;l16"


def test_mp3_and_opt_out_are_accepted_and_vapis_other_fields_kept() -> None:
    assistant = Assistant.model_validate(
        {"artifactPlan": {"recordingFormat": "mp3", "recordingEnabled": False,
                          "transcriptPlan": {"enabled": True}}}
    )  # fmt: skip
    assert assistant.to_json()["artifactPlan"] == {
        "recordingEnabled": False,
        "recordingFormat": "mp3",
        "transcriptPlan": {"enabled": True},
    }


@pytest.mark.parametrize("fmt", ["ogg", "wav", "", "MP3"])
def test_an_unknown_format_is_refused_naming_the_ones_there_are(fmt: str) -> None:
    with pytest.raises(ValidationError, match="wav;l16, mp3"):
        Assistant.model_validate({"artifactPlan": {"recordingFormat": fmt}})
