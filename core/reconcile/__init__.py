"""Inventory reconciliation and what follows it: each bin's photo judged against its recorded
quantity (`inventory`, streamed at any size by `stream`), batches kept in the store (`batches`),
people's recounts and the queue (`recounts`, `review`), recounts turned into labels
(`recount_labels`) and suspect labels found by confident learning (`suspects`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.reconcile.batches`: `Batch`, `get_batch`, `list_batches`;
- `core.reconcile.inventory`: `ReportTotals`, `reconcile`;
- `core.reconcile.stream`: `reconcile_into`.
"""
