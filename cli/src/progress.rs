//! `-p` progress lines, as QEMU's util/qemu-progress.c prints them:
//! `    (12.34/100%)\r` on stdout whenever at least `min_skip` percent
//! passed (and always at 0 and 100), a newline at the end.

use crate::app::out;
use crate::copy_steps::Step;

pub struct Progress {
    enabled: bool,
    current: f32,
    last_print: f32,
    min_skip: f32,
    /// qemu-img's own steps for the running copy, and the next to report.
    steps: Vec<Step>,
    next_step: usize,
}

impl Progress {
    /// qemu_progress_init + the first qemu_progress_print(0, 100).
    pub fn start(enabled: bool, min_skip: f32) -> Self {
        let mut p = Progress {
            enabled,
            current: 0.0,
            last_print: 0.0,
            min_skip,
            steps: Vec::new(),
            next_step: 0,
        };
        p.set(0.0);
        p
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Report the copy in qemu-img's steps instead of plain percentages.
    pub fn use_steps(&mut self, steps: Vec<Step>) {
        self.steps = steps;
        self.next_step = 0;
    }

    /// The copy has reached guest offset `pos`: report the steps of the
    /// chunks started before it.
    pub fn reached(&mut self, pos: u64) {
        while let Some(&(start, pct)) = self.steps.get(self.next_step) {
            if start >= pos {
                break;
            }
            self.next_step += 1;
            self.set(pct);
        }
    }

    /// The copy finished: remaining steps, then 100%.
    pub fn complete(&mut self) {
        self.reached(u64::MAX);
        self.set(100.0);
    }

    /// Report an absolute percentage (qemu_progress_print(pct, 0)).
    pub fn set(&mut self, pct: f32) {
        let current = pct.min(100.0);
        self.current = current;
        if current > self.last_print + self.min_skip
            || current < self.last_print - self.min_skip
            || current == 100.0
            || current == 0.0
        {
            self.last_print = current;
            if self.enabled {
                out(&line(current));
            }
        }
    }

    /// qemu_progress_end.
    pub fn end(&self) {
        if self.enabled {
            out("\n");
        }
    }
}

fn line(pct: f32) -> String {
    format!("    ({pct:.2}/100%)\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shape() {
        // From `qemu-img convert -p` output.
        assert_eq!(line(0.0), "    (0.00/100%)\r");
        assert_eq!(line(97.37), "    (97.37/100%)\r");
        assert_eq!(line(100.0), "    (100.00/100%)\r");
    }
}
