//! Which rate `find-max` tries next.
//!
//! It climbs by a factor (`--step`) until a step fails, then bisects the
//! gap between the highest good rate and the lowest failed one
//! (`--refine` times, geometrically): with the default 1.25 step the climb
//! alone leaves the headline up to 25 % under the real limit, so two
//! servers' ratio could be off by that much; two bisections bring it to
//! under 6 %.

/// Why the search is over.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Every climbing step was good (`--max-steps`).
    Steps(usize),
    /// The next climbing step would pass `--max-rate`.
    MaxRate(f64),
    /// A step failed, and the gap is bisected as far as asked (or cannot be:
    /// the first step failed, or the last failure left the run unusable).
    Failed,
}

#[derive(Debug, Clone)]
pub struct RateSearch {
    step: f64,
    max_rate: Option<f64>,
    max_steps: usize,
    climbs_left: usize,
    refines_left: usize,
    next_climb: f64,
    best_good: Option<f64>,
    lowest_failed: Option<f64>,
    /// Steps recorded so far, and how many of them bisected.
    steps: usize,
    refined: usize,
}

impl RateSearch {
    pub fn new(
        start: f64,
        step: f64,
        max_steps: usize,
        refine: usize,
        max_rate: Option<f64>,
    ) -> RateSearch {
        RateSearch {
            step,
            max_rate,
            max_steps,
            climbs_left: max_steps,
            refines_left: refine,
            next_climb: start,
            best_good: None,
            lowest_failed: None,
            steps: 0,
            refined: 0,
        }
    }

    /// The rate to try next, or why there is none.
    pub fn next(&self) -> Result<f64, Stop> {
        let Some(failed) = self.lowest_failed else {
            if self.climbs_left == 0 {
                return Err(Stop::Steps(self.max_steps));
            }
            return match self.max_rate {
                Some(max) if self.next_climb > max * (1.0 + 1e-9) => Err(Stop::MaxRate(max)),
                _ => Ok(self.next_climb),
            };
        };
        match self.best_good {
            Some(good) if self.refines_left > 0 => Ok((good * failed).sqrt()),
            _ => Err(Stop::Failed),
        }
    }

    /// Records the outcome of a step at `rate` (the one `next` gave).
    pub fn record(&mut self, rate: f64, good: bool) {
        self.steps += 1;
        if self.lowest_failed.is_none() {
            self.climbs_left = self.climbs_left.saturating_sub(1);
            self.next_climb = rate * self.step;
        } else {
            self.refines_left = self.refines_left.saturating_sub(1);
            self.refined += 1;
        }
        if good {
            self.best_good = Some(self.best_good.map_or(rate, |b| b.max(rate)));
        } else {
            self.lowest_failed = Some(self.lowest_failed.map_or(rate, |f| f.min(rate)));
        }
    }

    /// No more steps after a failure (e.g. one that lost connections or
    /// left messages in flight: later steps would measure its backlog).
    pub fn stop_refining(&mut self) {
        self.refines_left = 0;
    }

    /// Whether the next step bisects rather than climbs.
    pub fn refining(&self) -> bool {
        self.lowest_failed.is_some()
    }

    pub fn best_good(&self) -> Option<f64> {
        self.best_good
    }

    /// Steps recorded so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Recorded steps that bisected.
    pub fn refined(&self) -> usize {
        self.refined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a server whose limit is `limit` msg/s.
    fn run(search: RateSearch, limit: f64) -> (Vec<f64>, Stop) {
        let (tried, stop, _) = run_keeping(search, limit);
        (tried, stop)
    }

    fn run_keeping(mut search: RateSearch, limit: f64) -> (Vec<f64>, Stop, RateSearch) {
        let mut tried = Vec::new();
        loop {
            match search.next() {
                Ok(rate) => {
                    tried.push(rate);
                    search.record(rate, rate <= limit);
                }
                Err(stop) => return (tried, stop, search),
            }
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn climbs_then_bisects_the_gap_geometrically() {
        let (tried, stop) = run(RateSearch::new(1000.0, 2.0, 40, 2, None), 3000.0);
        // 1000, 2000 good; 4000 failed; then sqrt(2000 * 4000) = 2828 good,
        // sqrt(2828 * 4000) = 3364 failed.
        assert_eq!(tried.len(), 5, "{tried:?}");
        assert!(close(tried[2], 4000.0), "{tried:?}");
        assert!(close(tried[3], (2000.0f64 * 4000.0).sqrt()), "{tried:?}");
        assert!(close(tried[4], (tried[3] * 4000.0).sqrt()), "{tried:?}");
        assert_eq!(stop, Stop::Failed);
        let (_, _, search) = run_keeping(RateSearch::new(1000.0, 2.0, 40, 2, None), 3000.0);
        assert_eq!((search.steps(), search.refined()), (5, 2));
    }

    #[test]
    fn the_headline_is_the_highest_good_rate_after_refining() {
        let (tried, _, search) = run_keeping(RateSearch::new(1000.0, 2.0, 40, 3, None), 3000.0);
        let highest = tried
            .iter()
            .copied()
            .filter(|&r| r <= 3000.0)
            .fold(0.0, f64::max);
        let best = search.best_good().unwrap_or_default();
        // Three bisections of 2000..4000 land within 2^(1/8) of the limit.
        assert!(
            best > 3000.0 / 2f64.powf(0.125) && best <= 3000.0,
            "{best} from {tried:?}"
        );
        assert!(close(best, highest), "{best} vs {tried:?}");
    }

    #[test]
    fn no_refining_when_the_first_step_fails() {
        let (tried, stop) = run(RateSearch::new(1000.0, 1.25, 40, 2, None), 500.0);
        assert_eq!(tried, vec![1000.0]);
        assert_eq!(stop, Stop::Failed);
    }

    #[test]
    fn refine_zero_stops_at_the_first_failure() {
        let (tried, stop) = run(RateSearch::new(100.0, 2.0, 40, 0, None), 300.0);
        assert_eq!(tried, vec![100.0, 200.0, 400.0]);
        assert_eq!(stop, Stop::Failed);
    }

    #[test]
    fn step_and_rate_limits_end_the_climb() {
        let (tried, stop) = run(RateSearch::new(100.0, 2.0, 3, 2, None), 1e9);
        assert_eq!(tried, vec![100.0, 200.0, 400.0]);
        assert_eq!(stop, Stop::Steps(3));
        let (tried, stop) = run(RateSearch::new(100.0, 2.0, 40, 2, Some(400.0)), 1e9);
        assert_eq!(tried, vec![100.0, 200.0, 400.0]);
        assert_eq!(stop, Stop::MaxRate(400.0));
    }

    #[test]
    fn stop_refining_ends_the_search() {
        let mut search = RateSearch::new(100.0, 2.0, 40, 2, None);
        search.record(100.0, true);
        search.record(200.0, false);
        assert!(search.refining());
        assert!(search.next().is_ok());
        search.stop_refining();
        assert_eq!(search.next(), Err(Stop::Failed));
        assert_eq!(search.best_good(), Some(100.0));
    }
}
