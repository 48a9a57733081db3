//! Timestamps in JSON, written without `core::fmt`.
//!
//! chrono serializes a `DateTime` through `Serializer::collect_str`, which for serde_json
//! sends every character on its own through the string escaper: about 1,100 instructions per
//! timestamp, and a booking request's view, job and event carry two to four of them. That was
//! 7 % of ingress' work per submission and 10 % of the workers' per decision. These functions write the
//! same text (chrono's `SecondsFormat::AutoSi` with `Z`: no fraction when it is zero, else 3, 6
//! or 9 digits) into a stack buffer and hand it to the serializer once. Years outside 0–9999
//! and leap seconds, which chrono writes differently, are left to chrono.
//!
//! Use with `#[serde(serialize_with = "crate::json_time::utc")]` (or `utc_opt` for an
//! `Option`); deserialization stays chrono's.

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use serde::Serializer;

/// Longest text written here: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX: usize = 30;

/// Writes `t` as chrono's serde does, or `None` when chrono must (years outside 0–9999, a
/// leap second).
fn write(t: &DateTime<Utc>, out: &mut [u8; MAX]) -> Option<usize> {
    let year = t.year();
    let nano = t.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return None;
    }
    let two = |out: &mut [u8; MAX], at: usize, v: u32| {
        out[at] = b'0' + (v / 10) as u8;
        out[at + 1] = b'0' + (v % 10) as u8;
    };
    let year = year as u32;
    two(out, 0, year / 100);
    two(out, 2, year % 100);
    out[4] = b'-';
    two(out, 5, t.month());
    out[7] = b'-';
    two(out, 8, t.day());
    out[10] = b'T';
    two(out, 11, t.hour());
    out[13] = b':';
    two(out, 14, t.minute());
    out[16] = b':';
    two(out, 17, t.second());
    let mut n = 19;
    let (mut fraction, digits) = if nano == 0 {
        (0, 0)
    } else if nano.is_multiple_of(1_000_000) {
        (nano / 1_000_000, 3)
    } else if nano.is_multiple_of(1_000) {
        (nano / 1_000, 6)
    } else {
        (nano, 9)
    };
    if digits > 0 {
        out[n] = b'.';
        for i in (0..digits).rev() {
            out[n + 1 + i] = b'0' + (fraction % 10) as u8;
            fraction /= 10;
        }
        n += 1 + digits;
    }
    out[n] = b'Z';
    Some(n + 1)
}

/// Serializes a UTC timestamp as RFC 3339 text, exactly as chrono's `Serialize` does.
pub fn utc<S: Serializer>(t: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    let mut buf = [0u8; MAX];
    match write(t, &mut buf) {
        // Only ASCII digits and separators were written.
        Some(n) => serializer.serialize_str(std::str::from_utf8(&buf[..n]).unwrap_or_default()),
        None => serializer.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// [`utc`] for an optional timestamp (`null` when absent).
pub fn utc_opt<S: Serializer>(t: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => utc(t, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    #[derive(serde::Serialize)]
    struct Ours<'a>(#[serde(serialize_with = "utc")] &'a DateTime<Utc>);

    fn same_as_chrono(t: DateTime<Utc>) {
        let ours = serde_json::to_string(&Ours(&t)).expect("serializes");
        let chrono = serde_json::to_string(&t).expect("serializes");
        assert_eq!(ours, chrono, "{t:?}");
        // And it reads back as the same instant.
        let back: DateTime<Utc> = serde_json::from_str(&ours).expect("parses");
        assert_eq!(back, t);
    }

    #[test]
    fn writes_what_chrono_writes_for_every_fraction_length() {
        let base = Utc
            .with_ymd_and_hms(2026, 12, 4, 9, 5, 7)
            .single()
            .expect("valid");
        for nanos in [
            0,
            1,
            7,
            999,
            1_000,
            120_000,
            999_000,
            1_000_000,
            5_000_000,
            123_000_000,
            123_456_000,
            123_456_789,
            999_999_999,
        ] {
            same_as_chrono(base + Duration::nanoseconds(nanos));
        }
    }

    #[test]
    fn writes_what_chrono_writes_across_the_calendar() {
        // Every day of four years at shifting times of day, and the edges of the range.
        let start = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid");
        for day in 0..(4 * 366) {
            same_as_chrono(start + Duration::days(day) + Duration::seconds(day * 3_607 % 86_400));
        }
        for t in [
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0),
        ] {
            same_as_chrono(t.single().expect("valid"));
        }
    }

    #[test]
    fn leaves_years_outside_four_digits_to_chrono() {
        for t in [
            Utc.with_ymd_and_hms(-1, 6, 1, 12, 0, 0),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0),
        ] {
            let t = t.single().expect("valid");
            let mut buf = [0u8; MAX];
            assert_eq!(write(&t, &mut buf), None);
            same_as_chrono(t);
        }
    }

    #[test]
    fn optional_timestamps_are_null_or_the_same_text() {
        #[derive(serde::Serialize)]
        struct Opt(#[serde(serialize_with = "utc_opt")] Option<DateTime<Utc>>);
        assert_eq!(serde_json::to_string(&Opt(None)).expect("json"), "null");
        let t = Utc::now();
        assert_eq!(
            serde_json::to_string(&Opt(Some(t))).expect("json"),
            serde_json::to_string(&t).expect("json")
        );
    }
}
