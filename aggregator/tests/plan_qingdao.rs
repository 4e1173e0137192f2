//! The embedded Qingdao plan against the document it encodes (deploy/plans/source/).
//! The expected values below are read off the published text, not off our output.

use std::collections::HashMap;
use std::process::Command;

use duban_aggregator::plan;
use serde_json::Value;

const SOURCE: &str = include_str!("../../deploy/plans/source/qingdao-2017.txt");

fn plan_json() -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_duban-aggregator"))
        .args(["plan", "show", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan show --json prints JSON")
}

struct View {
    json: Value,
    names: HashMap<String, String>,
}

impl View {
    fn new() -> Self {
        let json = plan_json();
        let mut names = HashMap::new();
        for party in json["units"]
            .as_array()
            .unwrap()
            .iter()
            .chain(json["groups"].as_array().unwrap())
        {
            names.insert(
                party["id"].as_str().unwrap().to_owned(),
                party["name"].as_str().unwrap().to_owned(),
            );
        }
        View { json, names }
    }

    fn find<'a>(&'a self, list: &str, key: &str, value: &str) -> &'a Value {
        self.json[list]
            .as_array()
            .unwrap()
            .iter()
            .find(|item| item[key] == value)
            .unwrap_or_else(|| panic!("no {list} with {key} = {value}"))
    }

    fn names_of(&self, ids: &Value) -> Vec<String> {
        ids.as_array()
            .unwrap()
            .iter()
            .map(|id| self.names[id.as_str().unwrap()].clone())
            .collect()
    }
}

#[test]
fn embedded_plan_is_valid_with_exactly_the_three_eight_overlap_warning() {
    let loaded = plan::load_str(plan::EMBEDDED_PLAN, "qingdao-2017.toml").unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("三(八)"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("中期完善阶段") && warnings[0].contains("初期启动阶段"),
        "{}",
        warnings[0]
    );
}

#[test]
fn targets_of_the_main_goals_match_the_document() {
    let view = View::new();
    // (indicator name as in 一(三), comparator, target, aggregation kind)
    let expected = [
        (
            "通过《企业知识产权管理规范》国家标准认证的企事业单位",
            ">=",
            60.0,
            "sum",
        ),
        ("建立知识产权管理机构的规模以上工业企业", ">", 300.0, "sum"),
        ("知识产权保护社会满意度", ">=", 80.0, "latest"),
        ("每万人有效发明专利拥有量", ">=", 25.0, "ratio"),
        ("专利合作条约(PCT)国际申请量", ">=", 900.0, "annual_average"),
        ("有效注册商标拥有量", ">=", 100_000.0, "latest"),
        (
            "计算机软件和其他作品著作权登记数量",
            ">=",
            20_000.0,
            "cumulative",
        ),
        ("培育引进植物新品种", ">=", 40.0, "cumulative"),
        ("知识产权交易额", ">=", 10.0, "cumulative"),
        ("专业化知识产权服务机构", ">=", 150.0, "latest"),
        ("企事业单位知识产权管理人才", ">=", 12_000.0, "cumulative"),
        ("知识产权服务业人才", ">=", 3_000.0, "cumulative"),
        ("知识产权领军人才", ">=", 30.0, "cumulative"),
    ];
    for (name, comparator, target, aggregation) in expected {
        let indicator = view.find("indicators", "name", name);
        assert_eq!(indicator["target"]["comparator"], comparator, "{name}");
        assert_eq!(
            indicator["target"]["value"].as_f64().unwrap(),
            target,
            "{name}"
        );
        assert_eq!(indicator["aggregation"]["kind"], aggregation, "{name}");
    }
    let per_10k = view.find("indicators", "id", "invention-patents-per-10k");
    assert_eq!(per_10k["aggregation"]["scale"].as_f64().unwrap(), 10_000.0);
    assert_eq!(per_10k["measure"], "件/万人");
    // 三(七)3: 3年累计培训1万人以上
    let training = view.find("indicators", "id", "ip-training-persons");
    assert_eq!(training["target"]["value"].as_f64().unwrap(), 10_000.0);
    assert_eq!(training["aggregation"]["kind"], "cumulative");
}

