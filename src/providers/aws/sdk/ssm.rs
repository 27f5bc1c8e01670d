//! [`SsmApi`] over the SDK: `SendCommand` with the `AWS-RunShellScript` document,
//! `GetCommandInvocation`, `CancelCommand`. One attempt per call, like every client of
//! [`super::Sdk::loader`]; `AWS_ENDPOINT_URL` is honoured.
//!
//! Errors are classified by [`super::err`], and one code more: `InvocationDoesNotExist`
//! (neither EC2's nor RDS's naming) is [`ErrorKind::NotFound`], its code kept — what
//! [`super::super::ssm::run_command`] reads as "not visible yet".

use super::super::api::{ApiError, ApiResult, ErrorKind};
use super::super::ssm::{Invocation, SendCommand, SsmApi, DOCUMENT};

pub struct SdkSsm {
    ssm: aws_sdk_ssm::Client,
}

/// `SendCommand`'s `Comment` holds at most 100 characters.
const COMMENT_MAX: usize = 100;
/// `TimeoutSeconds` (delivery) lies between 30 s and 30 days.
const DELIVERY_TIMEOUT: (u32, u32) = (30, 2_592_000);

impl SdkSsm {
    /// A client for `region`, from the standard credential chain.
    pub async fn new(region: &str) -> SdkSsm {
        SdkSsm::from_config(&super::Sdk::loader(region, super::ATTEMPT_TIMEOUT).load().await)
    }

    pub fn from_config(config: &aws_config::SdkConfig) -> SdkSsm {
        SdkSsm { ssm: aws_sdk_ssm::Client::new(config) }
    }
}

fn err<E>(e: aws_sdk_ssm::error::SdkError<E, aws_sdk_ssm::config::http::HttpResponse>) -> ApiError
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut e = super::err(e);
    if e.code.as_deref() == Some("InvocationDoesNotExist") {
        e.kind = ErrorKind::NotFound;
    }
    e
}

/// The API's empty strings (no URL yet) as None.
fn some(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

impl SsmApi for SdkSsm {
    async fn send_command(&self, req: &SendCommand) -> ApiResult<String> {
        let (lo, hi) = DELIVERY_TIMEOUT;
        let out = self
            .ssm
            .send_command()
            .document_name(DOCUMENT)
            .instance_ids(&req.instance_id)
            .parameters("commands", req.commands.clone())
            .parameters("executionTimeout", vec![req.timeout_secs.to_string()])
            // Delivery: a command the agent has not picked up within its own run time
            // is not started later.
            .timeout_seconds(req.timeout_secs.clamp(lo, hi) as i32)
            .comment(req.comment.chars().take(COMMENT_MAX).collect::<String>())
            .set_output_s3_bucket_name(req.output_bucket.clone())
            .set_output_s3_key_prefix(req.output_prefix.clone())
            .send()
            .await
            .map_err(err)?;
        match out.command().and_then(|c| c.command_id()) {
            Some(id) => Ok(id.to_string()),
            None => Err(ApiError {
                code: None,
                message: "SendCommand answered without a command id".into(),
                kind: ErrorKind::ServerError,
            }),
        }
    }

    async fn get_command_invocation(&self, command_id: &str, instance_id: &str) -> ApiResult<Invocation> {
        let out = self
            .ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(err)?;
        Ok(Invocation {
            // No status yet reads as not started.
            status: out.status().map_or("Pending", |s| s.as_str()).to_string(),
            response_code: out.response_code(),
            stdout: out.standard_output_content().unwrap_or_default().to_string(),
            stderr: out.standard_error_content().unwrap_or_default().to_string(),
            stdout_url: some(out.standard_output_url()),
            stderr_url: some(out.standard_error_url()),
        })
    }

    async fn cancel_command(&self, command_id: &str, instance_ids: &[String]) -> ApiResult<()> {
        self.ssm
            .cancel_command()
            .command_id(command_id)
            .set_instance_ids(Some(instance_ids.to_vec()))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }
}

/// The provider's SDK clients speak SSM through this one.
impl SsmApi for super::Sdk {
    async fn send_command(&self, req: &SendCommand) -> ApiResult<String> {
        self.ssm.send_command(req).await
    }

    async fn get_command_invocation(&self, command_id: &str, instance_id: &str) -> ApiResult<Invocation> {
        self.ssm.get_command_invocation(command_id, instance_id).await
    }

    async fn cancel_command(&self, command_id: &str, instance_ids: &[String]) -> ApiResult<()> {
        self.ssm.cancel_command(command_id, instance_ids).await
    }
}
