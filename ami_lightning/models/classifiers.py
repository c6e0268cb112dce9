"""Face classifiers the Hydra configs instantiate (``model`` group): a pixel-space network with its identity names.

``dlib_gallery`` and ``vgg_face_classifier`` build the registered models; ``torch_classifier`` (``model=torch``) and
``onnx_classifier`` (``model=onnx``) wrap a user's own network, an embedding one as a gallery over one photo per
identity, a logits one with its identity names.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from ami_lightning.checks import existing
from ami_lightning.data.identities import identity_from_filename, load_names
from ami_lightning.data.images import load_image
from ami_lightning.data.shipped import shipped_faces
from ami_lightning.models.base import (
    ChannelOrder,
    PixelModel,
    Preprocess,
    load_state_dict_file,
    preprocessing_problems,
)
from ami_lightning.models.dlib_resnet import load_dlib_resnet
from ami_lightning.models.gallery import FaceGallery
from ami_lightning.models.layers import probe
from ami_lightning.models.vgg_face import build_vgg_face
from ami_lightning.models.wrapped import load_onnx, wrap_network


@dataclass
class Classifier:
    """A pixel-space classifier (B, 3, H, W) in [0, 255] -> (B, K) logits, with its K identity names."""

    name: str
    model: nn.Module
    identities: list[str]


def gallery_faces(faces_dir: str | Path | None = None) -> tuple[torch.Tensor, list[str]]:
    """The enrolment faces of a gallery, one photo per identity: the images (N, 3, H, W) float pixels of
    ``faces_dir`` (.jpg, .jpeg, .png, sorted by name; default: the 238 shipped faces) and their identities, from the
    VGG Face file names (:func:`~ami_lightning.data.identities.identity_from_filename`)."""
    if faces_dir is None:
        faces, files = shipped_faces()
    else:
        files = sorted(p for p in Path(faces_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise FileNotFoundError(f"no face images in {faces_dir}")
        faces = torch.stack([load_image(f) for f in files])
    return faces.float(), [identity_from_filename(f) for f in files]


def gallery_classifier(
    name: str, embedder: nn.Module, faces_dir: str | Path | None = None, batch_size: int = 64, scale: float = 10.0,
    normalize: bool = False,
) -> Classifier:
    """A :class:`~ami_lightning.models.gallery.FaceGallery` on ``embedder`` (pixels -> (B, D) embeddings) enrolling
    one identity per face of :func:`gallery_faces` (``faces_dir``)."""
    faces, identities = gallery_faces(faces_dir)
    gallery = FaceGallery(embedder, identities, scale=scale, batch_size=batch_size, normalize=normalize)
    gallery.enrol(faces, torch.arange(len(identities)))
    return Classifier(name, gallery, identities)


def dlib_gallery(faces_dir: str | None = None, batch_size: int = 64, weights: str | None = None) -> Classifier:
    """dlib's ResNet (``weights``: a ``.dat`` file, default the one of ``face_recognition_models``) as a gallery
    classifier enrolling one identity per face file of ``faces_dir`` (default: the 238 shipped faces), identities
    from the VGG Face file names."""
    return gallery_classifier("dlib_resnet", load_dlib_resnet(weights), faces_dir, batch_size)


def _dlib_gallery_problems(params: Mapping[str, Any]) -> list[str]:
    return [*existing(params, "faces_dir", "folder", "the gallery's faces, one photo per identity"),
            *existing(params, "weights", "file", "a dlib ResNet .dat file")]


dlib_gallery.check_params = _dlib_gallery_problems  # type: ignore[attr-defined]  # what the config check calls


def vgg_face_classifier(weights: str | None, names: str | None) -> Classifier:
    """VGG-Face from ``vgg_face_dag.pth`` with its 2622-name ``names.txt``; a clear error naming each missing path."""
    missing = [f"{key} ({value})" for key, value in (("paths.vgg_face_weights", weights), ("paths.vgg_names", names))
               if value is None or not Path(value).is_file()]
    if missing:
        raise FileNotFoundError(f"VGG-Face needs these files, which are missing: {', '.join(missing)}")
    return Classifier("vgg_face", build_vgg_face(weights), load_names(names))



def _vgg_face_problems(params: Mapping[str, Any]) -> list[str]:
    return [*existing(params, "weights", "file", "VGG-Face's weights (vgg_face_dag.pth)", required=True),
            *existing(params, "names", "file", "VGG-Face's 2622 identity names (names.txt)", required=True)]


vgg_face_classifier.check_params = _vgg_face_problems  # type: ignore[attr-defined]

# ---- a user's own network: model=torch, model=onnx ------------------------------------------------------------------
Output = Literal["embedding", "logits"]
OUTPUTS: tuple[str, ...] = get_args(Output)
PREPROCESSING_KEYS: tuple[str, ...] = ("input_size", "channel_order", "pixel_scale", "mean", "std")
OWN_MODEL_KEYS: tuple[str, ...] = ("output", "faces_dir", "names", "hook_layers", "scale", "normalize",
                                   *PREPROCESSING_KEYS)
"""The parameters of :func:`torch_classifier` and :func:`onnx_classifier` that :func:`own_model_problems` checks."""


def own_model_problems(params: Mapping[str, Any]) -> list[str]:
    """One line ``key=value: expected ...`` per bad value among the parameters ``params`` of
    :func:`torch_classifier` / :func:`onnx_classifier` (those given; files are not looked at); [] if all are good.
    Pure: the configs are checked with it before anything is built."""
    output = params.get("output", "embedding")
    problems = preprocessing_problems(**{key: params[key] for key in PREPROCESSING_KEYS if key in params})
    if output not in OUTPUTS:
        problems.append(f"output={output!r}: expected one of {', '.join(OUTPUTS)}")
    elif output == "logits":
        if params.get("names") is None:
            problems.append("names=null: a network with output=logits needs the file of its identity names, one per "
                            "line in the order of its logits")
        if params.get("faces_dir") is not None:
            problems.append(f"faces_dir={params['faces_dir']!r}: only read with output=embedding (the gallery's faces)")
    elif params.get("names") is not None:
        problems.append(f"names={params['names']!r}: only read with output=logits (an embedding network's "
                        "identities are those of its gallery's faces)")
    hooks = params.get("hook_layers")
    if hooks is not None and not (isinstance(hooks, Sequence) and not isinstance(hooks, str) and hooks
                                  and all(isinstance(h, str) for h in hooks)):
        problems.append(f"hook_layers={hooks!r}: expected null (found automatically) or a list of module names")
    scale = params.get("scale", 10.0)
    if not (isinstance(scale, int | float) and not isinstance(scale, bool) and scale > 0):
        problems.append(f"scale={scale!r}: expected a number > 0 (logit = -scale x embedding distance)")
    if not isinstance(params.get("normalize", True), bool):
        problems.append(f"normalize={params['normalize']!r}: expected true or false")
    return problems


def _own_model_files(params: Mapping[str, Any]) -> list[str]:
    """The files and folders of a user's network (``model=torch`` / ``model=onnx``) that do not exist."""
    return [*existing(params, "path", "file", "the ONNX file of the face network", required=True),
            *existing(params, "weights", "file", "the network's state dict (torch.save(net.state_dict()))"),
            *existing(params, "faces_dir", "folder", "the gallery's faces, one photo per identity"),
            *existing(params, "names", "file", "the identity names, one per line")]


