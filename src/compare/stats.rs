//! The two-sample statistics the judge rests on: the Mann-Whitney U (Wilcoxon rank-sum)
//! test with its normal approximation, tie correction and continuity correction; the
//! Hodges-Lehmann estimate of the location shift (the median of the pairwise
//! differences) and its distribution-free confidence interval. The test and the interval
//! are R's `wilcox.test(x, y, exact = FALSE, correct = TRUE, conf.int = TRUE)`, which
//! Kayenta's NetflixACAJudge ported to Scala: the interval's ends are the shifts `d` at
//! which the standardized rank-sum statistic of `x - d` against `y` crosses ±z(α/2). That statistic is a step function of
//! `d`, changing only at the pairwise differences `x_i - y_j`, so the crossings are
//! found exactly among them (R finds them with `uniroot`, to about 1e-4).

/// The standard normal distribution function Φ.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Φ⁻¹(p), by bisection on Φ (monotone): exact to the last bit that matters here,
/// with no table of coefficients to get wrong.
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The result of comparing `x` (the candidate) with `y` (the baseline).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// R's `W`: the rank sum of `x` less its minimum, `n_x (n_x + 1) / 2` (Mann-Whitney's
    /// U of `x`).
    pub u: f64,
    /// Two-sided, normal approximation with tie and continuity corrections.
    pub p_value: f64,
    /// The Hodges-Lehmann estimate of the shift `x - y`: the median of `x_i - y_j`.
    pub estimate: f64,
    /// The confidence interval of the shift at the level asked for.
    pub interval: (f64, f64),
}

/// Why the test cannot be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("a sample is empty")]
    Empty,
    #[error("a sample holds a value that is not a number")]
    NotANumber,
    #[error("every observation is tied: the statistic has no spread")]
    AllTied,
}

/// Average ranks (1-based) of `values`, ties sharing the mean of their ranks, and the
/// sum over tie groups of `t³ - t`.
fn ranks(values: &[f64]) -> (Vec<f64>, f64) {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut ties = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in &order[i..=j] {
            ranks[*k] = rank;
        }
        ties += t * t * t - t;
        i = j + 1;
    }
    (ranks, ties)
}

/// The continuity-corrected, standardized statistic of `x - shift` against `y`, less
/// `quantile` (R's `wdiff`): positive while `x - shift` still ranks above `y`.
fn standardized(x: &[f64], y: &[f64], shift: f64, quantile: f64) -> Result<f64, StatsError> {
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let all: Vec<f64> = x.iter().map(|v| v - shift).chain(y.iter().copied()).collect();
    let (r, ties) = ranks(&all);
    let dz = r[..x.len()].iter().sum::<f64>() - nx * (nx + 1.0) / 2.0 - nx * ny / 2.0;
    let correction = if dz > 0.0 {
        0.5
    } else if dz < 0.0 {
        -0.5
    } else {
        0.0
    };
    let sigma = ((nx * ny / 12.0) * ((nx + ny + 1.0) - ties / ((nx + ny) * (nx + ny - 1.0)))).sqrt();
    if sigma == 0.0 {
        return Err(StatsError::AllTied);
    }
    Ok((dz - correction) / sigma - quantile)
}

