"""Gradient-ready hooks: tell a watcher, during backward, the moment a leaf's gradient is final.

Data parallelism needs this (gg.distributed.DataParallel): a bucket of gradients can start its
all-reduce as soon as every gradient in it is known, while backward goes on with the layers below.
The engine (tensor.run_backward) walks the Functions in reverse topological order and commits all
leaf gradients at the very end (all-or-nothing backward); this module is the one seam it offers
for watching the walk. It costs one truth test of `watched` per backward when nobody watches.

Interface (what a watcher implements and when each method is called, for one backward):

    handle = hooks.watch(leaves, watcher)   # leaves: leaf Tensors; watcher: an object with
                                            # ready(leaf, grad), finish(leaves), abort()
    handle.remove()                         # stop watching (also when the watcher is collected)

- `watcher.ready(leaf, grad)`: `grad` is the array that this backward will add to `leaf.grad`
  (the sum of every contribution of this backward only, not of earlier ones; the engine's dtype,
  which `_commit` casts to the leaf's). It is called once per watched leaf that receives a
  gradient, in the walk, right after the last Function with an edge to the leaf has run: the
  engine counts those edges before the walk. A leaf whose count does not reach zero (an op that
  got no upstream gradient, or returned None for it) is reported at the end of the walk instead,
  just before `finish`. The array must not be written in place (the engine's contract: gradient
  arrays may be shared).
- `watcher.finish(leaves)`: after the walk, before any gradient is committed. `leaves` is the
  engine's dict `id(leaf) -> [leaf, grad]`; the watcher may replace `grad` (entry[1]) of its own
  leaves and add entries `[leaf, grad]` for its leaves that got no gradient here. If it raises,
  nothing is committed and the exception propagates from backward().
- `watcher.abort()`: the walk raised (a failing op, KeyboardInterrupt): no `finish` follows and
  nothing is committed; the watcher drops what it started.

A backward whose graph reaches none of the watched leaves calls nothing. Each leaf has at most one
watcher: watching a leaf again hands it to the new watcher (a model wrapped a second time, e.g. a
notebook cell run again, is reduced by the new wrapper, and removing the old handle leaves the new
watcher in place).
"""
import weakref

__all__ = ["watch", "watched", "session"]

# id(leaf) -> (weak reference to the watcher, the leaf). Read by run_backward: empty means off.
# The leaf is held strongly while watched so its id cannot be reused by another object.
watched = {}


class Handle:
    """Returned by watch(); remove() stops watching these leaves (idempotent)."""

    def __init__(self, ids):
        self._ids, self._ref = ids, None

    def remove(self):
        for i in self._ids:
            entry = watched.get(i)
            if entry is not None and entry[0] is self._ref:  # not a later watcher's entry
                del watched[i]
        self._ids = ()


def watch(leaves, watcher):
    """Report the gradients of `leaves` (leaf Tensors) to `watcher` during every backward."""
    leaves = list(leaves)
    for leaf in leaves:
        if getattr(leaf, "_ctx", None) is not None:
            raise ValueError("hooks.watch: only leaf tensors can be watched")
    ids = tuple(id(leaf) for leaf in leaves)
    handle = Handle(ids)
    handle._ref = ref = weakref.ref(watcher, lambda _, h=handle: h.remove())
    for leaf in leaves:
        watched[id(leaf)] = (ref, leaf)
    return handle


class _Session:
    """One backward over a graph that reaches watched leaves: counts their edges, fires ready()
    when a count reaches zero, and finish()/abort() at the end."""

    def __init__(self, remaining, watchers):
        self.remaining = remaining  # id(leaf) -> edges still to run
        self.watchers = watchers    # id(leaf) -> watcher
        self.fired = set()

    def __call__(self, entry):
        """The engine summed a contribution into `entry` ([leaf, grad])."""
        i = id(entry[0])
        left = self.remaining.get(i)
        if left is None:
            return
        if left > 1:
            self.remaining[i] = left - 1
            return
        del self.remaining[i]
        self.fired.add(i)
        self.watchers[i].ready(entry[0], entry[1])

    def finish(self, leaves):
        for i, (leaf, grad) in list(leaves.items()):  # leaves whose count did not reach zero
            if i in self.watchers and i not in self.fired:
                self.fired.add(i)
                self.watchers[i].ready(leaf, grad)
        for w in self._distinct():
            w.finish(leaves)

    def abort(self):
        for w in self._distinct():
            w.abort()

    def _distinct(self):
        seen = {}
        for w in self.watchers.values():
            seen.setdefault(id(w), w)
        return list(seen.values())


def session(order):
    """A _Session for a backward over `order` (the engine's Functions), or None when no watched
    leaf is reachable. Only called when `watched` is non-empty."""
    remaining, watchers = {}, {}
    for fn in order:
        for e in fn.next:
            i = id(e)
            entry = watched.get(i)
            if entry is None or entry[1] is not e:
                continue
            w = entry[0]()
            if w is None:
                continue
            remaining[i] = remaining.get(i, 0) + 1
            watchers[i] = w
    return _Session(remaining, watchers) if watchers else None
