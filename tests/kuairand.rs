//! The KuaiRand reader on small files in KuaiRand's format: ids and categories map to dense
//! indices, side files join, missing side rows map to "unknown", labels come through, and the
//! converted data scores and evaluates with a model made from the converted spec.

use std::path::Path;

use pepnet::io::read_number_columns;

const LOG: &str = "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab
7001,90001,20220408,1500,1649401200000,1,0,0,0,0,0,1,12000,10000,0,0,0,0,1
7001,90002,20220408,1600,1649404800000,0,0,0,0,0,0,0,1000,30000,0,0,0,0,1
7002,90001,20220408,900,1649379600000,1,1,0,0,0,0,1,15000,10000,0,0,0,0,0
7003,90003,20220409,2300,1649516400000,1,0,1,1,0,0,0,3000,45000,0,0,1,0,4
7002,90004,20220409,1500,1649487600000,0,0,0,0,0,1,0,500,20000,0,0,0,1,0
7009,90002,20220409,1200,1649476800000,1,0,0,0,1,0,1,31000,30000,0,0,0,0,1
";

const USERS: &str = "user_id,user_active_degree,is_lowactive_period,is_live_streamer,is_video_author,follow_user_num,follow_user_num_range,fans_user_num,fans_user_num_range,register_days,register_days_range
7001,high_active,0,0,1,120,\"(100,150]\",30,\"[10,100)\",400,\"366-730\"
7002,full_active,0,0,0,5,\"(0,10]\",0,0,90,\"61-90\"
7003,UNKNOWN,1,1,1,0,0,2000,\"[1k,5k)\",1200,\"730+\"
";

const VIDEOS: &str = "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,server_height,music_id,music_type,tag
90001,501,NORMAL,2022-04-01,ShortImport,public,10000,720,1280,3,9,\"17,81\"
90002,502,NORMAL,2022-04-02,Web,public,30000,720,1280,4,9,\"81\"
90003,501,AD,2022-04-03,ShortImport,public,45000,720,1280,5,0,
";

fn files(dir: &Path) {
    std::fs::write(dir.join("log.csv"), LOG).unwrap();
    std::fs::write(dir.join("users.csv"), USERS).unwrap();
    std::fs::write(dir.join("videos.csv"), VIDEOS).unwrap();
}

#[test]
fn converts_joins_and_maps_ids() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let out = dir.path().join("data.csv");
    let c = pepnet::tools::kuairand::convert(
        &dir.path().join("log.csv"),
        &dir.path().join("users.csv"),
        &dir.path().join("videos.csv"),
        &out,
        8,
    )
    .unwrap();
    assert_eq!(c.rows, 6);
    let vocab = |name: &str| {
        c.spec
            .features
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .vocab
            .unwrap()
    };
    // 0 is "unknown", then one index per distinct raw value.
    assert_eq!(vocab("user_id"), 1 + 4);
    assert_eq!(vocab("video_id"), 1 + 4);
    assert_eq!(vocab("author_id"), 1 + 2); // video 90004 has no side row
    assert_eq!(vocab("tab"), 1 + 3);
    assert_eq!(vocab("tag"), 1 + 2);
    let names: Vec<String> = [
        "user_id",
        "video_id",
        "author_id",
        "user_active_degree",
        "is_click",
        "is_hate",
        "long_view",
        "log_duration_s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let v = read_number_columns(&out, &names).unwrap();
    assert_eq!(v[0], [1.0, 1.0, 2.0, 3.0, 2.0, 4.0]); // users in order of appearance
    assert_eq!(v[1], [1.0, 2.0, 1.0, 3.0, 4.0, 2.0]);
    assert_eq!(v[2], [1.0, 2.0, 1.0, 1.0, 0.0, 2.0]); // author 501 for videos 90001 and 90003
    assert_eq!(v[3][5], 0.0); // user 7009 has no side row
    assert_eq!(v[4], [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]);
    assert_eq!(v[5], [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    assert_eq!(v[6], [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
    assert!((v[7][0] - (10.0f32).ln_1p()).abs() < 1e-6 && v[7][4] == 0.0);
    let text = std::fs::read_to_string(&out).unwrap();
    let first = text.lines().nth(1).unwrap();
    assert!(
        first.contains("1|2"),
        "video 90001's tags 17,81 map to 1|2: {first}"
    );
}

#[test]
fn converted_data_scores_and_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let bin = env!("CARGO_BIN_EXE_pepnet");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run(&[
        "kuairand",
        "--log",
        "log.csv",
        "--users",
        "users.csv",
        "--videos",
        "videos.csv",
        "--output",
        "data.parquet",
        "--spec-out",
        "spec.json",
    ]);
    run(&[
        "init",
        "--spec",
        "spec.json",
        "--out",
        "model",
        "--seed",
        "3",
    ]);
    run(&[
        "score",
        "--model",
        "model",
        "--input",
        "data.parquet",
        "--output",
        "scores.csv",
        "--quiet",
    ]);
    let table = run(&[
        "eval",
        "--model",
        "model",
        "--input",
        "data.parquet",
        "--scores",
        "scores.csv",
    ]);
    assert!(
        table.contains("is_click") && table.contains("all"),
        "{table}"
    );
}

#[test]
fn a_bad_label_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    std::fs::write(
        dir.path().join("log.csv"),
        LOG.replace("1,0,0,0,1,0,1,31000", "1,0,0,0,yes,0,1,31000"),
    )
    .unwrap();
    let err = pepnet::tools::kuairand::convert(
        &dir.path().join("log.csv"),
        &dir.path().join("users.csv"),
        &dir.path().join("videos.csv"),
        &dir.path().join("d.csv"),
        8,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("log.csv")
            && err.contains("row 6")
            && err.contains("is_forward")
            && err.contains("yes"),
        "{err}"
    );
}
