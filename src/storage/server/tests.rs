use super::*;
use crate::wire::signing::SigningPrivateKey;

#[test]
fn every_object_has_its_place_in_the_seed_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let (key_a, key_b) = (SigningPrivateKey::generate(), SigningPrivateKey::generate());
    let signed = |role: Role, own: &SigningPrivateKey, peer: &SigningPrivateKey| {
        ServerBuckets::under_root(&root, role, "2019-06-26").signed(Signatures {
            role,
            own: own.clone(),
            peer: peer.public_key(),
        })
    };
    let a = signed(Role::A, &key_a, &key_b);
    let b = signed(Role::B, &key_b, &key_a);
    let raw = a.raw();
    raw.put("batch_id=x/part-00001.parquet", Vec::new())
        .unwrap();
    raw.put("batch_id=x/part-00000.ndjson", Vec::new()).unwrap();
    raw.put("batch_id=x/notes.txt", Vec::new()).unwrap();
    raw.put(SUCCESS, Vec::new()).unwrap();
    let parts = a.staged_parts().unwrap();
    let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "batch_id=x/part-00000.ndjson",
            "batch_id=x/part-00001.parquet"
        ]
    );
    let part = &parts[0];
    let rows = vec![MessageRow {
        id: "01".into(),
        status: Ok(()),
        share: vec![7],
        nonce: None,
    }];
    a.send_rows(Step::Verify1, part, &rows).unwrap();
    assert!(b.peer_has(Step::Verify1, part).unwrap());
    assert_eq!(b.peer_rows(Step::Verify1, part).unwrap(), rows);
    assert!(b.peer_rows(Step::Verify2, part).unwrap().is_empty());
    // What b reads is checked against a's key: a stranger's rows are refused.
    let stranger = signed(Role::A, &SigningPrivateKey::generate(), &key_b);
    stranger.send_rows(Step::Verify2, part, &rows).unwrap();
    let err = b.peer_rows(Step::Verify2, part).unwrap_err();
    assert!(err.to_string().contains("signing key"), "{err}");
    a.store_states(part, 0..1, &rows).unwrap();
    assert_eq!(a.stored_states(part, 0..1).unwrap(), Some(rows.clone()));
    assert_eq!(a.stored_states(part, 0..2).unwrap(), None);
    a.finish_step(Step::Verify1, b"{}".to_vec()).unwrap();
    assert!(a.step_marker(Step::Verify1).unwrap().0);
    assert!(b.peer_marker(Step::Verify1).unwrap().0);
    let on_disk = |rel: &str| dir.path().join(rel).exists();
    assert!(on_disk("server-a/private/2019-06-26/intermediate/internal/verify1/batch_id=x/part-00000.rows-0-1.parquet"));
    assert!(on_disk(
        "server-b/inbox/2019-06-26/intermediate/external/verify1/batch_id=x/part-00000.parquet"
    ));
    assert!(on_disk(
        "server-b/inbox/2019-06-26/intermediate/external/verify1/_SUCCESS"
    ));
    assert!(on_disk(
        "server-a/private/2019-06-26/intermediate/internal/verify1/_SUCCESS"
    ));
}
