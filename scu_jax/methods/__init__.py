"""The methods: training (the recipe every training-style run uses), SCU, its ablation and the
unlearning baselines, as factories with explicit hyper-parameters (optax style).

Erased-data methods (`scu`, `scu_no_cc`, `vbu`, `hbu`) return a `Method(init, step)` that
`erased.unlearning_phase` turns into the engine's phase; `finetune` is the training recipe's codec
phase on D_r; retraining is the training recipe from scratch on D_r (`runs/unlearn.py`). The
field's baselines: `ssd` (Selective Synaptic Dampening, one pass), `salun` (a saliency-masked
erased-data method; `saliency`, `saliency_mask`), and ℓ1-sparse fine-tuning (`l1_sparse`, the
`l1_penalty` optax transformation).
"""

from scu_jax.methods.base import Batch
from scu_jax.methods.base import CodecObjective
from scu_jax.methods.base import Method
from scu_jax.methods.base import StepMetrics
from scu_jax.methods.base import UnlearnState
from scu_jax.methods.base import forget_term
from scu_jax.methods.base import gradient_method
from scu_jax.methods.base import make_optimizer
from scu_jax.methods.erased import unlearning_phase
from scu_jax.methods.finetune import finetune
from scu_jax.methods.finetune import l1_sparse
from scu_jax.methods.hbu import hbu
from scu_jax.methods.hbu import hessian_vector_product
from scu_jax.methods.hbu import hutchinson_diagonal
from scu_jax.methods.salun import saliency
from scu_jax.methods.salun import saliency_mask
from scu_jax.methods.salun import salun
from scu_jax.methods.scu import scu
from scu_jax.methods.scu import scu_no_cc
from scu_jax.methods.sparse import l1_penalty
from scu_jax.methods.ssd import SSD
from scu_jax.methods.ssd import ssd
from scu_jax.methods.training import Examples
from scu_jax.methods.training import Recipe
from scu_jax.methods.training import TrainMetrics
from scu_jax.methods.training import TrainState
from scu_jax.methods.vbu import vbu

__all__ = (
    "Batch",
    "CodecObjective",
    "Examples",
    "Method",
    "Recipe",
    "SSD",
    "StepMetrics",
    "TrainMetrics",
    "TrainState",
    "UnlearnState",
    "finetune",
    "forget_term",
    "gradient_method",
    "hbu",
    "hessian_vector_product",
    "hutchinson_diagonal",
    "l1_penalty",
    "l1_sparse",
    "make_optimizer",
    "saliency",
    "saliency_mask",
    "salun",
    "scu",
    "scu_no_cc",
    "ssd",
    "unlearning_phase",
    "vbu",
)
