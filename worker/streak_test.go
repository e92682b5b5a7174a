package worker

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Another runner's job is passed over only from the later of its stamp and the start of
// the current streak (choice.StreakStart): a job older than the streak does not break it
// until the streak itself is MaxWait old; a job younger than the streak breaks it once it
// waited MaxWait, as before.
func TestPlanCountsAPassedOverJobFromTheStreaksStart(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	a := func(seq uint64, age time.Duration) head { return head{Token: "a", Seq: seq, Enqueued: ago(age)} }
	b := func(seq uint64, age time.Duration) head { return head{Token: "b", Seq: seq, Enqueued: ago(age)} }
	streak := func(began time.Duration, heads ...head) choice {
		return choice{Loaded: []string{"a"}, Current: "a", Consecutive: 2, StreakStart: ago(began), MaxConsecutive: 8, MaxWait: time.Minute, Now: now, Heads: heads}
	}
	tests := []struct {
		name string
		in   choice
		want []string
	}{
		{"an old job of another runner, a young streak: drain", streak(30*time.Second, a(2, time.Hour), b(1, time.Hour)), []string{"a", "b"}},
		{"an old job, the streak just MaxWait old: drain", streak(time.Minute, a(2, time.Hour), b(1, time.Hour)), []string{"a", "b"}},
		{"an old job, the streak past MaxWait: switch", streak(61*time.Second, a(2, time.Hour), b(1, time.Hour)), []string{"b", "a"}},
		{"a job younger than the streak, past MaxWait: switch", streak(time.Hour, a(1, time.Hour), b(2, 61*time.Second)), []string{"b", "a"}},
		{"a job younger than the streak, not past MaxWait: drain", streak(time.Hour, a(1, time.Hour), b(2, 59*time.Second)), []string{"a", "b"}},
		// Zero is a streak begun long ago: the job's own age counts (as before the start
		// was kept).
		{"no streak start: the job's age", streak(0, a(2, time.Hour), b(1, 61*time.Second)), []string{"b", "a"}},
		// A start after now is the server's clock stepped back since the pick: the job's
		// own age counts, or the streak would hold for the step's length.
		{"a streak start after now: the job's age", streak(-time.Hour, a(2, time.Hour), b(1, 61*time.Second)), []string{"b", "a"}},
		{"a streak start after now, a young job: drain", streak(-time.Hour, a(2, time.Hour), b(1, 59*time.Second)), []string{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.in.StreakStart.Equal(now) { // streak(0, ...)
				tt.in.StreakStart = time.Time{}
			}
			if got := plan(tt.in); !slices.Equal(got, tt.want) {
				t.Fatalf("plan = %v, want %v", got, tt.want)
			}
		})
	}
}

// backlog is n jobs over the given models, interleaved (job i of models[i%len]), all
// queued by the hour before now, one default queue per model.
func backlog(t *testing.T, now time.Time, n int, models ...string) []broker.QueuedMessage {
	t.Helper()
	var msgs []broker.QueuedMessage
	for i := range n {
		m := models[i%len(models)]
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, m, "", ""), Seq: uint64(i + 1), JobID: fmt.Sprint(i), Model: m,
			Enqueued: now.Add(-time.Hour + time.Duration(i)*time.Millisecond)})
	}
	return msgs
}

// swaps counts the runner changes of an order (the first job's included when it is not
// current's).
func swaps(t *testing.T, out []planned, current string) int {
	t.Helper()
	n := 0
	for _, p := range out {
		if r := runnerOf(p.Msg.Token); r != current {
			n++
			current = r
		}
	}
	return n
}

