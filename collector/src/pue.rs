//! PUE as pure functions over energies and powers: no state, no I/O.
//!
//! PUE = facility energy / IT energy over the same interval (The Green Grid;
//! ISO/IEC 30134-2): a ratio of sums, never a mean of ratios. The category says
//! where IT energy was measured; with mixed points, the lowest category holds.

use crate::config::ItPoint;

/// Why no PUE figure is given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoPue {
    /// IT energy is below the floor: the ratio would be noise.
    ItBelowFloor,
    /// The ratio is physically impossible (below 1: facility energy cannot be
    /// less than the IT energy it feeds); a meter or the site model is wrong.
    Invalid(f64),
}

/// PUE of one interval from its energies (J), or why there is none.
/// `it_floor_joules` is the least IT energy for a meaningful ratio.
pub fn pue(facility_joules: f64, it_joules: f64, it_floor_joules: f64) -> Result<f64, NoPue> {
    if !(it_joules >= it_floor_joules && it_joules > 0.0) {
        return Err(NoPue::ItBelowFloor);
    }
    let ratio = facility_joules / it_joules;
    if !ratio.is_finite() || ratio < 1.0 {
        return Err(NoPue::Invalid(ratio));
    }
    Ok(ratio)
}

/// The ISO/IEC 30134-2 category of a PUE whose IT energy comes from these
/// points: the lowest one (a mix is only as good as its worst point).
pub fn category(points: impl IntoIterator<Item = ItPoint>) -> Option<u8> {
    points.into_iter().map(ItPoint::category).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_of_sums() {
        assert_eq!(pue(1200.0, 1000.0, 10.0), Ok(1.2));
        assert_eq!(pue(1200.0, 5.0, 10.0), Err(NoPue::ItBelowFloor));
        assert_eq!(pue(1200.0, 0.0, 0.0), Err(NoPue::ItBelowFloor));
        assert_eq!(pue(900.0, 1000.0, 10.0), Err(NoPue::Invalid(0.9)));
    }

    #[test]
    fn mixed_points_report_the_lowest_category() {
        assert_eq!(category([ItPoint::ItInput, ItPoint::PduOutput]), Some(2));
        assert_eq!(category([ItPoint::ItInput]), Some(3));
        assert_eq!(category([ItPoint::UpsOutput, ItPoint::ItInput]), Some(1));
        assert_eq!(category([]), None);
    }
}
