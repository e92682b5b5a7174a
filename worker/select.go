package worker

import (
	"slices"
	"time"
)

// head is the oldest pending job of one model's queue.
type head struct {
	Token    string
	Seq      uint64
	Enqueued time.Time
}

// choice is everything the selection depends on; plan is a pure function of it. A later
// priority dimension fits here as a field of head (and a first sort key), not as I/O.
type choice struct {
	// Loaded lists the model tokens the target has loaded, most trusted first (from
	// /api/ps when it is fresher than our last job, else the model we ran last).
	Loaded []string
	// Current is the model of the jobs run most recently, Consecutive how many in a row.
	Current     string
	Consecutive int
	// Heads has one entry per model with pending jobs.
	Heads          []head
	Now            time.Time
	MaxConsecutive int
	MaxWait        time.Duration
}

// plan orders the models to fetch from; the caller takes the first that yields a job (a
// model whose jobs all wait out a retry back-off yields none).
//
//  1. Normally the loaded models come first (no swap), then every model by the age of its
//     oldest job: the oldest pending job of the whole queue, and so on.
//  2. The starvation bound overrides the loaded preference: once Current ran
//     MaxConsecutive jobs in a row while another model waits, or another model's oldest
//     job has waited longer than MaxWait, the other models go first by age, and Current
//     comes last (it still runs if they have nothing ready).
func plan(c choice) []string {
	byAge := slices.Clone(c.Heads)
	slices.SortFunc(byAge, func(a, b head) int {
		if a.Seq < b.Seq {
			return -1
		}
		if a.Seq > b.Seq {
			return 1
		}
		return 0
	})
	pending := make(map[string]bool, len(byAge))
	for _, h := range byAge {
		pending[h.Token] = true
	}
	out := make([]string, 0, len(byAge))
	if mustSwitch(c, byAge) {
		for _, h := range byAge {
			if h.Token != c.Current {
				out = append(out, h.Token)
			}
		}
		if pending[c.Current] {
			out = append(out, c.Current)
		}
		return out
	}
	seen := make(map[string]bool, len(byAge))
	for _, t := range c.Loaded {
		if pending[t] && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	for _, h := range byAge {
		if !seen[h.Token] {
			seen[h.Token] = true
			out = append(out, h.Token)
		}
	}
	return out
}

// mustSwitch applies the starvation bound to the Current model.
func mustSwitch(c choice, heads []head) bool {
	if c.Current == "" {
		return false
	}
	for _, h := range heads {
		if h.Token == c.Current {
			continue
		}
		// Another model waits.
		if c.MaxConsecutive > 0 && c.Consecutive >= c.MaxConsecutive {
			return true
		}
		if c.MaxWait > 0 && c.Now.Sub(h.Enqueued) > c.MaxWait {
			return true
		}
	}
	return false
}
