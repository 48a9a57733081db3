//! Rate limits shared by every ingress replica: a GCRA (generic cell rate algorithm) in one
//! atomic Lua script on Redis, per key (an IP or a patient) and route class.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// One limit: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once.
    pub burst: u32,
}

impl Limit {
    /// Parses `<per second>/<burst>`, e.g. `20/40`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (rate, burst) = raw
            .split_once('/')
            .ok_or("expected <per second>/<burst>, e.g. 20/40")?;
        let per_second: f64 = rate.trim().parse().map_err(|_| "rate must be a number")?;
        let burst: u32 = burst
            .trim()
            .parse()
            .map_err(|_| "burst must be a whole number")?;
        if !(per_second > 0.0 && per_second.is_finite()) || burst == 0 {
            return Err("rate and burst must be positive".into());
        }
        Ok(Limit { per_second, burst })
    }
}

/// Limits by route class.
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// Off entirely (`RATE_LIMIT_ENABLED=0`).
    pub enabled: bool,
    /// Reads (GET) per client.
    pub read: Limit,
    /// Writes (POST/PUT/DELETE) per client.
    pub write: Limit,
    /// Booking submissions, reschedules and cancels per patient.
    pub booking: Limit,
}

/// The answer of the limiter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The burst (RateLimit-Limit).
    pub limit: u32,
    /// Requests left right now (RateLimit-Remaining).
    pub remaining: u32,
    /// Until the bucket is full again (RateLimit-Reset).
    pub reset: Duration,
    /// When refused: until the next request is allowed (Retry-After).
    pub retry_after: Duration,
}

// GCRA: each key stores its "theoretical arrival time" (TAT) in ms. A request is allowed when
// TAT − burst × interval ≤ now; it then moves TAT one interval later. Time is Redis' own, so
// replicas with skewed clocks agree.
// KEYS[1] key; ARGV: 1 interval ms, 2 burst
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, 0, math.ceil(tat - now), math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil(new_tat - now) + 1000)
local remaining = math.floor((now + interval * burst - new_tat) / interval)
return {1, remaining, math.ceil(new_tat - now), 0}
";

/// Built (and its SHA-1 computed) once, not per request.
static GCRA: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(GCRA_LUA));

/// Checks and counts one request against `limit` for `key`.
pub async fn check(
    conn: &mut ConnectionManager,
    key: &str,
    limit: Limit,
) -> redis::RedisResult<Decision> {
    let interval_ms = (1000.0 / limit.per_second).max(1.0).round() as u64;
    let (allowed, remaining, reset_ms, retry_ms): (i64, i64, i64, i64) = GCRA
        .key(key)
        .arg(interval_ms)
        .arg(limit.burst)
        .invoke_async(conn)
        .await?;
    Ok(Decision {
        allowed: allowed == 1,
        limit: limit.burst,
        remaining: remaining.max(0) as u32,
        reset: Duration::from_millis(reset_ms.max(0) as u64),
        retry_after: Duration::from_millis(retry_ms.max(0) as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse() {
        assert_eq!(
            Limit::parse("20/40"),
            Ok(Limit {
                per_second: 20.0,
                burst: 40
            })
        );
        assert_eq!(
            Limit::parse("0.5/3"),
            Ok(Limit {
                per_second: 0.5,
                burst: 3
            })
        );
        for bad in ["20", "x/1", "1/x", "0/1", "1/0", "-1/2"] {
            assert!(Limit::parse(bad).is_err(), "{bad}");
        }
    }
}
