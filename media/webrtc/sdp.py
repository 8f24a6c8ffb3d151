"""Checks a browser's SDP offer before a peer connection is spent on it.

aiortc accepts almost anything (an offer of `garbage` yields an empty answer), so the errors a
client would see come from here, each saying what is wrong. Only what a call needs is checked:
the shape of every line, one audio section that both sends and receives, with a codec we speak,
and ICE and DTLS credentials.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["MAX_SDP_BYTES", "OfferError", "OfferSummary", "check_offer"]

MAX_SDP_BYTES = 64 * 1024
_LINE = re.compile(r"^[a-z]=")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# What aiortc can decode and encode (its codecs package), by rtpmap encoding name.
_AUDIO_CODECS = ("opus", "g722", "pcmu", "pcma")


class OfferError(ValueError):
    """The offer cannot start a call; `str()` says why, for the client."""


@dataclass(slots=True)
class _Section:
    kind: str
    formats: list[str]
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[str]:
        return self.attributes.get(name, [])


@dataclass(frozen=True, slots=True)
class OfferSummary:
    audio_codecs: tuple[str, ...]  # rtpmap encodings of the audio section, in offer order
    data_channel: bool  # an m=application section (the events channel) is offered


def _parse(sdp: str) -> tuple[_Section, list[_Section]]:
    session = _Section("session", [])
    media: list[_Section] = []
    current = session
    lines = sdp.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0].strip() != "v=0":
        raise OfferError("not an SDP offer: it must start with `v=0`")
    for number, line in enumerate(lines, 1):
        if not _LINE.match(line):
            raise OfferError(f"SDP line {number} is not `<letter>=<value>`: {line[:60]!r}")
        kind, value = line[0], line[2:].strip()
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].isdigit():
                raise OfferError(f"SDP line {number}: bad media line {line[:60]!r}")
            current = _Section(parts[0], parts[3:])
            media.append(current)
        elif kind == "a":
            name, _, rest = value.partition(":")
            current.attributes.setdefault(name, []).append(rest)
    return session, media


def check_offer(sdp: str) -> OfferSummary:
    """Raises `OfferError` naming the first problem found."""
    if len(sdp.encode()) > MAX_SDP_BYTES:
        raise OfferError(f"SDP offer larger than {MAX_SDP_BYTES} bytes")
    session, media = _parse(sdp)
    audio = [section for section in media if section.kind == "audio"]
    if not audio:
        raise OfferError("the offer has no audio section (m=audio): add the microphone track")
    section = audio[0]
    directions = [d for d in _DIRECTIONS if d in section.attributes]
    direction = directions[0] if directions else "sendrecv"
    if direction != "sendrecv":
        raise OfferError(
            f"the offer's audio is {direction}; a call needs sendrecv "
            "(the microphone in, the assistant's voice out)"
        )
    codecs = tuple(
        rtpmap.split()[1].split("/")[0].lower()
        for rtpmap in section.values("rtpmap")
        if len(rtpmap.split()) == 2
    )
    if not any(codec in _AUDIO_CODECS for codec in codecs):
        offered = ", ".join(codecs) or "none"
        raise OfferError(f"no audio codec in common: offered {offered}; AVA speaks Opus or G.711")
    for attribute, what in (("ice-ufrag", "ICE username fragment"), ("ice-pwd", "ICE password")):
        if not (section.values(attribute) or session.values(attribute)):
            raise OfferError(f"the offer has no {what} (a={attribute})")
    if not (section.values("fingerprint") or session.values("fingerprint")):
        raise OfferError("the offer has no DTLS fingerprint (a=fingerprint)")
    return OfferSummary(codecs, any(s.kind == "application" for s in media))
