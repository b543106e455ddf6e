"""The engine every loop runs on (training, retraining, fine-tuning, unlearning) and its hooks."""

from scu_jax.engine.blocks import EpochsOutput
from scu_jax.engine.blocks import Phase
from scu_jax.engine.blocks import all_finite
from scu_jax.engine.blocks import epoch_summary
from scu_jax.engine.blocks import epochs_program
from scu_jax.engine.blocks import make_block
from scu_jax.engine.blocks import make_epochs
from scu_jax.engine.hooks import BlockResult
from scu_jax.engine.hooks import EpochResult
from scu_jax.engine.hooks import Hook
from scu_jax.engine.hooks import MetricWriter
from scu_jax.engine.hooks import ReportProgress
from scu_jax.engine.hooks import WriteSummaries
from scu_jax.engine.loop import Report
from scu_jax.engine.loop import run
from scu_jax.engine.many import run_many

__all__ = (
    "BlockResult",
    "EpochResult",
    "EpochsOutput",
    "Hook",
    "MetricWriter",
    "Phase",
    "Report",
    "ReportProgress",
    "WriteSummaries",
    "all_finite",
    "epoch_summary",
    "epochs_program",
    "make_block",
    "make_epochs",
    "run",
    "run_many",
)
