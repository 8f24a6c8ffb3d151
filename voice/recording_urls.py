"""Vapi's recording fields of a call: the stable download routes of this server (behind the
tenant's API key, or a signed `?token=`). Data only: the report (voice) and the stored call
(storage) name them alike."""

from __future__ import annotations

from typing import Any

__all__ = ["RECORDING_BASE_URL", "recording_artifact"]

# The call's metadata key for the base URL its recording downloads are under (set by the
# control plane when the call records), so the end-of-call report can name them.
RECORDING_BASE_URL = "recordingBaseUrl"


def recording_artifact(base_url: str, call_id: str) -> dict[str, Any]:
    """`recordingUrl` (the mono mix), `stereoRecordingUrl` and `recording {stereoUrl, mono}`."""
    base = f"{base_url.rstrip('/')}/call/{call_id}"
    mono = f"{base}/mono-recording"
    stereo = f"{base}/stereo-recording"
    return {
        "recordingUrl": mono,
        "stereoRecordingUrl": stereo,
        "recording": {
            "stereoUrl": stereo,
            "mono": {
                "combinedUrl": mono,
                "assistantUrl": f"{base}/assistant-recording",
                "customerUrl": f"{base}/customer-recording",
            },
        },
    }
