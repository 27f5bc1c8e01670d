//! [`Ec2Api`] and [`RdsApi`] over the official AWS SDK for Rust.
//!
//! One shared configuration from the standard chain (environment, profile, SSO, IMDS),
//! with `AWS_ENDPOINT_URL` honoured (how the tests reach the emulator), and
//! connect/attempt timeouts so an unreachable endpoint fails in seconds instead of
//! hanging.
//!
//! The SDK makes exactly one attempt per call: sending again is [`super::patient`]'s
//! decision, made with what it knows about the call (a read, a delete, a create with a
//! client token). Retries in both layers would multiply, and an error that is the last
//! of several attempts describes only that attempt: an attempt that timed out (it may
//! have run) followed by one whose connection was refused came back as "never sent".

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use super::api::*;

#[derive(Clone)]
pub struct Sdk {
    pub(crate) ec2: aws_sdk_ec2::Client,
    pub(crate) rds: aws_sdk_rds::Client,
    /// Release artifacts (presigned links, downloads for an install run here), the SSM
    /// runner's inputs and output.
    pub(crate) s3: aws_sdk_s3::Client,
    /// SSM Run Command on the runner (`runner: ssm`).
    pub(crate) ssm: std::sync::Arc<ssm::SdkSsm>,
}

/// How long one attempt of a call may take before it counts as lost.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

impl Sdk {
    /// Clients for `region`, from the standard credential chain.
    pub(crate) async fn new(region: &str) -> Sdk {
        Sdk::from_config(&Sdk::loader(region, ATTEMPT_TIMEOUT).load().await)
    }

    /// The configuration rehearse uses: one attempt per call, bounded connect and
    /// attempt times (a test shortens `attempt_timeout` and sets an endpoint), and the
    /// SDK's HTTPS client with rustls over ring (Cargo.toml says why not its default).
    pub(crate) fn loader(region: &str, attempt_timeout: Duration) -> aws_config::ConfigLoader {
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(Sdk::http_client())
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(attempt_timeout)
                    .operation_timeout(attempt_timeout + Duration::from_secs(5))
                    .build(),
            )
    }

    /// The SDK's own hyper client, its TLS rustls over ring: the SDK is built without a
    /// default client (Cargo.toml says why), so every configuration names this one.
    pub fn http_client() -> aws_sdk_ec2::config::SharedHttpClient {
        use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
        aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https()
    }

    pub fn from_config(config: &aws_config::SdkConfig) -> Sdk {
        // Path-style addressing with an explicit endpoint (an emulator on 127.0.0.1 has
        // no bucket subdomains), virtual-hosted on AWS.
        let endpoint_set =
            config.endpoint_url().is_some() || std::env::var("AWS_ENDPOINT_URL_S3").is_ok_and(|u| !u.is_empty());
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(config).force_path_style(endpoint_set).build(),
        );
        Sdk {
            ec2: aws_sdk_ec2::Client::new(config),
            rds: aws_sdk_rds::Client::new(config),
            s3,
            ssm: std::sync::Arc::new(ssm::SdkSsm::from_config(config)),
        }
    }
}

/// Whether a failed call certainly never reached the service: the request could not be
/// built, or the connection was refused (an `io::Error` of that kind in the cause
/// chain). Anything else during dispatch — a timeout, a reset, a name that did not
/// resolve — may have happened after the request was sent.
fn never_sent<E, R>(e: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ConstructionFailure(_) => true,
        SdkError::DispatchFailure(d) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> =
                d.as_connector_error().map(|c| c as &(dyn std::error::Error + 'static));
            while let Some(c) = cause {
                if c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    return true;
                }
                cause = c.source();
            }
            false
        }
        _ => false,
    }
}

/// Throttling codes of EC2 and RDS (the SDK's own list, less the quota errors).
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestResourceCountExceeded",
    "RequestThrottled",
    "BandwidthLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// "Does not exist" codes that follow neither naming convention below.
const NOT_FOUND: &[&str] = &["DBInstanceNotFound", "DBClusterNotFound", "DBSnapshotNotFound"];

/// A "does not exist" code by the services' documented conventions: EC2's
/// `Invalid<Resource>.NotFound`, RDS's `<Resource>NotFoundFault`.
fn is_not_found(code: &str) -> bool {
    code.ends_with(".NotFound") || code.ends_with("NotFoundFault") || NOT_FOUND.contains(&code)
}

/// "Still in use" codes: a dependency not yet gone, or a state that does not allow it.
const IN_USE: &[&str] = &[
    "DependencyViolation",
    "InvalidDBInstanceState",
    "InvalidDBInstanceStateFault",
    "InvalidDBClusterStateFault",
    "InvalidDBSubnetGroupStateFault",
    "InvalidDBSnapshotState",
    "InvalidDBSnapshotStateFault",
];

/// "Not allowed" codes: this identity may not make the call.
const DENIED: &[&str] = &["AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure"];

/// No capacity for this type in this zone now. EC2 answers these with a 500, but they
/// are an answer: waiting ten minutes on them helps nobody.
const NO_CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientDBInstanceCapacity",
    "InsufficientDBInstanceCapacityFault",
    "InsufficientDBClusterCapacityFault",
];

