"""Worker settings, read once from REPAINT_* environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import redis_url, run_file
from .acks import Ack, AckMode


class WorkerSettings(BaseSettings):
    # hide_input_in_errors: a refused setting must not echo API keys or secrets into the log.
    model_config = SettingsConfigDict(env_prefix="REPAINT_", extra="ignore", hide_input_in_errors=True)

    redis_url: str = Field(default_factory=run_file.default_redis_url, description=(
        "Redis shared with the API: redis://, rediss://, unix:// or "
        "redis+sentinel://host:26379,.../<service>/<db> (Sentinel); default: a running repaint serve's "
        "embedded Redis (worker/run_file.py), else redis://127.0.0.1:6379/0"))

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_readable(cls, value: str) -> str:
        redis_url.check(value)  # a RedisUrlError (ValueError) names what is wrong, never the password
        return value
    model: str = Field("faces32", description="the model this worker serves: a preset name, the path of a "
                       "diffusers model folder, or name=path (the name the API and jobs use)")
    checkpoint: str | None = Field(None, description="path of the preset's UNet weights (not for diffusers folders: "
                                   "their weights are in the folder)")
    classifier_checkpoint: str | None = Field(None, description="noisy classifier weights (imagenet256)")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="the UNet's weights. 'auto': float16 in the reference's layout on CUDA for confs with "
        "use_fp16, else float32; float16/bfloat16 are the reference's layout (torso convolutions only)")
    channels_last: bool = Field(False, description="channels-last memory format for the UNet (off by default: "
                                "measured slower on an H200, docs/gpu.md)")
    max_batch: int | None = Field(None, ge=1, description="samples in flight per forward pass "
                                  "(default: 8 on CPU, 16 on CUDA); 1 disables batching")
    autocast: Literal["auto", "none", "float16", "bfloat16"] = Field(
        "auto", description="run the UNet under torch.autocast with this dtype. 'auto': bfloat16 on CUDA when the "
        "weights are float32 (float16 on GPUs without bfloat16), none on CPU; 'none' for exact float32")
    batch_buckets: str = Field("auto", description="batch sizes forward passes are padded to, so that compiled "
                               "and CUDA graphs are reused: 'auto' (1,2,4,... up to max_batch on CUDA; off on CPU), "
                               "'off', or sizes such as '1,2,4,8,16'")
    cuda_graphs: bool | None = Field(None, description="replay captured CUDA graphs of the UNet, one per batch "
                                     "bucket: fewer kernel launches per pass (default: on for CUDA)")
    torch_threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: torch's)")
    compile: bool | None = Field(None, description="torch.compile the UNet in the background while the eager "
                                 "one serves (default: on for CUDA, off on CPU)")
    result_ttl: int = Field(24 * 3600, ge=60, description="seconds results and finished jobs are kept")
    ack: AckMode = Field(AckMode.MEMORY, description="the acknowledgement mode the API runs with "
                         "(REPAINT_ACK): the worker refuses to start where Redis cannot give it, and confirms each "
                         "final status so before the job's clients and webhooks are told it")
    ack_timeout: float = Field(5.0, gt=0, le=20, description="seconds a final status waits for its acknowledgement "
                               "before the worker retries it")
    ack_replicas: int = Field(1, ge=1, description="replica mode: replicas that must have a write before it counts")

    def acknowledgement(self) -> Ack:
        return Ack(mode=self.ack, timeout=self.ack_timeout, replicas=self.ack_replicas)
    progress_interval: float = Field(0.5, gt=0, le=1.0, description="seconds between progress writes")
    heartbeat_ttl: int = Field(30, ge=10, description="seconds without a heartbeat before a worker's jobs "
                               "count as abandoned and are handed to another worker")
    stall_timeout: float = Field(120.0, ge=1, description="seconds one forward pass may take (at least 20 "
                                 "measured passes) before the worker stops heartbeating its jobs so that "
                                 "they are reaped and run elsewhere; stuck twice as long, the worker exits")
    max_pass_failures: int = Field(3, ge=1, description="forward passes failing in a row (not out of memory) "
                                   "before the worker declares itself defunct and exits")
    shutdown_grace: float = Field(50.0, ge=0, description="seconds a SIGTERMed worker keeps finishing its jobs "
                                  "before it puts the rest back in the queue")
    preview_interval: float = Field(3.0, gt=0, description="seconds between preview images of a running job")
    webhook_secret: str = Field("", description="shared secret that signs webhook bodies (HMAC-SHA256); "
                                "webhooks are off without one")
    webhook_allowed_hosts: str = Field("", description="comma-separated hosts webhooks may call: 'host' (its "
                                       "default port), 'host:port', or '*' (any public host)")
    webhook_max_attempts: int = Field(6, ge=1, description="attempts per webhook event (progress: always one)")
    webhook_retry_window: float = Field(600.0, gt=0, description="seconds after an event's first attempt "
                                        "within which retries may start")
    webhook_timeout: float = Field(10.0, gt=0, description="seconds one delivery attempt may take in all")
    worker_name: str | None = Field(None, description="RQ worker name (default: host and pid)")
    log_level: str = "INFO"

    @field_validator("checkpoint", "classifier_checkpoint", "worker_name", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        # docker-compose passes unset variables as empty strings
        return None if value == "" else value

    @field_validator("cuda_graphs", "compile", mode="before")
    @classmethod
    def _auto_is_unset(cls, value):
        """'auto' (what the docs call the default) and '' mean: the device decides (None)."""
        return None if isinstance(value, str) and value.strip().lower() in ("", "auto") else value

    @field_validator("dtype", "autocast", "batch_buckets", mode="before")
    @classmethod
    def _empty_is_auto(cls, value):
        return "auto" if value == "" else value

    @field_validator("channels_last", mode="before")
    @classmethod
    def _empty_is_off(cls, value):
        return False if value == "" else value
