"""Unlearning methods: SCU, its ablation and the baselines (spec §5, §6).

Erased-data methods (`scu`, `scu_no_cc`, `vbu`, `hbu`) are factories returning an
`UnlearningMethod(init, step)` run by the shared loop in `loop.py`; `finetune` and `retrain` return a
`TrainingMethod` run by the training recipe on D_r.
"""

from scu_jax.methods.base import Batch
from scu_jax.methods.base import StepMetrics
from scu_jax.methods.base import TrainingMethod
from scu_jax.methods.base import UnlearnState
from scu_jax.methods.base import UnlearningMethod
from scu_jax.methods.finetune import finetune
from scu_jax.methods.hbu import hbu
from scu_jax.methods.hbu import hessian_vector_product
from scu_jax.methods.hbu import hutchinson_diagonal
from scu_jax.engine.loop import run_erased_loop
from scu_jax.methods.retrain import retrain
from scu_jax.methods.scu import scu
from scu_jax.methods.scu import scu_no_cc
from scu_jax.methods.vbu import vbu

from scu_jax.config import METHODS

ERASED_LOOP_METHODS = {"scu": scu, "scu_no_cc": scu_no_cc, "vbu": vbu, "hbu": hbu}
TRAINING_METHODS = {"finetune": finetune, "retrain": retrain}

__all__ = (
    "Batch",
    "ERASED_LOOP_METHODS",
    "METHODS",
    "StepMetrics",
    "TRAINING_METHODS",
    "TrainingMethod",
    "UnlearnState",
    "UnlearningMethod",
    "finetune",
    "hbu",
    "hessian_vector_product",
    "hutchinson_diagonal",
    "retrain",
    "run_erased_loop",
    "scu",
    "scu_no_cc",
    "vbu",
)
