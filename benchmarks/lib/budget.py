"""A wall-clock budget shared out between the parts of a benchmark."""

from __future__ import annotations

import time
from typing import Mapping, Optional


class Budget:
  """``total_s`` seconds from creation, split between named sections.

  A section may use its share plus whatever earlier sections left unused,
  but never time a later section's share needs: `section_deadline` is now
  plus the remaining time minus the shares of the sections still to come.

  Attributes:
    total_s: the whole budget.
    shares: section name -> fraction of the budget, in running order.
  """

  def __init__(self, total_s: float, shares: Mapping[str, float],
               start: Optional[float] = None):
    """Args: the budget, the shares, and when it began (a
    ``time.perf_counter()``; default now)."""
    if total_s <= 0:
      raise ValueError(f"budget_s={total_s} must be > 0")
    if abs(sum(shares.values()) - 1.0) > 1e-6:
      raise ValueError(f"the shares {dict(shares)} must add up to 1")
    self.total_s = float(total_s)
    self.shares = dict(shares)
    self.start = time.perf_counter() if start is None else start
    self.spent: dict[str, float] = {}

  def remaining(self) -> float:
    """Seconds left of the whole budget (negative once it is overrun)."""
    return self.total_s - (time.perf_counter() - self.start)

  def section_deadline(self, name: str) -> float:
    """The ``time.perf_counter()`` by which section ``name`` must end."""
    names = list(self.shares)
    later = sum(self.shares[n] for n in names[names.index(name) + 1:])
    return time.perf_counter() + self.remaining() - later * self.total_s

  def section_seconds(self, name: str) -> float:
    """Seconds section ``name`` may take from now."""
    return self.section_deadline(name) - time.perf_counter()

  def record(self, name: str, seconds: float) -> None:
    self.spent[name] = seconds

  def summary(self) -> dict[str, float]:
    used = time.perf_counter() - self.start
    return {"budget_s": self.total_s, "used_s": used,
            "over_budget_s": max(0.0, used - self.total_s),
            **{f"{k}_s": v for k, v in self.spent.items()}}
