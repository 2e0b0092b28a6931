"""Low light: gamma darkening plus Poisson-Gaussian sensor noise."""

from __future__ import annotations

import numpy as np

from datprl_edge.data.degrade._common import as_rng, check_image, check_severity, finish, lerp


def lowlight(image, severity: float = 0.5, seed=None) -> np.ndarray:
    """D = beta (alpha J)^gamma, then z = Poisson(k D) / k + N(0, sigma_r^2).

    Recipe: the low-light synthesis of Lv et al. (IJCV 2021, "Attention guided low-light image
    enhancement with a large scale low-light simulation dataset"): gamma darkening followed by
    Poisson-Gaussian noise, the heteroscedastic sensor model of Foi et al. (IEEE TIP 2008).
    Severity 0..1: gamma 1.5..4.5 (default 3), photons at full scale k = 10^(3.5..1.5), read
    noise 0.5..3 (of 255). alpha in [0.9, 1] and beta in [0.5, 1] are drawn per image.
    """
    img = check_image(image)
    s = check_severity(severity)
    rng = as_rng(seed)
    alpha, beta = rng.uniform(0.9, 1.0), rng.uniform(0.5, 1.0)
    dark = beta * (alpha * img) ** lerp(1.5, 4.5, s)
    k = 10.0 ** lerp(3.5, 1.5, s)
    read = lerp(0.5, 3.0, s) / 255.0
    return finish(rng.poisson(dark * k) / k + rng.normal(0.0, read, img.shape))
