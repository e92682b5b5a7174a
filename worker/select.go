package worker

import (
	"cmp"
	"slices"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// head is the oldest pending job of one queue (one queue key: model, load options, class
// and program).
type head struct {
	Token    string // queue key
	Seq      uint64
	Enqueued time.Time
	// Runner is the model runner the queue's jobs need (broker.QueueKey.Runner); "" means
	// Token. Jobs of one runner run without a reload.
	Runner string
	// Class is the queue's priority class; "" is normal.
	Class broker.Priority
}

func (h head) runner() string {
	if h.Runner == "" {
		return h.Token
	}
	return h.Runner
}

// choice is everything the selection depends on; plan is a pure function of it.
type choice struct {
	// Loaded lists the runners the target has loaded, most trusted first (from /api/ps
	// when it is fresher than our last job, else the runner we ran last). A job for any of
	// them costs no reload.
	Loaded []string
	// Current is the runner of the jobs run most recently, Consecutive how many in a row.
	Current     string
	Consecutive int
	// Heads has one entry per queue with pending jobs.
	Heads []head
	// Served is when each queue last had its turn (a count of the picks, 0 for never):
	// the queues of one runner and class take turns, the one served longest ago first.
	Served         map[string]uint64
	Now            time.Time
	MaxConsecutive int
	MaxWait        time.Duration
}

// plan orders the queues to fetch from; the caller takes the first that yields a job (a
// queue whose jobs all wait out a retry back-off yields none).
//
//  1. Classes: every high queue comes before every normal one, and normal before low,
//     except that a class holding a job older than MaxWait goes before the classes that
//     hold none: aging beats class, so low never starves.
//  2. Within a class, runners (model and load options) as before classes: the loaded
//     runners first (no swap), then every runner by the age of its oldest job. The
//     starvation bound overrides the loaded preference: once Current ran MaxConsecutive
//     jobs in a row while another runner waits in the class, or another runner's job of
//     the class has waited longer than MaxWait, the other runners go first by age, and
//     Current comes last (it still runs if they have nothing ready).
//  3. Within a runner and class, the programs' queues take turns: the one served longest
//     ago first, ties by the age of their oldest job. A program's own jobs stay in order.
//
// With one class and one program this is exactly the drain-by-model of ADR-0015.
func plan(c choice) []string {
	var classes [3][]head
	overdue := [3]bool{}
	for _, h := range c.Heads {
		r := h.Class.Rank()
		classes[r] = append(classes[r], h)
		if c.MaxWait > 0 && c.Now.Sub(h.Enqueued) > c.MaxWait {
			overdue[r] = true
		}
	}
	order := []int{0, 1, 2}
	slices.SortStableFunc(order, func(a, b int) int {
		if overdue[a] != overdue[b] {
			if overdue[a] {
				return -1
			}
			return 1
		}
		return 0
	})
	out := make([]string, 0, len(c.Heads))
	for _, r := range order {
		out = append(out, planClass(c, classes[r])...)
	}
	return out
}

// planClass orders the queues of one class.
func planClass(c choice, heads []head) []string {
	if len(heads) == 0 {
		return nil
	}
	// The queues of each runner, in turn order; a runner's age is its oldest job's.
	byRunner := map[string][]head{}
	oldest := map[string]head{}
	for _, h := range heads {
		r := h.runner()
		byRunner[r] = append(byRunner[r], h)
		if o, ok := oldest[r]; !ok || h.Seq < o.Seq {
			oldest[r] = h
		}
	}
	byAge := make([]head, 0, len(oldest))
	for _, h := range oldest {
		byAge = append(byAge, h)
	}
	slices.SortFunc(byAge, func(a, b head) int { return cmp.Compare(a.Seq, b.Seq) })

	runners := make([]string, 0, len(byAge))
	if mustSwitch(c, byAge) {
		for _, h := range byAge {
			if h.runner() != c.Current {
				runners = append(runners, h.runner())
			}
		}
		if _, ok := byRunner[c.Current]; ok {
			runners = append(runners, c.Current)
		}
	} else {
		seen := make(map[string]bool, len(byAge))
		for _, r := range c.Loaded {
			if _, ok := byRunner[r]; ok && !seen[r] {
				seen[r] = true
				runners = append(runners, r)
			}
		}
		for _, h := range byAge {
			if r := h.runner(); !seen[r] {
				seen[r] = true
				runners = append(runners, r)
			}
		}
	}
	out := make([]string, 0, len(heads))
	for _, r := range runners {
		qs := byRunner[r]
		slices.SortFunc(qs, func(a, b head) int {
			return cmp.Or(cmp.Compare(c.Served[a.Token], c.Served[b.Token]), cmp.Compare(a.Seq, b.Seq))
		})
		for _, h := range qs {
			out = append(out, h.Token)
		}
	}
	return out
}

// mustSwitch applies the starvation bound to the Current runner within one class; heads
// holds each runner's oldest job.
func mustSwitch(c choice, heads []head) bool {
	if c.Current == "" {
		return false
	}
	for _, h := range heads {
		if h.runner() == c.Current {
			continue
		}
		// Another runner waits.
		if c.MaxConsecutive > 0 && c.Consecutive >= c.MaxConsecutive {
			return true
		}
		if c.MaxWait > 0 && c.Now.Sub(h.Enqueued) > c.MaxWait {
			return true
		}
	}
	return false
}
