"""The TwiML documents AVA answers Twilio with (voice webhook, and a live call's transfer).

Serialized exactly as twilio-python's `VoiceResponse` does (ElementTree, attributes sorted,
`" />"` on empty elements, one line after the XML declaration), so the output can be compared
byte for byte with the SDK's and with captured documents, without depending on the SDK.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

__all__ = [
    "MAX_PARAMETER_LENGTH",
    "XML_DECLARATION",
    "connect_stream",
    "dial",
    "redirect",
    "say_and_hangup",
]

XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
# Twilio: "the combined length of each Parameter's name and value must be under 500".
MAX_PARAMETER_LENGTH = 500

# Characters XML 1.0 cannot carry even escaped; ElementTree would emit them and Twilio would
# reject the whole document.
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def connect_stream(
    url: str, parameters: Mapping[str, str], status_callback: str | None = None
) -> str:
    """`<Connect><Stream>` to `url`, passing `parameters` as `<Parameter>` elements (they arrive
    in `start.customParameters`)."""
    if "?" in url:
        # Twilio fails the websocket handshake on stream URLs with a query string (31920).
        raise ValueError("a <Stream> url cannot have a query string; use parameters instead")
    attrs = {"url": url}
    if status_callback is not None:
        attrs["statusCallback"] = status_callback
    response = ET.Element("Response")
    stream = _child(ET.SubElement(response, "Connect"), "Stream", attrs)
    for name, value in parameters.items():
        if len(name) + len(value) >= MAX_PARAMETER_LENGTH:
            raise ValueError(
                f"parameter {name!r}: name and value must be under {MAX_PARAMETER_LENGTH} chars"
            )
        _child(stream, "Parameter", {"name": name, "value": value})
    return _serialize(response)


def redirect(url: str) -> str:
    """`<Redirect method="POST">`: Twilio requests `url` with the same call parameters and
    follows the TwiML it gets there (a draining node hands a new call back to the balancer)."""
    response = ET.Element("Response")
    element = _child(response, "Redirect", {"method": "POST"})
    element.text = _check(url)
    return _serialize(response)


def say_and_hangup(text: str) -> str:
    """`<Say>` then `<Hangup />`: the answer for a number no assistant serves."""
    response = ET.Element("Response")
    say = ET.SubElement(response, "Say")
    say.text = _check(text)
    ET.SubElement(response, "Hangup")
    return _serialize(response)


def dial(number: str, *, caller_id: str | None = None, extension: str | None = None) -> str:
    """`<Dial>` a number: what a live call is redirected to when it is transferred.

    With an extension the number goes in a `<Number sendDigits="w…">` (each `w` waits half a
    second before the digits are sent, as Twilio documents)."""
    response = ET.Element("Response")
    element = _child(response, "Dial", {"callerId": caller_id} if caller_id else {})
    if extension:
        element = _child(element, "Number", {"sendDigits": "ww" + extension})
    element.text = _check(number)
    return _serialize(response)


def _child(parent: ET.Element, tag: str, attrs: Mapping[str, str]) -> ET.Element:
    # twilio-python sets attributes in sorted order; ElementTree keeps insertion order.
    return ET.SubElement(parent, tag, {k: _check(attrs[k]) for k in sorted(attrs)})


def _check(value: str) -> str:
    if _INVALID_XML.search(value):
        raise ValueError(f"{value!r:.60} contains characters XML cannot carry")
    return value


def _serialize(element: ET.Element) -> str:
    return XML_DECLARATION + ET.tostring(element, encoding="unicode")
