use super::*;
use crate::tar;
use serde_json::json;

fn target() -> Value {
    json!({"local": {"name": "dev", "config": {}, "apps": {"1": {"name": "app", "commit": "c1",
        "releaseId": 1, "services": {"main": {"image": "busybox:1", "imageId": 1,
        "serviceName": "main", "serviceId": 1, "environment": {}, "labels": {}}},
        "volumes": {}, "networks": {}}}}})
}

fn manifest(target: Value) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        created: "2026-12-03T06:00:00Z".into(),
        target,
        images: vec![ImageEntry {
            name: "busybox:1".into(),
            id: format!("sha256:{}", "a".repeat(64)),
            file: "images/0.tar".into(),
            size: 3,
            sha256: "b".repeat(64),
        }],
    }
}

/// A bundle's bytes: the given manifest and signature entries, then `rest` entries.
fn bundle(manifest: &[u8], sig: &[u8], rest: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entries = vec![(MANIFEST, manifest), (SIGNATURE, sig)];
    entries.extend_from_slice(rest);
    for (name, data) in entries {
        tar::write_header(&mut out, name, data.len() as u64).unwrap();
        out.extend_from_slice(data);
        tar::write_padding(&mut out, data.len() as u64).unwrap();
    }
    tar::write_end(&mut out).unwrap();
    out
}

fn keys() -> (String, Vec<u8>) {
    let (private, public) = generate_key().unwrap();
    (private, base64_decode(&public).unwrap())
}

fn head(bytes: &[u8], trusted: &[Vec<u8>]) -> Result<Head, String> {
    read_head(&mut Entries::new(bytes), trusted)
}

#[test]
fn a_signed_manifest_reads_back_with_its_target() {
    let (private, public) = keys();
    let raw = serde_json::to_vec(&manifest(target())).unwrap();
    let sig = sign(&private, &raw).unwrap();
    let got = head(&bundle(&raw, &sig, &[("images/0.tar", b"abc")]), &[public]).unwrap();
    assert_eq!(got.manifest, manifest(target()));
    assert_eq!(got.target.apps.len(), 1);
    assert_eq!(got.digest.len(), 64);
    assert_eq!(target_images(&got.target), vec!["busybox:1".to_string()]);
}

#[test]
fn signatures_are_checked_against_the_trusted_keys() {
    let (private, public) = keys();
    let (_, other) = keys();
    let raw = serde_json::to_vec(&manifest(target())).unwrap();
    let sig = sign(&private, &raw).unwrap();
    let e = head(&bundle(&raw, &sig, &[]), &[]).unwrap_err();
    assert!(e.contains("no key to check bundles"), "{e}");
    let e = head(&bundle(&raw, &sig, &[]), &[other]).unwrap_err();
    assert!(e.contains("unknown key"), "{e}");
    let mut tampered = raw.clone();
    let at = tampered.iter().position(|b| *b == b'c').unwrap();
    tampered[at] = b'd';
    let e = head(&bundle(&tampered, &sig, &[]), std::slice::from_ref(&public)).unwrap_err();
    assert!(e.contains("signature does not match"), "{e}");
    let e = head(&bundle(&raw, b"{}", &[]), std::slice::from_ref(&public)).unwrap_err();
    assert!(e.contains("not a signature entry"), "{e}");
    // The signature entry missing, or the entries in another order.
    let e = head(
        &bundle(&raw, &sig, &[])[..1024],
        std::slice::from_ref(&public),
    )
    .unwrap_err();
    assert!(e.contains("not a bundle"), "{e}");
    let mut swapped = Vec::new();
    for (name, data) in [(SIGNATURE, &sig), (MANIFEST, &raw)] {
        tar::write_header(&mut swapped, name, data.len() as u64).unwrap();
        swapped.extend_from_slice(data);
        tar::write_padding(&mut swapped, data.len() as u64).unwrap();
    }
    let e = head(&swapped, &[public]).unwrap_err();
    assert!(e.contains("manifest.json expected"), "{e}");
}

#[test]
fn bad_manifests_and_targets_are_refused_after_the_signature() {
    let (private, public) = keys();
    let cases: Vec<(Manifest, &str)> = vec![
        (
            Manifest {
                format: "other/2".into(),
                ..manifest(target())
            },
            "unknown bundle format",
        ),
        (
            Manifest {
                target: json!({"local": {"apps": 5}}),
                ..manifest(target())
            },
            "target is invalid",
        ),
        (
            {
                let mut m = manifest(target());
                m.images[0].file = "../x".into();
                m
            },
            "images[0].file",
        ),
        (
            {
                let mut m = manifest(target());
                m.images[0].sha256 = "B".repeat(64);
                m
            },
            "images[0].sha256",
        ),
        (
            {
                let mut m = manifest(target());
                m.images[0].id = "busybox".into();
                m
            },
            "images[0].id",
        ),
        (
            {
                let mut m = manifest(target());
                let mut second = m.images[0].clone();
                second.file = "images/1.tar".into();
                m.images.push(second);
                m
            },
            "images[1].name",
        ),
    ];
    for (m, want) in cases {
        let raw = serde_json::to_vec(&m).unwrap();
        let sig = sign(&private, &raw).unwrap();
        let e = head(&bundle(&raw, &sig, &[]), std::slice::from_ref(&public)).unwrap_err();
        assert!(e.contains(want), "{want}: {e}");
    }
    let raw = br#"{"format":"tinyvisor-bundle/1","created":"","target":{},"images":[],"extra":1}"#;
    let sig = sign(&private, raw).unwrap();
    let e = head(&bundle(raw, &sig, &[]), &[public]).unwrap_err();
    assert!(e.contains("not a bundle manifest"), "{e}");
}

#[test]
fn whole_v3_documents_are_unwrapped_to_their_device_object() {
    let device = json!({"name": "d", "config": {}, "apps": {}});
    assert_eq!(
        create::device_object(json!({"0123abcd": device.clone()})),
        device
    );
    assert_eq!(create::device_object(device.clone()), device);
    assert_eq!(create::device_object(target()), target());
}

#[test]
fn digests_are_sha256_hex() {
    let mut d = Digest::new();
    d.update(b"abc");
    assert_eq!(
        d.hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(sign("not base64!", b"x").is_err());
    assert!(sign(&base64(b"short"), b"x").is_err());
}
