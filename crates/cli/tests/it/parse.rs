//! `causeway parse` on real corpus files.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use causeway_testkit::corpus;

fn causeway(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_causeway"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn causeway");
    let mut stdin_pipe = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        stdin_pipe.write_all(bytes).expect("write stdin");
    }
    drop(stdin_pipe);
    child.wait_with_output().expect("wait")
}

fn corpus_path(name: &str) -> String {
    corpus::dir().join(name).display().to_string()
}

#[test]
fn tree_shows_paths_and_decoded_values() {
    let out = causeway(&["parse", &corpus_path("hapi__ADT_A01__1.hl7")], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("  MSH-9.2 = A01\n"), "{text}");
    assert!(text.contains("    PID-5.1 = Duck\n"), "{text}");
}

#[test]
fn path_prints_one_unescaped_value_per_message() {
    let out = causeway(
        &[
            "parse",
            "--path",
            "MSH-10",
            &corpus_path("pythonhl7__BATCH_ADT_A04__1.hl7"),
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);

    // \S\ and \T\ unescaped; a whole field printed when no component is named.
    let msg = b"MSH|^~\\&|A||B||2026||ADT^A01|1|P|2.5\rNTE|1||a\\S\\b\\T\\c~second\r";
    let out = causeway(&["parse", "--path", "NTE-3"], Some(msg));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "a^b&c~second\n");
    let out = causeway(&["parse", "--path", "NTE-3[2]", "-"], Some(msg));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "second\n");
}

#[test]
fn charsets_decode_to_utf8() {
    let path = corpus_path("ipf__ADT_A40__1.hl7");
    let out = causeway(
        &["parse", "--charset", "8859/1", "--path", "MSH-5", &path],
        None,
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "BLÄH\n");
    // Undeclared ISO-8859-1 read as UTF-8: shown with \xHH and a warning, not guessed.
    let out = causeway(&["parse", "--path", "MSH-5", &path], None);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "BL\\xC4H\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid"));
    let out = causeway(
        &["parse", "--fallback-1252", "--path", "MSH-5", &path],
        None,
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "BLÄH\n");
}

#[test]
fn json_is_machine_readable() {
    let out = causeway(
        &["parse", "--json", &corpus_path("gcpmllp__ADT_A01__1.hl7")],
        None,
    );
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = &v["messages"][0];
    assert_eq!(msg["control_id"], "20150503223000");
    let msh = &msg["segments"][0];
    assert_eq!(msh["id"], "MSH");
    let msh9 = msh["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "MSH-9")
        .unwrap();
    assert_eq!(msh9["children"][0]["children"][1]["path"], "MSH-9[1].2");
    assert_eq!(msh9["children"][0]["children"][1]["value"], "A01");
}

#[test]
fn errors_name_the_byte_and_exit_non_zero() {
    let out = causeway(&["parse", &corpus_path("hl7apy__ADT_A01__1.hl7")], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("error at byte 4"), "{err}");
    let out = causeway(
        &[
            "parse",
            "--path",
            "PID-99",
            &corpus_path("hapi__ADT_A01__1.hl7"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let out = causeway(&["parse", "--strict"], Some(b"MSH|^~\\&|A\nPID|1\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("error at byte 10"));
    let out = causeway(&["parse"], Some(b"garbage"));
    assert!(!out.status.success());
}
