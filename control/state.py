"""What the app holds for its lifetime, built once in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from control.calls import CallManager
from control.engines import EngineSource
from control.settings import Settings
from control.stores import Stores
from voice.assistant import Assistant
from voice.ports import EventSink

__all__ = ["AppState"]


@dataclass(slots=True)
class AppState:
    settings: Settings
    engines: EngineSource
    calls: CallManager
    default_assistant: Assistant
    stores: Stores
    # Every session's events: the live records in `calls` and the database recorder.
    sink: EventSink
    assistants: dict[str, Assistant] = field(default_factory=dict)
    ready: bool = False

    def assistant_for(self, key: str) -> Assistant:
        return self.assistants.get(key, self.default_assistant)
