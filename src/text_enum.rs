//! Closed sets of words: enums written and read as text (stored in the
//! database, shown in JSON, traces and messages). `text_enum!` gives each
//! variant its one word, written once; `as_str`, `parse`, `Display`,
//! `FromStr`, `Serialize` and `ALL` all come from it. Reading a word outside
//! the set is an error for the caller to name (a corrupt row, a bad request),
//! never a default.

/// A word outside an enum's set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?}")]
pub struct UnknownText {
    /// The enum's name in words (`tier`, `step outcome`).
    pub what: &'static str,
    pub text: String,
}

/// What `text_enum!` implements: code generic over such enums (reading a
/// stored word, listing the words in a message) uses it.
pub trait TextEnum: Copy + Sized + 'static {
    /// The enum's name in words, for messages.
    const WHAT: &'static str;
    /// Every variant, in declaration order.
    fn all() -> &'static [Self];
    fn as_str(self) -> &'static str;
    /// The variant written `text`, if any.
    fn parse(text: &str) -> Option<Self> {
        Self::all().iter().copied().find(|v| v.as_str() == text)
    }
}

/// Defines an enum whose variants are written as the given words:
///
/// ```text
/// text_enum! {
///     /// What a notification is for.
///     #[derive(PartialOrd, Ord)]   // more derives, if wanted
///     pub enum NotificationKind ("notification kind") {
///         Page => "page",
///         Notice => "notice",
///     }
/// }
/// ```
///
/// It derives `Clone, Copy, Debug, PartialEq, Eq, Hash` and implements
/// `TextEnum`, `Display`, `FromStr` (error `UnknownText`) and `Serialize` (as
/// the word); `as_str`, `parse` and `ALL` are also inherent.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word it is written as.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The variant written `text`, if any.
            pub fn parse(text: &str) -> Option<$name> {
                match text {
                    $($text => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl $crate::text_enum::TextEnum for $name {
            const WHAT: &'static str = $what;

            fn all() -> &'static [$name] {
                $name::ALL
            }

            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }

            fn parse(text: &str) -> Option<$name> {
                $name::parse(text)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::text_enum::UnknownText;

            fn from_str(text: &str) -> Result<$name, Self::Err> {
                $name::parse(text).ok_or_else(|| $crate::text_enum::UnknownText {
                    what: $what,
                    text: text.to_string(),
                })
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

pub(crate) use text_enum;

/// Every variant of `T` written and read back is itself, and no two share
/// a word: for each enum's round-trip test.
#[cfg(test)]
pub fn assert_round_trips<T: TextEnum + std::fmt::Debug + PartialEq + serde::Serialize>() {
    let mut seen = std::collections::BTreeSet::new();
    for &value in T::all() {
        let text = value.as_str();
        assert!(seen.insert(text), "{} word {text:?} is used twice", T::WHAT);
        assert_eq!(T::parse(text), Some(value), "{} {text:?}", T::WHAT);
        assert_eq!(
            serde_json::to_value(value).unwrap(),
            serde_json::Value::String(text.to_string()),
            "{} {text:?} serializes as its word",
            T::WHAT
        );
    }
    assert_eq!(T::parse("no-such-word"), None);
}
