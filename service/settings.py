"""API settings, read once from REPAINT_* environment variables."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.registry import parse_model_refs


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPAINT_", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis shared with the workers")
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
    api_keys: str = Field("", description="comma-separated bearer keys; empty = no authentication")
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

    @property
    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]
