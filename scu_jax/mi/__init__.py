"""Mutual-information estimates of I(x; z) between inputs and encoder latents, in nats.

SCU reports how much the encoder's latent `z` still tells about its input `x` on the erased data
D_e and the remaining data D_r, before and after unlearning. Three estimates are provided, all in
nats (natural logarithm):

* MINE (Belghazi et al., 2018), `mine.py`: a Donsker-Varadhan lower bound maximised over a
  statistics network `T(x, z)`, trained with the paper's moving-average gradient correction.
* InfoNCE (van den Oord et al., 2018; Poole et al., 2019), `infonce.py`: a contrastive lower bound
  with a separable critic `f(x, z) = g(x)ᵀ h(z)`; it can never exceed `log B` for B contrasted
  pairs.
* The variational upper bound `E_x KL(q(z|x) ‖ N(0, I))` read directly off a Gaussian encoder,
  `variational.py`.

`x` are flattened inputs (N, n_x) and `z` latents (N, d). Every step is a pure function;
`mine_fit` / `infonce_fit` fuse many steps into one dispatch with `jax.lax.scan`, state donated.
The `estimate_*` helpers (`estimate.py`) are deterministic for a given key. The critics live in
`critics.py`.

References:
  Belghazi et al., "Mutual Information Neural Estimation", ICML 2018.
  van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018.
  Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
"""

from scu_jax.mi.critics import MLP
from scu_jax.mi.critics import MineCritic
from scu_jax.mi.critics import SeparableCritic
from scu_jax.mi.estimate import estimate_infonce
from scu_jax.mi.estimate import estimate_mine
from scu_jax.mi.infonce import InfoNCEState
from scu_jax.mi.infonce import infonce_bound
from scu_jax.mi.infonce import infonce_fit
from scu_jax.mi.infonce import infonce_init
from scu_jax.mi.infonce import infonce_lower_bound
from scu_jax.mi.infonce import infonce_step
from scu_jax.mi.mine import MineState
from scu_jax.mi.mine import mine_fit
from scu_jax.mi.mine import mine_init
from scu_jax.mi.mine import mine_lower_bound
from scu_jax.mi.mine import mine_step
from scu_jax.mi.variational import variational_upper_bound

__all__ = (
    "InfoNCEState",
    "MLP",
    "MineCritic",
    "MineState",
    "SeparableCritic",
    "estimate_infonce",
    "estimate_mine",
    "infonce_bound",
    "infonce_fit",
    "infonce_init",
    "infonce_lower_bound",
    "infonce_step",
    "mine_fit",
    "mine_init",
    "mine_lower_bound",
    "mine_step",
    "variational_upper_bound",
)
