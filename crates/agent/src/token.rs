//! Who sent a progress report, proven by a token: a pod that cannot be told by its address (a
//! host-network pod shares the node's IP) sends a projected service-account token with the
//! audience `devheal` (`Authorization: Bearer …`). The agent asks the API server who the token
//! belongs to (a TokenReview, with that audience) and takes the pod named in the answer's extra
//! fields (`authentication.kubernetes.io/pod-name`, `…/pod-uid`; the API server puts them in
//! tokens bound to a pod, as the kubelet's projected tokens are), its namespace from the
//! service-account user name.
//!
//! Bounded: answers are cached (accepted tokens 60 s, refused ones 10 s) in a map of at most
//! [`MAX_CACHED`] tokens; reviews are rate-limited (20 a second, bursts of 40, so random tokens
//! cannot turn the endpoint into a flood on the API server) and each has a timeout.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};

/// The audience a progress token must be issued for.
pub const PROGRESS_AUDIENCE: &str = "devheal";
/// The most tokens whose answer is remembered.
pub const MAX_CACHED: usize = 1024;
/// The longest token taken (a projected token is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";
const ACCEPTED_FOR: Duration = Duration::from_secs(60);
const REFUSED_FOR: Duration = Duration::from_secs(10);

/// The pod a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// Why a token proved nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Not a token of a pod for this audience (answered 401).
    #[error("{0}")]
    Invalid(String),
    /// Too many reviews now (answered 429).
    #[error("too many token reviews; retry shortly")]
    Busy,
    /// The API server did not answer (answered 503; not cached).
    #[error("cannot review the token now: {0}")]
    Unavailable(String),
}

/// Asks the API server about a token: the real one is [`KubeTokenReviewer`].
pub trait TokenReviewer: Send + Sync + 'static {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, String>>;
}

/// TokenReview through the API server (`create` on `tokenreviews.authentication.k8s.io`).
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        KubeTokenReviewer { client }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, String>> {
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_string(),
                    audiences: Some(vec![audience.to_string()]),
                },
                ..TokenReview::default()
            };
            let answer =
                api.create(&kube::api::PostParams::default(), &review).await.map_err(|e| e.to_string())?;
            answer.status.ok_or_else(|| "the TokenReview came back without a status".to_string())
        })
    }
}

/// The pod a reviewed token belongs to, or why it is none.
pub fn pod_identity(status: &TokenReviewStatus, audience: &str) -> Result<PodIdentity, String> {
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("not authenticated");
        return Err(format!("the token is not valid: {why}"));
    }
    if !status.audiences.as_ref().is_some_and(|a| a.iter().any(|x| x == audience)) {
        return Err(format!("the token is not issued for the audience {audience:?}"));
    }
    let user = status.user.as_ref().ok_or("the token names no user")?;
    let username = user.username.as_deref().unwrap_or("");
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(namespace, _)| namespace)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("the token belongs to {username:?}, not a service account"))?;
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let name = extra(POD_NAME_KEY)
        .ok_or("the token is not bound to a pod (a projected service-account token is)")?;
    Ok(PodIdentity { namespace: namespace.to_string(), name, uid: extra(POD_UID_KEY) })
}

struct Cached {
    answer: Result<PodIdentity, String>,
    until: Instant,
}

/// Tokens to pods, through a [`TokenReviewer`], cached and rate-limited.
pub struct PodTokens {
    reviewer: Arc<dyn TokenReviewer>,
    audience: String,
    timeout: Duration,
    reviews: DefaultDirectRateLimiter,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for PodTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTokens").field("audience", &self.audience).finish_non_exhaustive()
    }
}

