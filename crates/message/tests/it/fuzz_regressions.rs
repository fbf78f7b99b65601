//! Inputs the fuzzer once crashed on (`fuzz/`), kept so they stay fixed. Each file goes
//! through the same checks as the fuzz target: parse, walk, re-encode, ACK or NAK.

#[test]
fn fuzz_regressions_stay_fixed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        causeway_message::fuzz_parse(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}
