//! What more than one benchmark prints: quantiles and min / median / max.

/// The `q` quantile of `xs` (nearest rank); sorts `xs`.
pub fn quantile(xs: &mut [f64], q: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1]
}

/// `min / median / max` of `xs`, with `decimals` places.
pub fn spread(xs: &[f64], decimals: usize) -> String {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    format!("{:.d$} / {:.d$} / {:.d$}", v[0], v[v.len() / 2], v[v.len() - 1], d = decimals)
}
