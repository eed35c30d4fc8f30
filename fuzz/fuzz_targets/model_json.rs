//! `ModelSpec::from_json` on arbitrary UTF-8; for a spec it accepts, the widths and tensor list
//! every other module derives from it, and a save/load round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pepnet_core::ModelSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = ModelSpec::from_json(text, "fuzz.json") else {
        return;
    };
    let _ = (spec.d(), spec.n_tasks(), spec.n_hidden(), spec.has_hashed());
    let _ = (spec.dg(), spec.dd(), spec.dp());
    let _ = (spec.tower_in_widths(), spec.tower_out_widths());
    for role in [
        pepnet_core::spec::Role::General,
        pepnet_core::spec::Role::Domain,
        pepnet_core::spec::Role::Prior,
    ] {
        let all = spec.role_offsets(role);
        for (f, &offset) in all.iter().enumerate() {
            assert_eq!(offset, spec.role_offset(f, role));
        }
    }
    for f in &spec.features {
        let _ = (f.rows(), f.id_space());
    }
    let tensors = spec.expected_tensors();
    assert!(!tensors.is_empty());
    let elements: u64 = tensors
        .iter()
        .map(|(_, shape)| shape.iter().map(|&n| n as u64).product::<u64>())
        .sum();
    assert_eq!(spec.weight_bytes(), elements * 4);
    // `Model::save` writes `to_json`; `Model::load` must read the same spec back.
    let again = ModelSpec::from_json(&spec.to_json(), "again.json")
        .expect("a spec's own JSON is accepted");
    assert_eq!(again, spec, "spec changed in a to_json/from_json round trip");
});
