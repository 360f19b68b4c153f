//! The statistics behind a verdict: one-sided Wilson score bounds for
//! proportions (error rate, users affected) and medians for latency.

/// Lower bound of the one-sided Wilson score interval for `successes` out of
/// `trials` at the normal quantile `z` (1.645 for 95 %). With no trials the
/// bound is 0: nothing can be claimed.
pub fn wilson_lower_bound(successes: f64, trials: f64, z: f64) -> f64 {
    if trials <= 0.0 {
        return 0.0;
    }
    let p = (successes / trials).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * trials);
    let margin = z * (p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)).sqrt();
    ((centre - margin) / (1.0 + z2 / trials)).clamp(0.0, 1.0)
}

/// Upper bound of the same interval: the lower bound of the complement. With
/// no trials the bound is 1: nothing can be claimed either.
pub fn wilson_upper_bound(successes: f64, trials: f64, z: f64) -> f64 {
    if trials <= 0.0 {
        return 1.0;
    }
    1.0 - wilson_lower_bound(trials - successes.clamp(0.0, trials), trials, z)
}

/// Median of the values (mean of the middle two for an even count). Sorts in place.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z95: f64 = 1.6448536269514722;

    #[test]
    fn wilson_bound_matches_reference_values() {
        // Worked out independently from the closed form (Wilson 1927) at z = 1.645.
        let cases = [
            (10.0, 100.0, 0.0607),
            (81.0, 1000.0, 0.0679),
            (0.0, 50.0, 0.0),
            (50.0, 50.0, 0.9487),
        ];
        for (k, n, expected) in cases {
            let got = wilson_lower_bound(k, n, Z95);
            assert!(
                (got - expected).abs() < 5e-4,
                "{k}/{n}: got {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn one_error_in_three_requests_proves_little() {
        // The raw ratio is 33 %, but the bound says only that it is above ~7.8 %.
        let bound = wilson_lower_bound(1.0, 3.0, Z95);
        assert!(bound < 0.08 && bound > 0.07, "{bound}");
    }

    #[test]
    fn the_lower_bound_lies_below_the_ratio() {
        let (k, n) = (30.0, 400.0);
        assert!(wilson_lower_bound(k, n, Z95) < k / n);
        assert_eq!(wilson_lower_bound(0.0, 0.0, Z95), 0.0);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