impl PodTokens {
    /// Reviews for `audience`, each within `timeout`.
    pub fn new(reviewer: Arc<dyn TokenReviewer>, audience: &str, timeout: Duration) -> Self {
        let rate = NonZeroU32::new(20).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(40).unwrap_or(NonZeroU32::MIN);
        PodTokens {
            reviewer,
            audience: audience.to_string(),
            timeout,
            reviews: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The pod `token` belongs to.
    pub async fn identify(&self, token: &str) -> Result<PodIdentity, TokenRefusal> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRefusal::Invalid(format!("the token must be 1 to {MAX_TOKEN_BYTES} bytes")));
        }
        if let Some(answer) = self.cached(token) {
            return answer.map_err(TokenRefusal::Invalid);
        }
        if self.reviews.check().is_err() {
            return Err(TokenRefusal::Busy);
        }
        let status = match tokio::time::timeout(self.timeout, self.reviewer.review(token, &self.audience))
            .await
        {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(TokenRefusal::Unavailable(e)),
            Err(_) => return Err(TokenRefusal::Unavailable(format!("no answer within {:?}", self.timeout))),
        };
        let answer = pod_identity(&status, &self.audience);
        self.remember(token, answer.clone());
        answer.map_err(TokenRefusal::Invalid)
    }

    fn cached(&self, token: &str) -> Option<Result<PodIdentity, String>> {
        let cache = self.cache.lock().ok()?;
        cache.get(token).filter(|c| c.until > Instant::now()).map(|c| c.answer.clone())
    }

    fn remember(&self, token: &str, answer: Result<PodIdentity, String>) {
        let Ok(mut cache) = self.cache.lock() else { return };
        let now = Instant::now();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() >= MAX_CACHED
            && let Some(soonest) = cache.iter().min_by_key(|(_, c)| c.until).map(|(k, _)| k.clone())
        {
            cache.remove(&soonest);
        }
        let until = now + if answer.is_ok() { ACCEPTED_FOR } else { REFUSED_FOR };
        cache.insert(token.to_string(), Cached { answer, until });
    }

    /// Tokens whose answer is remembered.
    pub fn cached_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status(
        authenticated: bool,
        audiences: &[&str],
        username: &str,
        pod: Option<(&str, &str)>,
    ) -> TokenReviewStatus {
        let mut extra = BTreeMap::new();
        if let Some((name, uid)) = pod {
            extra.insert(POD_NAME_KEY.to_string(), vec![name.to_string()]);
            extra.insert(POD_UID_KEY.to_string(), vec![uid.to_string()]);
        }
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(username.into()),
                extra: Some(extra),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn a_bound_pod_token_names_its_pod_and_anything_else_is_refused_with_the_reason() {
        let ok = status(true, &["devheal"], "system:serviceaccount:ml:trainer", Some(("trainer-3", "u-3")));
        assert_eq!(
            pod_identity(&ok, "devheal"),
            Ok(PodIdentity { namespace: "ml".into(), name: "trainer-3".into(), uid: Some("u-3".into()) })
        );
        let e = pod_identity(&status(false, &[], "", None), "devheal").unwrap_err();
        assert!(e.contains("not valid"), "{e}");
        let e = pod_identity(
            &status(
                true,
                &["https://kubernetes.default.svc"],
                "system:serviceaccount:ml:t",
                Some(("p", "u")),
            ),
            "devheal",
        )
        .unwrap_err();
        assert!(e.contains("audience"), "{e}");
        let e = pod_identity(&status(true, &["devheal"], "alice", Some(("p", "u"))), "devheal").unwrap_err();
        assert!(e.contains("not a service account"), "{e}");
        let e = pod_identity(&status(true, &["devheal"], "system:serviceaccount:ml:t", None), "devheal")
            .unwrap_err();
        assert!(e.contains("not bound to a pod"), "{e}");
    }

    struct Counting {
        calls: AtomicUsize,
        answer: TokenReviewStatus,
    }

    impl TokenReviewer for Counting {
        fn review<'a>(
            &'a self,
            _token: &'a str,
            _audience: &'a str,
        ) -> BoxFuture<'a, Result<TokenReviewStatus, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self.answer.clone();
            Box::pin(async move { Ok(answer) })
        }
    }

    #[tokio::test]
    async fn answers_are_cached_within_a_bound_and_reviews_are_rate_limited() {
        let reviewer = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            answer: status(true, &["devheal"], "system:serviceaccount:ml:t", Some(("p", "u"))),
        });
        let tokens = PodTokens::new(reviewer.clone(), "devheal", Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(tokens.identify("same-token").await.map(|p| p.name), Ok("p".into()));
        }
        assert_eq!(reviewer.calls.load(Ordering::SeqCst), 1, "one review for a token asked about five times");
        // Many distinct tokens: the burst of 40 reviews, then Busy; the cache never passes its bound.
        let mut busy = 0;
        for i in 0..100 {
            if tokens.identify(&format!("token-{i}")).await == Err(TokenRefusal::Busy) {
                busy += 1;
            }
        }
        assert!(busy >= 50, "reviews beyond the rate are refused: {busy}");
        assert!(tokens.cached_len() <= MAX_CACHED);
        assert!(matches!(tokens.identify("").await, Err(TokenRefusal::Invalid(_))));
        assert!(matches!(
            tokens.identify(&"x".repeat(MAX_TOKEN_BYTES + 1)).await,
            Err(TokenRefusal::Invalid(_))
        ));
    }
}