#[test]
fn tasks_keep_their_lead_and_responsible_units_as_written() {
    let view = View::new();
    let tasks = view.json["tasks"].as_array().unwrap();
    let sections: Vec<&str> = tasks
        .iter()
        .map(|t| t["section"].as_str().unwrap())
        .collect();
    let mut expected_sections = Vec::new();
    for (part, count) in [("一", 4), ("二", 5), ("三", 4), ("四", 4), ("五", 4)] {
        for n in 1..=count {
            expected_sections.push(format!("二({part}){n}"));
        }
    }
    let lead = |section: &str| view.names_of(&view.find("tasks", "section", section)["lead_units"]);
    let responsible =
        |section: &str| view.names_of(&view.find("tasks", "section", section)["responsible_units"]);
    // Then the plan's own supervision duties: 一(四)'s four stages and 四(一), 四(二).
    for section in [
        "一(四)1",
        "一(四)2",
        "一(四)3",
        "一(四)4",
        "四(一)",
        "四(二)",
    ] {
        expected_sections.push(section.to_owned());
    }
    assert_eq!(
        sections, expected_sections,
        "every numbered task of 二, in order, then the duties of 一(四) and 四"
    );
    for section in ["一(四)1", "一(四)2", "一(四)3", "一(四)4"] {
        assert_eq!(lead(section), ["市知识产权工作领导小组办公室"], "{section}");
    }
    assert_eq!(lead("四(一)"), ["市知识产权工作领导小组"]);
    assert_eq!(responsible("四(二)"), ["各区、市政府"]);

    assert_eq!(lead("二(一)1"), ["市编委办", "市科技局", "市财政局"]);
    assert_eq!(
        responsible("二(一)1"),
        [
            "市文广新局",
            "市工商局",
            "市农委",
            "市林业局",
            "各有关奖项评选单位",
            "各区、市政府"
        ]
    );
    assert_eq!(lead("二(二)3"), ["市发展改革委", "人民银行青岛市中心支行"]);
    assert_eq!(lead("二(二)4"), ["青岛海关"]);
    assert_eq!(
        responsible("二(二)4"),
        ["市科技局", "市文广新局", "市工商局"]
    );
    assert_eq!(
        lead("二(三)1"),
        ["市科技局", "市金融工作办", "中德生态园管委"]
    );
    assert_eq!(
        responsible("二(三)1"),
        ["市文广新局", "市工商局", "青岛银监局", "青岛保监局"]
    );
    assert_eq!(lead("二(五)1"), ["市人力资源社会保障局"]);
    assert_eq!(
        responsible("二(五)1"),
        [
            "市委组织部",
            "市经济信息化委",
            "市科技局",
            "市文广新局",
            "市工商局",
            "青岛大学"
        ]
    );
    // 按职责分工负责: no lead unit invented.
    for section in ["二(二)1", "二(二)2", "二(三)2", "二(四)4"] {
        let task = view.find("tasks", "section", section);
        assert_eq!(task["lead_units"].as_array().unwrap().len(), 0, "{section}");
        assert_eq!(task["by_division_of_duties"], true, "{section}");
    }
    assert_eq!(responsible("二(三)2"), ["市财政局", "市科技局", "崂山区"]);
    // Groups stay groups: 各区、市政府 is one entry whose members are the ten districts of 2017.
    let districts = view.find("groups", "name", "各区、市政府");
    let members = view.names_of(&districts["members"]);
    assert_eq!(
        members,
        [
            "市南区",
            "市北区",
            "李沧区",
            "崂山区",
            "黄岛区",
            "城阳区",
            "即墨市",
            "胶州市",
            "平度市",
            "莱西市"
        ]
    );
    // Every task has at least one milestone with a window.
    for task in tasks {
        assert!(
            !task["milestones"].as_array().unwrap().is_empty(),
            "{}",
            task["section"]
        );
    }
}

