//! Faithfulness scores and `method=auto` over HTTP, as a client uses them: the scores next
//! to each map and in headers, the same score for the same request, what is refused, and
//! the method `auto` picks (whose map is the one that method gives when asked for).

use crate::helpers::{client, png, Server};
use crate::http_api::problem;
use gradcam_serve::explanation::Explanation;
use serde_json::Value;

/// A small input keeps ROAD's sparse solves and the extra passes quick.
const SMALL: [&str; 2] = ["--input-size", "64"];

fn answer(server: &Server, query: &str) -> Explanation {
    let r = server.explain(query, png(96, 80), "a.png");
    assert_eq!(r.status(), 200, "{query}");
    r.json().unwrap()
}

#[test]
fn scores_come_with_each_map_repeat_and_reach_the_headers() {
    let server = Server::start(&SMALL);
    let e = answer(&server, "?scores=road,confidence_change,complexity,arcc");
    let scores = e.scores.as_ref().expect("scores");
    let names: Vec<&str> = scores.0.keys().map(String::as_str).collect();
    assert_eq!(names, ["arcc", "complexity", "confidence_change", "road"]);
    assert!(scores.0.values().all(|v| v.is_finite()), "{scores:?}");
    assert!((0.0..=1.0).contains(&scores.0["complexity"]));
    assert!((0.0..=1.0).contains(&scores.0["arcc"]));
    assert!(e.timing_ms.scores > 0.0);
    assert!(e.maps.is_none() && e.candidates.is_none());

    // The same request, the same scores: ROAD's noise is seeded.
    let again = answer(&server, "?scores=road,confidence_change,complexity,arcc");
    assert_eq!(again.scores, e.scores);
    // Another seed moves ROAD (its noise), not the others.
    let seeded = answer(&server, "?scores=road,confidence_change&seed=9");
    let seeded = seeded.scores.unwrap().0;
    assert_ne!(seeded["road"], scores.0["road"]);
    assert_eq!(seeded["confidence_change"], scores.0["confidence_change"]);
    // The scores that compare no logits, alone: the same values, no prediction rerun.
    let cheap = answer(&server, "?scores=complexity,coherency");
    let cheap = cheap.scores.unwrap().0;
    assert_eq!(cheap["complexity"], scores.0["complexity"]);
    assert!((0.0..=1.0).contains(&cheap["coherency"]), "{cheap:?}");
    // Without scores: no field, no time.
    let plain = answer(&server, "");
    assert!(plain.scores.is_none());
    assert_eq!(plain.timing_ms.scores, 0.0);
    assert_eq!(
        plain.saliency, e.saliency,
        "scoring does not change the map"
    );

    // Several targets: each map its own, the first the answer's.
    let many = answer(&server, "?target=1,2&scores=confidence_change,complexity");
    let maps = many.maps.as_ref().unwrap();
    assert_eq!(maps.len(), 2);
    assert_eq!(maps[0].scores, many.scores);
    assert!(maps[1].scores.is_some() && maps[1].scores != maps[0].scores);
    let alone = answer(&server, "?target=2&scores=confidence_change,complexity");
    assert_eq!(maps[1].scores, alone.scores, "scored as if asked alone");

    // With Accept: image/png, in headers.
    let form = reqwest::blocking::multipart::Form::new().part(
        "image",
        reqwest::blocking::multipart::Part::bytes(png(96, 80)).file_name("a.png"),
    );
    let r = client()
        .post(format!(
            "{}/explain?scores=road,confidence_change,complexity,arcc",
            server.url
        ))
        .header("accept", "image/png")
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-method"], "gradcam");
    for (header, name) in [
        ("x-score-road", "road"),
        ("x-score-confidence-change", "confidence_change"),
        ("x-score-complexity", "complexity"),
        ("x-score-arcc", "arcc"),
    ] {
        let value: f32 = r.headers()[header].to_str().unwrap().parse().unwrap();
        assert_eq!(value, scores.0[name], "{header}");
    }
}

#[test]
fn bad_scores_are_refused_with_what_was_wrong() {
    let server = Server::start(&SMALL);
    for (query, option, says) in [
        ("?scores=road,faith", "scores", "confidence_change"),
        ("?scores=", "scores", "not a score"),
        ("?road_percentiles=0", "road_percentiles", "1..=99"),
        ("?road_percentiles=50,100", "road_percentiles", "1..=99"),
        (
            "?road_percentiles=1,2,3,4,5,6,7,8,9,10",
            "road_percentiles",
            "up to 9",
        ),
        ("?auto_score=best", "auto_score", "road_morf"),
    ] {
        let body = problem(server.explain(query, png(96, 80), "a.png"), 422);
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.contains(option) && detail.contains(says),
            "{query}: {detail}"
        );
    }
    // The server goes on.
    answer(&server, "?scores=complexity");
}