def _own_model_check(params: Mapping[str, Any]) -> list[str]:
    """What the config check calls for ``model=torch`` / ``model=onnx``: its files, then its values."""
    return [*_own_model_files(params), *own_model_problems(params)]


def _own_classifier(
    name: str,
    model: PixelModel,
    output: Output = "embedding",
    faces_dir: str | None = None,
    names: str | None = None,
    scale: float = 10.0,
    normalize: bool = True,
    batch_size: int = 64,
) -> Classifier:
    """A user's network, wrapped with its preprocessing and hook layers
    (:func:`~ami_lightning.models.wrapped.wrap_network`), as a classifier: ``output=embedding``, a gallery over
    ``faces_dir`` (:func:`gallery_classifier`); ``output=logits``, its K logits (B, K) with the K identity names of
    the file ``names``."""
    if output == "embedding":
        return gallery_classifier(name, model, faces_dir, batch_size, scale, normalize)
    with torch.no_grad():
        logits = model(probe(model))
    if logits.ndim != 2:
        raise ValueError(f"{name}: output=logits, but the network gives outputs of shape {tuple(logits.shape)} for "
                         "one image; expected (1, K)")
    # names is a file here: own_model_problems refuses output=logits without one
    return Classifier(name, model, load_names(names, expected=int(logits.shape[1])))  # type: ignore[arg-type]


