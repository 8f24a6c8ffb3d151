"""Every setting AVA reads, read once (environment and `.env`) and passed down.

This is the only module that looks at the environment. Names without the AVA_ prefix are the
providers' conventional ones.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.engine import default_sqlite_url

__all__ = ["Settings"]

_SAMPLE_ASSISTANT = Path(__file__).resolve().parent / "data" / "sample-assistant.json"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AVA_",
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # an empty line in .env means "use the default"
        extra="ignore",
    )

    host: str = "127.0.0.1"
    port: int = 8000
    # Base URL Twilio reaches us at (https://voice.example.com); TwiML's wss:// URL is built
    # from it. Empty: taken from the request (Host / X-Forwarded-* headers).
    public_url: str = ""
    # Signs stream tokens. Empty: a random key per process (fine for one dev process only).
    secret_key: SecretStr = SecretStr("")
    stream_token_ttl_seconds: float = Field(default=60, gt=0)
    assistant_file: Path = _SAMPLE_ASSISTANT
    data_dir: Path = Path("var")
    # sqlite+aiosqlite:///path or postgresql+asyncpg://user:pass@host/db. Empty: SQLite in data_dir.
    database_url: str = ""
    model_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "ava" / "models")
    # Worker threads for CPU-heavy inference (STT, TTS, turn model). 2 cores: 2 threads.
    inference_threads: int = Field(default=2, ge=1, le=64)
    vad: str = Field(default="silero", pattern="^(silero|webrtc)$")
    turn_model: bool = True
    max_calls: int = Field(default=200, ge=1)
    drain_seconds: float = Field(default=30, ge=0)
    log_level: str = "INFO"

    twilio_account_sid: str = Field(
        default="", validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "AVA_TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "AVA_TWILIO_AUTH_TOKEN"),
    )

    # Cloud providers (conventional names). A key is needed only when an assistant picks it.
    deepgram_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("DEEPGRAM_API_KEY", "AVA_DEEPGRAM_API_KEY"),
    )
    deepgram_base_url: str = Field(
        default="wss://api.deepgram.com",
        validation_alias=AliasChoices("DEEPGRAM_BASE_URL", "AVA_DEEPGRAM_BASE_URL"),
    )
    openai_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("OPENAI_API_KEY", "AVA_OPENAI_API_KEY"),
    )
    # None: the openai SDK's own default (https://api.openai.com/v1).
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "AVA_OPENAI_BASE_URL")
    )
    elevenlabs_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("ELEVENLABS_API_KEY", "AVA_ELEVENLABS_API_KEY"),
    )
    elevenlabs_base_url: str = Field(
        default="wss://api.elevenlabs.io",
        validation_alias=AliasChoices("ELEVENLABS_BASE_URL", "AVA_ELEVENLABS_BASE_URL"),
    )

    @property
    def dev_mode(self) -> bool:
        """No Twilio credentials: webhooks and streams are not signature-checked."""
        return not self.twilio_auth_token.get_secret_value()

    def resolved_database_url(self) -> str:
        return self.database_url or default_sqlite_url(self.data_dir)

    def signing_key(self) -> bytes:
        key = self.secret_key.get_secret_value()
        if not key:
            key = secrets.token_urlsafe(32)
            self.secret_key = SecretStr(key)
        return key.encode()
