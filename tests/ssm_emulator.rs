//! SSM Run Command's calls over the SDK against the AWS API emulator (moto, installed
//! by `make test-deps` into .venv): the shapes of `SendCommand` and
//! `GetCommandInvocation` as rehearse sends them, read back with the SDK's own
//! `ListCommands`, and how the emulator's errors are classified.
//!
//! moto records a command and reports every invocation `Success` at once, without
//! running anything; it does not implement `CancelCommand` or `ListCommandInvocations`,
//! and answers `InvalidCommandId` (not `InvocationDoesNotExist`) for a command id it
//! does not know. What it cannot show — running, late visibility, cut output — is
//! tested against the fake in `src/providers/aws/ssm.rs`.

use crate::emulator;

use std::time::Duration;

use emulator::*;
use rehearse::providers::aws::api::ErrorKind;
use rehearse::providers::aws::sdk::ssm::SdkSsm;
use rehearse::providers::aws::ssm::{run_command, SendCommand, SsmApi};

const BUCKET: &str = "rehearse-ssm-out";

/// A runner instance in the emulator's EC2.
fn runner(rt: &tokio::runtime::Runtime, conf: &aws_config::SdkConfig) -> String {
    let ec2 = aws_sdk_ec2::Client::new(conf);
    rt.block_on(async {
        let images = ec2.describe_images().send().await.unwrap();
        let ami = images.images().iter().find_map(|i| i.image_id()).expect("the emulator lists AMIs").to_string();
        let out = ec2
            .run_instances()
            .image_id(ami)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Small)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap();
        out.instances()[0].instance_id().unwrap().to_string()
    })
}

fn suites(instance_id: &str, timeout_secs: u32) -> SendCommand {
    SendCommand {
        instance_id: instance_id.to_string(),
        commands: vec![
            "cd /opt/shop".into(),
            "./run-suites --junit /tmp/junit.xml".into(),
            "cat /tmp/junit.xml".into(),
        ],
        output_bucket: Some(BUCKET.into()),
        output_prefix: Some("rehearse/r-1/suites".into()),
        timeout_secs,
        comment: "rehearse r-1: suites".into(),
    }
}

#[test]
fn send_command_and_get_command_invocation_have_the_right_shapes() {
    let emulator = Emulator::start(false);
    let rt = rt();
    let conf = emulator.conf(&rt);
    let instance = runner(&rt, &conf);
    let ssm = SdkSsm::from_config(&conf);
    let raw = aws_sdk_ssm::Client::new(&conf);

    let req = suites(&instance, 900);
    let id = rt.block_on(ssm.send_command(&req)).unwrap();
    assert!(!id.is_empty());

    // What the emulator stored is what was sent.
    let listed = rt.block_on(raw.list_commands().command_id(&id).send()).unwrap();
    let [command] = listed.commands() else { panic!("one command: {listed:?}") };
    assert_eq!(command.command_id(), Some(id.as_str()));
    assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
    assert_eq!(command.instance_ids(), std::slice::from_ref(&instance));
    let params = command.parameters().expect("parameters");
    assert_eq!(params.get("commands"), Some(&req.commands));
    assert_eq!(params.get("executionTimeout"), Some(&vec!["900".to_string()]));
    assert_eq!(params.len(), 2, "{params:?}");
    assert_eq!(command.output_s3_bucket_name(), Some(BUCKET));
    assert_eq!(command.output_s3_key_prefix(), Some("rehearse/r-1/suites"));
    assert_eq!(command.timeout_seconds(), Some(900));
    assert_eq!(command.comment(), Some("rehearse r-1: suites"));

    // The invocation, as the emulator reports it: at its end already.
    let inv = rt.block_on(ssm.get_command_invocation(&id, &instance)).unwrap();
    assert_eq!((inv.status.as_str(), inv.response_code), ("Success", 0));
    assert!(inv.is_terminal());
    assert_eq!((inv.stdout.as_str(), inv.stderr.as_str()), ("", ""));
    assert_eq!(inv.stdout_url, None, "an empty URL is no URL");

    // A short execution timeout, a long comment: the delivery timeout is at least 30 s
    // and the comment SSM's 100 characters.
    let mut short = suites(&instance, 10);
    short.output_bucket = None;
    short.output_prefix = None;
    short.comment = "x".repeat(300);
    let id2 = rt.block_on(ssm.send_command(&short)).unwrap();
    let listed = rt.block_on(raw.list_commands().command_id(&id2).send()).unwrap();
    let command = &listed.commands()[0];
    assert_eq!(command.parameters().unwrap().get("executionTimeout"), Some(&vec!["10".to_string()]));
    assert_eq!(command.timeout_seconds(), Some(30));
    assert_eq!(command.comment().map(str::len), Some(100));
    assert_eq!(command.output_s3_bucket_name().unwrap_or(""), "");
}

#[test]
fn invocations_that_do_not_exist_are_told_apart() {
    let emulator = Emulator::start(false);
    let rt = rt();
    let conf = emulator.conf(&rt);
    let instance = runner(&rt, &conf);
    let ssm = SdkSsm::from_config(&conf);
    let id = rt.block_on(ssm.send_command(&suites(&instance, 900))).unwrap();

    // A command that was not sent to this instance: InvocationDoesNotExist, the answer
    // run_command waits out for a command not visible yet.
    let e = rt.block_on(ssm.get_command_invocation(&id, "i-00000000000000000")).unwrap_err();
    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::NotFound, Some("InvocationDoesNotExist")), "{e}");
    // A command id the emulator does not know: its code is kept, and it is not taken
    // for "not visible yet" (it is refused, so run_command would not wait on it).
    let e = rt.block_on(ssm.get_command_invocation("8b5ae4b2-0000-4000-8000-000000000000", &instance)).unwrap_err();
    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::Refused, Some("InvalidCommandId")), "{e}");
}

/// The whole path over the SDK: sent, polled, its output looked for in S3 (where the
/// emulator, which runs nothing, wrote none: the inline text, empty, is the output).
#[test]
fn run_command_over_the_sdk_finishes() {
    let emulator = Emulator::start(false);
    let rt = rt();
    let conf = emulator.conf(&rt);
    let instance = runner(&rt, &conf);
    let s3 = emulator.bucket(&rt, BUCKET);
    let ssm = SdkSsm::from_config(&conf);
    let fetch = |bucket: String, key: String| {
        let s3 = s3.clone();
        async move {
            match s3.get_object().bucket(bucket).key(key).send().await {
                Ok(o) => Ok(Some(o.body.collect().await.map_err(|e| e.to_string())?.to_vec())),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
            }
        }
    };
    let (_tx, cancel) = tokio::sync::watch::channel(false);
    let done = rt
        .block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            run_command(&ssm, &suites(&instance, 900), fetch, Duration::from_millis(100), deadline, cancel).await
        })
        .unwrap();
    assert!(done.succeeded(), "{done:?}");
    assert_eq!((done.output.as_str(), done.stderr.as_str()), ("", ""));
}