#[test]
fn tracks_and_phases_have_the_document_windows() {
    let view = View::new();
    let tracks = view.json["tracks"].as_array().unwrap();
    let sections: Vec<&str> = tracks
        .iter()
        .map(|t| t["section"].as_str().unwrap())
        .collect();
    assert_eq!(
        sections,
        [
            "三(一)", "三(二)", "三(三)", "三(四)", "三(五)", "三(六)", "三(七)", "三(八)"
        ]
    );
    let windows = |section: &str| -> Vec<(Value, Value)> {
        view.find("tracks", "section", section)["phases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["start"].clone(), p["end"].clone()))
            .collect()
    };
    // 三(一): 2017年7月?2017年12月, 2018年7月?2018年12月
    assert_eq!(
        windows("三(一)"),
        [
            ("2017-07-01".into(), "2017-12-31".into()),
            ("2018-07-01".into(), "2018-12-31".into())
        ]
    );
    // 三(八): 2017年8月以前 (no start), 2017年1月?2017年12月, 2018年1月?2018年12月
    assert_eq!(
        windows("三(八)"),
        [
            (Value::Null, "2017-07-31".into()),
            ("2017-01-01".into(), "2017-12-31".into()),
            ("2018-01-01".into(), "2018-12-31".into())
        ]
    );
    let goals: Vec<f64> = view.find("tracks", "section", "三(八)")["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["goals"][0]["target"].as_f64().unwrap())
        .collect();
    assert_eq!(goals, [100.0, 120.0, 150.0]);
    // 三(七) 第三阶段 2019年7月?2020年6月: 3年累计培训1万人以上
    let talent = &view.find("tracks", "section", "三(七)")["phases"][2];
    assert_eq!(
        (talent["start"].as_str(), talent["end"].as_str()),
        (Some("2019-07-01"), Some("2020-06-30"))
    );
    assert_eq!(talent["goals"][0]["target"].as_f64(), Some(10_000.0));

    let phases: Vec<(&str, &str, &str)> = view.json["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["window"]["start"].as_str().unwrap(),
                p["window"]["end"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("动员启动阶段", "2017-07-01", "2017-12-31"),
            ("推进实施阶段", "2018-01-01", "2019-12-31"),
            ("督查评估阶段", "2019-06-01", "2019-12-31"),
            ("全面完成阶段", "2020-01-01", "2020-06-30"),
        ]
    );
}

#[test]
fn every_quoted_text_occurs_verbatim_in_the_source_document() {
    let loaded = plan::embedded();
    let p = &loaded.plan;
    let mut quoted: Vec<(&str, &str)> = Vec::new();
    quoted.extend(
        p.phases
            .iter()
            .filter_map(|x| x.text.as_deref().map(|t| ("phase", t))),
    );
    quoted.extend(p.phases.iter().map(|x| ("phase name", x.name.as_str())));
    quoted.extend(
        p.indicators
            .iter()
            .filter_map(|x| x.text.as_deref().map(|t| ("indicator", t))),
    );
    quoted.extend(p.tasks.iter().map(|x| ("task title", x.title.as_str())));
    quoted.extend(
        p.tasks
            .iter()
            .filter_map(|x| x.text.as_deref().map(|t| ("task", t))),
    );
    for track in &p.tracks {
        quoted.push(("track title", &track.title));
        for phase in &track.phases {
            quoted.push(("track phase name", &phase.name));
            quoted.extend(phase.text.as_deref().map(|t| ("track phase", t)));
            quoted.extend(
                phase
                    .goals
                    .iter()
                    .filter_map(|g| g.text.as_deref().map(|t| ("goal", t))),
            );
        }
    }
    assert!(quoted.len() > 100, "only {} quotes", quoted.len());
    for (what, text) in quoted {
        assert!(
            SOURCE.contains(text),
            "{what} text is not in the document: {text}"
        );
    }
    // Every unit that leads or is responsible for a task is named so in the document.
    for task in &p.tasks {
        for id in task.lead_units.iter().chain(&task.responsible_units) {
            let name = p.party_name(id);
            let in_text = SOURCE.contains(name)
                || name.ends_with('区') && SOURCE.contains(&format!("{name}政府"));
            assert!(
                in_text,
                "task {}: unit {name} is not in the document",
                task.section
            );
        }
    }
}

#[test]
fn the_office_supervises_and_three_one_is_led_by_the_office_with_its_partners() {
    let p = plan::embedded().plan;
    // 市知识产权工作领导小组办公室 leads 三(一) and is the supervising office; the ladder climbs to
    // the leading group (its days are assumptions: the document gives none).
    assert_eq!(p.supervision.office.as_deref(), Some("ip-office"));
    let ladder: Vec<(u32, Vec<String>)> = p
        .supervision
        .ladder
        .iter()
        .map(|l| (l.level, l.to.clone()))
        .collect();
    assert_eq!(
        ladder,
        [
            (2, vec!["ip-office".to_owned()]),
            (3, vec!["ip-leading-group".to_owned()])
        ]
    );
    let track = p.tracks.iter().find(|t| t.id == "3-1").unwrap();
    assert_eq!(track.lead_units, ["ip-office"]);
    assert_eq!(track.partner_units, ["culture-press", "industry-commerce"]);
    // 二(一)1 is implemented by 三(一): its milestones taken from the track go to the office,
    // not to 二(一)1's own lead units.
    let task = p.tasks.iter().find(|t| t.id == "2-1-1").unwrap();
    assert_eq!(
        task.lead_units,
        ["organization-staffing", "science-tech", "finance"]
    );
    for m in &task.milestones {
        assert_eq!(m.lead_units, ["ip-office"], "{}", m.id);
    }
    // Where the document names no lead for an indicator, none is invented.
    for id in ["patent-navigation-zones", "lip-service-agencies"] {
        let indicator = p.indicators.iter().find(|i| i.id == id).unwrap();
        assert!(indicator.lead_units.is_empty(), "{id}");
    }
}
