"""Synthetic distortions: one table, ``DISTORTIONS``, of 32 types x 5 levels: KADID-10k's 25
and 7 camera defects (low-light noise, under/over-exposure, wide-halo sharpening, and LIVE-MD
style combinations of two or three distortions).

Each entry is a :class:`Distortion`; call it as ``DISTORTIONS[name](img, level, rng)``.
``img`` is an RGB image, uint8 in [0, 255] or float in [0, 1], shape (H, W, 3); the result has
the same shape and dtype. ``level`` runs from 1 (mild) to 5 (severe); ``rng`` is a
``numpy.random.Generator`` (or an int seed), the only source of randomness, so a distortion is
deterministic for a given seed.

The KADID types and families follow KADID-10k (Lin, Hosu & Saupe, QoMEX 2019); the combinations
follow LIVE-MD (Jayaraman et al., 2012); the code is ours
(numpy, scipy.ndimage, Pillow, scikit-image colour conversions). Parameters were chosen so that
the full-reference proxy score of ``qfmiqm.data.synth`` falls with the level for every type;
docs/synth.md lists what each level does and the measured rank correlations.

Size-dependent effects (patch counts, colour-block size) are scaled by the image area relative
to KADID's 512x384 images, so a 224-pixel crop and a full photo get the same coverage.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from qfmiqm.data.colour import LUMA
from qfmiqm.errors import UsageError

LEVELS = (1, 2, 3, 4, 5)
#: Reference area for size-relative effects: KADID-10k's 512x384 images.
KADID_AREA = 512 * 384

RawFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Distortion:
    """One distortion type: a function of (float RGB image, parameter, rng) and 5 parameters.

    ``params[level - 1]`` is the strength at that level; ``unit`` says what the number means;
    ``kadid_id`` is the KADID-10k type number, None for the camera defects KADID lacks;
    ``pillow_feature`` names a Pillow codec the type needs (checked by :meth:`available`).
    """

    name: str
    family: str
    kadid_id: Optional[int]
    params: tuple[float, ...]
    unit: str
    fn: RawFn
    pillow_feature: Optional[str] = None

    def available(self) -> bool:
        """False when this Pillow build lacks the codec the distortion needs."""
        if self.pillow_feature is None:
            return True
        from PIL import features

        return bool(features.check(self.pillow_feature))

    def param(self, level: int) -> float:
        """The parameter used at ``level`` (1..5)."""
        if not isinstance(level, (int, np.integer)) or not 1 <= level <= len(self.params):
            raise UsageError(f"distortion level must be an integer 1..{len(self.params)}, got {level!r}")
        return self.params[int(level) - 1]

    def __call__(self, img: np.ndarray, level: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """Distort ``img`` (uint8 or float RGB) at ``level`` 1..5; same shape and dtype back."""
        p = self.param(level)
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        x, restore = _as_float(img)
        y = self.fn(x, p, rng)
        return restore(np.clip(y, 0.0, 1.0))


# --- conversions ---------------------------------------------------------------------------

def _as_float(img: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0, to_uint8
    if np.issubdtype(a.dtype, np.floating):
        dtype = a.dtype
        return a.astype(np.float32), lambda y: y.astype(dtype, copy=False)
    raise ValueError(f"expected uint8 or float pixels, got {a.dtype}")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8, rounded."""
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(to_uint8(x))


