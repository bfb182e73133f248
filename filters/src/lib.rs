//! ward's policy model and its evaluation: the SPIFFE ID / path pattern language, policies as
//! written in config, compiled policies, verdicts and the decision record.
//!
//! Pure: no sockets, files, clocks or TLS. The proxy hands in the peer's SPIFFE ID (already
//! verified) and, for HTTP, the method and the normalized path.

pub mod normalize;
pub mod pattern;
pub mod policy;
pub mod verdict;

pub use normalize::{PathError, normalize_path, normalize_target};
pub use pattern::{IdPattern, PathPattern, Pattern, PatternError};
pub use policy::{
    Action, DefaultAction, Explanation, HeaderSpec, Headers, Peer, Policy, PolicyError, PolicySpec, Request,
    RuleExplanation, RuleSpec,
};
pub use verdict::{Decision, DecisionRecord, Reason, Verdict};
