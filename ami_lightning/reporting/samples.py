"""Sample figures: a few images of an attack set, original / adversarial / amplified difference, with each
detector's verdict.

A :class:`SampleBatch` holds k samples of one attack set; :func:`save_sample_figure` draws them as one PNG, a column
per sample and the rows :data:`SAMPLE_ROWS`, thumbnails of at most :data:`THUMBNAIL` px drawn one to one, and under
each column its caption (:func:`sample_caption`): the true identity, the identity the model gives the adversarial
image and, one per line, each detector's verdict in green (flagged) or red (not flagged).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ami_lightning.reporting.plots import save_figure
from ami_lightning.reporting.records import RunResults, SampleBatch, check_sample_batch

DIFF_GAIN = 10.0  # |adversarial - original| is multiplied by this (then clipped to 255) in the sample figures
THUMBNAIL = 112  # px: the longer side of a sample thumbnail (larger images are area-downsampled to it)
FLAG_COLOURS = {True: "tab:green", False: "tab:red"}  # a verdict's colour: flagged / not flagged
SAMPLE_ROWS = ("original", "adversarial", "|difference| x {gain:g}")  # the rows of a sample figure, top to bottom

# sample figure layout, in pixels at _SAMPLE_DPI (so that a thumbnail is drawn one to one)
_SAMPLE_DPI = 100
_CELL = THUMBNAIL  # a cell's side
_GAP = 8  # between cells
_LEFT = 96  # the row labels
_RIGHT = 10
_TOP = 64  # the title
_CAPTION_WIDTH = 21  # characters per caption line
_CAPTION_LINES = 2  # at most this many lines per caption part (longer names are cut with an ellipsis)
_CAPTION_PT = 7.0
_LINE = _CAPTION_PT * 1.25 / 72 * _SAMPLE_DPI  # px per caption line (line spacing 1.25)
_CAPTION_PAD = 16  # px of the caption area besides its lines: above the first (4) and below the last
_IDENTITY_LINES = 2 * _CAPTION_LINES  # the caption's lines for the true and the model's identity


def verdict(detector: str, flagged: bool) -> str:
    """A detector's verdict on one image: ``"<detector>: flagged"`` or ``"<detector>: NOT flagged"``."""
    return f"{detector}: {'flagged' if flagged else 'NOT flagged'}"


def sample_caption(
    true_identity: str, adversarial_identity: str, flagged: Mapping[str, bool]
) -> tuple[str, str, list[str]]:
    """The caption of one sample column: ``"true: <identity>"``, ``"model: <identity>"`` (the identity the model
    gives the adversarial image; `` (not fooled)`` appended when it is the true one) and each detector's
    :func:`verdict` on the adversarial image, in the order of ``flagged`` (drawn in ``FLAG_COLOURS[flagged]``)."""
    fooled = "" if adversarial_identity != true_identity else " (not fooled)"
    return (f"true: {true_identity}", f"model: {adversarial_identity}{fooled}",
            [verdict(detector, flag) for detector, flag in flagged.items()])


def sample_figure_caption(set_name: str, gain: float = DIFF_GAIN) -> str:
    """What a sample figure shows, in one line (the W&B image caption)."""
    rows = " / ".join(SAMPLE_ROWS).format(gain=gain)
    return (f"{set_name}: rows {rows} (clipped to 255); per column the true identity, the identity the model gives "
            "the adversarial image, and whether each detector flags it")


def thumbnail_rows(batch: SampleBatch, gain: float = DIFF_GAIN, size: int = THUMBNAIL) -> torch.Tensor:
    """The cells of a sample figure, (3, k, 3, h, w) float in [0, 1] on the CPU: the originals, the adversarials and
    ``|adversarial - original| x gain`` clipped to 255 (computed at full resolution), each clipped to [0, 255] and,
    when larger than ``size`` px on its longer side, area-downsampled to it (aspect kept; smaller images are left
    as they are). ValueError for a malformed ``batch`` (:func:`check_sample_batch`)."""
    check_sample_batch(batch)
    original = batch.original.detach().float().cpu().clamp(0, 255)
    adversarial = batch.adversarial.detach().float().cpu().clamp(0, 255)
    rows = torch.stack([original, adversarial, ((adversarial - original).abs() * gain).clamp(0, 255)])
    h, w = rows.shape[-2:]
    scale = size / max(h, w)
    if scale < 1:
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        rows = F.interpolate(rows.flatten(0, 1), size=shape, mode="area").unflatten(0, rows.shape[:2])
    return rows / 255


def _wrap(text: str, width: int = _CAPTION_WIDTH, lines: int = _CAPTION_LINES) -> list[str]:
    """``text`` wrapped to ``width`` characters, at most ``lines`` lines (the last cut with an ellipsis)."""
    wrapped = textwrap.wrap(text, width, break_on_hyphens=True) or [""]
    if len(wrapped) > lines:
        wrapped = [*wrapped[:lines - 1], wrapped[lines - 1][:width - 1] + "\u2026"]
    return wrapped


