//! The slot grid.
//!
//! Slots are not stored: a slot is valid when it starts on the practitioner's grid inside
//! working hours (local to the clinic's IANA time zone), is not on a closed day, lies in the
//! future and within the booking horizon. Local wall-clock times are what practitioners
//! publish, so the check converts the UTC instant to local time:
//! - a 09:00 slot stays 09:00 local across a DST change (its UTC instant moves);
//! - local times skipped by a spring-forward gap have no UTC instant, so no slot exists there;
//! - local times repeated by an autumn fall-back map to two instants; only the first (the
//!   earlier offset) is a slot, so the same wall-clock slot cannot be booked twice;
//! - a slot lasts `slot_minutes` real minutes, so one that spans a spring-forward gap would
//!   run past the next slot's start (and maybe past the end of hours): it is not a slot
//!   ([`SlotProblem::SpansClockChange`]). Slots of one practitioner never overlap.
//!
//! Longer than most modules: more than half of it is its unit tests (DST cases).

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::request::RejectionReason;

/// One weekly working interval, local time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeeklyHours {
    /// ISO weekday, Monday = 1 … Sunday = 7.
    pub weekday: u8,
    /// Local start of work.
    pub start: NaiveTime,
    /// Local end of work (a slot must end by then).
    pub end: NaiveTime,
}

/// A dated exception to the weekly hours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleException {
    /// Local date.
    pub date: NaiveDate,
    /// `None`: closed all day; `Some((start, end))`: these hours instead of the weekly ones.
    pub hours: Option<(NaiveTime, NaiveTime)>,
}

/// Everything needed to decide whether an instant is a bookable slot.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The clinic's time zone.
    pub tz: Tz,
    /// Slot length.
    pub slot_minutes: u32,
    /// Weekly hours.
    pub weekly: Vec<WeeklyHours>,
    /// Dated exceptions.
    pub exceptions: Vec<ScheduleException>,
}

/// Why an instant is not a bookable slot; `reason()` is the code used in decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotProblem {
    /// The slot starts now or earlier.
    #[error("the slot starts in the past")]
    InPast,
    /// The slot is further ahead than the booking horizon.
    #[error("the slot is beyond the booking horizon")]
    BeyondHorizon,
    /// The instant is not on the practitioner's slot grid.
    #[error("the time is not on the practitioner's slot grid")]
    OffGrid,
    /// The slot is not inside the practitioner's working hours that day.
    #[error("the slot is outside the practitioner's working hours")]
    OutsideHours,
    /// The clocks go forward during the slot: its real length would run into the next slot.
    #[error("the clocks go forward during this slot, so it would overlap the next one")]
    SpansClockChange,
}

impl SlotProblem {
    /// The machine-readable rejection reason.
    pub fn reason(self) -> RejectionReason {
        match self {
            SlotProblem::InPast => RejectionReason::InPast,
            SlotProblem::BeyondHorizon => RejectionReason::BeyondHorizon,
            SlotProblem::OffGrid | SlotProblem::OutsideHours | SlotProblem::SpansClockChange => {
                RejectionReason::InvalidSlot
            }
        }
    }
}

impl Schedule {
    /// Checks that `start` is a bookable slot at `now`; returns the slot's end.
    pub fn check(
        &self,
        start: DateTime<Utc>,
        now: DateTime<Utc>,
        horizon_days: u32,
    ) -> Result<DateTime<Utc>, SlotProblem> {
        if start <= now {
            return Err(SlotProblem::InPast);
        }
        if start > now + Duration::days(i64::from(horizon_days)) {
            return Err(SlotProblem::BeyondHorizon);
        }
        self.fits(start)
    }

    /// Checks that `start` lies on the grid inside working hours, whatever the date; returns
    /// the slot's end. (Used for existing bookings when hours change.)
    pub fn fits(&self, start: DateTime<Utc>) -> Result<DateTime<Utc>, SlotProblem> {
        if start.timestamp_subsec_nanos() != 0 || start.second() != 0 {
            return Err(SlotProblem::OffGrid);
        }
        let local = start.with_timezone(&self.tz);
        // The second occurrence of a repeated (fall-back) local time is not a slot.
        let first = self.tz.from_local_datetime(&local.naive_local()).earliest();
        if first.map(|f| f.with_timezone(&Utc)) != Some(start) {
            return Err(SlotProblem::OffGrid);
        }
        let minute = minutes(local.time());
        let len = self.slot_minutes;
        for (from, to) in self.intervals_on(local.date_naive()) {
            let (from, to) = (minutes(from), minutes(to));
            if minute >= from && minute < to {
                if !(minute - from).is_multiple_of(len) {
                    return Err(SlotProblem::OffGrid);
                }
                if minute + len <= to {
                    if !self.lasts_until_its_wall_end(local.date_naive(), minute, start) {
                        return Err(SlotProblem::SpansClockChange);
                    }
                    return Ok(start + Duration::minutes(i64::from(len)));
                }
            }
        }
        Err(SlotProblem::OutsideHours)
    }

