//! XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`), the form of the SCE `<time stamp>`
//! (XEP-0420 0.5): [`format_utc`] writes unix seconds in UTC, [`parse`] reads any valid stamp
//! back to unix seconds (fractions dropped, the zone applied).

/// Days from 1970-01-01 to the civil date `y-m-d` (proleptic Gregorian; eras of 400 years).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count from 1970-01-01 (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `unix` seconds as an XEP-0082 DateTime in UTC, whole seconds: `2026-07-01T12:34:56Z`.
pub fn format_utc(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A fixed number of ASCII digits at the start of `s`, and the rest.
fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

fn expect(s: &str, c: char) -> Option<&str> {
    s.strip_prefix(c)
}

/// Reads an XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`, TZD `Z` or `±hh:mm`; any number of
/// fraction digits) as unix seconds. `None` if it is not one.
pub fn parse(s: &str) -> Option<i64> {
    let (year, s) = digits(s, 4)?;
    let (month, s) = digits(expect(s, '-')?, 2)?;
    let (day, s) = digits(expect(s, '-')?, 2)?;
    let (hour, s) = digits(expect(s, 'T')?, 2)?;
    let (minute, s) = digits(expect(s, ':')?, 2)?;
    let (second, mut s) = digits(expect(s, ':')?, 2)?;
    if let Some(rest) = s.strip_prefix('.') {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        s = &rest[n..];
    }
    let year = i64::from(year);
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if !valid {
        return None;
    }
    let offset = match s {
        "Z" => 0,
        _ => {
            let sign = match s.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, rest) = digits(&s[1..], 2)?;
            let (om, rest) = digits(expect(rest, ':')?, 2)?;
            if !rest.is_empty() || oh > 23 || om > 59 {
                return None;
            }
            sign * i64::from(oh * 3600 + om * 60)
        }
    };
    let local =
        days_from_civil(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(local - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_reads_back() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_782_909_296), "2026-07-01T12:34:56Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0, 1, 86_399, 951_782_400, 1_782_909_296, 4_102_444_800, -1] {
            assert_eq!(parse(&format_utc(t)), Some(t), "{t}");
        }
    }

    #[test]
    fn reads_every_xep_0082_form() {
        // XEP-0420's example, XEP-0082's, and QXmpp's (milliseconds, UTC).
        assert_eq!(
            parse("2004-01-25T06:05:00+01:00"),
            parse("2004-01-25T05:05:00Z")
        );
        assert_eq!(parse("1969-07-21T02:56:15Z"), Some(-14_159_025));
        assert_eq!(parse("1969-07-20T21:56:15-05:00"), Some(-14_159_025));
        assert_eq!(parse("2026-07-01T12:34:56.789Z"), Some(1_782_909_296));
        assert_eq!(parse("2026-07-01T12:34:56.123456789Z"), Some(1_782_909_296));
    }

    #[test]
    fn refuses_what_is_not_one() {
        for bad in [
            "",
            "2026-07-01",
            "2026-07-01T12:34:56",
            "2026-07-01T12:34Z",
            "2026-07-01 12:34:56Z",
            "2026-13-01T12:34:56Z",
            "2026-02-29T12:34:56Z",
            "2026-07-01T24:00:00Z",
            "2026-07-01T12:34:56.Z",
            "2026-07-01T12:34:56+0100",
            "2026-07-01T12:34:56+01:00x",
            "2026-07-01T12:34:56z",
            "+026-07-01T12:34:56Z",
            "20260701T123456Z",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
