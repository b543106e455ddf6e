"""The engine every loop runs on (training, retraining, fine-tuning, unlearning) and its hooks."""

from scu_jax.engine.hooks import BlockResult
from scu_jax.engine.hooks import EpochResult
from scu_jax.engine.hooks import Hook
from scu_jax.engine.hooks import MetricWriter
from scu_jax.engine.hooks import ReportProgress
from scu_jax.engine.hooks import WriteSummaries
from scu_jax.engine.loop import Phase
from scu_jax.engine.loop import Report
from scu_jax.engine.loop import all_finite
from scu_jax.engine.loop import make_block
from scu_jax.engine.loop import run

__all__ = (
    "BlockResult",
    "EpochResult",
    "Hook",
    "MetricWriter",
    "Phase",
    "Report",
    "ReportProgress",
    "WriteSummaries",
    "all_finite",
    "make_block",
    "run",
)
