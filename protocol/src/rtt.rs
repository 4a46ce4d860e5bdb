//! Round-trip time estimation and retransmission timeout (RFC 6298).
//!
//! The estimator keeps the smoothed round-trip time (SRTT) and its mean deviation (RTTVAR) and
//! derives the retransmission timeout (RTO) from them, exactly as RFC 6298 §2 describes, with a
//! clock granularity of 1 ms. Unlike TCP, the bounds are the caller's: the RFC's 1 s floor is far
//! too slow on a LAN, so the node passes its own minimum, maximum and initial values.
//!
//! Karn's rule (RFC 6298 §3) is the caller's job: only feed samples measured on segments that
//! were sent exactly once, since an acknowledgement of a retransmitted segment is ambiguous.
//!
//! All arithmetic saturates; no sample, however absurd, can make the estimator panic.

use core::time::Duration;

/// Clock granularity G of RFC 6298 §2: the variance term of the RTO is never below this.
const GRANULARITY: Duration = Duration::from_millis(1);

/// Doublings beyond this add nothing (2^31 times any non-zero RTO exceeds any sane maximum) and
/// would overflow the multiplier.
const MAX_BACKOFF_SHIFT: u32 = 31;

/// Round-trip estimator and retransmission timeout per RFC 6298, with LAN-friendly bounds.
///
/// Feed it RTT samples with [`on_sample`](Self::on_sample), report fired timers with
/// [`on_timeout`](Self::on_timeout), and arm the next timer with [`rto`](Self::rto).
#[derive(Debug, Clone)]
pub struct RttEstimator {
    /// Smoothed round-trip time; `None` until the first sample.
    srtt: Option<Duration>,
    /// Round-trip time variation (meaningful only once `srtt` is set).
    rttvar: Duration,
    /// Timeout before backoff, already clamped to `[min_rto, max_rto]`.
    base_rto: Duration,
    /// Number of consecutive timeouts since the last sample (each doubles the timeout).
    backoff: u32,
    /// Lower bound of the timeout.
    min_rto: Duration,
    /// Upper bound of the timeout, backoff included.
    max_rto: Duration,
}

impl RttEstimator {
    /// Creates an estimator with no sample yet.
    ///
    /// `initial_rto` is used before any sample (RFC 6298 says 1 s; on a LAN e.g. 200 ms) and is
    /// clamped to `[min_rto, max_rto]`. If `min_rto > max_rto`, `max_rto` is raised to `min_rto`
    /// so the bounds stay coherent instead of panicking.
    pub fn new(initial_rto: Duration, min_rto: Duration, max_rto: Duration) -> Self {
        let max_rto = max_rto.max(min_rto);
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            base_rto: clamp(initial_rto, min_rto, max_rto),
            backoff: 0,
            min_rto,
            max_rto,
        }
    }

    /// Feeds one RTT sample and resets the backoff.
    ///
    /// Only use samples from segments sent once (Karn's rule). The first sample sets
    /// SRTT = R and RTTVAR = R/2; later ones apply RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R| and then
    /// SRTT = 7/8 SRTT + 1/8 R. The timeout becomes SRTT + max(G, 4 RTTVAR), clamped.
    pub fn on_sample(&mut self, rtt: Duration) {
        let srtt = match self.srtt {
            None => {
                self.rttvar = rtt / 2;
                rtt
            }
            Some(srtt) => {
                // RFC 6298 §2.3: RTTVAR first, using the old SRTT.
                let deviation = srtt.abs_diff(rtt);
                self.rttvar = self.rttvar.saturating_sub(self.rttvar / 4).saturating_add(deviation / 4);
                srtt.saturating_sub(srtt / 8).saturating_add(rtt / 8)
            }
        };
        self.srtt = Some(srtt);
        let variance_term = self.rttvar.saturating_mul(4).max(GRANULARITY);
        self.base_rto = clamp(srtt.saturating_add(variance_term), self.min_rto, self.max_rto);
        self.backoff = 0;
    }

    /// The current timeout including exponential backoff (doubles per backoff, capped at `max_rto`).
    pub fn rto(&self) -> Duration {
        let factor = 1u32 << self.backoff.min(MAX_BACKOFF_SHIFT);
        self.base_rto.saturating_mul(factor).min(self.max_rto)
    }

    /// Called when a retransmission timer fired: doubles the timeout (RFC 6298 §5.5), capped at
    /// `max_rto`. The estimates themselves are kept; the next sample resets the backoff.
    pub fn on_timeout(&mut self) {
        if self.rto() < self.max_rto {
            self.backoff = self.backoff.saturating_add(1).min(MAX_BACKOFF_SHIFT);
        }
    }

    /// Smoothed RTT if any sample was taken.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

