"""A small anisotropic 3D U-Net predicting membrane boundaries and neuron foreground, and block-wise inference.

Serial-section EM is ~2.5x coarser in z than in-plane, so the first level
convolves in-plane only and pooling never halves z (as in the networks of
Lee et al. 2017 and Funke et al. 2019, on a small scale). Two output
channels, each a probability after a sigmoid: ``boundary`` (a membrane,
between neurons or around one) and ``foreground`` (inside some neuron).
Inference of a volume larger than memory runs block by block with overlaps
as wide as the receptive field (``blockwise``), giving the same numbers.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np

CHANNELS = ("boundary", "foreground")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "unet_em.pt"
_FEATURES = (8, 16, 32)


def _torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - torch is a dependency, but a broken install says so clearly
        raise RuntimeError("the connectomics workload needs PyTorch: pip install torch==2.13.0") from err
    return torch


def build_unet():
    torch = _torch()
    nn = torch.nn

    def block(cin, cout, kernel):
        pad = tuple(k // 2 for k in kernel)
        return nn.Sequential(
            nn.Conv3d(cin, cout, kernel, padding=pad), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, kernel, padding=pad), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
        )

    class UNet3D(nn.Module):
        def __init__(self):
            super().__init__()
            f1, f2, f3 = _FEATURES
            self.enc1 = block(1, f1, (1, 3, 3))
            self.enc2 = block(f1, f2, (3, 3, 3))
            self.bottom = block(f2, f3, (3, 3, 3))
            self.up2 = nn.ConvTranspose3d(f3, f2, (1, 2, 2), stride=(1, 2, 2))
            self.dec2 = block(2 * f2, f2, (3, 3, 3))
            self.up1 = nn.ConvTranspose3d(f2, f1, (1, 2, 2), stride=(1, 2, 2))
            self.dec1 = block(2 * f1, f1, (3, 3, 3))
            self.head = nn.Conv3d(f1, len(CHANNELS), 1)
            self.pool = nn.MaxPool3d((1, 2, 2))

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            b = self.bottom(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
            return self.head(d1)  # logits

    return UNet3D()


def normalize(image: np.ndarray) -> np.ndarray:
    """8-bit EM to the network's input range; fixed, so blocks of one volume are treated alike."""
    return (image.astype(np.float32) - 128.0) / 48.0


def load_model(weights: Path | None = None):
    torch = _torch()
    path = Path(weights) if weights else DEFAULT_WEIGHTS
    if not path.is_file():
        from ...errors import ParameterError

        raise ParameterError(f"U-Net weights {path} not found; train them with `rtlib train em` or pass weights=PATH")
    model = build_unet()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()
    return model


def predict_array(model, image: np.ndarray) -> np.ndarray:
    """(2, z, y, x) float32 probabilities of one block in one pass (in-plane sides padded to the pooling)."""
    torch = _torch()
    data = normalize(image)
    pad = [(0, 0)] + [(0, (-n) % 4) for n in data.shape[1:]]
    # reflection needs a side longer than the pad; an edge copy is the same rule for any block
    data = np.pad(data, pad, mode="edge")
    with torch.inference_mode():
        prob = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(data))[None, None]))[0].numpy()
    return prob[:, :, : image.shape[1], : image.shape[2]]


def predict(model, image: np.ndarray, block_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """(2, z, y, x) probabilities of a whole in-memory volume; with ``block_shape``, block by block with overlaps
    (the same numbers, in bounded memory: see ``blockwise``)."""
    if block_shape is None:
        return predict_array(model, image)
    from .blockwise import PREDICT_HALO, BlockGrid

    grid = BlockGrid(image.shape, tuple(block_shape))
    grid.check_predictable()
    out = np.zeros((len(CHANNELS), *image.shape), dtype=np.float32)
    for _, core in grid.cores():
        outer, inner = grid.outer(core, PREDICT_HALO)
        out[(slice(None), *core)] = predict_array(model, image[outer])[(slice(None), *inner)]
    return out
