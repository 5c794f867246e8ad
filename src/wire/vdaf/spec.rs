//! A VDAF's parameters as the batch config gives them, and a client's
//! measurement checked against them and converted to the prio type.

use prio::vdaf::prio2::Prio2;
use prio::vdaf::prio3::{Prio3Count, Prio3Histogram, Prio3MultihotCountVec, Prio3Sum, Prio3SumVec};
use serde::Serialize;

/// The VDAF of one batch and its parameters, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "vdaf", rename_all = "lowercase")]
pub enum VdafSpec {
    /// ENPA Prio2 over a bit vector of `length` bits.
    Prio2 { length: usize },
    /// Prio v1, libprio's format (what Firefox sent), over `length` bits,
    /// of the PRG key generation `prg_key`.
    Prio1 {
        length: usize,
        prg_key: crate::wire::prio1::PrgKey,
    },
    /// Prio3Count: each measurement is 0 or 1.
    Count,
    /// Prio3Sum: each measurement is an integer in `[0, max_measurement]`.
    Sum { max_measurement: u64 },
    /// Prio3SumVec: a vector of `length` integers in `[0, max_measurement]`.
    SumVec {
        length: usize,
        max_measurement: u128,
        chunk_length: usize,
    },
    /// Prio3Histogram: each measurement is a bucket index in `[0, length)`.
    Histogram { length: usize, chunk_length: usize },
    /// Prio3MultihotCountVec: `length` booleans, at most `max_weight` set.
    MultihotCountVec {
        length: usize,
        max_weight: usize,
        chunk_length: usize,
    },
}

impl VdafSpec {
    pub fn name(&self) -> &'static str {
        match self {
            VdafSpec::Prio2 { .. } => "prio2",
            VdafSpec::Prio1 { .. } => "prio1",
            VdafSpec::Count => "count",
            VdafSpec::Sum { .. } => "sum",
            VdafSpec::SumVec { .. } => "sumvec",
            VdafSpec::Histogram { .. } => "histogram",
            VdafSpec::MultihotCountVec { .. } => "multihotcountvec",
        }
    }

    /// The largest value one element of a measurement may take.
    pub fn max_element(&self) -> u128 {
        match self {
            VdafSpec::Prio2 { .. }
            | VdafSpec::Prio1 { .. }
            | VdafSpec::Count
            | VdafSpec::MultihotCountVec { .. } => 1,
            VdafSpec::Sum { max_measurement } => u128::from(*max_measurement),
            VdafSpec::SumVec {
                max_measurement, ..
            } => *max_measurement,
            VdafSpec::Histogram { length, .. } => *length as u128 - 1,
        }
    }

    /// How many elements of a measurement may be non-zero.
    pub fn max_weight(&self) -> usize {
        match self {
            VdafSpec::MultihotCountVec { max_weight, .. } => *max_weight,
            other => other.output_len(),
        }
    }

    /// A valid measurement of this VDAF: all zeros.
    pub fn zero_measurement(&self) -> Measurement {
        match self {
            VdafSpec::Count | VdafSpec::Sum { .. } | VdafSpec::Histogram { .. } => {
                Measurement::Scalar(0)
            }
            VdafSpec::Prio2 { .. }
            | VdafSpec::Prio1 { .. }
            | VdafSpec::SumVec { .. }
            | VdafSpec::MultihotCountVec { .. } => Measurement::Vector(vec![0; self.output_len()]),
        }
    }

    /// A measurement of 0/1 elements as bits (Prio v1's measurements).
    pub fn bits(&self, m: &Measurement) -> Result<Vec<bool>, super::VdafUseError> {
        bits(m, self).map_err(|message| super::VdafUseError::Measurement {
            vdaf: self.name(),
            message,
        })
    }

    /// Number of elements in the aggregate result.
    pub fn output_len(&self) -> usize {
        match self {
            VdafSpec::Count | VdafSpec::Sum { .. } => 1,
            VdafSpec::Prio2 { length }
            | VdafSpec::Prio1 { length, .. }
            | VdafSpec::SumVec { length, .. }
            | VdafSpec::Histogram { length, .. }
            | VdafSpec::MultihotCountVec { length, .. } => *length,
        }
    }
}