/// `d` limited to `[min, max]`; never panics (unlike `Ord::clamp`): if `min > max`, `max` wins.
fn clamp(d: Duration, min: Duration, max: Duration) -> Duration {
    d.max(min).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Wide bounds so that the RFC arithmetic is visible unclamped.
    fn wide() -> RttEstimator {
        RttEstimator::new(ms(200), Duration::ZERO, Duration::from_secs(60))
    }

    #[test]
    fn initial_rto_before_any_sample() {
        let e = RttEstimator::new(ms(200), ms(10), ms(5000));
        assert_eq!(e.rto(), ms(200));
        assert_eq!(e.srtt(), None);
    }

    #[test]
    fn initial_rto_is_clamped() {
        assert_eq!(RttEstimator::new(ms(1), ms(10), ms(5000)).rto(), ms(10));
        assert_eq!(RttEstimator::new(ms(9000), ms(10), ms(5000)).rto(), ms(5000));
    }

    #[test]
    fn first_sample_math() {
        let mut e = wide();
        e.on_sample(ms(100));
        // SRTT = 100, RTTVAR = 50, RTO = 100 + 4 * 50 = 300.
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rto(), ms(300));
    }

    #[test]
    fn second_sample_math() {
        let mut e = wide();
        e.on_sample(ms(100));
        e.on_sample(ms(180));
        // RTTVAR = 3/4 * 50 + 1/4 * |100 - 180| = 37.5 + 20 = 57.5
        // SRTT = 7/8 * 100 + 1/8 * 180 = 87.5 + 22.5 = 110
        // RTO = 110 + 4 * 57.5 = 340
        assert_eq!(e.srtt(), Some(ms(110)));
        assert_eq!(e.rto(), ms(340));
    }

    #[test]
    fn granularity_floor_on_zero_variance() {
        let mut e = wide();
        e.on_sample(Duration::ZERO);
        // SRTT = 0, RTTVAR = 0, so the variance term is G = 1 ms.
        assert_eq!(e.rto(), ms(1));
    }

    #[test]
    fn converges_on_constant_samples() {
        let mut e = wide();
        e.on_sample(ms(400));
        for _ in 0..200 {
            e.on_sample(ms(20));
        }
        let srtt = e.srtt().unwrap();
        assert!(srtt.abs_diff(ms(20)) < Duration::from_micros(10), "srtt {srtt:?}");
        // RTTVAR decays towards 0, so the RTO approaches SRTT + G.
        assert!(e.rto().abs_diff(ms(21)) < Duration::from_micros(50), "rto {:?}", e.rto());
    }

    #[test]
    fn variance_reacts_to_jitter() {
        let mut e = wide();
        for _ in 0..100 {
            e.on_sample(ms(50));
        }
        let steady = e.rto();
        e.on_sample(ms(250));
        let after_spike = e.rto();
        // One spike raises RTTVAR by 1/4 * 200 = 50 ms, i.e. RTO by about 200 ms.
        assert!(after_spike >= steady + ms(190), "steady {steady:?} after {after_spike:?}");
        // Alternating samples keep the variance (and thus the RTO) well above the mean.
        for i in 0..100 {
            e.on_sample(if i % 2 == 0 { ms(10) } else { ms(90) });
        }
        assert!(e.rto() > ms(150), "rto {:?}", e.rto());
    }

    #[test]
    fn min_and_max_clamps() {
        let mut e = RttEstimator::new(ms(200), ms(50), ms(1000));
        e.on_sample(ms(1));
        // Unclamped: 1 + max(1, 2) = 3 ms.
        assert_eq!(e.rto(), ms(50));
        let mut e = RttEstimator::new(ms(200), ms(50), ms(1000));
        e.on_sample(ms(800));
        // Unclamped: 800 + 1600 = 2400 ms.
        assert_eq!(e.rto(), ms(1000));
    }

    #[test]
    fn inverted_bounds_do_not_panic() {
        let mut e = RttEstimator::new(ms(200), ms(500), ms(100));
        assert_eq!(e.rto(), ms(500));
        e.on_sample(ms(1));
        e.on_timeout();
        assert_eq!(e.rto(), ms(500));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut e = RttEstimator::new(ms(200), ms(10), ms(1000));
        e.on_timeout();
        assert_eq!(e.rto(), ms(400));
        e.on_timeout();
        assert_eq!(e.rto(), ms(800));
        e.on_timeout();
        assert_eq!(e.rto(), ms(1000));
        for _ in 0..100 {
            e.on_timeout();
        }
        assert_eq!(e.rto(), ms(1000));
    }

    #[test]
    fn sample_resets_backoff() {
        let mut e = wide();
        e.on_sample(ms(100));
        e.on_timeout();
        e.on_timeout();
        assert_eq!(e.rto(), ms(1200));
        e.on_sample(ms(100));
        // RTTVAR = 3/4 * 50 = 37.5, SRTT = 100, RTO = 250 and no more backoff.
        assert_eq!(e.rto(), ms(250));
    }

    #[test]
    fn timeout_keeps_estimates() {
        let mut e = wide();
        e.on_sample(ms(100));
        e.on_timeout();
        assert_eq!(e.srtt(), Some(ms(100)));
    }

    #[test]
    fn extreme_samples_saturate() {
        let mut e = RttEstimator::new(ms(200), ms(10), Duration::MAX);
        e.on_sample(Duration::MAX);
        assert_eq!(e.rto(), Duration::MAX);
        e.on_sample(Duration::ZERO);
        e.on_sample(Duration::MAX);
        for _ in 0..100 {
            e.on_timeout();
        }
        assert_eq!(e.rto(), Duration::MAX);
    }
}
