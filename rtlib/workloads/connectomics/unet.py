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

CHANNELS = ("boundary", "foreground", "nontarget")
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


def scale_factor(pixel_size_nm: float, working_pixel_nm: float) -> int:
    """In-plane downsampling factor (an integer >= 1) that brings ``pixel_size_nm`` nearest the network's working
    pixel size: 4 nm data is read at 8 nm (factor 2), 8-16 nm as it is."""
    return max(1, int(round(working_pixel_nm / pixel_size_nm)))


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """(z, y, x) mean over factor x factor in-plane cells (sides must be multiples of factor)."""
    if factor == 1:
        return image.astype(np.float32)
    z, h, w = image.shape
    return image.astype(np.float32).reshape(z, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def upsample(prob: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """(c, z, y, x) coarse maps bilinearly interpolated back to the fine grid (cell centres aligned), cut to ``shape``.

    Each fine pixel reads only its two nearest coarse cells per axis, so blocks with a halo give the same values."""
    if factor == 1:
        return prob[..., : shape[0], : shape[1]]
    out = prob
    for axis, n in ((-2, shape[0]), (-1, shape[1])):
        coarse_n = out.shape[axis]
        pos = np.clip((np.arange(n) + 0.5) / factor - 0.5, 0, coarse_n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, coarse_n - 1)
        t = (pos - lo).astype(np.float32)
        a, b = np.take(out, lo, axis=axis), np.take(out, hi, axis=axis)
        shape_t = [1] * out.ndim
        shape_t[axis] = n
        out = a + (b - a) * t.reshape(shape_t)
    return out


def predict_array(model, image: np.ndarray, factor: int = 1) -> np.ndarray:
    """(2, z, y, x) float32 probabilities of one block in one pass, read ``factor`` times coarser in-plane
    (in-plane sides padded to the pooling times the factor)."""
    torch = _torch()
    step = 4 * factor
    pad = [(0, 0)] + [(0, (-n) % step) for n in image.shape[1:]]
    # reflection needs a side longer than the pad; an edge copy is the same rule for any block
    data = normalize(downsample(np.pad(image, pad, mode="edge"), factor))
    with torch.inference_mode():
        prob = torch.sigmoid(model(torch.from_numpy(np.ascontiguousarray(data))[None, None]))[0].numpy()
    return upsample(prob, factor, image.shape[1:])


def predict(model, image: np.ndarray, block_shape: tuple[int, int, int] | None = None, factor: int = 1) -> np.ndarray:
    """(2, z, y, x) probabilities of a whole in-memory volume; with ``block_shape``, block by block with overlaps
    (the same numbers, in bounded memory: see ``blockwise``)."""
    if block_shape is None:
        return predict_array(model, image, factor)
    from .blockwise import BlockGrid, predict_halo

    grid = BlockGrid(image.shape, tuple(block_shape))
    grid.check_predictable(factor)
    out = np.zeros((len(CHANNELS), *image.shape), dtype=np.float32)
    for _, core in grid.cores():
        outer, inner = grid.outer(core, predict_halo(factor))
        out[(slice(None), *core)] = predict_array(model, image[outer], factor)[(slice(None), *inner)]
    return out