/// The shift at which [`standardized`] crosses `quantile`. Between two neighbouring
/// pairwise differences the statistic is constant, so the crossing is the difference
/// `D_k` after which it is first no longer positive (found by bisection: it does not
/// increase with the shift); the bracket's ends `D_0` and `D_last` when it does not
/// cross inside (R's `uniroot` bracket, `min x - max y` and `max x - min y`).
fn crossing(x: &[f64], y: &[f64], diffs: &[f64], quantile: f64) -> Result<f64, StatsError> {
    let (first, last) = (diffs[0], diffs[diffs.len() - 1]);
    if standardized(x, y, first, quantile)? <= 0.0 {
        return Ok(first);
    }
    if standardized(x, y, last, quantile)? >= 0.0 {
        return Ok(last);
    }
    let after = |k: usize| standardized(x, y, (diffs[k] + diffs[k + 1]) / 2.0, quantile);
    // The first k whose following interval satisfies `done`, by bisection.
    let first = |from: usize, done: &dyn Fn(f64) -> bool| -> Result<usize, StatsError> {
        let (mut lo, mut hi) = (from, diffs.len() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if done(after(mid)?) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    };
    let k = first(0, &|f| f <= 0.0)?;
    Ok(diffs[k])
}

/// The Mann-Whitney U test of `x` (candidate) against `y` (baseline), with the
/// Hodges-Lehmann estimate of `x - y` and its confidence interval at `confidence`.
pub fn mann_whitney(x: &[f64], y: &[f64], confidence: f64) -> Result<MannWhitney, StatsError> {
    if x.is_empty() || y.is_empty() {
        return Err(StatsError::Empty);
    }
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return Err(StatsError::NotANumber);
    }
    let nx = x.len() as f64;
    let all: Vec<f64> = x.iter().chain(y).copied().collect();
    let (r, _) = ranks(&all);
    let u = r[..x.len()].iter().sum::<f64>() - nx * (nx + 1.0) / 2.0;
    let z = standardized(x, y, 0.0, 0.0)?;
    let p_value = (2.0 * normal_cdf(z).min(1.0 - normal_cdf(z))).min(1.0);
    let mut diffs: Vec<f64> = x.iter().flat_map(|a| y.iter().map(move |b| a - b)).collect();
    diffs.sort_by(f64::total_cmp);
    // Hodges and Lehmann's estimate: the median of every pairwise difference.
    let m = diffs.len();
    let estimate = if m % 2 == 1 { diffs[m / 2] } else { (diffs[m / 2 - 1] + diffs[m / 2]) / 2.0 };
    diffs.dedup();
    let zq = normal_quantile((1.0 - confidence) / 2.0);
    let interval = (crossing(x, y, &diffs, -zq)?, crossing(x, y, &diffs, zq)?);
    Ok(MannWhitney { u, p_value, estimate, interval })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_distribution_and_its_quantiles() {
        // R 4.2.2: pnorm(1.96) = 0.97500210485177952; qnorm(0.01) = -2.3263478740408408.
        assert!((normal_cdf(1.96) - 0.975_002_104_851_779_5).abs() < 1e-15);
        assert!((normal_quantile(0.01) + 2.326_347_874_040_840_8).abs() < 1e-12);
        assert!((normal_quantile(0.5)).abs() < 1e-15);
    }

    /// Reference values from R 4.2.2 (Debian's r-base-core 4.2.2.20221110-2):
    /// `wilcox.test(x, y, conf.int = TRUE, conf.level = 0.98, exact = FALSE,
    /// correct = TRUE)` for W, the p-value and the interval, and
    /// `median(outer(x, y, "-"))` for the Hodges-Lehmann estimate, printed with 17
    /// digits. R finds the interval's ends with `uniroot` (tolerance 1e-4); here they
    /// are the exact pairwise differences R converges to, so they agree within 2e-4.
    /// (`wilcox.test`'s own estimate is any root of its statistic, which the continuity
    /// correction makes 0 on a whole stretch: 0.2283952 for "same", where the median is
    /// 0.2268041; within 0.004 of it in these examples.)
    fn agrees(label: &str, x: &[f64], y: &[f64], w: f64, p: f64, est: f64, ci: (f64, f64)) {
        let t = mann_whitney(x, y, 0.98).unwrap();
        assert_eq!(t.u, w, "{label}: W");
        assert!((t.p_value - p).abs() < 1e-12 * p.max(1e-300) + 1e-15, "{label}: p {} vs R {p}", t.p_value);
        assert!((t.estimate - est).abs() < 1e-12, "{label}: estimate {} vs R {est}", t.estimate);
        assert!((t.interval.0 - ci.0).abs() < 2e-4, "{label}: lower {} vs R {}", t.interval.0, ci.0);
        assert!((t.interval.1 - ci.1).abs() < 2e-4, "{label}: upper {} vs R {}", t.interval.1, ci.1);
    }

    #[test]
    // R's values as it printed them (17 digits); 3.14 is data, not π.
    #[allow(clippy::approx_constant, clippy::excessive_precision)]
    fn the_test_agrees_with_r_wilcox_test() {
        // R's own example (Hollander & Wolfe), ?wilcox.test.
        let x = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30];
        let y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29];
        agrees(
            "small",
            &x,
            &y,
            58.0,
            0.132_919_458_185_318_86,
            0.560_000_000_000_000_05,
            (-0.559_951_695_263_183_67, 1.232_960_408_303_311),
        );
        // Ties on both sides (the tie correction of the variance).
        let x = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0, 5.0, 6.0];
        let y = [2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0, 5.0, 6.0, 6.0, 7.0, 8.0];
        agrees(
            "ties",
            &x,
            &y,
            36.0,
            0.115_763_637_502_486_76,
            -1.0,
            (-3.000_008_701_831_754_7, 0.999_924_230_536_643_81),
        );
        // x <- ((1:60 * 37) %% 101) / 10 + 2; y <- ((1:70 * 53) %% 97) / 10: shifted by 2.
        let x: Vec<f64> = (1..=60).map(|i| ((i * 37) % 101) as f64 / 10.0 + 2.0).collect();
        let y: Vec<f64> = (1..=70).map(|j| ((j * 53) % 97) as f64 / 10.0).collect();
        agrees(
            "shifted",
            &x,
            &y,
            3014.0,
            1.986_952_892_758_363_6e-5,
            2.400_000_000_000_000_4,
            (1.199_901_919_360_064, 3.699_948_888_009_554_3),
        );
        // The same spread, no shift: y rescaled by 101/97.
        let x: Vec<f64> = (1..=60).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let y: Vec<f64> = (1..=70).map(|j| ((j * 53) % 97) as f64 / 10.0 * 101.0 / 97.0).collect();
        agrees(
            "same",
            &x,
            &y,
            2203.0,
            0.632_159_306_099_824_07,
            0.226_804_123_711_340_29,
            (-1.005_178_490_866_067_3, 1.517_532_674_725_769_1),
        );
    }

    #[test]
    fn ties_share_the_mean_of_their_ranks() {
        let (r, ties) = ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]);
        assert_eq!(r, vec![4.0, 1.0, 4.0, 2.0, 4.0]);
        assert_eq!(ties, 24.0); // one group of three: 27 - 3
    }
}
