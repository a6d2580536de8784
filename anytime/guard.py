"""The loop's guard against bad steps: non-finite updates (stop, or skip and never checkpoint
a state reached through them) and loss spikes (warn or stop). Host side, fed one step late."""

from __future__ import annotations

import jax
import ml_collections


class TrainingError(RuntimeError):
  """A run cannot go on (non-finite loss, ...); the last good checkpoint is left intact."""


class BadStepGuard:
  """What the loop does about non-finite updates and loss spikes (host side, one step late).

  ``nan_policy="stop"``: the first non-finite update raises TrainingError (it was not applied).
  ``nan_policy="skip"``: the update is dropped and counted; more than ``max_skipped_updates``
  in a row raise. A state reached through a skipped update is never checkpointed: saves wait
  until ``clean_steps_before_save`` updates in a row were finite, and the newest checkpoint
  before the streak is protected from retention. A finite loss above ``spike_factor`` x its
  running level (EMA of the finite losses) warns or raises (``spike_policy``).
  """

  def __init__(self, t: ml_collections.ConfigDict, label: str, store):
    self.t, self.label, self.store = t, label, store
    self.skipped_in_a_row = self.skipped_total = self.skipped_since_save = 0
    self.finite_in_a_row = 0
    self.save_deferred = False
    self.level: float | None = None
    self.spiking = False
    self._announced_streak = -1  # skipped_total when a deferred save was last announced

  @property
  def unclean(self) -> bool:
    return self.skipped_since_save > 0 and self.finite_in_a_row < self.t.clean_steps_before_save

  def _last_good(self) -> str:
    latest = self.store.latest_step()
    return f"the last good checkpoint is step {latest}" if latest is not None else \
        "no checkpoint was written yet"

  def observe(self, step: int, finite: bool, loss: float) -> None:
    t = self.t
    if not finite:
      if self.skipped_since_save == 0 and t.nan_policy == "skip":
        latest = self.store.latest_step()
        if latest is not None and hasattr(self.store, "protect"):
          self.store.protect(latest)  # retention must keep the last state before the streak
      self.skipped_in_a_row += 1
      self.skipped_total += 1
      self.skipped_since_save += 1
      self.finite_in_a_row = 0
      if t.nan_policy == "stop":
        raise TrainingError(
            f"[{self.label}] non-finite loss or gradient at step {step} (loss={loss}) with "
            f"train.nan_policy='stop': the update was not applied and {self._last_good()}. "
            "Lower the learning rate, or resume with train.nan_policy='skip' (drops such "
            f"updates, up to train.max_skipped_updates={t.max_skipped_updates} in a row).")
      if self.skipped_in_a_row > t.max_skipped_updates:
        raise TrainingError(
            f"[{self.label}] {self.skipped_in_a_row} non-finite updates in a row up to step "
            f"{step}, more than train.max_skipped_updates={t.max_skipped_updates} that "
            f"train.nan_policy='skip' drops; none was applied and {self._last_good()}. Lower "
            "the learning rate, or raise train.max_skipped_updates.")
      return
    self.skipped_in_a_row = 0
    self.finite_in_a_row += 1
    spike = bool(t.spike_factor) and self.level is not None and loss > t.spike_factor * self.level
    if spike:
      message = (f"[{self.label}] loss spike at step {step}: loss {loss:.4g} is "
                 f"{loss / self.level:.3g}x its running level {self.level:.4g} "
                 f"(train.spike_factor={t.spike_factor:g}) with train.spike_policy="
                 f"'{t.spike_policy}'")
      if t.spike_policy == "stop":
        raise TrainingError(f"{message}: stopped; {self._last_good()}. Lower the learning rate, "
                            "or set train.spike_policy='warn' (go on) or train.spike_factor=0 "
                            "(no check).")
      if not self.spiking and jax.process_index() == 0:
        print(f"WARNING: {message}: going on (train.spike_policy='stop' ends the run at a "
              "spike; train.spike_factor=0 turns the check off).", flush=True)
    else:
      self.level = loss if self.level is None else 0.9 * self.level + 0.1 * loss
    self.spiking = spike

  def may_save(self, step: int, final: bool) -> bool:
    """Whether the state of ``step`` may be checkpointed; a refused save is retried on later
    steps (``save_deferred``) unless ``final``."""
    if not self.unclean:
      self.save_deferred = False
      self.skipped_since_save = 0
      return True
    self.save_deferred = not final
    announce = final or self._announced_streak != self.skipped_total
    self._announced_streak = self.skipped_total
    if announce and jax.process_index() == 0:
      print(f"[{self.label}] step {step}: not checkpointed ({self.skipped_since_save} skipped "
            f"updates, {self.finite_in_a_row} of train.clean_steps_before_save="
            f"{self.t.clean_steps_before_save} finite ones since); {self._last_good()}.",
            flush=True)
    return False
