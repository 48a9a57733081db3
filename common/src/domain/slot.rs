//! The slot grid.
//!
//! Slots are not stored: a slot is valid when it starts on the practitioner's grid inside
//! working hours (local to the clinic's IANA time zone), is not on a closed day, lies in the
//! future and within the booking horizon. Local wall-clock times are what practitioners
//! publish, so the check converts the UTC instant to local time:
//! - a 09:00 slot stays 09:00 local across a DST change (its UTC instant moves);
//! - local times skipped by a spring-forward gap have no UTC instant, so no slot exists there;
//! - local times repeated by an autumn fall-back map to two instants; only the first (the
//!   earlier offset) is a slot, so the same wall-clock slot cannot be booked twice.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

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
}

impl SlotProblem {
    /// The machine-readable rejection reason.
    pub fn reason(self) -> &'static str {
        match self {
            SlotProblem::InPast => "in_past",
            SlotProblem::BeyondHorizon => "beyond_horizon",
            SlotProblem::OffGrid | SlotProblem::OutsideHours => "invalid_slot",
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
                {
                    out.push(at.with_timezone(&Utc));
                }
                m += len;
            }
        }
        out.dedup();
        out
    }

    /// Working intervals of a local date: the exception's, else the weekly ones.
    pub fn intervals_on(&self, date: NaiveDate) -> Vec<(NaiveTime, NaiveTime)> {
        if let Some(ex) = self.exceptions.iter().find(|e| e.date == date) {
            return ex.hours.into_iter().collect();
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
                end: crate::domain::fields::END_OF_DAY,
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
}
