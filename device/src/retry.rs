//! How long to wait before retrying something that failed (Wi-Fi, provisioning, flash): the
//! firmware and the twin back off the same way, so a broken setup logs less and less often but
//! never goes silent.

use core::time::Duration;

/// The wait before retry number `attempt` (0 for the first retry): `first`, doubling each time,
/// never more than `max`.
pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    first.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_never_overflows() {
        let s = Duration::from_secs;
        let waits: [u64; 6] = core::array::from_fn(|i| backoff(i as u32, s(2), s(60)).as_secs());
        assert_eq!(waits, [2, 4, 8, 16, 32, 60]);
        assert_eq!(backoff(u32::MAX, s(2), s(60)), s(60));
        assert_eq!(backoff(40, Duration::MAX, Duration::MAX), Duration::MAX);
    }
}
