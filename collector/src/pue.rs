//! PUE as pure functions over energies and powers: no state, no I/O.
//!
//! PUE = facility energy / IT energy over the same interval (The Green Grid;
//! ISO/IEC 30134-2): a ratio of sums, never a mean of ratios. The category says
//! where IT energy was measured; with mixed points, the lowest category holds.

use crate::site::ItPoint;

/// Why no PUE figure is given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NoPue {
    /// IT energy is below the floor: the ratio would be noise.
    ItBelowFloor,
    /// The ratio is impossible (below 1: facility energy cannot be less than the
    /// IT energy it feeds) or implausible (above the configured maximum): a
    /// meter or the site model is wrong.
    Invalid(f64),
}

/// PUE of one interval from its energies (J), or why there is none.
/// `it_floor_joules` is the least IT energy for a meaningful ratio; a ratio
/// below 1 or above `max_ratio` is invalid.
pub fn pue(
    facility_joules: f64,
    it_joules: f64,
    it_floor_joules: f64,
    max_ratio: f64,
) -> Result<f64, NoPue> {
    if !(it_joules >= it_floor_joules && it_joules > 0.0) {
        return Err(NoPue::ItBelowFloor);
    }
    let ratio = facility_joules / it_joules;
    if !ratio.is_finite() || !(1.0..=max_ratio).contains(&ratio) {
        return Err(NoPue::Invalid(ratio));
    }
    Ok(ratio)
}

/// WUE (ISO/IEC 30134-9) of one interval: site water (m³) as litres per kWh
/// of IT energy (J). None below the IT floor, as for PUE.
pub fn wue(water_cubic_meters: f64, it_joules: f64, it_floor_joules: f64) -> Option<f64> {
    const LITRES_PER_CUBIC_METER: f64 = 1000.0;
    const JOULES_PER_KWH: f64 = 3.6e6;
    (it_joules >= it_floor_joules && it_joules > 0.0)
        .then(|| water_cubic_meters * LITRES_PER_CUBIC_METER / (it_joules / JOULES_PER_KWH))
}

/// Partial PUE of a zone: (zone IT + zone infrastructure + the zone's share of
/// shared infrastructure) / zone IT, the shared part allocated in proportion to
/// IT energy (`it_share` = zone IT / all IT). None below the IT floor.
pub fn partial_pue(
    zone_it: f64,
    zone_infra: f64,
    shared_infra: f64,
    it_share: f64,
    it_floor_joules: f64,
) -> Option<f64> {
    if !(zone_it >= it_floor_joules && zone_it > 0.0) {
        return None;
    }
    Some((zone_it + zone_infra + shared_infra * it_share) / zone_it)
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
        assert_eq!(pue(1200.0, 1000.0, 10.0, 3.0), Ok(1.2));
        assert_eq!(pue(1200.0, 5.0, 10.0, 3.0), Err(NoPue::ItBelowFloor));
        assert_eq!(pue(1200.0, 0.0, 0.0, 3.0), Err(NoPue::ItBelowFloor));
        assert_eq!(pue(900.0, 1000.0, 10.0, 3.0), Err(NoPue::Invalid(0.9)));
        assert_eq!(pue(4000.0, 1000.0, 10.0, 3.0), Err(NoPue::Invalid(4.0)));
    }

    #[test]
    fn wue_is_litres_per_kilowatt_hour() {
        // 0.5 m³ of water for 2,500 kWh (9 GJ) of IT energy: 0.2 L/kWh.
        assert_eq!(wue(0.5, 9.0e9, 1.0), Some(0.2));
        assert_eq!(wue(0.5, 9.0e9, 1.0e10), None);
        assert_eq!(wue(0.5, 0.0, 0.0), None);
    }

    #[test]
    fn partial_pue_allocates_shared_infrastructure_by_it_share() {
        // Two halls, 600 and 400 kJ IT; hall A's own cooling 60 kJ; 100 kJ of
        // shared plant split 60/40.
        let a = partial_pue(600.0, 60.0, 100.0, 0.6, 1.0).unwrap();
        let b = partial_pue(400.0, 0.0, 100.0, 0.4, 1.0).unwrap();
        assert!(
            (a - 1.2).abs() < 1e-12 && (b - 1.1).abs() < 1e-12,
            "{a} {b}"
        );
        // Weighted by IT, the partial PUEs add back up to the whole.
        assert!((a * 600.0 + b * 400.0 - 1160.0).abs() < 1e-9);
        assert_eq!(partial_pue(0.5, 1.0, 1.0, 0.1, 1.0), None);
    }

    #[test]
    fn mixed_points_report_the_lowest_category() {
        assert_eq!(category([ItPoint::ItInput, ItPoint::PduOutput]), Some(2));
        assert_eq!(category([ItPoint::ItInput]), Some(3));
        assert_eq!(category([ItPoint::UpsOutput, ItPoint::ItInput]), Some(1));
        assert_eq!(category([]), None);
    }
}
