//! Enums written as names (flags, runtime.toml, the API, reports). Each lists its names
//! once, with `clap::ValueEnum` (serde's renames and aliases match them); [`named_enum!`]
//! derives the same `FromStr` (with one error message that lists the names) and
//! `Display` from that list, so a new value is one new variant.

use clap::ValueEnum;

/// The names of `T`'s values, comma-separated, as `--help` lists them.
pub fn names<T: ValueEnum>() -> String {
    T::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value)
        .map(|p| p.get_name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name `value` is written with.
pub fn name<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// Parses a name (or an alias); the error names `what` and every accepted name.
pub fn parse<T: ValueEnum>(what: &str, s: &str, ignore_case: bool) -> Result<T, String> {
    T::from_str(s, ignore_case)
        .map_err(|_| format!("unknown {what} {s:?} (expected one of {})", names::<T>()))
}

/// `FromStr` and `Display` for a `ValueEnum`: `named_enum!(Type, "what", ignore_case)`.
#[macro_export]
macro_rules! named_enum {
    ($t:ty, $what:literal, $ignore_case:literal) => {
        impl ::std::str::FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                $crate::names::parse($what, s, $ignore_case)
            }
        }

        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&$crate::names::name(self))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::decoding::Remasking;
    use crate::models::{DTypeChoice, KvCacheMode};

    #[test]
    fn names_parse_with_their_aliases_and_errors_list_every_name() {
        assert_eq!("topk_margin".parse::<Remasking>(), Ok(Remasking::Margin));
        assert_eq!("off".parse::<KvCacheMode>(), Ok(KvCacheMode::None));
        assert_eq!("BFloat16".parse::<DTypeChoice>(), Ok(DTypeChoice::Bf16));
        assert!(
            "Random".parse::<Remasking>().is_err(),
            "remasking names are case-sensitive, as before"
        );
        assert_eq!(DTypeChoice::Bf16.to_string(), "bf16");
        assert_eq!(Remasking::LowConfidence.to_string(), "low_confidence");
        assert_eq!(
            "best".parse::<Remasking>().unwrap_err(),
            "unknown remasking \"best\" (expected one of low_confidence, random, entropy, margin)"
        );
    }

    #[test]
    fn runtime_toml_accepts_the_same_aliases_as_the_flags() {
        let r: Remasking = serde_json::from_str("\"topk_margin\"").unwrap();
        assert_eq!(r, Remasking::Margin);
        let k: KvCacheMode = serde_json::from_str("\"off\"").unwrap();
        assert_eq!(k, KvCacheMode::None);
    }
}
