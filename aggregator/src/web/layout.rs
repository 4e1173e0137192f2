//! The frame every page shares: the header with the plan's name, the navigation, the `as_of`
//! form, the language switch and the link to the page's JSON; and the small formatting helpers.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::lang::Lang;
use crate::plan::Plan;
use crate::progress::date_of_ms;

/// What every page knows about its request. No session state: the language and `as_of` live
/// in the URL, and every link carries them on.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub plan: &'a Plan,
    pub lang: Lang,
    /// The `as_of` as asked (absent: now).
    pub as_of: Option<String>,
    pub as_of_ms: i64,
    /// The path of this page, for the language switch.
    pub path: String,
}

/// The navigation's sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Tasks,
    Alerts,
    Units,
    None,
}

/// What stays unescaped in a query value or a path segment: RFC 3986's unreserved characters.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, UNRESERVED).to_string()
}

impl Ctx<'_> {
    pub fn t(&self, zh: &'static str, en: &'static str) -> &'static str {
        self.lang.t(zh, en)
    }

    fn query(&self, lang: Lang, extra: &[(&str, &str)]) -> String {
        let mut parts: Vec<String> = Vec::new();
        if lang == Lang::En {
            parts.push("lang=en".into());
        }
        if let Some(as_of) = &self.as_of {
            parts.push(format!("as_of={}", encode(as_of)));
        }
        for (k, v) in extra {
            parts.push(format!("{k}={}", encode(v)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }

    /// A link to another page, keeping the language and `as_of`.
    pub fn href(&self, path: &str) -> String {
        format!("{path}{}", self.query(self.lang, &[]))
    }

    /// A link with more query parameters.
    pub fn href_with(&self, path: &str, extra: &[(&str, &str)]) -> String {
        format!("{path}{}", self.query(self.lang, extra))
    }

    /// This page in the other language.
    pub fn switch_href(&self) -> String {
        format!("{}{}", self.path, self.query(self.lang.other(), &[]))
    }

    /// The JSON under `/api/v1/` a page is built from, at the same `as_of`.
    pub fn api(&self, path: &str) -> String {
        match &self.as_of {
            Some(as_of) => format!("{path}?as_of={}", encode(as_of)),
            None => path.to_owned(),
        }
    }

    pub fn date(&self, ms: i64) -> String {
        date_of_ms(ms, &self.plan.tz).to_string()
    }

    pub fn minute(&self, ms: i64) -> String {
        crate::web::export::minute_text(ms, &self.plan.tz)
    }

    pub fn unit_link(&self, unit: &str) -> Markup {
        html! { a href=(self.href(&format!("/units/{}", encode(unit)))) { (self.plan.party_name(unit)) } }
    }

    pub fn unit_links(&self, units: &[String]) -> Markup {
        html! {
            @for (k, u) in units.iter().enumerate() {
                @if k > 0 { "、" }
                (self.unit_link(u))
            }
        }
    }

    pub fn export_links(&self, table: &str) -> Markup {
        self.export_links_with(table, &[])
    }

    /// Export links with more query parameters (the 督办通报's `since`).
    pub fn export_links_with(&self, table: &str, extra: &[(&str, &str)]) -> Markup {
        html! {
            span.exports {
                (self.t("导出", "Export")) ": "
                a href=(self.href_with(&format!("/export/{table}.csv"), extra)) download { "CSV" }
                " · "
                a href=(self.href_with(&format!("/export/{table}.xlsx"), extra)) download { "Excel" }
            }
        }
    }
}

/// A number as people read it: whole above 100, else up to two decimals; `—` for none.
pub fn number(value: Option<f64>) -> String {
    match value {
        None => "—".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => {
            let text = format!("{v:.2}");
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        }
    }
}

/// A rate as a percent, `—` for none.
pub fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "—".into(), |r| format!("{:.0}%", r * 100.0))
}

/// A number in a cell: shown rounded, with the exact value in `data-value` (what the tests and
/// the sorting script read).
pub fn num_cell(value: Option<f64>) -> Markup {
    html! {
        td.num data-value=[value.map(|v| v.to_string())] { (number(value)) }
    }
}

/// A status word with its colour class.
pub fn badge(lang: Lang, status: &str) -> Markup {
    html! { span class={ "badge s-" (status) } { (lang.word(status)) } }
}

pub fn page(ctx: &Ctx, title: &str, nav: Nav, json: &str, body: Markup) -> Markup {
    let links = [
        (Nav::Overview, "/", ctx.t("总览", "Overview")),
        (Nav::Tasks, "/tasks", ctx.t("重点任务", "Tasks")),
        (Nav::Alerts, "/alerts", ctx.t("督办记录", "Alerts and 督办")),
        (Nav::Units, "/units", ctx.t("报送情况", "Reporting")),
    ];
    html! {
        (DOCTYPE)
        html lang=(ctx.lang.html()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (ctx.plan.name) }
                link rel="stylesheet" href="/view/style.css";
            }
            body {
                a.skip href="#main" { (ctx.t("跳到正文", "Skip to content")) }
                header.top {
                    div.brand {
                        a href=(ctx.href("/")) { (ctx.plan.name) }
                    }
                    nav aria-label=(ctx.t("栏目", "Sections")) {
                        ul {
                            @for (which, path, label) in links {
                                li {
                                    a href=(ctx.href(path)) aria-current=[(which == nav).then_some("page")] { (label) }
                                }
                            }
                        }
                    }
                    div.tools {
                        form method="get" action=(ctx.path) {
                            @if ctx.lang == Lang::En { input type="hidden" name="lang" value="en"; }
                            label for="as_of" { (ctx.t("截至", "As of")) }
                            input #as_of type="date" name="as_of" value=(date_of_ms(ctx.as_of_ms, &ctx.plan.tz).to_string());
                            button type="submit" { (ctx.t("查看", "Show")) }
                        }
                        a.lang href=(ctx.switch_href()) lang=(ctx.lang.other().html()) hreflang=(ctx.lang.other().html()) {
                            (ctx.t("English", "中文"))
                        }
                        a.json href=(ctx.api(json)) { "JSON" }
                    }
                }
                main #main {
                    (body)
                }
                footer {
                    (ctx.plan.id) " · "
                    (ctx.t("数据截至", "Data as of")) " " (ctx.minute(ctx.as_of_ms))
                    @if ctx.as_of.is_some() { " (" (ctx.t("按当时已收到的数据", "as it was known then")) ")" }
                }
                script src="/view/sort.js" defer {}
            }
        }
    }
}

/// An inline SVG chart, already rendered.
pub fn svg(svg: String) -> Markup {
    PreEscaped(svg)
}

/// A page that says what was not found.
pub fn not_found(ctx: &Ctx, what: &str) -> Markup {
    page(
        ctx,
        ctx.t("未找到", "Not found"),
        Nav::None,
        "/api/v1/progress",
        html! {
            h1 { (ctx.t("未找到", "Not found")) }
            p { (what) }
            p { a href=(ctx.href("/")) { (ctx.t("返回总览", "Back to the overview")) } }
        },
    )
}
