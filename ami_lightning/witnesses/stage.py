"""AmI's preparation step: the witnesses of a model, read from files or extracted from the shipped faces, cached.

Called by :meth:`ami_lightning.detectors.ami.AmIDetector.setup` (the pipeline runs it; no entry point does).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ami_lightning.data.shipped import witness_face_files
from ami_lightning.models.dlib_files import CNN_FACE_DETECTOR, SHAPE_PREDICTOR_68, dlib_model_path
from ami_lightning.models.layers import hook_layer_names, layer_channels
from ami_lightning.pipeline.cache import STAGE_VERSIONS, cache_key, file_digest
from ami_lightning.pipeline.files import building_dir, exclusive, remove_stale_temporaries, stale_temporaries
from ami_lightning.witnesses.from_faces import save_mutation_grid, witnesses_from_faces
from ami_lightning.witnesses.witness_set import ATTRIBUTES, Format, WitnessSet, no_witness_error


def witness_key(model_key: Any, caffe_median: bool, cache_dir: str | Path) -> str:
    """Cache key of extracted witnesses: stage version, the model's identity (``model_key``:
    :func:`~ami_lightning.pipeline.cache.model_identity`, weights by content), the witness rule and the landmark
    models that place the mutations."""
    landmarks = {name: file_digest(dlib_model_path(name), cache_dir)
                 for name in (SHAPE_PREDICTOR_68, CNN_FACE_DETECTOR)}
    return cache_key("witnesses", STAGE_VERSIONS["witnesses"], model_key, bool(caffe_median), landmarks)


def prepare_witnesses(
    model: nn.Module,
    cache_dir: str | Path,
    model_key: Any,
    caffe_median: bool = False,
    source: str | Path | None = None,
    source_format: Format = "vgg_face_dag",
    out_dir: str | Path | None = None,
    attributes: Sequence[str] = ATTRIBUTES,
) -> WitnessSet:
    """The witnesses of ``attributes`` of ``model``: read from the folder ``source`` (in ``source_format``) when
    given, else extracted from the shipped witness faces
    (:func:`~ami_lightning.witnesses.from_faces.witnesses_from_faces`, the release's median rule or,
    ``caffe_median``, the Caffe one; all four attributes, whichever are asked for) and cached under
    ``cache_dir/witnesses/<key>`` (:func:`witness_key`). An attribute without any witness is refused, saying what to
    do (:func:`~ami_lightning.witnesses.witness_set.no_witness_error`); the cached extraction stays, as it is what
    the model gives, and serves a run that leaves such attributes out. Checked against the model's hookable layers
    and their channel counts; a copy goes to ``out_dir/witnesses`` when given.

    Concurrent runs on a cold cache: one extracts (under a file lock), the others wait and read its entry; an entry
    is built in a private folder and renamed into place, so a crash never leaves half of one, and the private
    folders that killed runs left (:func:`~ami_lightning.pipeline.files.stale_temporaries`) are removed, under the
    entry's lock, when the entry is next built or read."""
    if source:
        witnesses = WitnessSet.read(Path(source), source_format, attributes)
    else:
        cached = Path(cache_dir) / "witnesses" / witness_key(model_key, caffe_median, cache_dir)
        if not _complete(cached):
            with exclusive(cached):
                remove_stale_temporaries(cached.parent, [cached.name])
                if not _complete(cached):  # another process may have finished it while we waited
                    _extract(model, cached, bool(caffe_median))
        elif stale_temporaries(cached.parent, [cached.name]):  # left beside a finished entry by an older run
            _tidy(cached)
        witnesses = WitnessSet.read(cached, allow_empty=True).select(attributes)
        if empty := witnesses.empty():
            raise no_witness_error(f"the witnesses extracted for this model (cached in {cached})", empty,
                                   list(attributes), "give witness files of your own with ami.witnesses=<folder>")
    witnesses.validate(layer_channels(model, hook_layer_names(model)))
    if out_dir is not None:
        witnesses.write(Path(out_dir) / "witnesses")
    return witnesses


def _extract(model: nn.Module, entry: Path, caffe: bool) -> None:
    """Extract the witnesses of every attribute from the shipped faces into the cache entry ``entry`` (built in a
    private folder, then renamed into place)."""
    base, others = witness_face_files()
    found, mutations = witnesses_from_faces(model, hook_layer_names(model), base, others, caffe=caffe)
    with building_dir(entry) as tmp:
        found.write(tmp)
        save_mutation_grid(mutations, tmp / "mutations.png")


def _tidy(entry: Path) -> None:
    """Remove the stale temporary folders of the finished cache entry ``entry``, under its lock; nothing when that
    cannot be done (a read-only cache is still read)."""
    try:
        with exclusive(entry):
            remove_stale_temporaries(entry.parent, [entry.name])
    except OSError:
        pass


def _complete(folder: Path) -> bool:
    return (folder / "mutations.png").is_file()