def _from_pil(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _lab(x: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(x)


def _rgb_from_lab(lab: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb

    with warnings.catch_warnings():  # out-of-gamut colours are clipped, which is the point
        warnings.simplefilter("ignore")
        return lab2rgb(lab).astype(np.float32)



# Full-range BT.601 YCbCr (JPEG's), on [0, 1] pixels.
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                dtype=np.float32)
_YCC_INV = np.linalg.inv(_YCC).astype(np.float32)


def _area_scale(x: np.ndarray) -> float:
    return x.shape[0] * x.shape[1] / KADID_AREA


def _filter_rgb(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel with ``kernel`` (reflected borders), through the FFT."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)), mode="reflect")
    return signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1)).astype(np.float32)


def _supersampled(size: int, inside: Callable[[np.ndarray, np.ndarray], np.ndarray], sub: int = 8) -> np.ndarray:
    """Kernel whose taps are the fraction of each pixel cell where ``inside(dx, dy)`` holds."""
    offsets = (np.arange(size * sub) + 0.5) / sub - size / 2.0
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    cover = inside(dx, dy).astype(np.float64).reshape(size, sub, size, sub).mean(axis=(1, 3))
    return cover / cover.sum()


# --- blur ----------------------------------------------------------------------------------

def gaussian_blur(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="reflect")


def lens_blur(x: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Out-of-focus blur: a uniform disc (pixel coverage anti-aliased) of the given radius."""
    size = 2 * int(np.ceil(radius)) + 1
    disc = _supersampled(size, lambda dx, dy: dx * dx + dy * dy <= radius * radius)
    return _filter_rgb(x, disc)


def motion_blur(x: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    """Camera shake along a straight line of ``length`` pixels at a random angle."""
    angle = rng.uniform(0.0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    size = 2 * int(np.ceil(length / 2)) + 3
    half = length / 2.0

    def on_segment(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        along = dx * c + dy * s
        across = -dx * s + dy * c
        return (np.abs(along) <= half) & (np.abs(across) <= 0.5)

    return _filter_rgb(x, _supersampled(size, on_segment))


# --- colour --------------------------------------------------------------------------------

def color_diffusion_gain(sigma: float) -> float:
    """The chroma gain :func:`color_diffusion` applies with a blur of ``sigma`` px (KADID amplifies
    far more: by 1, 3, 6, 8 and 12 at its five levels; docs/labels.md)."""
    return 1.0 + sigma / 16.0


def color_diffusion(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Colours bleed: the Lab chroma planes (a*, b*) are Gaussian-blurred with ``sigma`` and
    amplified (:func:`color_diffusion_gain`) so the smeared colour is visible; lightness is kept."""
    lab = _lab(x)
    chroma = ndimage.gaussian_filter(lab[..., 1:], sigma=(sigma, sigma, 0), mode="reflect")
    lab[..., 1:] = chroma * color_diffusion_gain(sigma)
    return _rgb_from_lab(lab)


def color_shift(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """Mis-registered green plane: shifted by ``shift`` px in a random direction, mostly at edges.

    The shifted plane is blended in with a weight that grows with the local edge strength
    (KADID's colour shift: colour fringes at edges). The weight's floor in flat regions rises
    with the shift (0.05 per px, at most 0.8), because past a few pixels a wider fringe alone
    stops looking worse and the misregistration has to spread to read as a stronger level.
    """
    gray = x @ LUMA
    edges = ndimage.gaussian_filter(np.hypot(*np.gradient(gray)), sigma=max(4.0, shift))
    lo, hi = np.percentile(edges, [1, 99])
    weight = np.clip((edges - lo) / max(hi - lo, 1e-6), min(0.8, 0.05 * shift), 1.0)
    angle = rng.uniform(0.0, 2 * np.pi)
    moved = ndimage.shift(x[..., 1], (shift * np.sin(angle), shift * np.cos(angle)), order=1, mode="reflect")
    y = x.copy()
    y[..., 1] = weight * moved + (1.0 - weight) * x[..., 1]
    return y


def color_quantization(x: np.ndarray, colors: float, rng: np.random.Generator) -> np.ndarray:
    """Palette of ``colors`` entries (median cut) with Floyd-Steinberg dithering."""
    im = _pil(x).quantize(colors=int(colors), method=Image.Quantize.MEDIANCUT,
                          dither=Image.Dither.FLOYDSTEINBERG)
    return _from_pil(im)


def desaturate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """HSV saturation multiplied by ``factor`` < 1 (0 = greyscale). KADID's colour saturation 1."""
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(x)
    hsv[..., 1] *= factor
    return hsv2rgb(hsv).astype(np.float32)


def oversaturate(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Lab chroma multiplied by ``factor`` > 1, clipped to the sRGB gamut. KADID's saturation 2."""
    lab = _lab(x)
    lab[..., 1:] *= factor
    return _rgb_from_lab(lab)


# --- compression ---------------------------------------------------------------------------

def _encode_decode(x: np.ndarray, **save: object) -> np.ndarray:
    buf = io.BytesIO()
    _pil(x).save(buf, **save)
    buf.seek(0)
    with Image.open(buf) as im:
        return _from_pil(im)


def jpeg2000(x: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """JPEG 2000 (OpenJPEG via Pillow, 9/7 wavelet) at a compression ratio of ``ratio``:1."""
    return _encode_decode(x, format="JPEG2000", quality_mode="rates", quality_layers=[float(ratio)],
                          irreversible=True)


def jpeg(x: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Baseline JPEG (libjpeg via Pillow, 4:2:0 chroma subsampling) at ``quality``."""
    return _encode_decode(x, format="JPEG", quality=int(quality), subsampling="4:2:0")


# --- noise ---------------------------------------------------------------------------------

def white_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, independent per RGB channel."""
    return x + rng.normal(0.0, sigma, x.shape).astype(np.float32)


def white_noise_ycbcr(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise added in YCbCr; the chroma planes get twice the luma's sigma."""
    ycc = x @ _YCC.T
    scale = np.array([0.5, 1.0, 1.0], dtype=np.float32) * sigma
    ycc += rng.normal(0.0, 1.0, x.shape).astype(np.float32) * scale
    return ycc @ _YCC_INV.T


def impulse_noise(x: np.ndarray, prob: float, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper: each channel value set to 0 or 1 with total probability ``prob``."""
    u = rng.random(x.shape, dtype=np.float32)
    y = x.copy()
    y[u < prob / 2] = 0.0
    y[u > 1.0 - prob / 2] = 1.0
    return y


def multiplicative_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Speckle: each value multiplied by (1 + n), n ~ N(0, sigma^2)."""
    return x * (1.0 + rng.normal(0.0, sigma, x.shape).astype(np.float32))


def denoise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Denoising artefacts: white noise of ``sigma``, then non-local means (waxy, smeared texture)."""
    from skimage.restoration import denoise_nl_means

    noisy = np.clip(x + rng.normal(0.0, sigma, x.shape).astype(np.float32), 0.0, 1.0)
    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                            patch_distance=6, channel_axis=-1).astype(np.float32)


# --- brightness ----------------------------------------------------------------------------

def _gamma(x: np.ndarray, g: float) -> np.ndarray:
    return np.power(np.clip(x, 0.0, 1.0), g)


def brighten(x: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """Tone curve x**gamma, gamma < 1: shadows and mid-tones lifted, highlights compressed."""
    return _gamma(x, gamma)


def darken(x: np.ndarray, gamma: float, rng: np.random.Generator) -> np.ndarray:
    """Tone curve x**gamma, gamma > 1: mid-tones and shadows pushed down."""
    return _gamma(x, gamma)


def mean_shift(x: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    """A constant ``shift`` added to every value, up or down (coin flip), clipped."""
    return x + shift * rng.choice((-1.0, 1.0))


# --- spatial -------------------------------------------------------------------------------

def jitter(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Every pixel replaced by a neighbour at a random offset, rounded N(0, sigma^2) per axis."""
    h, w = x.shape[:2]
    dy = np.rint(rng.normal(0.0, sigma, (h, w))).astype(np.intp)
    dx = np.rint(rng.normal(0.0, sigma, (h, w))).astype(np.intp)
    rows = np.clip(np.arange(h)[:, None] + dy, 0, h - 1)
    cols = np.clip(np.arange(w)[None, :] + dx, 0, w - 1)
    return x[rows, cols]


def non_eccentricity_patch(x: np.ndarray, count: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` (per 512x384 area) 16x16 patches copied onto a neighbouring spot up to 16 px away."""
    h, w = x.shape[:2]
    patch, reach = 16, 16
    if h <= patch + 2 * reach or w <= patch + 2 * reach:
        patch, reach = max(2, min(h, w) // 6), max(1, min(h, w) // 6)
    y = x.copy()
    for _ in range(max(1, int(round(count * _area_scale(x))))):
        r = int(rng.integers(reach, h - patch - reach + 1))
        c = int(rng.integers(reach, w - patch - reach + 1))
        dr, dc = 0, 0
        while dr == 0 and dc == 0:
            dr, dc = (int(v) for v in rng.integers(-reach, reach + 1, size=2))
        y[r + dr:r + dr + patch, c + dc:c + dc + patch] = x[r:r + patch, c:c + patch]
    return y


def pixelate(x: np.ndarray, block: float, rng: np.random.Generator) -> np.ndarray:
    """Mosaic of ``block`` x ``block`` pixel cells (box average down, nearest neighbour up)."""
    h, w = x.shape[:2]
    small = (max(1, int(round(w / block))), max(1, int(round(h / block))))
    im = _pil(x).resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.NEAREST)
    return _from_pil(im)


def quantization(x: np.ndarray, levels: float, rng: np.random.Generator) -> np.ndarray:
    """Posterisation: each channel cut into ``levels`` equally populated bins, each bin -> its mean."""
    y = np.empty_like(x)
    n = int(levels)
    for ch in range(x.shape[2]):
        v = x[..., ch].ravel()
        edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, n + 1)[1:-1]))
        idx = np.searchsorted(edges, v, side="right")
        means = np.bincount(idx, weights=v, minlength=len(edges) + 1) / np.maximum(
            np.bincount(idx, minlength=len(edges) + 1), 1)
        y[..., ch] = means[idx].reshape(x.shape[:2])
    return y


def color_block(x: np.ndarray, count: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` solid blocks of random colour (32 px at 512x384, scaled with the image side)."""
    h, w = x.shape[:2]
    side = int(np.clip(round(32 * np.sqrt(_area_scale(x))), 2, max(2, min(h, w) // 2)))
    y = x.copy()
    for _ in range(int(count)):
        r = int(rng.integers(0, h - side + 1))
        c = int(rng.integers(0, w - side + 1))
        y[r:r + side, c:c + side] = rng.random(3, dtype=np.float32)
    return y


# --- sharpness and contrast ----------------------------------------------------------------

def high_sharpen(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Over-sharpening: unsharp mask of strength ``amount`` on Lab lightness (halos, ringing)."""
    lab = _lab(x)
    lightness = lab[..., 0]
    detail = lightness - ndimage.gaussian_filter(lightness, sigma=1.0, mode="reflect")
    lab[..., 0] = np.clip(lightness + amount * detail, 0.0, 100.0)
    return _rgb_from_lab(lab)


def contrast_change(x: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Contrast lowered (coin flip: or raised by the inverse factor, with clipping) around the
    mean luminance; ``factor`` < 1 is the reduction."""
    mean = float((x @ LUMA).mean())
    gain = factor if rng.random() < 0.5 else 1.0 / factor
    return mean + (x - mean) * gain


# --- camera defects (not in KADID-10k) ------------------------------------------------------
# Authentic-distortion types (issue #22): what a real camera does wrong, modelled in linear light
# where the physics happens. Defocus and camera-motion blur are KADID's lens_blur (disc PSF) and
# motion_blur (line PSF at a random angle) above, and are reused here rather than duplicated.

#: Sensor read noise in electrons (photo-electrons per unit of full-scale signal = ``photons``);
#: a phone sensor's is ~1-3 e-, and it matters only where few photons arrive (shadows, low light).
READ_NOISE_E = 2.0
#: Linear-light black point a camera's tone curve cuts at: signals below it render as pure black.
BLACK_POINT = 0.004
#: JPEG quality a phone writes its photos at.
CAMERA_JPEG_QUALITY = 85


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] values -> linear light (IEC 61966-2-1)."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(lin: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB-encoded [0, 1] (values outside [0, 1] clipped first)."""
    lin = np.clip(lin, 0.0, 1.0)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055).astype(np.float32)


#: Above this mean count the Poisson law is drawn as its Gaussian approximation (same mean and
#: variance; the skew it drops, 1 / sqrt(mean), is under 0.19 there).
POISSON_EXACT_BELOW = 30.0


def poisson_quantile(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Poisson counts with means ``lam`` at cumulative probabilities ``u`` (inverse CDF).

    Counts rise with ``u``, so one set of uniforms gives coupled draws at every exposure: the
    levels share one noise field and only its strength changes. Exact by CDF search below
    :data:`POISSON_EXACT_BELOW`; above it ``lam + sqrt(lam) * Phi^-1(u)``. Much faster than
    ``scipy.stats.poisson.ppf``.
    """
    from scipy.special import ndtri

    lam = np.asarray(lam, dtype=np.float64)
    u = np.clip(np.asarray(u, dtype=np.float64), 1e-12, 1.0 - 1e-12)
    counts = lam + np.sqrt(lam) * ndtri(u)
    small = lam < POISSON_EXACT_BELOW
    if small.any():
        ls, us = lam[small], u[small]
        pmf = np.exp(-ls)
        cdf = pmf.copy()
        k = np.zeros_like(ls)
        # P(count > 100 | mean < 30) < 1e-20: the cap only guards against rounding at u ~ 1.
        for i in range(1, 101):
            below = cdf < us
            if not below.any():
                break
            k += below
            pmf *= ls / i
            cdf += pmf
        counts[small] = k
    return counts


def _poisson_gaussian(lin: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor signal for linear scene light ``lin``: Poisson photon counts (``photons`` at full
    scale) plus Gaussian read noise (:data:`READ_NOISE_E`), back in full-scale units, clipped
    at black and at saturation."""
    u = rng.random(lin.shape)
    z = rng.standard_normal(lin.shape)
    counts = poisson_quantile(lin * photons, u)
    return np.clip((counts + READ_NOISE_E * z) / photons, 0.0, 1.0).astype(np.float32)


#: Immerkaer (1996) noise kernel: the difference of two Laplacians, blind to planes and ramps.
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


def noise_sigma(plane: np.ndarray) -> float:
    """Blind estimate of white-noise sigma in one image plane: the median absolute response to
    :data:`_NOISE_KERNEL` (norm 6), scaled as for a Gaussian; the median ignores most edges."""
    response = signal.convolve2d(plane, _NOISE_KERNEL, mode="valid")
    return float(np.median(np.abs(response)) / (0.6745 * 6.0))


def _camera_denoise(x: np.ndarray) -> np.ndarray:
    """A phone ISP's noise reduction on sRGB [0, 1]: mild non-local means on luma (h = 0.6 sigma,
    sigma estimated blind from the image, so some grain survives) and a strong blur of the
    chroma planes (colour noise is what a camera removes hardest, leaving blotchy colour)."""
    from skimage.restoration import denoise_nl_means

    ycc = x @ _YCC.T
    sigma = noise_sigma(ycc[..., 0])
    if sigma > 1e-4:
        # A 9x9 search window: a phone's budget, and half the time of the 13x13 used by `denoise`.
        ycc[..., 0] = denoise_nl_means(ycc[..., 0], h=0.6 * sigma, sigma=sigma, fast_mode=True,
                                       patch_size=5, patch_distance=4)
    ycc[..., 1:] = ndimage.gaussian_filter(ycc[..., 1:], sigma=(2.0, 2.0, 0), mode="reflect")
    return ycc @ _YCC_INV.T


def sensor_grain(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian sensor noise in linear light with ``photons`` photo-electrons at full
    scale, with no denoise and no JPEG (tools/camera_pristine.py: the grain of a good photo)."""
    return linear_to_srgb(_poisson_gaussian(srgb_to_linear(x), photons, rng))


def lowlight_noise(x: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Low-light capture as a phone renders it: Poisson-Gaussian sensor noise in linear light
    with ``photons`` photo-electrons at full scale (fewer = darker scene, more gain), then the
    ISP's denoise (:func:`_camera_denoise`) and JPEG at quality 85."""
    noisy = linear_to_srgb(_poisson_gaussian(srgb_to_linear(x), photons, rng))
    return jpeg(np.clip(_camera_denoise(noisy), 0.0, 1.0), CAMERA_JPEG_QUALITY, rng)


def underexposure(x: np.ndarray, stops: float, rng: np.random.Generator) -> np.ndarray:
    """Exposure ``stops`` EV too short: linear light scaled by 2**-stops, then the camera's black
    point (:data:`BLACK_POINT`) cut off so the shadows clip to black, then sRGB-encoded."""
    lin = srgb_to_linear(x) * 2.0 ** -stops
    return linear_to_srgb(np.maximum(lin - BLACK_POINT, 0.0) / (1.0 - BLACK_POINT))


def overexposure(x: np.ndarray, stops: float, rng: np.random.Generator) -> np.ndarray:
    """Exposure ``stops`` EV too long: linear light scaled by 2**stops and clipped per channel at
    full scale (the sensor saturates: highlights blow out to white or shift hue), sRGB-encoded."""
    return linear_to_srgb(srgb_to_linear(x) * 2.0 ** stops)


def oversharpen(x: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """A camera's over-eager sharpening: unsharp mask of strength ``amount`` with a wide radius
    (Gaussian sigma 2.5 px) on the sRGB luma, so every edge gets bright and dark halo bands a few
    pixels wide; unlike ``high_sharpen`` (sigma 1, Lab L: fine ringing and crunch)."""
    ycc = x @ _YCC.T
    luma = ycc[..., 0]
    ycc[..., 0] = luma + amount * (luma - ndimage.gaussian_filter(luma, sigma=2.5, mode="reflect"))
    return ycc @ _YCC_INV.T


# Multiple distortions. Each step (1..5) raises every stage at once, so the combined severity
# rises with the step; the tables are the per-step parameters of each stage.

#: LIVE-MD (Jayaraman et al. 2012) part 1, blur then JPEG: Gaussian sigma px, JPEG quality.
BLUR_JPEG_STEPS = {"sigma": (0.8, 1.2, 1.7, 2.4, 3.2), "quality": (60, 40, 27, 18, 12)}
#: LIVE-MD part 2, blur then white noise: Gaussian sigma px, noise sigma (pixels in [0, 1]).
BLUR_NOISE_STEPS = {"sigma": (0.8, 1.2, 1.7, 2.4, 3.2), "noise": (0.015, 0.025, 0.04, 0.06, 0.085)}
#: Three camera defects in capture order: blur (defocus disc radius px or motion length px,
#: chosen by the rng), exposure error (EV, under or over by the rng), low-light capture
#: (photo-electrons at full scale, with the ISP denoise and JPEG of :func:`lowlight_noise`).
CAMERA_COMBO_STEPS = {"defocus": (0.8, 1.3, 2.0, 3.0, 4.5), "motion": (2, 4, 7, 11, 16),
                      "stops": (0.3, 0.6, 1.0, 1.5, 2.0), "photons": (600, 300, 150, 70, 30)}


def _step(step: float) -> int:
    return int(step) - 1


def blur_jpeg(x: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    """LIVE-MD part 1: Gaussian blur, then JPEG (4:2:0), both stronger at every step."""
    i = _step(step)
    return jpeg(gaussian_blur(x, BLUR_JPEG_STEPS["sigma"][i], rng), BLUR_JPEG_STEPS["quality"][i], rng)


def blur_noise(x: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    """LIVE-MD part 2: Gaussian blur, then additive white Gaussian noise per RGB channel."""
    i = _step(step)
    return white_noise(gaussian_blur(x, BLUR_NOISE_STEPS["sigma"][i], rng), BLUR_NOISE_STEPS["noise"][i], rng)


def camera_combo(x: np.ndarray, step: float, rng: np.random.Generator) -> np.ndarray:
    """Blur -> exposure error -> low-light capture (noise, ISP denoise, JPEG q85), in that order.

    The kind of blur (defocus or motion) and the exposure direction (under or over) are drawn
    first from ``rng``, so one random stream picks the same combination at every step.
    """
    i = _step(step)
    defocused, under = rng.random() < 0.5, rng.random() < 0.5
    if defocused:
        y = lens_blur(x, CAMERA_COMBO_STEPS["defocus"][i], rng)
    else:
        y = motion_blur(x, CAMERA_COMBO_STEPS["motion"][i], rng)
    y = (underexposure if under else overexposure)(y, CAMERA_COMBO_STEPS["stops"][i], rng)
    return lowlight_noise(y, CAMERA_COMBO_STEPS["photons"][i], rng)


# --- the table -----------------------------------------------------------------------------

def _d(name: str, family: str, kadid_id: Optional[int], params: Sequence[float], unit: str, fn: RawFn,
       pillow_feature: Optional[str] = None) -> Distortion:
    return Distortion(name, family, kadid_id, tuple(float(p) for p in params), unit, fn, pillow_feature)


#: name -> Distortion: KADID-10k's 25 types in KADID order, then the camera defects (no KADID
#: number). Adding a type is adding one line here; new types go at the end so the order of the
#: existing ones (labels.csv sorting, --list-types) does not change.
DISTORTIONS: dict[str, Distortion] = {d.name: d for d in (
    _d("gaussian_blur", "blur", 1, (0.7, 1.3, 2.2, 3.6, 6.0), "sigma px", gaussian_blur),
    _d("lens_blur", "blur", 2, (1, 2, 3.5, 6, 10), "disc radius px", lens_blur),
    _d("motion_blur", "blur", 3, (3, 7, 13, 22, 36), "line length px", motion_blur),
    _d("color_diffusion", "color", 4, (2, 5, 9, 15, 24), "a*b* blur sigma px", color_diffusion),
    _d("color_shift", "color", 5, (1, 3, 6, 11, 20), "green shift px", color_shift),
    _d("color_quantization", "color", 6, (64, 32, 16, 8, 4), "palette colours", color_quantization),
    _d("desaturate", "color", 7, (0.7, 0.5, 0.3, 0.15, 0.0), "saturation factor", desaturate),
    _d("oversaturate", "color", 8, (1.3, 1.7, 2.2, 3.0, 4.0), "chroma factor", oversaturate),
    _d("jpeg2000", "compression", 9, (10, 25, 60, 150, 400), "compression ratio", jpeg2000,
       pillow_feature="jpg_2000"),
    _d("jpeg", "compression", 10, (43, 30, 20, 8, 4), "JPEG quality", jpeg),
    _d("white_noise", "noise", 11, (0.03, 0.045, 0.06, 0.08, 0.11), "sigma", white_noise),
    _d("white_noise_ycbcr", "noise", 12, (0.02, 0.035, 0.05, 0.07, 0.09), "chroma sigma", white_noise_ycbcr),
    _d("impulse_noise", "noise", 13, (0.002, 0.005, 0.01, 0.02, 0.04), "probability", impulse_noise),
    _d("multiplicative_noise", "noise", 14, (0.03, 0.08, 0.14, 0.22, 0.35), "sigma", multiplicative_noise),
    _d("denoise", "noise", 15, (0.03, 0.06, 0.1, 0.16, 0.25), "noise sigma", denoise),
    _d("brighten", "brightness", 16, (0.85, 0.67, 0.5, 0.35, 0.22), "gamma", brighten),
    _d("darken", "brightness", 17, (1.25, 1.6, 2.1, 2.9, 4.2), "gamma", darken),
    _d("mean_shift", "brightness", 18, (0.04, 0.09, 0.15, 0.23, 0.33), "|offset|", mean_shift),
    _d("jitter", "spatial", 19, (0.3, 0.7, 1.3, 2.2, 3.5), "offset sigma px", jitter),
    _d("non_eccentricity_patch", "spatial", 20, (20, 60, 130, 240, 400), "patches per 512x384",
       non_eccentricity_patch),
    _d("pixelate", "spatial", 21, (2, 3, 5, 8, 12), "cell px", pixelate),
    _d("quantization", "spatial", 22, (24, 12, 8, 5, 3), "levels per channel", quantization),
    _d("color_block", "spatial", 23, (1, 3, 6, 10, 15), "blocks", color_block),
    _d("high_sharpen", "sharpness", 24, (1, 2, 3, 6, 12), "unsharp amount", high_sharpen),
    _d("contrast_change", "contrast", 25, (0.8, 0.65, 0.5, 0.35, 0.2), "contrast factor", contrast_change),
    # camera defects (issue #22); defocus and camera motion are lens_blur and motion_blur above
    _d("lowlight_noise", "noise", None, (400, 150, 60, 25, 10), "photo-electrons at full scale", lowlight_noise),
    _d("underexposure", "brightness", None, (0.7, 1.2, 1.8, 2.5, 3.3), "EV under", underexposure),
    _d("overexposure", "brightness", None, (0.5, 1.0, 1.6, 2.3, 3.0), "EV over", overexposure),
    _d("oversharpen", "sharpness", None, (0.8, 1.5, 2.5, 4.0, 6.0), "unsharp amount (sigma 2.5 px)", oversharpen),
    _d("blur_jpeg", "multiple", None, (1, 2, 3, 4, 5), "step (blur sigma + JPEG quality)", blur_jpeg),
    _d("blur_noise", "multiple", None, (1, 2, 3, 4, 5), "step (blur sigma + noise sigma)", blur_noise),
    _d("camera_combo", "multiple", None, (1, 2, 3, 4, 5), "step (blur + exposure + low light)", camera_combo),
)}


def distortion_names() -> list[str]:
    """All registered distortion names: KADID order, then the camera defects."""
    return list(DISTORTIONS)


def available_names() -> list[str]:
    """The distortion names this installation can run (JPEG 2000 needs Pillow with OpenJPEG)."""
    return [name for name, d in DISTORTIONS.items() if d.available()]


def get_distortion(name: str) -> Distortion:
    """Look a distortion up by name; UsageError listing the valid names otherwise, or saying
    which codec is missing."""
    try:
        d = DISTORTIONS[name]
    except KeyError:
        raise UsageError(f"unknown distortion type {name!r}; choose from: {', '.join(DISTORTIONS)}") from None
    if not d.available():
        raise UsageError(f"distortion type {name!r} needs Pillow built with the {d.pillow_feature!r} codec, "
                         "which this Pillow lacks; leave it out of --types")
    return d


def distort(img: np.ndarray, name: str, level: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Apply distortion ``name`` at ``level`` (1..5) to ``img``; same shape and dtype back."""
    return get_distortion(name)(img, level, rng)
