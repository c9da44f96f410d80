//! Precision modes: `fp32`, uniform `wXaY`, and `refqsr:H-L`.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// How a network's body is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Everything in f32.
    #[default]
    Fp32,
    /// Body weights at `w` bits, body activations at `a` bits (2..=8).
    Uniform { w: u32, a: u32 },
    /// References at `high` bits, queries at weights round((high + low) / 2), activations `low`.
    RefQsr { high: u32, low: u32 },
}

const FORMS: &str = "fp32, wXaY (X, Y in 2..=8, e.g. w8a8, w4a4, w6a4) or refqsr:H-L (2 <= L < H <= 8, e.g. refqsr:8-4)";

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Invalid(format!("unknown mode `{s}`: use {FORMS}"));
        let bits = |t: &str| t.parse::<u32>().ok().filter(|b| (2..=8).contains(b));
        if s == "fp32" {
            return Ok(Mode::Fp32);
        }
        if let Some(rest) = s.strip_prefix("refqsr:") {
            let (h, l) = rest.split_once('-').ok_or_else(bad)?;
            let (high, low) = (bits(h).ok_or_else(bad)?, bits(l).ok_or_else(bad)?);
            return if low < high {
                Ok(Mode::RefQsr { high, low })
            } else {
                Err(bad())
            };
        }
        let rest = s.strip_prefix('w').ok_or_else(bad)?;
        let (w, a) = rest.split_once('a').ok_or_else(bad)?;
        Ok(Mode::Uniform {
            w: bits(w).ok_or_else(bad)?,
            a: bits(a).ok_or_else(bad)?,
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Fp32 => write!(f, "fp32"),
            Mode::Uniform { w, a } => write!(f, "w{w}a{a}"),
            Mode::RefQsr { high, low } => write!(f, "refqsr:{high}-{low}"),
        }
    }
}

impl Mode {
    /// Whether the body runs in integers (and so needs a calibration).
    pub fn is_integer(&self) -> bool {
        !matches!(self, Mode::Fp32)
    }

    /// Parse a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Mode>, Error> {
        s.split(',').map(|m| m.trim().parse()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_the_rest() {
        assert_eq!("fp32".parse::<Mode>().unwrap(), Mode::Fp32);
        assert_eq!(
            "w6a4".parse::<Mode>().unwrap(),
            Mode::Uniform { w: 6, a: 4 }
        );
        assert_eq!(
            "refqsr:8-4".parse::<Mode>().unwrap(),
            Mode::RefQsr { high: 8, low: 4 }
        );
        for bad in [
            "",
            "fp16",
            "w9a8",
            "w8a1",
            "w8",
            "a8",
            "refqsr:4-8",
            "refqsr:8",
            "refqsr:8-8",
            "w8a8x",
        ] {
            let e = bad.parse::<Mode>().unwrap_err().to_string();
            assert!(
                e.contains("unknown mode") && e.contains("wXaY") && e.contains("refqsr:H-L"),
                "{bad}: {e}"
            );
        }
        for m in ["fp32", "w8a8", "w2a2", "refqsr:4-2"] {
            assert_eq!(m.parse::<Mode>().unwrap().to_string(), m);
        }
        assert_eq!(Mode::parse_list("fp32, w8a8").unwrap().len(), 2);
    }
}
