//! Parsing of API input fields into validated values: parse, don't validate. A
//! [`CountryCode`], [`Email`] or [`Phone`] can only be made by parsing, so holding one proves
//! the input was checked. Each error is a message meant for the client (it ends up in a
//! problem+json `errors[]` entry).

use chrono::NaiveTime;
use chrono_tz::Tz;

/// A trimmed, non-empty, bounded display name.
pub fn name(raw: &str, max: usize) -> Result<String, String> {
    let v = raw.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    if v.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(v.to_owned())
}

/// The officially assigned ISO 3166-1 alpha-2 codes (249, as of ISO/TC 46 N1108, 2023-04-05),
/// sorted. Reserved codes (`UK`, `EU`, `UN`, …) and user-assigned ones (`XK`, `ZZ`, …) are
/// not in it.
pub const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Defines a validated string newtype: `as_str`, `Display`, `AsRef<str>` and `into_string`.
macro_rules! text_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The validated text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// An officially assigned ISO 3166-1 alpha-2 country code, upper-cased: the partition key
    /// of `bookings`.
    CountryCode
);

impl CountryCode {
    /// Parses a code in any case, surrounding spaces ignored.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let v = raw.trim().to_ascii_uppercase();
        if ISO_3166_ALPHA2.binary_search(&v.as_str()).is_ok() {
            Ok(CountryCode(v))
        } else {
            Err("must be a two-letter ISO 3166-1 country code".into())
        }
    }
}

/// An IANA time zone name.
pub fn timezone(raw: &str) -> Result<Tz, String> {
    raw.trim()
        .parse::<Tz>()
        .map_err(|_| "must be an IANA time zone such as Europe/Paris".into())
}

text_newtype!(
    /// A plausible e-mail address (one `@`, non-empty parts, a dot in the domain, no spaces).
    Email
);

text_newtype!(
    /// A phone number: digits with optional `+`, spaces, dashes, dots and parentheses.
    Phone
);

impl Email {
    /// Parses an address, surrounding spaces ignored.
    pub fn parse(raw: &str) -> Result<Self, String> {
        email(raw).map(Email)
    }
}

impl Phone {
    /// Parses a number, surrounding spaces ignored.
    pub fn parse(raw: &str) -> Result<Self, String> {
        phone(raw).map(Phone)
    }
}

fn email(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    let ok = v.len() <= 254
        && !v.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(v.split_once('@'), Some((local, domain))
            if !local.is_empty() && !domain.contains('@') && domain.contains('.')
               && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err("must be an e-mail address".into())
    }
}

fn phone(raw: &str) -> Result<String, String> {
    let v = raw.trim();
    let digits = v.chars().filter(char::is_ascii_digit).count();
    let ok = (4..=20).contains(&digits)
        && v.len() <= 32
        && v.chars()
            .all(|c| c.is_ascii_digit() || " +-.()".contains(c));
    if ok {
        Ok(v.to_owned())
    } else {
        Err("must be a phone number".into())
    }
}

/// Slot length in minutes: 5 to 480, a multiple of 5.
pub fn slot_minutes(v: i64) -> Result<u32, String> {
    if (5..=480).contains(&v) && v % 5 == 0 {
        Ok(v as u32)
    } else {
        Err("must be a multiple of 5 between 5 and 480".into())
    }
}

/// The end of a local day, `24:00`: [`NaiveTime`] has no 24:00, so the last microsecond of
/// the day stands for it (PostgreSQL's `time` keeps it exactly). Only an interval's end may be
/// it; [`minutes_of_day`] counts it as 1440 and [`hhmm`] writes it `24:00`.
pub const END_OF_DAY: NaiveTime = match NaiveTime::from_hms_micro_opt(23, 59, 59, 999_999) {
    Some(t) => t,
    None => NaiveTime::MIN,
};

/// Minutes since local midnight; [`END_OF_DAY`] is 1440.
pub fn minutes_of_day(t: NaiveTime) -> u32 {
    if t == END_OF_DAY {
        24 * 60
    } else {
        chrono::Timelike::hour(&t) * 60 + chrono::Timelike::minute(&t)
    }
}

/// `HH:MM`, with [`END_OF_DAY`] as `24:00`.
pub fn hhmm(t: NaiveTime) -> String {
    if t == END_OF_DAY {
        "24:00".into()
    } else {
        t.format("%H:%M").to_string()
    }
}

/// The end of a working interval: a local time `HH:MM` on a 5-minute grid, or `24:00`
/// (midnight at the end of the day, [`END_OF_DAY`]).
pub fn local_end_time(raw: &str) -> Result<NaiveTime, String> {
    if raw == "24:00" {
        return Ok(END_OF_DAY);
    }
    local_time(raw).map_err(|e| {
        if e.starts_with("must be a local time") {
            "must be a local time HH:MM (00:05 to 24:00)".to_string()
        } else {
            e
        }
    })
}

/// A local time of day written `HH:MM`, on a 5-minute grid.
pub fn local_time(raw: &str) -> Result<NaiveTime, String> {
    let t = NaiveTime::parse_from_str(raw, "%H:%M")
        .map_err(|_| "must be a local time HH:MM".to_string())?;
    if chrono::Timelike::minute(&t) % 5 != 0 {
        return Err("must be on a 5-minute grid".into());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_country_list_is_sorted_unique_and_two_upper_case_letters() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_3166_ALPHA2
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
        for code in ["FR", "US", "DE", "GB", "SS", "CW", "SX", "BQ", "AX", "ZW"] {
            assert!(ISO_3166_ALPHA2.contains(&code), "{code}");
        }
    }

    #[test]
    fn fields_accept_good_and_refuse_bad_values() {
        assert_eq!(name("  Dr. Ada  ", 10), Ok("Dr. Ada".into()));
        assert!(name("   ", 10).is_err());
        assert!(name("x\u{0}y", 10).is_err());
        assert_eq!(CountryCode::parse("fr").unwrap().as_str(), "FR");
        assert!(CountryCode::parse("FRA").is_err());
        assert!(CountryCode::parse("F1").is_err());
        assert_eq!(CountryCode::parse(" gb ").unwrap().to_string(), "GB");
        for bad in ["ZZ", "XX", "UK", "EU", "XK", "AA", "", "É"] {
            assert!(CountryCode::parse(bad).is_err(), "{bad}");
        }
        assert!(timezone("Europe/Paris").is_ok());
        assert!(timezone("Mars/Olympus").is_err());
        assert!(Email::parse("a@b.example").is_ok());
        for bad in ["a@b", "@b.example", "a b@c.de", "a@@b.de", "a@.de"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Phone::parse("+33 1 23 45 67 89").is_ok());
        assert!(Phone::parse("call me").is_err());
        assert_eq!(slot_minutes(30), Ok(30));
        assert!(slot_minutes(7).is_err());
        assert!(slot_minutes(0).is_err());
        assert!(local_time("09:00").is_ok());
        assert!(local_time("09:03").is_err());
        assert!(local_time("25:00").is_err());
        assert!(local_time("9am").is_err());
        assert!(local_time("24:00").is_err(), "24:00 is only an end");
        assert_eq!(local_end_time("24:00"), Ok(END_OF_DAY));
        assert_eq!(minutes_of_day(END_OF_DAY), 1440);
        assert_eq!(hhmm(END_OF_DAY), "24:00");
        assert_eq!(local_end_time("17:30").map(hhmm).as_deref(), Ok("17:30"));
        assert!(local_end_time("24:05").is_err());
        assert!(local_end_time("24:00:00").is_err());
    }
}