/// What the spec calls valid, the server takes: scores where the answer is no one-channel
/// map are ignored, as other options a method cannot use; coherency reruns SobelCAM on the
/// picture times its map; auto takes several classes and layers (and ignores aug_smooth).
#[test]
fn every_combination_the_spec_allows_is_answered() {
    let server = Server::start(&SMALL);
    for query in [
        "?method=guided-backprop&scores=road",
        "?method=dff&scores=complexity",
    ] {
        let e = answer(&server, query);
        assert!(e.scores.is_none(), "{query}");
    }
    let sobel = answer(&server, "?method=sobelcam&scores=coherency,arcc");
    let coherency = sobel.scores.unwrap().0["coherency"];
    assert!((0.0..=1.0).contains(&coherency), "{coherency}");

    let two = answer(&server, "?method=auto&target=1,2");
    let maps = two.maps.as_ref().expect("a map per class");
    assert_eq!(maps.len(), 2);
    let chosen = answer(&server, &format!("?method={}&target=1,2", two.method));
    let chosen_maps = chosen.maps.unwrap();
    for (a, b) in maps.iter().zip(&chosen_maps) {
        assert_eq!(a.saliency, b.saliency, "the chosen method's maps");
    }
    let layers = answer(&server, "?method=auto&layer=layer3,layer4");
    assert!(layers.saliency.scaled, "the multi-layer map");
    let chosen = answer(
        &server,
        &format!("?method={}&layer=layer3,layer4", layers.method),
    );
    assert_eq!(chosen.saliency, layers.saliency);
    let smooth = answer(&server, "?method=auto&aug_smooth=true");
    assert!(smooth.candidates.is_some());
}

#[test]
fn get_model_describes_every_score() {
    let server = Server::start(&SMALL);
    let model: Value = server.get_json("/model");
    let scores = model["scores"].as_array().expect("scores");
    let names: Vec<&str> = scores.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "road",
            "road_morf",
            "road_lerf",
            "confidence_change",
            "drop_in_confidence",
            "increase_in_confidence",
            "complexity",
            "coherency",
            "arcc"
        ]
    );
    for s in scores {
        assert!(["higher", "lower"].contains(&s["better"].as_str().unwrap()));
        assert!(!s["meaning"].as_str().unwrap().is_empty());
        assert!(!s["reference"].as_str().unwrap().is_empty());
    }
    let auto = model["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "auto")
        .expect("auto is offered");
    assert_eq!(
        auto["options"],
        serde_json::json!(["eigen_smooth", "auto_score"])
    );
}

#[test]
fn auto_answers_the_best_scoring_method_with_every_candidate() {
    let server = Server::start(&SMALL);
    let model: Value = server.get_json("/model");
    let offered = |name: &str| {
        model["methods"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == name)
    };
    let e = answer(&server, "?method=auto");
    assert_eq!(e.auto_score.as_deref(), Some("confidence_change"));
    let candidates = e.candidates.as_ref().expect("candidates");
    let eigen = if offered("eigencam") { 2 } else { 0 };
    assert_eq!(candidates.len(), 6 + eigen);
    assert_eq!(candidates[0].method, e.method, "the best is the answer");
    assert!(
        candidates.windows(2).all(|w| w[0].score >= w[1].score),
        "best first: {candidates:?}"
    );
    // At a ResNet's last block the gradient is the same everywhere: HiResCAM and XGradCAM
    // are Grad-CAM's map, scored once.
    for same in ["hirescam", "xgradcam"] {
        let c = candidates.iter().find(|c| c.method == same).unwrap();
        assert_eq!(c.same_map_as.as_deref(), Some("gradcam"), "{same}");
        let gradcam = candidates.iter().find(|c| c.method == "gradcam").unwrap();
        assert_eq!(c.score, gradcam.score);
    }
    // The map is the chosen method's own, and its score the one that method gets.
    let chosen = answer(
        &server,
        &format!("?method={}&scores=confidence_change", e.method),
    );
    assert_eq!(chosen.saliency, e.saliency);
    // Up to float rounding: auto scores every candidate in one batch, and libtorch's
    // convolutions round differently at another batch size.
    let alone = chosen.scores.unwrap().0["confidence_change"];
    assert!(
        (alone - candidates[0].score).abs() <= 1e-5 * alone.abs().max(1.0),
        "{alone} against {}",
        candidates[0].score
    );

    // Ranked by complexity, lower is better: the order turns.
    let simple = answer(&server, "?method=auto&auto_score=complexity&scores=road");
    let candidates = simple.candidates.as_ref().unwrap();
    assert!(candidates.windows(2).all(|w| w[0].score <= w[1].score));
    assert_eq!(candidates[0].method, simple.method);
    assert!(
        simple.scores.unwrap().0.contains_key("road"),
        "scores of the chosen map"
    );
}
