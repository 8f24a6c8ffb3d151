"""The caller's keypad input (`keypadInputPlan`) being gathered into a turn.

Split from `voice.session` because the digits typed so far and when they become a turn are
state of their own, with no awaits: the session asks it what a key press means and, once the
input is complete, takes the digits and answers them as the caller's turn.
"""

from __future__ import annotations

from voice.assistant import KeypadInputPlan

__all__ = ["MAX_KEYPAD_DIGITS", "KeypadInput"]

# The longest keypad input taken as one turn (a card number with its expiry fits); more digits
# start the next one.
MAX_KEYPAD_DIGITS = 64


class KeypadInput:
    def __init__(self, plan: KeypadInputPlan) -> None:
        self.plan = plan
        self.digits = ""  # gathered so far
        self.due: float | None = None  # when they become a turn with no new digit

    def press(self, digit: str, now: float) -> bool:
        """Take one key; True when the input is complete (a delimiter, or as many digits as
        one turn takes: bounded for a stream of keys with no delimiter)."""
        if digit in self.plan.delimiters:
            return True
        self.digits += digit
        self.due = now + self.plan.timeout_seconds
        return len(self.digits) >= MAX_KEYPAD_DIGITS

    def take(self) -> str:
        """The digits gathered so far; the next input starts empty."""
        digits, self.digits, self.due = self.digits, "", None
        return digits
