"""Moving versions between a store and its remotes: push, fetch, pull, clone.

The package is split by direction: `remote` (an opened remote and what the store knows
of it), `policy` (pure ref decisions), `push`, `fetch`, `download` (verified object
downloads, also used by checkout), `pull` (pull and clone). Remotes know nothing of
the index; this package is what connects the two. Must never print: progress goes
through the store's Reporter. The package imports nothing itself, so that `download`
can be imported by checkout without the modules that import checkout.
"""
