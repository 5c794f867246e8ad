//! Polynomials as libprio holds them: by their values at the `n`-th roots
//! of unity (`n` a power of two, the `i`-th value at `w^i` for libprio's
//! root `w` of order `n`).
//!
//! The client moves between values and coefficients with the FFT; a
//! server evaluates a polynomial given by values at one point `r` with the
//! barycentric formula, whose weights depend on `r` and `n` only, so they
//! are computed once per batch and each report costs one multiplication a
//! value.

use super::field::Fp;

/// log2 of `n`, a power of two of at most 2^19.
fn log2(n: usize) -> u32 {
    assert!(n.is_power_of_two(), "{n} is not a power of two");
    n.trailing_zeros()
}

/// The values at the `n`-th roots of unity of the polynomial with
/// coefficients `coeffs` (`n = coeffs.len()`), or, with `inverse`, the
/// coefficients of the polynomial with those values: libprio's `poly_fft`.
pub fn fft(coeffs: &[Fp], inverse: bool) -> Vec<Fp> {
    let n = coeffs.len();
    let log_n = log2(n);
    let mut a = coeffs.to_vec();
    // Bit-reversed order, then iterative butterflies.
    for i in 0..n {
        let j = if log_n == 0 {
            0
        } else {
            i.reverse_bits() >> (usize::BITS - log_n)
        };
        if i < j {
            a.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let mut w_len = Fp::root_of_unity(log2(len));
        if inverse {
            w_len = w_len.inv();
        }
        for start in (0..n).step_by(len) {
            let mut w = Fp::ONE;
            for k in 0..len / 2 {
                let u = a[start + k];
                let v = a[start + k + len / 2] * w;
                a[start + k] = u + v;
                a[start + k + len / 2] = u - v;
                w = w * w_len;
            }
        }
        len *= 2;
    }
    if inverse {
        let n_inv = Fp::new(n as u128).expect("small").inv();
        for x in &mut a {
            *x = *x * n_inv;
        }
    }
    a
}

/// Evaluates polynomials given by their values at the `n`-th roots of
/// unity at one point `r`.
#[derive(Debug, Clone)]
pub struct Evaluator {
    /// `f(r) = sum_i values[i] * weights[i]`.
    weights: Vec<Fp>,
    /// When `r` is itself the `i`-th root: `f(r)` is the `i`-th value.
    root_index: Option<usize>,
}

impl Evaluator {
    /// With `w` the root of order `n`: `f(r) = (r^n - 1) / n * sum_i y_i * w^i / (r - w^i)`.
    pub fn new(n: usize, r: Fp) -> Evaluator {
        let w = Fp::root_of_unity(log2(n));
        let mut roots = Vec::with_capacity(n);
        let mut x = Fp::ONE;
        for _ in 0..n {
            roots.push(x);
            x = x * w;
        }
        if let Some(i) = roots.iter().position(|&root| root == r) {
            return Evaluator {
                weights: Vec::new(),
                root_index: Some(i),
            };
        }
        // One inversion for all the differences (Montgomery's trick).
        let diffs: Vec<Fp> = roots.iter().map(|&root| r - root).collect();
        let mut prefix = Vec::with_capacity(n);
        let mut acc = Fp::ONE;
        for &d in &diffs {
            prefix.push(acc);
            acc = acc * d;
        }
        let mut inv = acc.inv();
        let mut inverses = vec![Fp::ZERO; n];
        for i in (0..n).rev() {
            inverses[i] = inv * prefix[i];
            inv = inv * diffs[i];
        }
        let scale = (r.pow(n as u128) - Fp::ONE) * Fp::new(n as u128).expect("small").inv();
        let weights = roots
            .iter()
            .zip(inverses)
            .map(|(&root, inv)| scale * root * inv)
            .collect();
        Evaluator {
            weights,
            root_index: None,
        }
    }

    /// The weight of the `i`-th value.
    pub fn weight(&self, i: usize) -> Fp {
        match self.root_index {
            Some(j) => {
                if i == j {
                    Fp::ONE
                } else {
                    Fp::ZERO
                }
            }
            None => self.weights[i],
        }
    }

    /// `f(r)` for the polynomial whose values at the roots are `values`
    /// at `indices` (and zero elsewhere).
    pub fn eval_sparse(&self, values: impl Iterator<Item = (usize, Fp)>) -> Fp {
        let mut acc = Fp::ZERO;
        for (i, y) in values {
            acc += y * self.weight(i);
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horner(coeffs: &[Fp], x: Fp) -> Fp {
        coeffs.iter().rev().fold(Fp::ZERO, |acc, &c| acc * x + c)
    }

    fn sample(n: usize, seed: u128) -> Vec<Fp> {
        (0..n as u128)
            .map(|i| Fp::new((seed * 7919 + i * 104_729 + i * i) % super::super::field::P).unwrap())
            .collect()
    }

    #[test]
    fn the_fft_evaluates_at_the_roots_and_inverts() {
        for n in [1, 2, 8, 64] {
            let coeffs = sample(n, 3);
            let values = fft(&coeffs, false);
            let w = Fp::root_of_unity(n.trailing_zeros());
            for (i, v) in values.iter().enumerate() {
                assert_eq!(*v, horner(&coeffs, w.pow(i as u128)), "n={n} i={i}");
            }
            assert_eq!(fft(&values, true), coeffs);
        }
    }

    #[test]
    fn barycentric_evaluation_equals_interpolate_then_evaluate() {
        for n in [1, 4, 32] {
            let values = sample(n, 11);
            let coeffs = fft(&values, true);
            for r in [Fp::new(5).unwrap(), Fp::new(123_456_789).unwrap()] {
                let at = Evaluator::new(n, r);
                let got = at.eval_sparse(values.iter().copied().enumerate());
                assert_eq!(got, horner(&coeffs, r), "n={n}");
            }
            // r at a root: the value there.
            let root = Fp::root_of_unity(n.trailing_zeros());
            let at = Evaluator::new(n, root);
            let got = at.eval_sparse(values.iter().copied().enumerate());
            assert_eq!(got, values[1 % n]);
        }
    }
}
