"""The experiment store: one SQLite file with every run, batch and review (`database.Store`), the
typed record every consumer reads (`records.Experiment`), the folder layout around it (`layout`),
file locks (`locks`) and atomic writes and content hashes (`files`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.store.database`: `NoStoreError`, `Store`;
- `core.store.records`: `Experiment`.
"""
