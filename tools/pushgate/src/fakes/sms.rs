//! What the SMS fakes (Aliyun, Tencent) share: the magic recipients, which ask a fake to
//! refuse or fail by the last four digits of a number, so tests reach every vendor
//! error without scripting. Each fake answers a [`Magic`] with its vendor's documented
//! payload, and decides which magic wins when a request names several numbers.

/// Recipients ending in this are over the vendor's rate limit.
pub const SUFFIX_THROTTLE: &str = "0001";
/// Recipients ending in this find the account's balance spent.
pub const SUFFIX_QUOTA: &str = "0002";
/// Recipients ending in this are invalid numbers.
pub const SUFFIX_PERMANENT: &str = "0003";
/// Recipients ending in this get the vendor's server error.
pub const SUFFIX_SERVER_ERROR: &str = "0004";

/// What a magic recipient asks an SMS fake to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Magic {
    /// [`SUFFIX_THROTTLE`].
    Throttle,
    /// [`SUFFIX_QUOTA`].
    Quota,
    /// [`SUFFIX_PERMANENT`].
    Permanent,
    /// [`SUFFIX_SERVER_ERROR`].
    ServerError,
}

impl Magic {
    /// The magic `number` asks for, if any.
    pub fn of(number: &str) -> Option<Magic> {
        [
            (SUFFIX_THROTTLE, Magic::Throttle),
            (SUFFIX_QUOTA, Magic::Quota),
            (SUFFIX_PERMANENT, Magic::Permanent),
            (SUFFIX_SERVER_ERROR, Magic::ServerError),
        ]
        .into_iter()
        .find_map(|(suffix, magic)| number.ends_with(suffix).then_some(magic))
    }

    /// The first of `precedence` that any of `numbers` asks for: the vendor's answer to
    /// the whole request.
    pub fn first(numbers: &[&str], precedence: &[Magic]) -> Option<Magic> {
        precedence
            .iter()
            .copied()
            .find(|magic| numbers.iter().any(|n| Magic::of(n) == Some(*magic)))
    }
}

/// A vendor-style request id, fresh for every answer.
pub(super) fn request_id() -> String {
    ulid::Ulid::new().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_goes_by_the_last_four_digits_in_the_order_given() {
        assert_eq!(Magic::of("8613800130001"), Some(Magic::Throttle));
        assert_eq!(Magic::of("+8613800130004"), Some(Magic::ServerError));
        assert_eq!(Magic::of("8613800138000"), None);
        let numbers = ["8613800130004", "8613800130002"];
        assert_eq!(
            Magic::first(&numbers, &[Magic::Throttle, Magic::Quota, Magic::ServerError]),
            Some(Magic::Quota)
        );
        assert_eq!(
            Magic::first(&numbers, &[Magic::ServerError, Magic::Quota]),
            Some(Magic::ServerError)
        );
        assert_eq!(Magic::first(&numbers, &[Magic::Permanent]), None);
    }
}
