use super::*;

#[test]
fn deploy_filters_become_a_node_match() {
    let m = deploy_match(&["group=g03,label=rack=12".into(), "node=n-1".into()]).unwrap();
    assert_eq!(m["groups"], json!(["g03"]));
    assert_eq!(m["nodes"], json!(["n-1"]));
    assert_eq!(m["labels"], json!({"rack": "12"}));
    assert!(deploy_match(&[]).is_err());
    assert!(deploy_match(&["rack=12".into()]).is_err());
    assert!(deploy_match(&["label=rack".into()]).is_err());
}

#[test]
fn versions_are_path_segments() {
    assert_eq!(versioned_path("/x", "web"), "/x/web");
    assert_eq!(versioned_path("/x", "web:3"), "/x/web/3");
    assert_eq!(match_text(&json!({})), "all");
    assert_eq!(
        match_text(&json!({"groups": ["g01"], "labels": {"rack": "12"}})),
        "groups=g01 labels=rack=12"
    );
}
