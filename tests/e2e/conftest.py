"""The offline engines for the end-to-end tests, loaded once per test process.

Loading Piper, Whisper, Silero and smart-turn costs 6–8 s on a loaded 2-core machine; the phone,
browser and wideband modules all serve the sample assistant on the same models, and none of them
changes the hub (each test builds its own app on it; an app never closes a hub it was given).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control.engines import EngineHub
from tests.conftest import settings_for


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineHub]:
    settings = settings_for(
        Path("control/data/sample-assistant.json"), tmp_path_factory.mktemp("e2e-engines")
    )
    engines = EngineHub.load(settings)
    yield engines
    engines.close()
