//! Expected values: exact, or a bound (`{ min = N }`, `{ max = N }`, or both).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a profile asks of a numeric-or-text kernel value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Exactly this value, compared after normalising whitespace (and numerically when both
    /// sides are integers, so `"0"` and `0` agree).
    Exact(String),
    /// An integer bound, inclusive. A value already beyond a `min` is compliant and never
    /// lowered.
    Bound {
        min: Option<i128>,
        max: Option<i128>,
    },
}

impl Expected {
    /// Whether `actual` (a kernel value as read) satisfies this expectation. `None` when a bound
    /// cannot be applied because `actual` is not an integer.
    pub fn is_met_by(&self, actual: &str) -> Option<bool> {
        match self {
            Expected::Exact(want) => Some(values_equal(want, actual)),
            Expected::Bound { min, max } => {
                let n = parse_int(actual)?;
                Some(min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m))
            }
        }
    }
}

impl Expected {
    /// The value apply writes when `actual` does not meet this expectation: the exact value,
    /// or the bound that is violated. `None` when `actual` already meets it or a bound cannot
    /// be compared.
    pub fn target_for(&self, actual: &str) -> Option<String> {
        if self.is_met_by(actual)? {
            return None;
        }
        match self {
            Expected::Exact(v) => Some(normalize_whitespace(v)),
            Expected::Bound { min, max } => {
                let n = parse_int(actual)?;
                match (min, max) {
                    (Some(lo), _) if n < *lo => Some(lo.to_string()),
                    (_, Some(hi)) if n > *hi => Some(hi.to_string()),
                    _ => None,
                }
            }
        }
    }
}

/// Kernel text equality after folding runs of whitespace (`tcp_rmem` is tab-separated), and
/// numeric when both sides are integers.
pub fn values_equal(a: &str, b: &str) -> bool {
    let (a, b) = (normalize_whitespace(a), normalize_whitespace(b));
    match (parse_int(&a), parse_int(&b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// An integer as the kernel and sysctl.d files write them: decimal, or hex with `0x`
/// (systemd ships `kernel.sysrq = 0x01b6`).
pub fn parse_int(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let n = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => i128::from_str_radix(hex, 16).ok()?,
        None if digits.chars().all(|c| c.is_ascii_digit()) && !digits.is_empty() => {
            digits.parse().ok()?
        }
        None => return None,
    };
    Some(if neg { -n } else { n })
}

pub fn normalize_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Exact(v) => f.write_str(&normalize_whitespace(v)),
            Expected::Bound {
                min: Some(lo),
                max: Some(hi),
            } => write!(f, "{lo}..={hi}"),
            Expected::Bound { min: Some(lo), .. } => write!(f, ">= {lo}"),
            Expected::Bound { max: Some(hi), .. } => write!(f, "<= {hi}"),
            Expected::Bound { .. } => f.write_str("any"),
        }
    }
}

impl<'de> Deserialize<'de> for Expected {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Expected;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer, a string, or a bound such as { min = 1000 }")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Expected, E> {
                Ok(Expected::Exact(n.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Expected, E> {
                Ok(Expected::Exact(n.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Expected, E> {
                if s.trim().is_empty() {
                    return Err(E::custom(
                        "empty value: give the value the kernel should hold",
                    ));
                }
                if s.contains(['\n', '\r', '\0']) {
                    return Err(E::custom("a value must be a single line"));
                }
                Ok(Expected::Exact(s.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Expected, A::Error> {
                use serde::de::Error;
                let (mut min, mut max) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "min" => &mut min,
                        "max" => &mut max,
                        other => {
                            return Err(A::Error::unknown_field(other, &["min", "max"]));
                        }
                    };
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field("min/max"));
                    }
                    *slot = Some(map.next_value::<i64>()? as i128);
                }
                match (min, max) {
                    (None, None) => Err(A::Error::custom("a bound needs `min`, `max` or both")),
                    (Some(lo), Some(hi)) if lo > hi => Err(A::Error::custom(format!(
                        "bound min {lo} is above max {hi}"
                    ))),
                    _ => Ok(Expected::Bound { min, max }),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Expected {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Expected::Exact(v) => match v.parse::<i64>() {
                Ok(n) if n.to_string() == *v => s.serialize_i64(n),
                _ => s.serialize_str(v),
            },
            Expected::Bound { min, max } => {
                let mut m = s.serialize_map(None)?;
                if let Some(lo) = min {
                    m.serialize_entry("min", &(*lo as i64))?;
                }
                if let Some(hi) = max {
                    m.serialize_entry("max", &(*hi as i64))?;
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_bounds() {
        let e = Expected::Exact("4096 87380 134217728".into());
        assert_eq!(e.is_met_by("4096\t87380\t134217728\n"), Some(true));
        assert_eq!(e.is_met_by("4096 87380 6291456"), Some(false));
        assert_eq!(Expected::Exact("0".into()).is_met_by("00"), Some(true));
        assert_eq!(
            Expected::Exact("438".into()).is_met_by("0x01b6"),
            Some(true)
        );
        assert_eq!(Expected::Exact("-1".into()).is_met_by("-1"), Some(true));
        assert_eq!(
            Expected::Exact("bbr".into()).is_met_by("0xbbr"),
            Some(false)
        );
        let min = Expected::Bound {
            min: Some(100),
            max: None,
        };
        assert_eq!(min.is_met_by("100"), Some(true));
        assert_eq!(min.is_met_by("9223372036854775807"), Some(true));
        assert_eq!(min.is_met_by("99"), Some(false));
        assert_eq!(min.is_met_by("bbr"), None);
        assert_eq!(min.to_string(), ">= 100");
        let both = Expected::Bound {
            min: Some(1),
            max: Some(3),
        };
        assert_eq!(both.is_met_by("4"), Some(false));
        assert_eq!(both.to_string(), "1..=3");
        assert_eq!(both.target_for("0").as_deref(), Some("1"));
        assert_eq!(both.target_for("9").as_deref(), Some("3"));
        assert_eq!(both.target_for("2"), None);
        assert_eq!(
            e.target_for("1 2 3").as_deref(),
            Some("4096 87380 134217728")
        );
    }
}
