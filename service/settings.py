"""API settings, read once from REPAINT_* environment variables."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.registry import parse_model_refs
from worker import redis_url, run_file
from worker.acks import Ack, AckMode

from .tenancy import Keyring


class ApiSettings(BaseSettings):
    # hide_input_in_errors: a refused setting must not echo API keys or secrets into the log.
    model_config = SettingsConfigDict(env_prefix="REPAINT_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = Field(default_factory=run_file.default_redis_url, description=(
        "Redis shared with the workers: redis://, rediss://, unix:// or "
        "redis+sentinel://host:26379,.../<service>/<db> (Sentinel); default: a running repaint serve's "
        "embedded Redis (worker/run_file.py), else redis://127.0.0.1:6379/0"))

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_readable(cls, value: str) -> str:
        redis_url.check(value)  # a RedisUrlError (ValueError) names what is wrong, never the password
        return value
    model: str = Field("faces32", description="default model for POST /inpaint: a preset name, the path of a "
                       "diffusers model folder, or name=path")
    models: str = Field("", description="comma-separated further models to accept jobs for, whether or not "
                        "a worker is live (presets: celeba256, places256, imagenet256, faces32, tiny; "
                        "diffusers folders as paths or name=path)")
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest accepted upload, per file")
    body_timeout: float = Field(30.0, gt=0, description="seconds a request body may go without a byte "
                                "before the request is refused with 408")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest accepted width x height")
    max_num_samples: int = Field(8, ge=1, description="largest num_samples per job")
    max_evaluations: int = Field(50_000, ge=1, description="largest network evaluations per sample")
    input_ttl: int = Field(24 * 3600, ge=60, description="seconds an upload waits for a worker")
    result_ttl: int = Field(24 * 3600, ge=60, description="seconds results and finished jobs are kept")
    job_timeout: int | None = Field(None, ge=1, description="fixed RQ job timeout in seconds; "
                                    "default: derived from the job's evaluations and measured speed")
    seconds_per_pass: float = Field(
        0.5, gt=0, description="assumed seconds per batched forward pass before a worker has measured one "
        "(derived job timeouts)")
    min_job_timeout: int = Field(600, ge=1, description="floor of the derived job timeout")
    max_attempts: int = Field(3, ge=1, description="attempts a job may lose to lost workers or infrastructure "
                              "errors before it fails")
    max_queue_length: int = Field(200, ge=1, description="queued jobs per model before POST /inpaint answers 429")
    idempotency_ttl: int = Field(24 * 3600, ge=60, description="seconds an Idempotency-Key is remembered")
    webhook_allowed_hosts: str = Field("", description="comma-separated hosts webhooks may call: 'host' (its "
                                       "default port), 'host:port', or '*' (any public host); empty disables "
                                       "webhooks")
    webhook_secret: str = Field("", description="the workers' signing secret; webhooks are off without one")
    api_keys: str = Field("", description="comma-separated API keys as name:key (a bare key is named key-<digest>); "
                          "each name is a tenant that sees only its own jobs; empty = no authentication, one tenant")
    admin_keys: str = Field("", description="comma-separated key names that may see and cancel every tenant's jobs")
    tenant_weights: str = Field("", description="comma-separated name=weight: a tenant's share of the workers "
                                "relative to others with waiting work (default 1)")
    tenant_max_queued: int = Field(100, ge=1, description="waiting jobs per tenant (all models) before POST "
                                   "/inpaint answers 429")
    tenant_max_running: int = Field(0, ge=0, description="samples of one tenant running at once across all "
                                    "workers; further jobs of that tenant wait (0 = no limit: fair order only)")
    redis_max_connections: int = Field(32, ge=2, description="Redis connections per API process for requests "
                                       "(a request waits for a free one); SSE streams share one more")
    events_redis_connections: int = Field(4, ge=1, le=64, description="Redis connections per API process that "
                                          "read job event streams for SSE (a replay after Last-Event-ID, the "
                                          "latest id), besides the one pub/sub connection all streams share")
    ack: AckMode = Field(AckMode.MEMORY, description="what 202 (and a final status) promises: 'memory' (the job "
                         "is in Redis's memory; a crash of Redis's host may lose about the last second), 'disk' "
                         "(fsynced to Redis's append-only file, WAITAOF: Redis >= 7.2 or Valkey) or 'replica' (on "
                         "REPAINT_ACK_REPLICAS replicas, WAIT: survives a failover)")
    ack_replicas: int = Field(1, ge=1, description="replica mode: replicas that must have a write before it counts")
    ack_timeout: float = Field(5.0, gt=0, le=8, description="seconds POST /inpaint waits for the acknowledgement "
                               "REPAINT_ACK asks for before it answers 503 (the job may exist: retry with the "
                               "same Idempotency-Key)")
    max_event_streams: int = Field(2000, ge=1, description="open SSE streams per API process; beyond it "
                                   "GET /jobs/<id>/events answers 503 with Retry-After")
    redis_admit_fraction: float = Field(0.85, gt=0, le=1, description="share of Redis's maxmemory that queued "
                                        "inputs and the reserved results of accepted jobs may fill; beyond it "
                                        "POST /inpaint answers 507")
    pixel_budget: int = Field(100_000_000, ge=1, description="image pixels (image + mask) decoded at once by "
                              "one API process; requests beyond it wait")
    pixel_budget_wait: float = Field(10.0, ge=0, description="seconds a request waits for the pixel budget "
                                     "before a 503 with Retry-After")
    metrics_require_key: bool = Field(False, description="whether /metrics also needs an API key")

    @model_validator(mode="after")
    def _models_parse(self) -> "ApiSettings":
        # A typo in a model list stops the API at start, with the reason, not at the first request.
        parse_model_refs(self.model, self.models)
        return self

    @property
    def default_model(self) -> str:
        """The name of the default model (REPAINT_MODEL may be a folder path)."""
        return parse_model_refs(self.model, "")[0].name

    @model_validator(mode="after")
    def _tenancy_parses(self) -> "ApiSettings":
        self.keyring()  # a malformed key list stops the API at start, with the reason
        if self.pixel_budget < 2 * self.max_image_pixels:
            # An upload the size limits accept must fit the budget (its image and its mask).
            raise ValueError(f"REPAINT_PIXEL_BUDGET ({self.pixel_budget}) must be at least twice "
                             f"REPAINT_MAX_IMAGE_PIXELS ({self.max_image_pixels})")
        return self

    def acknowledgement(self) -> Ack:
        return Ack(mode=self.ack, timeout=self.ack_timeout, replicas=self.ack_replicas)

    def keyring(self) -> Keyring:
        return Keyring(self.api_keys, self.admin_keys, self.tenant_weights)
