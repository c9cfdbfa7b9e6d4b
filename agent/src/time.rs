//! UTC timestamps in the Activity Tracker format (`YYYY-MM-DDTHH:mm:ss.SS+0000`), without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, formatted as an Activity Tracker `eventTime`.
pub fn event_time_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    event_time(d.as_secs(), d.subsec_millis() / 10)
}

/// Formats Unix seconds plus hundredths.
pub fn event_time(secs: u64, centis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{centis:02}+0000",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// SigV4's `x-amz-date` (`YYYYMMDDTHHMMSSZ`) for Unix seconds.
pub fn amz_date(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(event_time(0, 0), "1970-01-01T00:00:00.00+0000");
        // The sample in the Activity Tracker docs.
        assert_eq!(event_time(1_572_817_253, 94), "2019-11-03T21:40:53.94+0000");
        assert_eq!(event_time(951_782_400, 5), "2000-02-29T00:00:00.05+0000");
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
    }
}
