"""The token-budget continuous-batching scheduler and its per-step output record."""

from jaxllm.scheduler.output import ScheduledRequest, SchedulerOutput
from jaxllm.scheduler.scheduler import Scheduler

__all__ = ["ScheduledRequest", "Scheduler", "SchedulerOutput"]