// An old backlog (every job queued long before MaxWait) drains in streaks: the current
// runner until the cap, then the runner with the oldest job, and so on. Counting a job's
// whole age, every pick found another runner's job past MaxWait and broke the streak: a
// backlog of two models swapped at every job, as Ollama alone would.
func TestOrderDrainsAnOldBacklogInStreaks(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		models []string
		n      int
		run    time.Duration
	}{
		{"two models, 100 jobs of 2 s", []string{"m0", "m1"}, 100, 2 * time.Second},
		{"eight models, 800 jobs of 2 s", []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"}, 800, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msgs := backlog(t, now, tc.n, tc.models...)
			cost := fixedCosts{}
			for _, m := range tc.models {
				cost[m] = [2]time.Duration{tc.run, time.Second}
			}
			cur := runnerKey(t, tc.models[0])
			// The streak began with the pick of the job that just ended.
			c := choice{Loaded: []string{cur}, Current: cur, Consecutive: 1, StreakStart: now.Add(-tc.run), MaxConsecutive: 8, MaxWait: 2 * time.Minute}
			out := order(c, 1, msgs, now, cost, nil)
			if len(out) != tc.n {
				t.Fatalf("%d jobs ordered, want %d", len(out), tc.n)
			}
			// Current runs 7 more to its cap, then each runner 8 in a row, but for the last,
			// shorter streak of each: about one swap per MaxConsecutive jobs.
			if got, want := swaps(t, out, cur), tc.n/8+len(tc.models)+1; got > want {
				t.Errorf("%d swaps over %d jobs, want at most %d (one per MaxConsecutive jobs)", got, tc.n, want)
			}
			// Each streak is of one runner; the next is the runner, besides the one that
			// yields, with the oldest job then.
			waiting := slices.Clone(msgs)
			prev := cur
			for i, p := range out {
				if r := runnerOf(p.Msg.Token); r != prev {
					j := slices.IndexFunc(waiting, func(m broker.QueuedMessage) bool { return runnerOf(m.Token) != prev })
					if oldest := waiting[j]; runnerOf(oldest.Token) != r {
						t.Fatalf("#%d: swapped to %s, want the runner of the oldest job (%s)", i, p.Msg.Model, oldest.Model)
					}
					prev = r
				}
				waiting = slices.DeleteFunc(waiting, func(m broker.QueuedMessage) bool { return m.Seq == p.Msg.Seq })
			}
		})
	}
}

// With jobs that run long, the streak yields once it ran MaxWait (a job of another runner
// that waited from before it began is passed over from its start): streaks of MaxWait, not
// one swap per job.
func TestOrderDrainsAnOldBacklogOfLongJobsInStreaksOfMaxWait(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	msgs := backlog(t, now, 40, "m0", "m1")
	cost := fixedCosts{"m0": {time.Minute, 0}, "m1": {time.Minute, 0}}
	cur := runnerKey(t, "m0")
	c := choice{Loaded: []string{cur}, Current: cur, Consecutive: 1, StreakStart: now.Add(-time.Minute), MaxConsecutive: 8, MaxWait: 2 * time.Minute}
	var runs []string
	for _, p := range order(c, 1, msgs, now, cost, nil) {
		if len(runs) == 0 || runs[len(runs)-1][:2] != p.Msg.Model {
			runs = append(runs, p.Msg.Model)
		}
		runs[len(runs)-1] += "."
	}
	// The current streak began a minute ago: two more picks (at 0 and 1 min) before it is
	// past 2 minutes; then each runner three in a row (picked at 0, 1 and 2 minutes into
	// its streak; at 3 minutes it is past MaxWait), until m0 runs out and m1 ends alone.
	want := []string{"m0.."}
	for range 6 {
		want = append(want, "m1...", "m0...")
	}
	want = append(want, "m1..")
	if !slices.Equal(runs, want) {
		t.Fatalf("streaks %v, want %v", runs, want)
	}
}

// The bound still holds: a job of another runner queued during a long streak goes first
// once it waited MaxWait, wherever the streak began; and one queued before the streak
// began waits MaxWait from the streak's start, not at once.
func TestOrderPassesAJobOverForAtMostMaxWait(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name        string
		bQueued     time.Time
		streakStart time.Time
	}{
		{"queued during a streak begun long ago", now, now.Add(-10 * time.Minute)},
		{"queued long before a streak begun now", now.Add(-10 * time.Minute), now},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msgs := []broker.QueuedMessage{{Token: queueKey(t, "tiny-b", "", ""), Seq: 1, Enqueued: tc.bQueued, JobID: "b", Model: "tiny-b"}}
			for i := range 5 {
				msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, "tiny-a", "", ""), Seq: uint64(i + 2), Enqueued: now.Add(-20 * time.Minute),
					JobID: fmt.Sprint("a", i), Model: "tiny-a"})
			}
			a := runnerKey(t, "tiny-a")
			c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, StreakStart: tc.streakStart, MaxConsecutive: 100, MaxWait: 25 * time.Second}
			cost := fixedCosts{"tiny-a": {10 * time.Second, 0}, "tiny-b": {10 * time.Second, 0}}
			var ids []string
			for _, p := range order(c, 1, msgs, now, cost, nil) {
				ids = append(ids, p.Msg.JobID)
			}
			// a0 starts at 0s, a1 at 10s, a2 at 20s; at 30s b was passed over for 30s > 25s.
			if got, want := fmt.Sprint(ids), "[a0 a1 a2 b a3 a4]"; got != want {
				t.Fatalf("order %s, want %s", got, want)
			}
		})
	}
}

