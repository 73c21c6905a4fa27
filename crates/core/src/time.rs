//! Time as integer nanoseconds. The engine never reads a clock: callers pass `now`.

use serde::{Deserialize, Serialize};

/// A point in time: nanoseconds since the Unix epoch (the controller and agent) or since the
/// start of a simulation (the simulator). Integer, so ordering and arithmetic are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Time(pub i64);

/// A span of time in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub i64);

impl Duration {
    pub const ZERO: Duration = Duration(0);
    pub const fn from_nanos(n: i64) -> Self {
        Duration(n)
    }
    pub const fn from_millis(ms: i64) -> Self {
        Duration(ms * 1_000_000)
    }
    pub const fn from_secs(s: i64) -> Self {
        Duration(s * 1_000_000_000)
    }
    pub const fn from_mins(m: i64) -> Self {
        Duration(m * 60_000_000_000)
    }
    pub const fn from_hours(h: i64) -> Self {
        Duration(h * 3_600_000_000_000)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    pub const fn as_nanos(self) -> i64 {
        self.0
    }
}

impl Time {
    pub const ZERO: Time = Time(0);
    pub const fn from_nanos(n: i64) -> Self {
        Time(n)
    }
    pub const fn from_secs(s: i64) -> Self {
        Time(s * 1_000_000_000)
    }
    pub const fn as_nanos(self) -> i64 {
        self.0
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }
    /// `self - earlier`, saturating.
    pub fn since(self, earlier: Time) -> Duration {
        Duration(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d.0))
    }
}

impl std::ops::Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d.0))
    }
}

impl std::ops::Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration(self.0.saturating_add(d.0))
    }
}
