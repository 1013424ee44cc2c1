"""Labelled bin photos, from folder to training batch: decoding (`images`), any supported layout read
into one table (`collection`) through an incremental index (`index`), the uint8 image cache
(`cache`), a prepared data set with its split (`dataset`, with recounts laid over it by `recounted`
and label decisions read by `curation`), the photo's source (`sources`), ABID downloads
(`download`) and generated collections for smoke runs (`synthetic`).

Its entry points, imported from their modules (this file imports nothing, so that importing one
light module does not load the rest):
- `core.data.collection`: `Collection`, `DataError`, `load_collection`;
- `core.data.dataset`: `Dataset`, `prepare_dataset`;
- `core.data.images`: `ImageError`, `load_rgb`.
"""
