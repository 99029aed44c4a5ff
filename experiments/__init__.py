"""The experiment stage: one run and its directory, grids of runs, the field's protocols, results tables and reports.
Everything here works through `adapter` (methods, trainer, evaluation) and `cache.store`; reports read results tables
and run directories, never caches."""