/// An error by its code — the service's machine-readable name for it, compared
/// exactly, never its message — and, for a code rehearse does not know, whether the
/// answer was a 5xx.
fn classify(code: Option<&str>, server_error: bool) -> ErrorKind {
    match code {
        Some(c) if is_not_found(c) => ErrorKind::NotFound,
        Some(c) if IN_USE.contains(&c) => ErrorKind::InUse,
        Some(c) if DENIED.contains(&c) => ErrorKind::Denied,
        Some(c) if NO_CAPACITY.contains(&c) => ErrorKind::Refused,
        Some(c) if THROTTLING.contains(&c) => ErrorKind::Throttled,
        Some(c) if SERVER.contains(&c) => ErrorKind::ServerError,
        _ if server_error => ErrorKind::ServerError,
        _ => ErrorKind::Refused,
    }
}

/// Failures on the service's side.
const SERVER: &[&str] =
    &["InternalError", "InternalFailure", "InternalServerError", "ServiceUnavailable", "Unavailable", "RequestTimeout"];

pub(crate) fn err<E>(e: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unreachable =
        matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ConstructionFailure(_));
    if unreachable {
        // The innermost cause says what happened ("Connection refused (os error 111)").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let cause = cause.to_string();
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "the AWS API".into());
        let what = if matches!(e, SdkError::TimeoutError(_)) { "did not answer in time".to_string() } else { cause };
        return ApiError {
            code: None,
            message: format!("cannot reach {endpoint}: {what}"),
            kind: if never_sent(&e) { ErrorKind::NotSent } else { ErrorKind::Unreachable },
        };
    }
    let code = e.code().map(str::to_string);
    let message =
        e.message().map(str::to_string).unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string());
    let server_error = e.raw_response().is_some_and(|r| r.status().is_server_error());
    let kind = classify(code.as_deref(), server_error);
    ApiError { code, message, kind }
}

/// Collects every page of a paginated call, mapping each page to items.
macro_rules! all_pages {
    ($pages:expr, |$page:ident| $items:expr) => {{
        let mut pages = $pages;
        let mut out = Vec::new();
        while let Some($page) = pages.next().await {
            let $page = $page.map_err(err)?;
            out.extend($items);
        }
        out
    }};
}

mod ec2;
mod rds;
pub mod route53;
pub mod s3;
pub mod ssm;

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_rds::operation::describe_db_instances::DescribeDBInstancesError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answer(status: u16, code: &str) -> ApiError {
        let e = DescribeDBInstancesError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        err(SdkError::service_error(e, raw))
    }

    #[test]
    fn throttling_and_server_failures_are_told_apart_from_refusals() {
        assert_eq!(answer(400, "Throttling").kind, ErrorKind::Throttled);
        assert_eq!(answer(503, "RequestLimitExceeded").kind, ErrorKind::Throttled);
        assert_eq!(answer(500, "InternalFailure").kind, ErrorKind::ServerError);
        assert_eq!(answer(502, "SomethingNew").kind, ErrorKind::ServerError);
        assert_eq!(answer(400, "InvalidParameterValue").kind, ErrorKind::Refused);
        assert_eq!(answer(500, "InsufficientInstanceCapacity").kind, ErrorKind::Refused);
        assert_eq!(answer(400, "InstanceLimitExceeded").kind, ErrorKind::Refused);
        assert_eq!(answer(404, "DBInstanceNotFound").kind, ErrorKind::NotFound);
        assert_eq!(answer(400, "DependencyViolation").kind, ErrorKind::InUse);
        assert_eq!(answer(403, "AccessDenied").kind, ErrorKind::Denied);
        assert_eq!(answer(403, "UnauthorizedOperation").kind, ErrorKind::Denied);
        assert_eq!(answer(400, "InvalidInstanceID.NotFound").kind, ErrorKind::NotFound);
        // A code is compared whole: one that merely mentions "NotFound" is not one.
        assert_eq!(answer(400, "InvalidParameterValue.NotFoundIsNotACode").kind, ErrorKind::Refused);
        assert!(answer(400, "Throttling").is_transient() && !answer(400, "QuotaExceeded").is_transient());
    }

    /// An endpoint that takes the first connection and never answers, then goes away
    /// (later connections are refused): the call's one attempt timed out — it may have
    /// run — so the create is uncertain, never "not sent". (With the SDK's own retries,
    /// the refused second attempt used to make it "not sent", and the resource was
    /// journaled as never created.)
    #[tokio::test]
    async fn a_timed_out_attempt_is_never_taken_for_one_that_was_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            drop(listener);
            std::thread::sleep(Duration::from_secs(4));
            drop(conn);
        });
        let config = Sdk::loader("eu-west-1", Duration::from_secs(1))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await;
        let sdk = Sdk::from_config(&config);
        let e = sdk.create_security_group("rehearse-r-1", "d", "vpc-1", &[]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        server.join().unwrap();
        // Now the port is closed: that attempt certainly did not leave this machine.
        let e = sdk.create_security_group("rehearse-r-1", "d", "vpc-1", &[]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotSent, "{e}");
    }
}
