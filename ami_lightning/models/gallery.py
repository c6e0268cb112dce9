"""A face-identification classifier on top of a face embedder: distance to each enrolled identity's mean embedding.

With :func:`~ami_lightning.models.dlib_resnet.load_dlib_resnet` as embedder this turns dlib's 128-D descriptors
into identity logits, so that attacks and AmI can treat dlib's network like a classifier; any embedding network
works the same way (:func:`ami_lightning.models.classifiers.torch_classifier`, ``output: embedding``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ami_lightning.models.base import PIXEL_BOUNDS
from ami_lightning.models.layers import hook_layer_names, probe


@torch.no_grad()
def embedding_dim(embedder: nn.Module) -> int:
    """D of an embedder's (B, D) output, from one forward pass of a grey :func:`~ami_lightning.models.layers.probe`
    image; ValueError naming the shape when the output is not (1, D)."""
    was_training = embedder.training
    out = embedder.eval()(probe(embedder))
    embedder.train(was_training)
    if out.ndim != 2 or out.shape[0] != 1:
        raise ValueError(f"the embedder gives outputs of shape {tuple(out.shape)} for one image; a gallery needs "
                         "(1, D) embeddings")
    return int(out.shape[1])


class FaceGallery(nn.Module):
    """Logits (B, K) = ``-scale * ||embedder(x) - centroid_k||`` for the K ``identities``; x: (B, 3, H, W) pixels.

    ``embedder`` maps pixel images (B, 3, H, W) in ``bounds`` to embeddings (B, ``dim``), e.g. dlib's descriptors
    (distance below 0.6: same person); ``dim`` None: found by one forward pass (:func:`embedding_dim`).
    ``normalize``: embeddings are scaled to unit length first (for networks whose embeddings are compared by cosine,
    like ArcFace's; distances then lie in [0, 2]). ``centroids`` (K, dim) holds the mean embedding of each identity's
    enrolment images. Enrolment rule: :meth:`enrol` sets the centroid of every identity that has images in that
    call and leaves the others as they were, so identities can be enrolled over several calls; classifying
    (:meth:`forward`) needs all K enrolled and raises ``RuntimeError`` naming those that are not.

    With ``scale`` = 10 a distance gap of 0.1 is a logit gap of 1, so the softmax separates identities at dlib's
    distances (0.3 to 0.6 for the same person, above 0.6 for others). Gradients flow from the logits to x; the
    module exposes its embedder's ``hook_layers`` and ``bounds``.
    """

    def __init__(
        self,
        embedder: nn.Module,
        identities: Sequence[str],
        scale: float = 10.0,
        dim: int | None = None,
        batch_size: int = 32,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if not identities:
            raise ValueError("a gallery needs at least one identity")
        self.embedder = embedder
        self.identities: tuple[str, ...] = tuple(identities)
        self.scale = scale
        self.batch_size = batch_size
        self.normalize = normalize
        dim = embedding_dim(embedder) if dim is None else dim
        self.register_buffer("centroids", torch.zeros(len(self.identities), dim))
        self.register_buffer("enrolled", torch.zeros(len(self.identities), dtype=torch.bool))
        self._complete = False  # host-side copy of enrolled.all(): no device sync per forward
        self.register_load_state_dict_post_hook(lambda module, _incompatible: module._refresh())

    def _refresh(self) -> None:
        """Recompute the host-side :attr:`_complete` from the ``enrolled`` buffer (after enrolment or loading)."""
        self._complete = bool(self.enrolled.all())

    @property
    def hook_layers(self) -> tuple[str, ...]:
        """The embedder's hookable layer names (found in the gallery by
        :func:`ami_lightning.models.layers.find_layer`)."""
        return hook_layer_names(self.embedder)

    @property
    def bounds(self) -> tuple[float, float]:
        """Pixel range of the input, the embedder's."""
        return getattr(self.embedder, "bounds", PIXEL_BOUNDS)

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The embedder's (B, dim) output for x (B, 3, H, W), unit length when ``normalize``."""
        out = self.embedder(x)
        return F.normalize(out, dim=1) if self.normalize else out

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, dim) of images (N, 3, H, W) in ``bounds``, computed in batches of ``batch_size``."""
        device = self.centroids.device
        chunks = [self._embedding(batch.to(device)) for batch in images.split(self.batch_size)]
        return torch.cat(chunks).float()

    @torch.no_grad()
    def enrol(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Set the centroid of each identity in ``labels`` (N,) (indices into ``identities``) to the mean embedding
        of its images among ``images`` (N, 3, H, W) in ``bounds``."""
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise ValueError(f"labels must be N = {images.shape[0]} integers, got shape {tuple(labels.shape)}")
        k = len(self.identities)
        if labels.numel() and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must lie in [0, {k}), got [{int(labels.min())}, {int(labels.max())}]")
        embeddings = self.embed(images)
        dim = self.centroids.shape[1]
        if embeddings.shape[1] != dim:
            raise ValueError(f"embedder gives {embeddings.shape[1]}-D embeddings, the gallery has dim {dim}")
        labels = labels.to(self.centroids.device)
        sums = torch.zeros_like(self.centroids).index_add_(0, labels, embeddings)
        counts = torch.bincount(labels, minlength=k)
        present = counts > 0
        self.centroids[present] = sums[present] / counts[present, None]
        self.enrolled |= present
        self._refresh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K), ``-scale`` times the Euclidean distance of each embedding to each centroid."""
        if not self._complete:
            missing = [name for name, done in zip(self.identities, self.enrolled.tolist(), strict=True) if not done]
            raise RuntimeError(f"identities not enrolled (no images given): {missing}")
        difference = self._embedding(x)[:, None, :] - self.centroids[None]
        return -self.scale * torch.linalg.vector_norm(difference, dim=-1)
