//! The Parquet input reader (`pepnet_io::InputReader` on a `.parquet` file) with the fixed fuzz
//! spec, one thread and two, with and without a rejects file; then `read_number_columns`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pepnet_fuzz::fuzz_input_file(data, "parquet"));
