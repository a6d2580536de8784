"""River-valley lab: a synthetic bigram language behind WSD, WSD-S and weight averaging.

Wen et al. 2024 ("Understanding warmup-stable-decay learning rates: a river valley loss
landscape perspective") argue that the LM pretraining loss is a river valley: at a high constant
LR the iterate oscillates across the valley ("mountain" directions) while it moves along the
river; a learning-rate decay removes the oscillation and reveals the progress made. They trace
the landscape to data whose next-token uncertainty varies across contexts. This package builds
such data and measures the picture:

* ``make_chain``: a Markov chain over V tokens where a share of contexts has one dominant
  successor (low uncertainty) and the others a Dirichlet successor distribution (high
  uncertainty). Its conditional entropy (the Bayes loss) is exact, so every loss is reported as
  the excess over it, in nats, split by context type.
* ``sample_tokens``: token sequences drawn from the chain (stationary start), in JAX.
* ``bigram_model`` (a V x V logits table, whose population loss is exact) and
  ``transformer_model`` (``anytime.lm.model`` on pure-dict params).
* ``run_lab``: one command that trains constant, cosine (one run per budget), WSD (decay branches
  of the constant run at every budget), WSD-S, cyclic cosine, constant + averages and
  1/sqrt + averages on the same data stream, with diagnostics: distances between the raw
  iterate, its averages and its decayed branch; the loss along the straight line between them;
  the top Hessian eigenvalue over time (``top_hessian_eigenpair``, power iteration on
  Hessian-vector products); the trajectory projected on the river direction (difference of
  successive decayed checkpoints) and the top Hessian direction. Writes CSV/JSON + PNG.

Run: ``python -m anytime.theory.river_valley --config configs/river_valley.py --workdir DIR``.

Modules: ``chain`` (the language, its Bayes loss, a sampler), ``models`` (bigram table and
the ``anytime.lm.model`` transformer), ``training`` (optax + ``anytime.averaging`` steps),
``diagnostics`` (Hessian, valley cross-sections, river projection), ``plots``, ``lab``
(``run_lab``: every schedule end to end).

References:
  Wen et al. 2024, arXiv 2410.05192 (river valley, WSD-S).
  Meterez et al. 2026, arXiv 2602.03702 (anytime schedules with weight averaging).
  Hägele et al. 2024 (WSD decay branches); Loshchilov & Hutter 2017 (cyclic cosine).
"""

from anytime.theory.river_valley.chain import (BigramChain, chain_from_transition,
                                               conditional_entropy, context_entropies,
                                               make_chain, make_sampler, sample_tokens,
                                               stationary_distribution)
from anytime.theory.river_valley.diagnostics import (jit_over_copies, lab_diagnostics,
                                                     top_hessian_eigenpair)
from anytime.theory.river_valley.lab import RUN_NAMES, run_lab, train_all, validate_config
from anytime.theory.river_valley.models import (METRIC_NAMES, LabModel, bigram_model,
                                                bigram_population_metrics, make_model,
                                                transformer_model)
from anytime.theory.river_valley.plots import plot_all
from anytime.theory.river_valley.training import (LabSteps, OptimizerSettings, RunRecord,
                                                  build_steps, lab_transform, make_averages,
                                                  train_run)