// The worker keeps the start of the current runner's streak: the time (on the server's
// clock) of the pick that made it current, kept while the same runner runs on.
func TestBeginKeepsTheStreaksStart(t *testing.T) {
	t.Parallel()
	clock := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	w := &Worker{cfg: Config{serverNow: func() time.Time { return clock }, learnedMax: 8}, served: map[string]uint64{}, runnerOpts: map[string]string{}}
	a, b := queueKey(t, "tiny-a", "", ""), queueKey(t, "tiny-b", "", "")
	run := func(token string) {
		w.took(token)
		w.begin(token, true, func(error) {})
		w.end()
		clock = clock.Add(time.Minute)
	}
	run(a)
	start := w.streakAt
	if want := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC); !start.Equal(want) {
		t.Fatalf("streak of a began %v, want its first pick's %v", start, want)
	}
	run(a)
	run(a)
	if c := w.choiceLocked(nil, clock); !c.StreakStart.Equal(start) || c.Consecutive != 3 {
		t.Fatalf("after three of a: streak began %v, %d in a row; want %v, 3", c.StreakStart, c.Consecutive, start)
	}
	run(b)
	if want := start.Add(3 * time.Minute); !w.streakAt.Equal(want) {
		t.Fatalf("streak of b began %v, want its pick's %v", w.streakAt, want)
	}
}

// A runner made current without a swap (another model resident on the target) goes on
// with the streak's start before it: a job of a runner not loaded, passed over while the
// resident runners drain one after the other, goes first once it waited MaxWait since
// that start. Before, each change of runner began the time afresh, and the job waited on.
func TestOrderKeepsTheStreaksStartAcrossResidentRunners(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	x, y := runnerKey(t, "tiny-x"), runnerKey(t, "tiny-y")
	msgs := []broker.QueuedMessage{
		{Token: queueKey(t, "tiny-c", "", ""), Seq: 1, Enqueued: now, JobID: "c", Model: "tiny-c"},
		{Token: queueKey(t, "tiny-x", "", ""), Seq: 2, Enqueued: now, JobID: "x0", Model: "tiny-x"},
	}
	for i := range 6 {
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, "tiny-y", "", ""), Seq: uint64(i + 3), Enqueued: now,
			JobID: fmt.Sprint("y", i), Model: "tiny-y"})
	}
	c := choice{Loaded: []string{x, y}, Current: x, Consecutive: 1, StreakStart: now.Add(-time.Hour), MaxConsecutive: 100, MaxWait: 25 * time.Second}
	cost := fixedCosts{"tiny-x": {10 * time.Second, 0}, "tiny-y": {10 * time.Second, 0}, "tiny-c": {10 * time.Second, 0}}
	var ids []string
	for _, p := range order(c, 1, msgs, now, cost, nil) {
		ids = append(ids, p.Msg.JobID)
	}
	// x0 at 0s, y0 at 10s (resident: no swap, the start stays), y1 at 20s; at 30s c was
	// passed over for 30s > 25s. Counted from y's first pick it would wait until 40s.
	if got, want := fmt.Sprint(ids), "[x0 y0 y1 c y2 y3 y4 y5]"; got != want {
		t.Fatalf("order %s, want %s", got, want)
	}
}

// The worker starts a streak's time only at a swap: a runner it goes on to that the
// target held already keeps the start; a fresh worker's first pick of a resident runner
// has none (a streak begun long ago).
func TestBeginStartsTheStreaksTimeAtASwap(t *testing.T) {
	t.Parallel()
	clock := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	w := &Worker{cfg: Config{serverNow: func() time.Time { return clock }, learnedMax: 8}, served: map[string]uint64{}, runnerOpts: map[string]string{}}
	a, b, c := queueKey(t, "tiny-a", "", ""), queueKey(t, "tiny-b", "", ""), queueKey(t, "tiny-c", "", "")
	run := func(token string, loads bool) {
		w.took(token)
		w.begin(token, loads, func(error) {})
		w.end()
		clock = clock.Add(time.Minute)
	}
	run(a, false)
	if !w.streakAt.IsZero() {
		t.Fatalf("a fresh worker's first pick, of a resident runner, began the streak's time at %v; want none", w.streakAt)
	}
	run(c, true)
	start := w.streakAt
	if want := time.Date(2026, 1, 1, 12, 1, 0, 0, time.UTC); !start.Equal(want) {
		t.Fatalf("the swap to c began the streak at %v, want its pick's %v", start, want)
	}
	run(a, false)
	run(b, false)
	if !w.streakAt.Equal(start) || w.current != runnerOf(b) || w.consec != 1 {
		t.Fatalf("after resident a and b: streak of %s (%d in a row) began %v, want b (1) from %v", w.current, w.consec, w.streakAt, start)
	}
}
