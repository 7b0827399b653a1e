//! Every input of `fuzz/corpus/cloud_response/` and `fuzz/regressions/cloud_response/` through the
//! fuzz target's harness: response decoding stays panic-free without a fuzzer in CI.

#[path = "../../fuzz/harness/cloud_response.rs"]
mod harness;
#[path = "../../fuzz/harness/corpus.rs"]
mod corpus;

#[test]
fn cloud_response_corpus_never_panics() {
    corpus::run_all("cloud_response", harness::run);
}
