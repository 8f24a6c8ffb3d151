"""Every setting AVA reads, read once (environment and `.env`) and passed down.

This is the only module that looks at the environment. Names without the AVA_ prefix are the
providers' conventional ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.engine import default_sqlite_url
from storage.keys import ServerKey, resolve_server_key, stream_signing_key
from voice.egress import EgressPolicy
from voice.notification_plan import check_address
from voice.pricing import PriceTable, load_price_table

__all__ = ["IceServer", "Settings", "read_price_table"]

_SAMPLE_ASSISTANT = Path(__file__).resolve().parent / "data" / "sample-assistant.json"
_MAX_PRICES_BYTES = 1024 * 1024


def read_price_table(path: Path | None) -> PriceTable:
    """The price table with the operator's file (if any) merged over the shipped prices;
    ValueError naming the file and the bad entry."""
    if path is None:
        return load_price_table()
    try:
        with path.open("rb") as file:
            raw = file.read(_MAX_PRICES_BYTES + 1)
        if len(raw) > _MAX_PRICES_BYTES:
            raise ValueError(f"over {_MAX_PRICES_BYTES} bytes")
        return load_price_table(json.loads(raw))
    except (OSError, ValueError) as exc:  # PriceTableError and JSONDecodeError are ValueErrors
        raise ValueError(f"AVA_PRICES_FILE {path}: {exc}") from exc


class IceServer(BaseModel):
    """One STUN/TURN server, as the browser's `RTCIceServer` and aiortc's take it."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: str | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_url(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


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
    # The server's secret: hashes API keys, seals secrets at rest, signs stream tokens. Required
    # outside dev mode; in dev mode, empty: a key generated once beside the SQLite database.
    secret_key: SecretStr = SecretStr("")
    stream_token_ttl_seconds: float = Field(default=60, gt=0)
    # An inbound call's `assistant-request` webhook must answer within this (Vapi: 7.5 s fixed;
    # Twilio gives the voice webhook 15 s).
    assistant_request_timeout_seconds: float = Field(default=7.5, gt=0, le=14)
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
    # Shed new calls while the event loop's median lag over 2 s is at least this (ms); take them
    # again once it has stayed under half of it for 5 s (control/loop_lag.py). 0: never shed.
    shed_loop_lag_ms: float = Field(default=60, ge=0, le=10_000)
    drain_seconds: float = Field(default=30, ge=0)
    log_level: str = Field(default="INFO", pattern="^(?i:debug|info|warning|error|critical)$")
    # json | text | auto (text on a terminal, JSON otherwise: containers, systemd, log shippers)
    log_format: str = Field(default="auto", pattern="^(auto|json|text)$")

    # Operations: /metrics, request limits, per-API-key rate limits (control/middleware.py).
    # Empty: /metrics is open in dev mode and refused (403) otherwise.
    metrics_token: SecretStr = SecretStr("")
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # A token bucket per API key: refills at this rate, holds `burst`. 0: no limit.
    rate_limit_per_second: float = Field(default=25, ge=0)
    rate_limit_burst: int = Field(default=100, ge=1)
    # redis://host:6379/0: rate-limit buckets, call slots and the node registry shared by every
    # process. Empty: one process alone (required for several processes on one database).
    redis_url: str = ""
    # This process in the cluster (control/orphans.py). Empty: host-pid-random, new per start.
    node_id: str = Field(default="", max_length=128)
    # How often each node looks for scheduled calls that are due (POST /call schedulePlan).
    scheduler_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Heartbeat period, and how long after the last one a node counts as dead (its calls are
    # closed by a survivor within ttl + heartbeat).
    node_heartbeat_seconds: float = Field(default=5.0, gt=0)
    node_ttl_seconds: float = Field(default=15.0, gt=0)
    # How long POST /call/{id}/control waits for the node holding the call to answer (through
    # Redis) before it says the node is not answering: the API's answer stays within ~1 s.
    control_timeout_seconds: float = Field(default=0.8, gt=0, le=10)

    # Browser calls (WebRTC, control/webrtc_routes.py). ICE servers for aiortc and the page, as
    # JSON; empty: none (host candidates only, no public STUN lookups).
    webrtc_ice_servers: list[IceServer] = Field(default_factory=list)
    webrtc_max_calls_per_tenant: int = Field(default=5, ge=1)
    webrtc_token_ttl_seconds: float = Field(default=300, gt=0)
    # ICE and DTLS must be up this long after the answer, or the peer connection is closed.
    webrtc_connect_timeout_seconds: float = Field(default=15, gt=0)

    # --- the tenant boundary (issue 9) ---------------------------------------------------------
    # Hosts and CIDRs a tenant-supplied URL (server, tools, assistant-request, custom-llm) may
    # reach although they are loopback/private/link-local/CGNAT/multicast/metadata addresses,
    # comma-separated: "10.0.0.0/8,hooks.internal". Dev mode (no Twilio token) allows loopback.
    egress_allow: str = ""
    # Largest response body read from a tenant's server (webhooks, tools, assistant-request).
    max_response_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Whether tenants' assistants may use the operator's provider keys (DEEPGRAM_API_KEY, …,
    # only with the operator's base URLs). None: yes in single-tenant setups (at most one
    # tenant), no otherwise; set it to decide explicitly.
    tenants_use_operator_keys: bool | None = None
    # Calls to a number no tenant owns: "reject" (spoken TwiML, recorded nowhere) or
    # "assistant-file" (answered by --assistant/AVA_ASSISTANT_FILE, the single-tenant setup).
    # Empty: "assistant-file" in dev mode, "reject" otherwise.
    unknown_numbers: str = Field(default="", pattern="^(|reject|assistant-file)$")
    # Concurrent calls per tenant (phone and web), unless the tenant has its own limit.
    # Counted in Redis across processes when AVA_REDIS_URL is set.
    tenant_max_calls: int = Field(default=20, ge=1)
    # Audio a media stream may send ahead of real time before it is closed (1008).
    media_burst_seconds: float = Field(default=2.0, gt=0)
    # Webhook delivery (control/webhooks.py): attempts per message and the per-destination
    # breaker (consecutive failures before it opens, seconds it stays open).
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_breaker_failures: int = Field(default=5, ge=1)
    webhook_breaker_seconds: float = Field(default=30, gt=0)
    # Prices a call's costs[] is computed with: a JSON file merged over the shipped list prices
    # (voice/data/prices.json, same shape); empty: the shipped prices alone.
    prices_file: Path | None = None
    # OpenAI-compatible LLM providers with their own hosts (control/providers.py): a tenant's
    # credential for the provider, or the operator's key below, is sent only to these URLs.
    groq_base_url: str = Field(
        default="https://api.groq.com/openai/v1",
        validation_alias=AliasChoices("GROQ_BASE_URL", "AVA_GROQ_BASE_URL"),
    )
    groq_api_key: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("GROQ_API_KEY", "AVA_GROQ_API_KEY")
    )
    together_base_url: str = Field(
        default="https://api.together.xyz/v1",
        validation_alias=AliasChoices("TOGETHER_BASE_URL", "AVA_TOGETHER_BASE_URL"),
    )
    together_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("TOGETHER_API_KEY", "AVA_TOGETHER_API_KEY"),
    )
    deepinfra_base_url: str = Field(
        default="https://api.deepinfra.com/v1/openai",
        validation_alias=AliasChoices("DEEPINFRA_BASE_URL", "AVA_DEEPINFRA_BASE_URL"),
    )
    deepinfra_api_key: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("DEEPINFRA_API_KEY", "AVA_DEEPINFRA_API_KEY"),
    )

    # Call recordings (control/recordings.py). Spooled under data_dir/recordings/spool while
    # the call runs, then kept in the store: "local" (data_dir/recordings) or "s3" (any
    # S3-compatible object store: endpoint, bucket, region, credentials, key prefix).
    recording_store: str = Field(default="local", pattern="^(local|s3)$")
    recording_s3_endpoint_url: str = ""  # empty: AWS's own endpoint for the region
    recording_s3_bucket: str = ""
    recording_s3_region: str = ""
    recording_s3_access_key_id: str = ""  # empty: boto3's usual credential chain
    recording_s3_secret_access_key: SecretStr = SecretStr("")
    recording_s3_prefix: str = Field(default="recordings/", max_length=256)
    # Lifetime of the signed download URLs a call shows (presigned*Url, ?token=).
    recording_url_ttl_seconds: float = Field(default=3600, gt=0, le=7 * 86400)
    # Days a recording is kept unless its tenant sets its own; empty: kept for ever (at most
    # 100 years: the purge's date arithmetic overflows far beyond).
    recording_retention_days: int | None = Field(default=None, ge=1, le=36_500)
    recording_purge_interval_seconds: float = Field(default=3600, gt=0)
    # monitor.listenUrl (control/listen.py): the lifetime of a signed ?token= listen URL, and
    # the audio a listener may fall behind by before it is dropped.
    listen_token_ttl_seconds: float = Field(default=300, gt=0, le=86400)
    listen_buffer_seconds: float = Field(default=2.0, ge=0.2, le=30)

    # E-mail call summaries (notificationPlan.email: control/email_summaries.py) go out through
    # the operator's SMTP server: smtp://user:password@host:587 (STARTTLS as smtp_starttls
    # says) or smtps://user:password@host:465 (TLS from the start). Empty: no e-mail is sent.
    smtp_url: SecretStr = SecretStr("")
    smtp_from: str = ""  # the sender address (required with smtp_url)
    # auto: upgrade when the server offers STARTTLS; required: refuse a server that does not;
    # off: never (a relay on localhost).
    smtp_starttls: Literal["auto", "required", "off"] = "auto"
    smtp_timeout_seconds: float = Field(default=30, gt=0, le=300)
    # The recording link in an e-mail is signed for this long (a mail is read later than a page).
    email_recording_url_ttl_seconds: float = Field(default=7 * 86400, gt=0, le=7 * 86400)

    twilio_account_sid: str = Field(
        default="", validation_alias=AliasChoices("TWILIO_ACCOUNT_SID", "AVA_TWILIO_ACCOUNT_SID")
    )
    twilio_auth_token: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=AliasChoices("TWILIO_AUTH_TOKEN", "AVA_TWILIO_AUTH_TOKEN"),
    )
    # Twilio's REST API (outbound calls, hang-ups, number configuration). None: the twilio SDK's
    # own hosts (https://api.twilio.com, …); set it to reach a proxy or a fake.
    twilio_api_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TWILIO_API_BASE_URL", "AVA_TWILIO_API_BASE_URL"),
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

    @field_validator("egress_allow")
    @classmethod
    def _egress_entries(cls, value: str) -> str:
        EgressPolicy(value)  # a bad entry stops the server at startup, naming it
        return value

    @field_validator("prices_file")
    @classmethod
    def _prices_valid(cls, path: Path | None) -> Path | None:
        read_price_table(path)  # a bad entry stops the server at startup, naming it
        return path

    @model_validator(mode="after")
    def _s3_bucket_given(self) -> Settings:
        if self.recording_store == "s3" and not self.recording_s3_bucket:
            raise ValueError("AVA_RECORDING_STORE=s3 needs AVA_RECORDING_S3_BUCKET")
        return self

    # AVA_SMTP_URL is checked by control.email_summaries.smtp_server at startup: it holds a
    # password, and pydantic's errors show the input.
    @field_validator("smtp_from")
    @classmethod
    def _sender_address(cls, value: str) -> str:
        return check_address(value) if value else value

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> Settings:
        if self.node_heartbeat_seconds >= self.node_ttl_seconds:
            raise ValueError("AVA_NODE_HEARTBEAT_SECONDS must be less than AVA_NODE_TTL_SECONDS")
        return self

    @property
    def dev_mode(self) -> bool:
        """No Twilio credentials: webhooks and streams are not signature-checked."""
        return not self.twilio_auth_token.get_secret_value()

    def price_table(self) -> PriceTable:
        """The shipped list prices with AVA_PRICES_FILE's entries merged over them."""
        return read_price_table(self.prices_file)

    def resolved_database_url(self) -> str:
        return self.database_url or default_sqlite_url(self.data_dir)

    def server_key(self) -> ServerKey:
        """The server's secret: AVA_SECRET_KEY, or in dev mode a key kept beside the SQLite
        database (storage/keys.py). Raises SecretKeyMissing outside dev mode without it."""
        return resolve_server_key(
            self.secret_key.get_secret_value(), self.resolved_database_url(), dev_mode=self.dev_mode
        )

    def signing_key(self) -> bytes:
        """Signs stream tokens: derived from the server's secret, never a key of this process
        alone, so a token issued by one process verifies in every other on the database."""
        return stream_signing_key(self.server_key().value)