def _verdict_lines(detectors: Sequence[str]) -> int:
    """Caption lines for the verdicts of ``detectors``: per detector those of its longer verdict, wrapped."""
    return sum(len(_wrap(verdict(detector, False))) for detector in detectors)


def sample_figure_size(k: int, detectors: Sequence[str]) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of a sample figure with ``k`` columns and the verdicts of ``detectors``
    (the caption area grows with their number: a line per verdict, two for a long name)."""
    caption = math.ceil(_CAPTION_PAD + (_IDENTITY_LINES + _verdict_lines(detectors)) * _LINE)
    return _LEFT + k * _CELL + (k - 1) * _GAP + _RIGHT, _TOP + 3 * _CELL + 2 * _GAP + caption


def sample_cell_box(row: int, column: int) -> tuple[int, int, int, int]:
    """The pixel box ``(left, top, right, bottom)`` (right and bottom exclusive) of the cell at ``row`` (0 original,
    1 adversarial, 2 difference) and ``column`` of a sample figure; an image fills its box's width or height, centred
    (a square one fills it)."""
    left, top = _LEFT + column * (_CELL + _GAP), _TOP + row * (_CELL + _GAP)
    return left, top, left + _CELL, top + _CELL


def save_sample_figure(batch: SampleBatch, path: str | Path, title: str, gain: float = DIFF_GAIN) -> Path:
    """One labelled PNG of an attack set's samples: a column per sample, rows original / adversarial /
    ``|difference| x gain`` (clipped; :func:`thumbnail_rows`, thumbnails of at most :data:`THUMBNAIL` px drawn one to
    one), the row names on the left, under each column its :func:`sample_caption` (each detector's verdict on its
    own line(s), in green when flagged, red when not) and ``title`` (wrapped) on top. Size
    :func:`sample_figure_size` (k, the detectors of ``batch.flagged``), cells at :func:`sample_cell_box`.
    ValueError for a malformed ``batch``."""
    cells = thumbnail_rows(batch, gain)
    k = cells.shape[1]
    width, height = sample_figure_size(k, list(batch.flagged))
    fig = Figure(figsize=(width / _SAMPLE_DPI, height / _SAMPLE_DPI), dpi=_SAMPLE_DPI)
    for row in range(3):
        for column in range(k):
            left, top, right, bottom = sample_cell_box(row, column)
            ax = fig.add_axes((left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height))
            ax.imshow(cells[row, column].permute(1, 2, 0).numpy(), interpolation="nearest", vmin=0, vmax=1)
            ax.set_axis_off()
        label = SAMPLE_ROWS[row].format(gain=gain).replace("| x", "|\nx")
        fig.text((_LEFT - 8) / width, 1 - (_TOP + row * (_CELL + _GAP) + _CELL / 2) / height, label, ha="right",
                 va="center", fontsize=8)
    for column in range(k):
        left, _, right, bottom = sample_cell_box(2, column)
        x, y = (left + right) / 2 / width, bottom + 4
        flags = {detector: bool(flagged[column]) for detector, flagged in batch.flagged.items()}
        truth, given, verdicts = sample_caption(batch.true_identity[column], batch.adversarial_identity[column], flags)
        parts = [(_wrap(truth) + _wrap(given), {"color": "black"})]
        parts += [(_wrap(text), {"color": FLAG_COLOURS[flag], "fontweight": "bold"})
                  for text, flag in zip(verdicts, flags.values(), strict=True)]
        for lines, style in parts:
            fig.text(x, 1 - y / height, "\n".join(lines), ha="center", va="top", fontsize=_CAPTION_PT,
                     linespacing=1.25, **style)
            y += len(lines) * _LINE
    title_lines = textwrap.wrap(title, max(20, (width - 10) // 7))
    fig.text(0.5, 1 - 6 / height, "\n".join(title_lines[:3]), ha="center", va="top", fontsize=9)
    return save_figure(fig, path, dpi=_SAMPLE_DPI, tight=False)


def _file_stem(name: str) -> str:
    """A set name as a file name: characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


def save_sample_figures(results: RunResults, out_dir: str | Path, gain: float = DIFF_GAIN) -> dict[str, Path]:
    """:func:`save_sample_figure` of each set of ``results.samples`` as ``out_dir/samples/<set>.png``, titled with
    the set and :meth:`RunResults.title` (the detectors and the model). Returns ``samples/<set>`` -> path, in
    ``samples`` order. TypeError for a value that is not a :class:`SampleBatch`, ValueError for a malformed one."""
    paths = {}
    for name, batch in results.samples.items():
        if not isinstance(batch, SampleBatch):
            raise TypeError(f"RunResults.samples[{name!r}] must be a SampleBatch, got {type(batch).__name__}")
        check_sample_batch(batch, name)
        path = Path(out_dir) / "samples" / f"{_file_stem(name)}.png"
        paths[f"samples/{name}"] = save_sample_figure(batch, path, f"{name}: {results.title()}", gain)
    return paths