/// A client's measurement before sharding: an integer for Count, Sum and
/// Histogram (the bucket index), an integer vector for the vector VDAFs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Measurement {
    Scalar(u64),
    Vector(Vec<u64>),
}

/// Converts our measurement or result types to and from a concrete VDAF's.
pub(super) trait Typed: prio::vdaf::Vdaf {
    fn measurement(spec: &VdafSpec, m: &Measurement) -> Result<Self::Measurement, String>;
    fn result(r: Self::AggregateResult) -> Vec<u128>;
}

fn vector<'a>(m: &'a Measurement, spec: &VdafSpec) -> Result<&'a [u64], String> {
    match m {
        Measurement::Vector(v) if v.len() == spec.output_len() => Ok(v),
        Measurement::Vector(v) => Err(format!(
            "expected {} elements, got {}",
            spec.output_len(),
            v.len()
        )),
        Measurement::Scalar(_) => Err("expected a JSON array".into()),
    }
}

fn scalar(m: &Measurement, max: u64) -> Result<u64, String> {
    match m {
        Measurement::Scalar(x) if *x <= max => Ok(*x),
        Measurement::Scalar(x) => Err(format!("{x} is above the maximum {max}")),
        Measurement::Vector(_) => Err("expected an integer".into()),
    }
}

fn bits(m: &Measurement, spec: &VdafSpec) -> Result<Vec<bool>, String> {
    vector(m, spec)?
        .iter()
        .map(|&x| match x {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("elements must be 0 or 1, got {x}")),
        })
        .collect()
}

impl Typed for Prio2 {
    fn measurement(spec: &VdafSpec, m: &Measurement) -> Result<Vec<u32>, String> {
        Ok(bits(m, spec)?.into_iter().map(u32::from).collect())
    }
    fn result(r: Vec<u32>) -> Vec<u128> {
        r.into_iter().map(u128::from).collect()
    }
}

impl Typed for Prio3Count {
    fn measurement(_: &VdafSpec, m: &Measurement) -> Result<bool, String> {
        Ok(scalar(m, 1)? == 1)
    }
    fn result(r: u64) -> Vec<u128> {
        vec![r.into()]
    }
}

impl Typed for Prio3Sum {
    fn measurement(spec: &VdafSpec, m: &Measurement) -> Result<u64, String> {
        scalar(m, u64::try_from(spec.max_element()).unwrap_or(u64::MAX))
    }
    fn result(r: u64) -> Vec<u128> {
        vec![r.into()]
    }
}

impl Typed for Prio3SumVec {
    fn measurement(spec: &VdafSpec, m: &Measurement) -> Result<Vec<u128>, String> {
        let max_measurement = spec.max_element();
        vector(m, spec)?
            .iter()
            .map(|&x| {
                let x = u128::from(x);
                if x <= max_measurement {
                    Ok(x)
                } else {
                    Err(format!("{x} is above the maximum {max_measurement}"))
                }
            })
            .collect()
    }
    fn result(r: Vec<u128>) -> Vec<u128> {
        r
    }
}

impl Typed for Prio3Histogram {
    fn measurement(spec: &VdafSpec, m: &Measurement) -> Result<usize, String> {
        let bucket = scalar(m, u64::try_from(spec.max_element()).unwrap_or(u64::MAX))?;
        Ok(bucket as usize)
    }
    fn result(r: Vec<u128>) -> Vec<u128> {
        r
    }
}

impl Typed for Prio3MultihotCountVec {
    fn measurement(spec: &VdafSpec, m: &Measurement) -> Result<Vec<bool>, String> {
        let max_weight = spec.max_weight();
        let b = bits(m, spec)?;
        let weight = b.iter().filter(|&&x| x).count();
        if weight > max_weight {
            return Err(format!("{weight} bits set, at most {max_weight} allowed"));
        }
        Ok(b)
    }
    fn result(r: Vec<u128>) -> Vec<u128> {
        r
    }
}
