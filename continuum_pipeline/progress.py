"""Progress milestones: a line about every `share` of long work, not one per batch (logs stay readable)."""

from __future__ import annotations


class Milestones:
    """`due(done, total)` is true on the first call, then once `share` of `total` has passed since the last
    true (and, with `at_end`, when the work is done)."""

    def __init__(self, share: float = 0.1, at_end: bool = True) -> None:
        self.share, self.at_end, self.next = share, at_end, 0.0

    def due(self, done: float, total: float) -> bool:
        if done < self.next and not (self.at_end and done >= total):
            return False
        self.next = done + self.share * total
        return True
