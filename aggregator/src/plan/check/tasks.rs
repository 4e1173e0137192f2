//! Checking tasks, their milestones and parties, and the tracks that group them.

use super::*;

impl Checker<'_> {
    pub(super) fn tasks(
        &mut self,
        raw: &[Spanned<RawTask>],
        parties: &HashSet<String>,
        track_ids: &HashSet<String>,
        default_tolerance: f64,
    ) -> Vec<Task> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in raw {
            let t = entry.get_ref();
            let key = format!("task {:?}", t.id.get_ref());
            self.check_id(&t.id, &format!("{key}.id"));
            self.unique(&mut seen, &t.id, &format!("{key}.id"), "task");
            let lead_units = self.references(&t.lead_units, &format!("{key}.lead_units"), parties);
            let responsible_units = self.references(
                &t.responsible_units,
                &format!("{key}.responsible_units"),
                parties,
            );
            if lead_units.is_empty() && responsible_units.is_empty() {
                self.error(
                    t.id.span(),
                    format!("{key}.lead_units"),
                    "a task needs at least one lead or responsible unit",
                );
            }
            if let Some(track) = &t.track
                && !track_ids.contains(track.get_ref())
            {
                self.error(
                    track.span(),
                    format!("{key}.track"),
                    format!("track {:?} is not defined", track.get_ref()),
                );
            }
            if t.milestone.is_empty() {
                self.error(
                    t.id.span(),
                    format!("{key}.milestone"),
                    "a task needs at least one [[task.milestone]] with a window",
                );
            }
            let mut milestone_ids = HashSet::new();
            let mut milestones = Vec::new();
            for m in &t.milestone {
                let m = m.get_ref();
                let mkey = format!("{key}.milestone {:?}", m.id.get_ref());
                self.check_id(&m.id, &format!("{mkey}.id"));
                self.unique(
                    &mut milestone_ids,
                    &m.id,
                    &format!("{mkey}.id"),
                    "milestone",
                );
                let tolerance = self.fraction(
                    &m.tolerance,
                    &format!("{mkey}.tolerance"),
                    default_tolerance,
                );
                if m.from_phase.is_some() && t.track.is_none() {
                    self.error(
                        m.id.span(),
                        format!("{mkey}.from_phase"),
                        "from_phase names a phase of the task's track, and the task has no track",
                    );
                }
                if let Some(window) = self.window(&m.start, &m.end, &mkey) {
                    milestones.push(Milestone {
                        id: m.id.get_ref().clone(),
                        name: m.name.clone(),
                        window,
                        tolerance,
                        from_phase: m.from_phase.as_ref().map(|p| p.get_ref().clone()),
                        lead_units: Vec::new(),
                    });
                }
            }
            out.push(Task {
                id: t.id.get_ref().clone(),
                section: t.section.clone(),
                title: t.title.clone(),
                lead_units,
                responsible_units,
                by_division_of_duties: t.by_division_of_duties,
                track: t.track.as_ref().map(|x| x.get_ref().clone()),
                text: t.text.clone(),
                milestones,
            });
        }
        out
    }

    pub(super) fn tracks(
        &mut self,
        raw: &[Spanned<RawTrack>],
        indicator_ids: &HashSet<String>,
        parties: &HashSet<String>,
    ) -> Vec<Track> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for entry in raw {
            let t = entry.get_ref();
            let key = format!("track {:?}", t.id.get_ref());
            self.check_id(&t.id, &format!("{key}.id"));
            self.unique(&mut seen, &t.id, &format!("{key}.id"), "track");
            let mut phase_ids = HashSet::new();
            let mut phases: Vec<(TrackPhase, Range<usize>)> = Vec::new();
            for p in &t.phase {
                let span = p.span();
                let p = p.get_ref();
                let pkey = format!("{key}.phase {:?}", p.id.get_ref());
                self.check_id(&p.id, &format!("{pkey}.id"));
                self.unique(&mut phase_ids, &p.id, &format!("{pkey}.id"), "track phase");
                let start = p
                    .start
                    .as_ref()
                    .and_then(|s| self.date(s, &format!("{pkey}.start"), MonthEnd::First));
                let Some(end) = self.date(&p.end, &format!("{pkey}.end"), MonthEnd::Last) else {
                    continue;
                };
                if start.is_some_and(|s| end < s) {
                    self.error(
                        p.end.span(),
                        format!("{pkey}.end"),
                        format!("ends ({}) before it starts", p.end.get_ref()),
                    );
                    continue;
                }
                let goals = p
                    .goals
                    .iter()
                    .enumerate()
                    .filter_map(|(n, g)| {
                        self.goal(
                            g.get_ref(),
                            &format!("{pkey}.goals[{n}]"),
                            g.span(),
                            indicator_ids,
                        )
                    })
                    .collect();
                let lead_units =
                    self.references(&p.lead_units, &format!("{pkey}.lead_units"), parties);
                let partner_units =
                    self.references(&p.partner_units, &format!("{pkey}.partner_units"), parties);
                phases.push((
                    TrackPhase {
                        id: p.id.get_ref().clone(),
                        name: p.name.clone(),
                        start,
                        end,
                        text: p.text.clone(),
                        lead_units,
                        partner_units,
                        goals,
                    },
                    span,
                ));
            }
            for i in 0..phases.len() {
                for j in i + 1..phases.len() {
                    let (a, b) = (&phases[i].0, &phases[j].0);
                    let overlap =
                        a.start.is_none_or(|s| s <= b.end) && b.start.is_none_or(|s| s <= a.end);
                    if overlap {
                        let window = |p: &TrackPhase| {
                            format!(
                                "{}..{}",
                                p.start
                                    .map(|d| d.to_string())
                                    .unwrap_or_else(|| "(no start)".into()),
                                p.end
                            )
                        };
                        let message = format!(
                            "{} ({}) overlaps phase {:?} {} ({}); kept as the document states it",
                            b.name,
                            window(b),
                            a.id,
                            a.name,
                            window(a)
                        );
                        self.warn(
                            phases[j].1.clone(),
                            format!("{key} ({}) phase {:?}", t.section, b.id),
                            message,
                        );
                    }
                }
            }
            let lead_units = self.references(&t.lead_units, &format!("{key}.lead_units"), parties);
            let partner_units =
                self.references(&t.partner_units, &format!("{key}.partner_units"), parties);
            out.push(Track {
                id: t.id.get_ref().clone(),
                section: t.section.clone(),
                title: t.title.clone(),
                lead_units,
                partner_units,
                phases: phases.into_iter().map(|(p, _)| p).collect(),
            });
        }
        out
    }

    /// Gives each milestone taken from a track phase (`from_phase`) that phase's lead units,
    /// or the track's where the phase names none; a phase that does not exist is an error.
    pub(super) fn milestone_leads(
        &mut self,
        tasks: &mut [Task],
        tracks: &[Track],
        raw: &[Spanned<RawTask>],
    ) {
        for task in tasks {
            let Some(track) = task
                .track
                .as_ref()
                .and_then(|id| tracks.iter().find(|t| &t.id == id))
            else {
                continue;
            };
            for m in &mut task.milestones {
                let Some(phase_id) = &m.from_phase else {
                    continue;
                };
                match track.phases.iter().find(|p| &p.id == phase_id) {
                    Some(phase) if !phase.lead_units.is_empty() => {
                        m.lead_units = phase.lead_units.clone()
                    }
                    Some(_) => m.lead_units = track.lead_units.clone(),
                    None => {
                        // Point at the `from_phase` as written.
                        let span = raw
                            .iter()
                            .map(|t| t.get_ref())
                            .find(|t| t.id.get_ref() == &task.id)
                            .and_then(|t| {
                                t.milestone
                                    .iter()
                                    .find(|x| x.get_ref().id.get_ref() == &m.id)
                            })
                            .and_then(|x| x.get_ref().from_phase.as_ref())
                            .map_or(0..0, |p| p.span());
                        self.error(
                            span,
                            format!("task {:?}.milestone {:?}.from_phase", task.id, m.id),
                            format!("track {:?} has no phase {phase_id:?}", track.id),
                        )
                    }
                }
            }
        }
    }

    pub(super) fn goal(
        &mut self,
        g: &RawGoal,
        key: &str,
        span: Range<usize>,
        indicator_ids: &HashSet<String>,
    ) -> Option<Goal> {
        if let Some(id) = &g.indicator
            && !indicator_ids.contains(id.get_ref())
        {
            self.error(
                id.span(),
                format!("{key}.indicator"),
                format!("indicator {:?} is not defined", id.get_ref()),
            );
        }
        let target = self.finite(&Some(g.target.clone()), &format!("{key}.target"))?;
        let target_max = self.finite(&g.target_max, &format!("{key}.target_max"));
        self.range_bound(
            g.comparator,
            target,
            target_max,
            g.target_max.as_ref(),
            span,
            key,
        );
        Some(Goal {
            indicator: g.indicator.as_ref().map(|i| i.get_ref().clone()),
            comparator: g.comparator,
            target,
            target_max,
            text: g.text.clone(),
        })
    }
}
