//! Every input of the CNI fuzz targets' corpora and regressions through their harnesses: the
//! config and environment parsers stay panic-free without a fuzzer in CI.

#[path = "../../fuzz/harness/cni_config.rs"]
mod cni_config;
#[path = "../../fuzz/harness/cni_env.rs"]
mod cni_env;
#[path = "../../fuzz/harness/corpus.rs"]
mod corpus;

#[test]
fn cni_config_corpus_never_panics() {
    corpus::run_all("cni_config", cni_config::run);
}

#[test]
fn cni_env_corpus_never_panics() {
    corpus::run_all("cni_env", cni_env::run);
}
