//! `soma check --locate` against injected faults: with the `fault-injection` feature,
//! `SOMA_INJECT_FAULT=ENTRY` drops every dispatch of one kernel entry point, as a driver that
//! miscomputes that kernel would, and the report must name that kernel, the op it ran and a
//! buffer it writes. Built and run only with `--features fault-injection` (CI runs it so).
#![cfg(feature = "fault-injection")]

mod common;

use common::bin::{adapters, soma_in_env, TempDir};

#[test]
fn check_locate_names_the_injected_kernel() {
    if adapters().is_empty() {
        if std::env::var("SOMA_REQUIRE_GPU").as_deref() == Ok("1") {
            panic!("SOMA_REQUIRE_GPU=1 but `soma devices --json` lists no adapter");
        }
        eprintln!("SKIPPED check_locate_names_the_injected_kernel: no adapter");
        return;
    }
    let dir = TempDir::new("locate");
    let check = |fault: Option<&str>| {
        let vars: Vec<(&str, &str)> = fault
            .map(|f| ("SOMA_INJECT_FAULT", f))
            .into_iter()
            .collect();
        soma_in_env(
            &dir.0,
            &["check", "--locate", "--steps", "2", "--json"],
            &vars,
        )
    };
    // No fault: every op of both steps agrees with its twin.
    let clean = check(None).ok();
    assert_eq!(clean.json()["divergence"], serde_json::Value::Null);
    assert_eq!(clean.json()["steps"], 2);

    // digits' 64-64-10 network with Adam: the second layer's bias and activation, the
    // loss, and Adam's update of a tensor whose length is a multiple of 4.
    for (kernel, op, buffer) in [
        (
            "bias_activation_forward",
            "BiasActivationForward",
            "layers.1.out",
        ),
        ("softmax_cross_entropy", "Loss", "row loss"),
        ("adam_update_vec4", "Update", "layers.0.weight"),
    ] {
        let ran = check(Some(kernel));
        assert_eq!(ran.code, Some(1), "{kernel}: {}", ran.stderr);
        let d = &ran.json()["divergence"];
        assert_eq!(d["kernel"], kernel, "{d}");
        assert_eq!(d["op"], op, "{d}");
        assert!(
            d["buffer"].as_str().unwrap().starts_with(buffer),
            "{kernel}: {d}"
        );
        assert_eq!(ran.json()["step"], 1);
        // The dropped dispatch left its output as it was: far from the twin's.
        assert!(d["difference"].as_f64().unwrap() > 0.1, "{d}");
        let error = ran
            .stderr_lines()
            .into_iter()
            .last()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(kernel), "{error}");
    }

    // The shadow check of a training run catches the same fault at its first replayed step.
    let ran = soma_in_env(
        &dir.0,
        &[
            "train",
            "--device",
            "gpu",
            "--epochs",
            "1",
            "--shadow-check",
            "10",
            "--shadow-action",
            "stop",
            "--out",
            "faulty",
        ],
        &[("SOMA_INJECT_FAULT", "adam_update_vec4")],
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let error = ran
        .stderr_lines()
        .into_iter()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("shadow check failed at step 10"), "{error}");
    // The failed step, run again op by op, names the kernel.
    assert!(
        ran.stdout
            .contains("first past 1e-4 is Update (kernel adam_update_vec4)"),
        "{}",
        ran.stdout
    );
    let log = std::fs::read_to_string(dir.0.join("faulty.partial/shadow.jsonl")).unwrap();
    let report: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(report["located"]["kernel"], "adam_update_vec4", "{report}");
}
