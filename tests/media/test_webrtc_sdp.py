"""Offer checks: a real Chrome offer passes; each unusable offer says what is wrong."""

# ruff: noqa: E501 (the captured SDP lines are kept whole)

from __future__ import annotations

import pytest

from media.webrtc.sdp import MAX_SDP_BYTES, OfferError, check_offer

# Captured from Debian's Chromium 156 (headless, fake microphone, an "events" data channel),
# after ICE gathering completed, as the page sends it.
CHROME_OFFER_LINES = [
    "v=0",
    "o=- 7304942374708791226 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 2ea24bf3-03a1-48cf-a408-0121ab35234e",
    "m=audio 60103 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 192.0.2.2",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:3079761906 1 udp 2122194687 192.0.2.2 60103 typ host generation 0 network-id 1",
    "a=candidate:2822358774 1 udp 2122265343 fd00::2 59541 typ host generation 0 network-id 2",
    "a=candidate:3373222655 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active generation 0 network-id 1",
    "a=candidate:3601327099 1 tcp 1518285567 fd00::2 9 typ host tcptype active generation 0 network-id 2",
    "a=ice-ufrag:ii9n",
    "a=ice-pwd:H+5MFIqKPNTGy9HjjKXCAa6P",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 36:A7:60:0F:F8:8C:6E:0F:B0:2B:5A:9C:11:46:EA:30:31:D6:38:F9:B1:0E:30:44:0F:F3:43:8F:9A:77:D7:62",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:2ea24bf3-03a1-48cf-a408-0121ab35234e 84d3832e-5ca2-4bda-b5ae-42638fa0b85f",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtcp-xr:rcvr-rtt=all",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:4097028757 cname:ddn9Tfr+b5Ib4Sia",
    "a=ssrc:4097028757 msid:2ea24bf3-03a1-48cf-a408-0121ab35234e 84d3832e-5ca2-4bda-b5ae-42638fa0b85f",
    "m=application 59510 UDP/DTLS/SCTP webrtc-datachannel",
    "c=IN IP4 192.0.2.2",
    "a=candidate:3079761906 1 udp 2122194687 192.0.2.2 59510 typ host generation 0 network-id 1",
    "a=candidate:2822358774 1 udp 2122265343 fd00::2 55919 typ host generation 0 network-id 2",
    "a=candidate:3373222655 1 tcp 1518214911 192.0.2.2 9 typ host tcptype active generation 0 network-id 1",
    "a=candidate:3601327099 1 tcp 1518285567 fd00::2 9 typ host tcptype active generation 0 network-id 2",
    "a=ice-ufrag:ii9n",
    "a=ice-pwd:H+5MFIqKPNTGy9HjjKXCAa6P",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 36:A7:60:0F:F8:8C:6E:0F:B0:2B:5A:9C:11:46:EA:30:31:D6:38:F9:B1:0E:30:44:0F:F3:43:8F:9A:77:D7:62",
    "a=setup:actpass",
    "a=mid:1",
    "a=sctp-port:5000",
    "a=max-message-size:262144",
]
CHROME_OFFER = "\r\n".join(CHROME_OFFER_LINES) + "\r\n"


def edited(drop: str = "", replace: tuple[str, str] | None = None) -> str:
    lines = [line for line in CHROME_OFFER_LINES if not (drop and line.startswith(drop))]
    if replace is not None:
        lines = [replace[1] if line == replace[0] else line for line in lines]
    return "\r\n".join(lines) + "\r\n"


def test_a_chrome_offer_is_accepted() -> None:
    summary = check_offer(CHROME_OFFER)
    assert summary.audio_codecs[:2] == ("opus", "red")
    assert "pcmu" in summary.audio_codecs
    assert summary.data_channel


def test_bare_newlines_are_accepted_too() -> None:
    assert check_offer(CHROME_OFFER.replace("\r\n", "\n")).data_channel


@pytest.mark.parametrize(
    ("sdp", "message"),
    [
        ("", "must start with `v=0`"),
        ("garbage", "must start with `v=0`"),
        ('{"type": "offer"}', "must start with `v=0`"),
        ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nnot a line\r\n", "SDP line 3 is not"),
        ("v=0\r\nm=audio nine UDP/TLS/RTP/SAVPF 111\r\n", "bad media line"),
        ("v=0\r\ns=-\r\n", "no audio section"),
        (edited(replace=("a=sendrecv", "a=recvonly")), "audio is recvonly"),
        (edited(replace=("a=sendrecv", "a=inactive")), "audio is inactive"),
        (edited(drop="a=rtpmap:"), "no audio codec in common: offered none"),
        (edited(drop="a=ice-ufrag"), "no ICE username fragment"),
        (edited(drop="a=ice-pwd"), "no ICE password"),
        (edited(drop="a=fingerprint"), "no DTLS fingerprint"),
        (CHROME_OFFER + "a=x:" + "y" * MAX_SDP_BYTES + "\r\n", "larger than"),
    ],
)
def test_unusable_offers_say_why(sdp: str, message: str) -> None:
    with pytest.raises(OfferError, match=message.replace("(", r"\(")):
        check_offer(sdp)


def test_an_audio_section_without_a_direction_is_sendrecv() -> None:
    assert check_offer(edited(drop="a=sendrecv")).audio_codecs


def test_credentials_at_session_level_count() -> None:
    lines = [
        line for line in CHROME_OFFER_LINES if not line.startswith(("a=ice-", "a=fingerprint"))
    ]
    session = [
        "a=ice-ufrag:abcd",
        "a=ice-pwd:" + "p" * 24,
        "a=fingerprint:sha-256 " + "AB:" * 31 + "AB",
    ]
    sdp = "\r\n".join(lines[:4] + session + lines[4:]) + "\r\n"
    assert check_offer(sdp).data_channel