def _checked(name: str, params: Mapping[str, Any]) -> None:
    if problems := own_model_problems(params):
        raise ValueError(f"{name}: " + "; ".join(problems))


def torch_classifier(
    net: nn.Module | Mapping[str, Any],
    weights: str | None = None,
    seed: int = 0,
    output: Output = "embedding",
    faces_dir: str | None = None,
    names: str | None = None,
    hook_layers: Sequence[str] | None = None,
    input_size: int | Sequence[int] | None = None,
    channel_order: ChannelOrder = "rgb",
    pixel_scale: float = 1.0,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    scale: float = 10.0,
    normalize: bool = True,
    batch_size: int = 64,
) -> Classifier:
    """A PyTorch face network as a classifier (``model=torch``).

    ``net``: the module, or a Hydra node (``_target_``: any importable callable returning an ``nn.Module``, and its
    arguments) built with torch's random generator seeded with ``seed``, so that randomly initialised weights are
    the same in every process and run (the cached witnesses and attack sets of a config stay right). ``weights``: a
    state dict file (``torch.save(net.state_dict())``) loaded with ``weights_only=True``. Preprocessing
    (:class:`~ami_lightning.models.base.Preprocess`): ``input_size`` (None: as given), ``channel_order``,
    ``pixel_scale``, ``mean``, ``std``. ``output``: ``embedding`` (a gallery over ``faces_dir``, default the shipped
    faces; ``scale``, ``normalize``: :class:`~ami_lightning.models.gallery.FaceGallery`) or ``logits`` (``names``:
    the file of the identity names, one per line). ``hook_layers``: None to find them
    (:func:`~ami_lightning.models.wrapped.hookable_layers`), or module names. ValueError naming the bad values.
    """
    _checked("model=torch", locals())
    if not isinstance(net, nn.Module):
        net = _build(net, seed)
    if weights is not None:
        load_state_dict_file(net, weights, f"the network {type(net).__name__}",
                             "a state dict saved with torch.save(net.state_dict())")
    model = wrap_network(net, Preprocess(input_size, channel_order, pixel_scale, mean, std), hook_layers)
    return _own_classifier(type(net).__name__, model, output, faces_dir, names, scale, normalize, batch_size)


def _build(node: Mapping[str, Any], seed: int) -> nn.Module:
    """``hydra.utils.instantiate(node)`` with torch's CPU random generator seeded with ``seed`` (and restored after);
    TypeError naming the target when it does not return an ``nn.Module``."""
    from hydra.utils import instantiate

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = instantiate(node)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model.net: {node.get('_target_')} returned a {type(net).__name__}, not an nn.Module")
    return net


def onnx_classifier(
    path: str,
    output: Output = "embedding",
    faces_dir: str | None = None,
    names: str | None = None,
    hook_layers: Sequence[str] | None = None,
    input_size: int | Sequence[int] | None = None,
    channel_order: ChannelOrder = "rgb",
    pixel_scale: float = 1.0,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    scale: float = 10.0,
    normalize: bool = True,
    batch_size: int = 64,
) -> Classifier:
    """An ONNX face network (the file ``path``) as a classifier (``model=onnx``), simplified and converted by
    ``onnx2torch`` (:func:`~ami_lightning.models.wrapped.load_onnx`; a graph with a fixed batch size of 1 runs one
    image at a time). ``input_size`` None: the graph's fixed input size (RGB pixels in [0, 255] resized to it,
    bilinear with antialiasing); a graph without one then takes the images at their own size, with a warning naming
    ``model.input_size``. The other keys as for :func:`torch_classifier`. ValueError naming the bad values or the
    file."""
    _checked("model=onnx", locals())
    loaded = load_onnx(path)
    if input_size is None and loaded.size is None:
        warnings.warn(f"model=onnx: {path} has no fixed input height and width and model.input_size is not set: "
                      "the network gets the images at their own size (224 x 224 for the shipped faces); set "
                      "model.input_size to the size it was trained at (e.g. model.input_size=112)", stacklevel=2)
    preprocess = Preprocess(loaded.size if input_size is None else input_size, channel_order, pixel_scale, mean, std)
    return _own_classifier(Path(path).name, loaded.wrap(preprocess, hook_layers), output, faces_dir, names, scale,
                           normalize, batch_size)


torch_classifier.check_params = _own_model_check  # type: ignore[attr-defined]
onnx_classifier.check_params = _own_model_check  # type: ignore[attr-defined]
