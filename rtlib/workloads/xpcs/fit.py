"""Fitting g2(t) = baseline + β exp(-2 (t/τ)^γ) per ROI, with parameter errors.

γ = 1 (simple exponential) unless ``stretched``. Points are weighted by their
error bars when all are finite and positive. A ROI whose fit fails, or has
too few finite points, gets NaN parameters and a reason; it never fails the run.

A fit that converges is still only reported where the data can support it.
Otherwise τ and β (and their errors, and γ) are NaN and the ROI carries a
flag saying why (``FLAGS``): τ below the first delay (the decay, if any, is
over before the first point, so β is an extrapolation: pure noise often fits
as β in the thousands at τ ~ 1 µs), τ above the last delay (no decay within
the record; also when g2 stays above 1 by more than its error bars at every
delay, however the fit placed τ), β above 1 by more than three of its errors
(or above 2: more than full speckle contrast), or a decay no larger than its own error (β < 3 σ_β: g2 is flat
within its error bars).

The g2 points of one ROI are not independent: every delay is formed from the
same pixels and frames, so the fit's covariance (which assumes independent
points) misjudges the parameter errors. Given the ROI's g2 with each
jackknife group of pixels left out, the errors are instead the jackknife
spread of the parameters fitted to those curves, which carries the
correlation between delays.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

PARAMETERS = ("tau_s", "beta", "baseline", "gamma")

# Why a ROI has no τ; "" when it has one.
FLAGS = {
    "too_few_points": "too few finite g2 points to fit",
    "fit_failed": "the fit did not converge",
    "tau_below_range": "τ below the first delay: the data cannot tell τ or β",
    "tau_above_range": "τ above the last delay: no decay within the delay range",
    "beta_above_1": "β above 1 beyond its error: more than full speckle contrast",
    "no_decay": "no decay larger than its error (β < 3 σ_β): g2 is flat",
}
MAX_BETA = 1.0
MIN_BETA_SIGNIFICANCE = 3.0


def g2_model(t: np.ndarray, tau_s: float, beta: float, baseline: float, gamma: float = 1.0) -> np.ndarray:
    return baseline + beta * np.exp(-2.0 * np.power(np.asarray(t) / tau_s, gamma))


def g2_jacobian(t: np.ndarray, tau_s: float, beta: float, baseline: float, gamma: float = 1.0) -> np.ndarray:
    """∂g2/∂(τ, β, baseline, γ), (len(t), 4): analytic, so a fit needs no finite differences."""
    x = np.asarray(t) / tau_s
    power = np.power(x, gamma)
    decay = np.exp(-2.0 * power)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_x = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), 0.0)
    return np.column_stack([beta * decay * 2.0 * gamma * power / tau_s, decay, np.ones_like(x),
                            -2.0 * beta * decay * power * log_x])


@dataclass
class FitResult:
    values: dict[str, np.ndarray]  # parameter -> (rois,)
    errors: dict[str, np.ndarray]
    ok: np.ndarray  # (rois,) bool
    messages: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # per ROI, a key of FLAGS or "" when τ is reported


def fit_g2(delay_s: np.ndarray, g2: np.ndarray, g2_err: np.ndarray, stretched: bool = False,
           jackknife: np.ndarray | None = None) -> FitResult:
    """Fit every ROI's column of ``g2`` (delays, rois). ``jackknife`` (groups, delays, rois): the same g2 with
    each group of pixels left out; when given, the parameter errors are the jackknife errors of the fits."""
    rois = g2.shape[1]
    values = {p: np.full(rois, np.nan) for p in PARAMETERS}
    errors = {p: np.full(rois, np.nan) for p in PARAMETERS}
    ok = np.zeros(rois, bool)
    messages = []
    flags = ["" for _ in range(rois)]
    free = 4 if stretched else 3
    for k in range(rois):
        y, s = g2[:, k], g2_err[:, k]
        use = np.isfinite(y)
        if use.sum() <= free:
            messages.append(f"ROI {k}: {int(use.sum())} finite g2 points, too few to fit")
            flags[k] = "too_few_points"
            continue
        t, y, s = delay_s[use], y[use], s[use]
        sigma = s if np.all(np.isfinite(s) & (s > 0)) else None
        baseline0 = float(np.median(y[-max(2, len(y) // 5):]))
        beta0 = max(float(y[0] - baseline0), 1e-3)
        # Start τ where g2 has fallen to half of its initial excess (1/e² point of the decay is t = τ).
        below = np.flatnonzero(y - baseline0 < 0.5 * beta0)
        tau0 = float(t[below[0]]) if len(below) else float(t[-1])
        p0 = [tau0, beta0, baseline0] + ([1.0] if stretched else [])
        lower = [t[0] * 1e-3, 0.0, -np.inf] + ([0.1] if stretched else [])
        upper = [t[-1] * 1e3, np.inf, np.inf] + ([3.0] if stretched else [])
        if stretched:
            model, jac = g2_model, g2_jacobian
        else:
            def model(t, tau, b, c):
                return g2_model(t, tau, b, c, 1.0)

            def jac(t, tau, b, c):
                return g2_jacobian(t, tau, b, c, 1.0)[:, :3]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                popt, pcov = curve_fit(model, t, y, p0=p0, sigma=sigma, absolute_sigma=sigma is not None,
                                       bounds=(lower, upper), maxfev=5000, jac=jac)
        except (RuntimeError, ValueError) as err:
            messages.append(f"ROI {k}: fit failed ({err})")
            flags[k] = "fit_failed"
            continue
        perr = np.sqrt(np.clip(np.diag(pcov), 0, None))
        if jackknife is not None:
            perr = _jackknife_errors(model, jac, t, jackknife[:, use, k], sigma, popt, lower, upper, perr)
        for name, v, e in zip(PARAMETERS, popt, perr):
            values[name][k], errors[name][k] = v, e
        if not stretched:
            values["gamma"][k], errors["gamma"][k] = 1.0, 0.0
        flag = unsupported(t, values["tau_s"][k], values["beta"][k], errors["beta"][k])
        if flag in ("tau_below_range", "no_decay") and _correlated_throughout(y, s):
            flag = "tau_above_range"
        if flag:
            messages.append(f"ROI {k}: {FLAGS[flag]} (fitted τ = {values['tau_s'][k]:.3g} s, "
                            f"β = {values['beta'][k]:.3g} ± {errors['beta'][k]:.2g}); not reported")
            flags[k] = flag
            for name in ("tau_s", "beta", "gamma"):
                values[name][k] = errors[name][k] = np.nan
            continue
        ok[k] = True
    return FitResult(values, errors, ok, messages, flags)


def _correlated_throughout(g2: np.ndarray, g2_err: np.ndarray) -> bool:
    """g2 - 1 above three of its error bars at every delay: correlation that has not decayed by the last delay
    (dynamics slower than the record), as opposed to the flat g2 = 1 of a sample without dynamics."""
    usable = np.isfinite(g2_err) & (g2_err > 0)
    if not usable.any():
        return False
    return bool(np.all(g2[usable] - 1.0 > 3.0 * g2_err[usable]))


def unsupported(delay_s: np.ndarray, tau_s: float, beta: float, beta_err: float) -> str:
    """The key of FLAGS saying why a converged fit's τ and β are not supported by the delays fitted, or ""."""
    if tau_s < delay_s[0]:
        return "tau_below_range"
    if tau_s > delay_s[-1]:
        return "tau_above_range"
    if beta > MAX_BETA + MIN_BETA_SIGNIFICANCE * beta_err or beta > 2 * MAX_BETA:  # above 1 beyond its error
        return "beta_above_1"
    if not beta > MIN_BETA_SIGNIFICANCE * beta_err:  # also catches a NaN error
        return "no_decay"
    return ""


def _jackknife_errors(model, jac, t, curves, sigma, popt, lower, upper, fallback) -> np.ndarray:
    """sqrt((m-1)/m Σ (p_j - mean p)²) over the m left-out curves that fit; ``fallback`` if fewer than 2 do."""
    fitted = []
    for y in curves:
        if not np.all(np.isfinite(y)):
            continue  # an empty group (a ROI with fewer pixels than groups)
        try:
            with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
                warnings.simplefilter("ignore", OptimizeWarning)
                # Levenberg-Marquardt from the whole ROI's solution, unbounded: each left-out curve is close to the
                # whole one, and MINPACK takes a fraction of the bounded solver's time; a solution outside the
                # bounds is dropped.
                p, _ = curve_fit(model, t, y, p0=popt, sigma=sigma, absolute_sigma=sigma is not None, maxfev=2000,
                                 jac=jac)
            if np.all(p >= lower) and np.all(p <= upper):
                fitted.append(p)
        except (RuntimeError, ValueError):
            continue
    if len(fitted) < 2:
        return fallback
    fitted = np.array(fitted)
    m = len(fitted)
    return np.sqrt((m - 1) / m * ((fitted - fitted.mean(axis=0)) ** 2).sum(axis=0))
