//! The book's getting-started tour, run as written: every `$ ` command of
//! `docs/src/getting-started.md`, in order, through `sh` and `curl`
//! against a fresh server, each answer compared with the one the page
//! shows. A documented answer that changes fails here.

use serde_json::Value;

use crate::helpers::spawn_app;

const PAGE: &str = include_str!("../../docs/src/getting-started.md");

/// A command of the page and the answer printed under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: String,
}

/// Every `$ ` line of the page's `console` blocks with the lines under it.
fn steps(page: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut in_console = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_console = !in_console && line.trim() == "```console";
            continue;
        }
        if !in_console {
            continue;
        }
        match line.strip_prefix("$ ") {
            Some(command) => steps.push(Step {
                command: command.to_owned(),
                expected: String::new(),
            }),
            None => {
                let step = steps.last_mut().expect("a console block starts with `$ `");
                step.expected.push_str(line);
                step.expected.push('\n');
            }
        }
    }
    steps
}

fn is_timestamp(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// Equal, except that a timestamp on the page stands for any timestamp.
fn differences(expected: &Value, actual: &Value, path: &str, out: &mut Vec<String>) {
    match (expected, actual) {
        (e, a) if is_timestamp(e) && !is_timestamp(a) => {
            out.push(format!("{path}: a timestamp on the page, {a} served"));
        }
        (e, _) if is_timestamp(e) => {}
        (Value::Object(e), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            for key in keys {
                match (e.get(key), a.get(key)) {
                    (Some(ev), Some(av)) => differences(ev, av, &format!("{path}.{key}"), out),
                    (Some(_), None) => out.push(format!("{path}.{key}: on the page, not served")),
                    (None, Some(_)) => out.push(format!("{path}.{key}: served, not on the page")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                differences(ev, av, &format!("{path}[{i}]"), out);
            }
        }
        (e, a) if e != a => out.push(format!("{path}: {e} on the page, {a} served")),
        _ => {}
    }
}

/// Test builds add a `crash` message to every kind (the supervision
/// tests' fault injection); a release build, the page's, has none.
fn without_test_messages(answer: &mut Value) {
    if let Some(kinds) = answer.get_mut("kinds").and_then(Value::as_array_mut) {
        for kind in kinds {
            if let Some(messages) = kind.get_mut("messages").and_then(Value::as_array_mut) {
                messages.retain(|m| m["name"] != "crash");
            }
        }
    }
}

#[actix_rt::test]
async fn every_command_of_the_getting_started_tour_answers_as_the_page_shows() {
    let steps = steps(PAGE);
    assert!(steps.len() >= 10, "the tour has its commands: {steps:?}");
    let app = spawn_app().await;
    let host = app.address.trim_start_matches("http://");
    for step in &steps {
        assert!(
            step.command.contains("localhost:8080"),
            "{}: every command calls the server the page starts",
            step.command
        );
        // The status too, on a line of its own after the body: an answer in
        // the error shape is a 4xx, any other a 2xx.
        let command = format!(
            "{} -w '\\n%{{http_code}}'",
            step.command.replace("localhost:8080", host)
        );
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .await
            .expect("sh runs");
        assert!(output.status.success(), "{command}: {output:?}");
        let printed = String::from_utf8_lossy(&output.stdout);
        let (served, status) = printed.rsplit_once('\n').unwrap_or(("", &printed));
        let status: u16 = status.trim().parse().expect("curl printed the status");
        if step.expected.trim().is_empty() {
            assert!(served.trim().is_empty(), "{command}: printed {served}");
            assert!((200..300).contains(&status), "{command}: {status}");
            continue;
        }
        let expected: Value = serde_json::from_str(&step.expected)
            .unwrap_or_else(|e| panic!("the page's answer to {}: {e}", step.command));
        let want = if expected.get("error").is_some() {
            400..500
        } else {
            200..300
        };
        assert!(want.contains(&status), "{command}: status {status}");
        let mut actual: Value = serde_json::from_str(served)
            .unwrap_or_else(|e| panic!("{command} answered {served:?}: {e}"));
        without_test_messages(&mut actual);
        let mut found = Vec::new();
        differences(&expected, &actual, "$", &mut found);
        assert!(
            found.is_empty(),
            "{}\nanswered {actual}\n{}",
            step.command,
            found.join("\n")
        );
    }
}

#[test]
fn the_comparison_sees_a_changed_answer() {
    let page: Value = serde_json::json!({"a": 1, "at": "2026-12-08T09:15:02Z", "l": [1, 2]});
    let mut found = Vec::new();
    let same = serde_json::json!({"a": 1, "at": "2027-01-01T00:00:00.5Z", "l": [1, 2]});
    differences(&page, &same, "$", &mut found);
    assert!(found.is_empty(), "{found:?}");
    for changed in [
        serde_json::json!({"a": 2, "at": "2026-12-08T09:15:02Z", "l": [1, 2]}),
        serde_json::json!({"a": 1, "at": "yesterday", "l": [1, 2]}),
        serde_json::json!({"a": 1, "at": "2026-12-08T09:15:02Z", "l": [1]}),
        serde_json::json!({"a": 1, "at": "2026-12-08T09:15:02Z", "l": [1, 2], "b": 0}),
        serde_json::json!({"at": "2026-12-08T09:15:02Z", "l": [1, 2]}),
    ] {
        let mut found = Vec::new();
        differences(&page, &changed, "$", &mut found);
        assert!(!found.is_empty(), "{changed} differs from {page}");
    }
    let steps = steps("text\n```console\n$ curl a\n{\"x\": 1}\n```\n```sh\n$ not this\n```\n");
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].expected, "{\"x\": 1}\n");
}
