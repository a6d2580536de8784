"""Diagnostics of the river-valley lab: sharpness, valley cross-sections, river projection.

``top_hessian_eigenpair`` measures sharpness by power iteration on Hessian-vector products;
``lab_diagnostics`` measures, at every budget, the distances between the raw iterate, its
average and its decayed branch, the loss along the straight lines between them (a valley
cross-section) and the trajectory projected on the river direction (difference of successive
decayed checkpoints) and the top Hessian (mountain) direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from anytime import averaging, parallel
from anytime.theory._checks import integer
from anytime.theory.river_valley.models import METRIC_NAMES, LabModel, Params

jit_over_copies = parallel.jit_over_copies


def top_hessian_eigenpair(
    loss_fn: Callable[[Params], jax.Array],
    params: Params,
    *,
    num_iterations: int = 50,
    seed: int = 0,
    scale: Params | None = None,
) -> tuple[jax.Array, Params]:
  """Top Hessian eigenvalue of ``loss_fn`` at ``params`` and its unit eigenvector (a tree).

  Power iteration on Hessian-vector products (forward-over-reverse, never forming H); the value
  is the Rayleigh quotient of the last iterate. It finds the eigenvalue of largest magnitude:
  the top one for a convex loss (the bigram model's), possibly a negative one otherwise.
  With ``scale`` (a params-shaped tree d > 0) it is the top eigenpair of diag(d) H diag(d): with
  d = (sqrt(nu_hat) + eps)^(-1/2) Adam's preconditioned sharpness, whose stability threshold at
  learning rate lr is (2 + 2 b1) / ((1 - b1) lr) (Cohen et al. 2022, "Adaptive gradient methods
  at the edge of stability"). Jit-able; ``loss_fn`` is static.
  """
  num_iterations = integer("num_iterations", num_iterations)
  flat, unravel = ravel_pytree(params)
  flat = flat.astype(jnp.float32)
  d = 1.0 if scale is None else ravel_pytree(scale)[0].astype(jnp.float32)

  def hvp(v):
    tangent = unravel(d * v)
    return d * ravel_pytree(jax.jvp(jax.grad(loss_fn), (unravel(flat),), (tangent,))[1])[0]

  v0 = jax.random.normal(jax.random.key(seed), flat.shape, jnp.float32)
  v0 = v0 / jnp.linalg.norm(v0)

  def body(_, carry):
    v, _ = carry
    hv = hvp(v)
    value = v @ hv
    return hv / jnp.maximum(jnp.linalg.norm(hv), 1e-30), value

  v, _ = jax.lax.fori_loop(0, num_iterations, body, (v0, jnp.float32(0)))
  value = v @ hvp(v)
  return value, unravel(v)



def _f32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def line_metrics(metrics_along: Callable, start_P: jax.Array, end_P: jax.Array,
                 alphas: np.ndarray) -> dict[str, np.ndarray]:
  """``metrics_along`` (flat params [A, P] -> metrics [A]) at start + alpha (end - start)."""
  line = start_P[None] + jnp.asarray(alphas, jnp.float32)[:, None] * (end_P - start_P)[None]
  return jax.device_get(metrics_along(line))


def _budget_row(b, model, hessian, unravel, flat, ref) -> dict[str, Any]:
  canon = {n: ravel_pytree(model.canonical(unravel(v)))[0] for n, v in flat.items()}
  eigs = {n: float(hessian(unravel(v))[0]) for n, v in flat.items()}
  return {
      "budget": b,
      "distance_raw_to_wsd": float(jnp.linalg.norm(canon["raw"] - canon["wsd"])),
      f"distance_raw_to_{ref}": float(jnp.linalg.norm(canon["raw"] - canon[ref])),
      f"distance_{ref}_to_wsd": float(jnp.linalg.norm(canon[ref] - canon["wsd"])),
      "top_hessian_raw": eigs["raw"],
      f"top_hessian_{ref}": eigs[ref],
      "top_hessian_wsd": eigs["wsd"],
  }


def river_projection(model: LabModel, hessian: Callable, records: dict[str, Any],
                     budgets: Sequence[int], raw_last: Params,
                     reference: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Projects the constant run (raw and averaged) and its WSD branches on river x mountain.

  River: the difference of the last two decayed checkpoints. Mountain: the top Hessian direction
  at the last raw iterate, orthogonalised against the river.
  """
  b1, b2 = budgets[-2], budgets[-1]
  w1 = records[f"wsd_{b1}"].flat[(b1, "raw")]
  w2 = records[f"wsd_{b2}"].flat[(b2, "raw")]
  river = w2 - w1
  river = river / max(np.linalg.norm(river), 1e-30)
  eig, vec = hessian(_f32(raw_last))
  mountain = np.asarray(ravel_pytree(model.canonical(vec))[0], np.float64)
  mountain = mountain / max(np.linalg.norm(mountain), 1e-30)
  cosine = float(mountain @ river)
  mountain = mountain - cosine * river
  mountain = mountain / max(np.linalg.norm(mountain), 1e-30)
  directions = {"river_from_budgets": [b1, b2], "mountain_eigenvalue": float(eig),
                "mountain_river_cosine": cosine}
  rows = []
  for name, record in records.items():
    if not (name == "constant" or name.startswith("wsd")):
      continue
    for (step, weights), vec_flat in sorted(record.flat.items()):
      if weights not in ("raw", reference) or (weights != "raw" and name != "constant"):
        continue
      d = vec_flat.astype(np.float64) - w1
      rows.append({"run": name, "weights": weights, "step": step,
                   "river": float(d @ river), "mountain": float(d @ mountain),
                   "residual_norm": float(np.linalg.norm(
                       d - (d @ river) * river - (d @ mountain) * mountain))})
  return directions, rows


def lab_diagnostics(model: LabModel, hessian: Callable, records: dict[str, Any],
                    budgets: Sequence[int], snapshots: dict[int, Any], *, reference: str,
                    alphas: np.ndarray) -> dict[str, Any]:
  """Distances, Hessian, straight-line losses and the river/mountain projection per budget."""
  ref = reference
  _, unravel = ravel_pytree(_f32(model.init_params))
  metrics_along = jit_over_copies(lambda flat: model.metrics(unravel(flat)))
  budget_rows, interp_rows = [], []
  for b in budgets:
    params, opt_state = snapshots[b]
    raw, avg = _f32(params), _f32(averaging.averaged_params(opt_state, ref, like=params))
    wsd = records[f"wsd_{b}"].final_state[0]
    flat = {n: ravel_pytree(w)[0] for n, w in (("raw", raw), (ref, avg), ("wsd", wsd))}
    budget_rows.append(_budget_row(b, model, hessian, unravel, flat, ref))
    for target in ("wsd", ref):
      values = line_metrics(metrics_along, flat["raw"], flat[target], alphas)
      best = int(np.argmin(values["excess"]))
      budget_rows[-1][f"line_to_{target}_argmin_alpha"] = float(alphas[best])
      budget_rows[-1][f"line_to_{target}_min_excess"] = float(values["excess"][best])
      for i, a in enumerate(alphas):
        interp_rows.append({"budget": b, "target": target, "alpha": float(a),
                            **{m: float(values[m][i]) for m in METRIC_NAMES}})
  directions, projection_rows = {}, []
  if len(budgets) >= 2:
    directions, projection_rows = river_projection(model, hessian, records, budgets,
                                                   snapshots[budgets[-1]][0], ref)
  return {"summary": {"per_budget": budget_rows, "projection": directions},
          "interpolation": interp_rows, "projection": projection_rows}