    /// The slots starting in `[from, to)`, in order, without computing whole days: only the
    /// part of each local date that falls in the window (widened by an hour for DST, then
    /// filtered exactly) is converted. Same rules as [`slots_on`](Self::slots_on).
    pub fn slots_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let len = self.slot_minutes.max(1);
        let lf = (from - Duration::hours(1))
            .with_timezone(&self.tz)
            .naive_local();
        let lt = (to + Duration::hours(1))
            .with_timezone(&self.tz)
            .naive_local();
        let mut out = Vec::new();
        for date in lf.date().iter_days().take_while(|d| *d <= lt.date()) {
            let lo = if date == lf.date() {
                minutes(lf.time())
            } else {
                0
            };
            let hi = if date == lt.date() {
                minutes(lt.time())
            } else {
                24 * 60
            };
            for (a, b) in self.intervals_on(date) {
                let (a, b) = (minutes(a), minutes(b));
                let mut m = if lo > a {
                    a + (lo - a).div_ceil(len) * len
                } else {
                    a
                };
                while m + len <= b && m <= hi {
                    let at = NaiveTime::from_hms_opt(m / 60, m % 60, 0)
                        .and_then(|t| self.tz.from_local_datetime(&date.and_time(t)).earliest());
                    if let Some(at) = at.map(|t| t.with_timezone(&Utc))
                        && at >= from
                        && at < to
                        && self.lasts_until_its_wall_end(date, m, at)
                    {
                        out.push(at);
                    }
                    m += len;
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The slots of a local date, as UTC start instants in order. Local times skipped by a
    /// spring-forward gap yield no slot; repeated ones yield their first occurrence only
    /// (the same rule as [`fits`](Self::fits)).
    pub fn slots_on(&self, date: NaiveDate) -> Vec<DateTime<Utc>> {
        let len = self.slot_minutes.max(1);
        let mut out = Vec::new();
        let mut intervals = self.intervals_on(date);
        intervals.sort();
        for (from, to) in intervals {
            let (from, to) = (minutes(from), minutes(to));
            let mut m = from;
            while m + len <= to {
                if let Some(t) = NaiveTime::from_hms_opt(m / 60, m % 60, 0)
                    && let Some(at) = self.tz.from_local_datetime(&date.and_time(t)).earliest()
                    && self.lasts_until_its_wall_end(date, m, at.with_timezone(&Utc))
                {
                    out.push(at.with_timezone(&Utc));
                }
                m += len;
            }
        }
        out.dedup();
        out
    }

    /// Whether the slot starting at `at` (minute `m` of local `date`) ends, `slot_minutes` real
    /// minutes later, no later than the instant its wall-clock end (`m + slot_minutes`, where
    /// the next slot starts) happens. False only across a spring-forward gap; across a
    /// fall-back the slot ends early (an hour of the repeated time offers no slot).
    fn lasts_until_its_wall_end(&self, date: NaiveDate, m: u32, at: DateTime<Utc>) -> bool {
        let len = i64::from(self.slot_minutes);
        let wall_end = date.and_time(NaiveTime::MIN) + Duration::minutes(i64::from(m) + len);
        self.first_instant_from(wall_end)
            .is_none_or(|bound| at + Duration::minutes(len) <= bound)
    }

    /// The instant of local time `local`, or if the clocks skip it, of the first local minute
    /// after it that exists (where the gap ends). `None` only past the zone's tables.
    fn first_instant_from(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // Gaps last minutes to hours; a skipped day (Pacific/Apia, 2011-12-30) is the longest.
        (0..=2 * 24 * 60).find_map(|k| {
            self.tz
                .from_local_datetime(&(local + Duration::minutes(k)))
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        })
    }

    /// Working intervals of a local date: the exceptions' of that date (none when it is
    /// closed), else the weekly ones.
    pub fn intervals_on(&self, date: NaiveDate) -> Vec<(NaiveTime, NaiveTime)> {
        let mut dated = self.exceptions.iter().filter(|e| e.date == date).peekable();
        if dated.peek().is_some() {
            return dated.filter_map(|e| e.hours).collect();
        }
        let weekday = date.weekday().number_from_monday() as u8;
        self.weekly
            .iter()
            .filter(|h| h.weekday == weekday)
            .map(|h| (h.start, h.end))
            .collect()
    }
}

fn minutes(t: NaiveTime) -> u32 {
    super::fields::minutes_of_day(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").expect("test time")
    }

    fn paris_weekdays() -> Schedule {
        Schedule {
            tz: chrono_tz::Europe::Paris,
            slot_minutes: 30,
            weekly: (1..=7)
                .map(|d| WeeklyHours {
                    weekday: d,
                    start: t("01:00"),
                    end: t("17:00"),
                })
                .collect(),
            exceptions: vec![],
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    const NOW: &str = "2026-03-01T00:00:00Z";

    #[test]
    fn a_slot_on_the_grid_inside_hours_is_valid() {
        let s = paris_weekdays();
        // 09:00 Paris in winter is 08:00 UTC.
        let end = s
            .check(utc("2026-03-02T08:00:00Z"), utc(NOW), 60)
            .expect("valid");
        assert_eq!(end, utc("2026-03-02T08:30:00Z"));
    }

    #[test]
    fn hours_may_end_at_midnight() {
        let s = Schedule {
            tz: chrono_tz::UTC,
            slot_minutes: 30,
            weekly: vec![WeeklyHours {
                weekday: 1,
                start: t("22:00"),
                end: crate::fields::END_OF_DAY,
            }],
            exceptions: vec![],
        };
        // 2026-03-02 is a Monday: the last slot is 23:30–24:00.
        assert_eq!(
            s.fits(utc("2026-03-02T23:30:00Z")),
            Ok(utc("2026-03-03T00:00:00Z"))
        );
        let day = NaiveDate::from_ymd_opt(2026, 3, 2).expect("date");
        assert_eq!(s.slots_on(day).len(), 4);
        assert_eq!(
            s.slots_between(utc("2026-03-02T00:00:00Z"), utc("2026-03-03T00:00:00Z"))
                .last()
                .copied(),
            Some(utc("2026-03-02T23:30:00Z"))
        );
        // Tuesday has no hours; midnight belongs to it, not to Monday's interval.
        assert_eq!(
            s.fits(utc("2026-03-03T00:00:00Z")),
            Err(SlotProblem::OutsideHours)
        );
    }

    #[test]
    fn off_grid_outside_hours_past_and_horizon_are_refused() {
        let s = paris_weekdays();
        assert_eq!(
            s.check(utc("2026-03-02T08:10:00Z"), utc(NOW), 60),
            Err(SlotProblem::OffGrid)
        );
        assert_eq!(
            s.check(utc("2026-03-02T08:00:30Z"), utc(NOW), 60),
            Err(SlotProblem::OffGrid)
        );
        assert_eq!(
            s.check(utc("2026-03-02T18:00:00Z"), utc(NOW), 60),
            Err(SlotProblem::OutsideHours)
        );
        // 16:30 local ends 17:00: the last slot; 16:45 would be off grid anyway.
        assert!(s.check(utc("2026-03-02T15:30:00Z"), utc(NOW), 60).is_ok());
        assert_eq!(
            s.check(utc("2026-02-27T08:00:00Z"), utc(NOW), 60),
            Err(SlotProblem::InPast)
        );
        assert_eq!(
            s.check(utc("2026-06-02T08:00:00Z"), utc(NOW), 60),
            Err(SlotProblem::BeyondHorizon)
        );
    }

    #[test]
    fn nine_local_stays_nine_local_across_spring_forward() {
        let s = paris_weekdays();
        // 2026-03-29: Paris moves from UTC+1 to UTC+2.
        assert!(s.check(utc("2026-03-28T08:00:00Z"), utc(NOW), 60).is_ok()); // 09:00 +01
        assert!(s.check(utc("2026-03-30T07:00:00Z"), utc(NOW), 60).is_ok()); // 09:00 +02
        // The instant 08:00Z on the 30th is 10:00 local, still a valid slot, but 07:15Z is not.
        assert_eq!(
            s.check(utc("2026-03-30T07:15:00Z"), utc(NOW), 60),
            Err(SlotProblem::OffGrid)
        );
        // 02:00–03:00 local does not exist on the 29th: 01:30 +01 is followed by 03:00 +02.
        assert!(s.check(utc("2026-03-29T00:30:00Z"), utc(NOW), 60).is_ok()); // 01:30 +01
        assert!(s.check(utc("2026-03-29T01:00:00Z"), utc(NOW), 60).is_ok()); // 03:00 +02
    }

    #[test]
    fn a_repeated_local_hour_in_autumn_yields_one_slot_not_two() {
        let s = paris_weekdays();
        let now = utc("2026-10-01T00:00:00Z");
        // 2026-10-25: 02:30 local happens at 00:30Z (+02) and again at 01:30Z (+01).
        assert!(s.check(utc("2026-10-25T00:30:00Z"), now, 60).is_ok());
        assert_eq!(
            s.check(utc("2026-10-25T01:30:00Z"), now, 60),
            Err(SlotProblem::OffGrid)
        );
    }

    #[test]
    fn exceptions_replace_weekly_hours() {
        let mut s = paris_weekdays();
        let day = NaiveDate::from_ymd_opt(2026, 3, 2).expect("date");
        s.exceptions.push(ScheduleException {
            date: day,
            hours: None,
        });
        assert_eq!(
            s.check(utc("2026-03-02T08:00:00Z"), utc(NOW), 60),
            Err(SlotProblem::OutsideHours)
        );
        s.exceptions[0].hours = Some((t("13:00"), t("14:00")));
        assert!(s.check(utc("2026-03-02T12:00:00Z"), utc(NOW), 60).is_ok());
        assert_eq!(
            s.check(utc("2026-03-02T08:00:00Z"), utc(NOW), 60),
            Err(SlotProblem::OutsideHours)
        );
        // Two periods on one date.
        s.exceptions.push(ScheduleException {
            date: day,
            hours: Some((t("08:00"), t("09:00"))),
        });
        assert!(s.check(utc("2026-03-02T07:30:00Z"), utc(NOW), 60).is_ok());
        assert!(s.check(utc("2026-03-02T12:30:00Z"), utc(NOW), 60).is_ok());
        assert_eq!(
            s.check(utc("2026-03-02T10:00:00Z"), utc(NOW), 60),
            Err(SlotProblem::OutsideHours)
        );
        assert_eq!(s.slots_on(day).len(), 4);
    }

    #[test]
    fn slots_of_a_day_follow_the_grid_and_skip_the_missing_hour() {
        let s = paris_weekdays();
        let spring = NaiveDate::from_ymd_opt(2026, 3, 29).expect("date");
        let slots = s.slots_on(spring);
        // 01:00–17:00 local is 32 half-hours; 02:00 and 02:30 do not exist that day.
        assert_eq!(slots.len(), 30);
        assert_eq!(slots[0], utc("2026-03-29T00:00:00Z")); // 01:00 +01
        assert_eq!(slots[2], utc("2026-03-29T01:00:00Z")); // 03:00 +02
        for slot in &slots {
            assert!(s.fits(*slot).is_ok(), "{slot}");
        }
        let autumn = NaiveDate::from_ymd_opt(2026, 10, 25).expect("date");
        let slots = s.slots_on(autumn);
        // 02:00 and 02:30 happen twice but are offered once: still 32 slots.
        assert_eq!(slots.len(), 32);
        assert!(slots.contains(&utc("2026-10-25T00:30:00Z")));
        assert!(!slots.contains(&utc("2026-10-25T01:30:00Z")));
        let summer = NaiveDate::from_ymd_opt(2026, 7, 6).expect("date");
        assert_eq!(s.slots_on(summer)[16], utc("2026-07-06T07:00:00Z")); // 09:00 +02
    }

    #[test]
    fn slots_between_agrees_with_slots_of_whole_days() {
        let s = paris_weekdays();
        for day in ["2026-03-28", "2026-03-29", "2026-10-25", "2026-07-06"] {
            let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").expect("date");
            let whole: Vec<_> = [d.pred_opt(), Some(d), d.succ_opt()]
                .into_iter()
                .flatten()
                .flat_map(|l| s.slots_on(l))
                .collect();
            let from = d.and_time(NaiveTime::MIN).and_utc();
            let to = from + Duration::hours(24);
            let mut expected: Vec<_> = whole
                .into_iter()
                .filter(|t| *t >= from && *t < to)
                .collect();
            expected.sort();
            assert_eq!(s.slots_between(from, to), expected, "{day}");
            let mid = from + Duration::minutes(150);
            assert!(s.slots_between(mid, to).iter().all(|t| *t >= mid));
        }
    }

    #[test]
    fn a_slot_must_fit_before_the_end_of_hours() {
        let mut s = paris_weekdays();
        s.weekly = vec![WeeklyHours {
            weekday: 1,
            start: t("09:00"),
            end: t("09:45"),
        }];
        assert!(s.check(utc("2026-03-02T08:00:00Z"), utc(NOW), 60).is_ok());
        assert_eq!(
            s.check(utc("2026-03-02T08:30:00Z"), utc(NOW), 60),
            Err(SlotProblem::OutsideHours)
        );
    }

    fn all_day(tz: &str, slot_minutes: u32) -> Schedule {
        Schedule {
            tz: tz.parse().expect("zone"),
            slot_minutes,
            weekly: (1..=7)
                .map(|weekday| WeeklyHours {
                    weekday,
                    start: NaiveTime::MIN,
                    end: crate::fields::END_OF_DAY,
                })
                .collect(),
            exceptions: vec![],
        }
    }

    #[test]
    fn a_slot_across_the_spring_forward_gap_is_not_offered_nor_accepted() {
        // Berlin, 2027-03-28: 02:00 local jumps to 03:00 (01:00Z). 90-minute slots from 00:00:
        // 01:30 +01 (00:30Z) would last until 02:00Z, past 03:00 +02 (01:00Z), the next slot.
        let s = Schedule {
            weekly: vec![WeeklyHours {
                weekday: 7,
                start: t("00:00"),
                end: t("06:00"),
            }],
            ..all_day("Europe/Berlin", 90)
        };
        let day = NaiveDate::from_ymd_opt(2027, 3, 28).expect("date");
        assert_eq!(
            s.slots_on(day),
            vec![
                utc("2027-03-27T23:00:00Z"), // 00:00 +01
                utc("2027-03-28T01:00:00Z"), // 03:00 +02
                utc("2027-03-28T02:30:00Z"), // 04:30 +02, ends at 06:00 +02
            ]
        );
        assert_eq!(
            s.fits(utc("2027-03-28T00:30:00Z")),
            Err(SlotProblem::SpansClockChange)
        );
        assert_eq!(
            SlotProblem::SpansClockChange.reason(),
            RejectionReason::InvalidSlot
        );
        // Hours 01:00–03:00 that day are one real hour: no 90-minute slot fits.
        let short = Schedule {
            exceptions: vec![ScheduleException {
                date: day,
                hours: Some((t("01:00"), t("03:00"))),
            }],
            ..s.clone()
        };
        assert!(short.slots_on(day).is_empty());
        assert_eq!(
            short.fits(utc("2027-03-28T00:00:00Z")),
            Err(SlotProblem::SpansClockChange)
        );
    }

    #[test]
    fn slots_never_overlap_and_stay_inside_hours_on_any_clock_change() {
        let zones = [
            "Europe/Berlin",
            "America/New_York",
            "Australia/Sydney",
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "America/Santiago",
            "America/Havana",
            "Asia/Kolkata",
        ];
        let mut checked = 0;
        for zone in zones {
            let tz: Tz = zone.parse().expect("zone");
            let offset_at = |d: NaiveDate| {
                tz.from_local_datetime(&d.and_time(NaiveTime::from_hms_opt(12, 0, 0).expect("t")))
                    .earliest()
                    .map(|t| t.naive_utc())
            };
            let start = NaiveDate::from_ymd_opt(2027, 1, 1).expect("date");
            // Days whose local noon is not 24 h after the previous one: the clock changed.
            let changes: Vec<NaiveDate> = start
                .iter_days()
                .take(365)
                .filter(|d| {
                    let prev = d.pred_opt().expect("date");
                    offset_at(*d)
                        .zip(offset_at(prev))
                        .is_some_and(|(a, b)| a - b != Duration::hours(24))
                })
                .collect();
            for len in [15, 20, 25, 30, 45, 50, 60, 90, 120, 240] {
                let s = all_day(zone, len);
                for day in changes
                    .iter()
                    .flat_map(|d| [d.pred_opt(), Some(*d)])
                    .flatten()
                {
                    let slots = s.slots_on(day);
                    let day_start = s.first_instant_from(day.and_time(NaiveTime::MIN));
                    let next = day.succ_opt().expect("date").and_time(NaiveTime::MIN);
                    let day_end = s.first_instant_from(next);
                    for (i, at) in slots.iter().enumerate() {
                        let end = *at + Duration::minutes(i64::from(len));
                        assert!(day_start.is_none_or(|b| *at >= b), "{zone} {len} {at}");
                        assert!(day_end.is_none_or(|b| end <= b), "{zone} {len} {at}");
                        if let Some(following) = slots.get(i + 1) {
                            assert!(end <= *following, "{zone} {len}: {at} overlaps {following}");
                        }
                        assert_eq!(s.fits(*at), Ok(end), "{zone} {len} {at}");
                        checked += 1;
                    }
                    let from = day_start.expect("day start");
                    let to = day_end.expect("day end");
                    assert_eq!(s.slots_between(from, to), slots, "{zone} {len} {day}");
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
