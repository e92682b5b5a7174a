package worker

import (
	"slices"
	"testing"
	"time"
)

func TestPlan(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	a := func(seq uint64, age time.Duration) head { return head{Token: "a", Seq: seq, Enqueued: ago(age)} }
	b := func(seq uint64, age time.Duration) head { return head{Token: "b", Seq: seq, Enqueued: ago(age)} }
	c := func(seq uint64, age time.Duration) head { return head{Token: "c", Seq: seq, Enqueued: ago(age)} }
	tests := []struct {
		name string
		in   choice
		want []string
	}{
		{"empty queue", choice{}, []string{}},
		{"nothing loaded: oldest first", choice{Heads: []head{b(5, 1), a(3, 2), c(9, 0)}}, []string{"a", "b", "c"}},
		{"loaded model first", choice{Loaded: []string{"c"}, Heads: []head{b(5, 1), a(3, 2), c(9, 0)}}, []string{"c", "a", "b"}},
		{"loaded model without jobs is skipped", choice{Loaded: []string{"x"}, Heads: []head{b(5, 1), a(3, 2)}}, []string{"a", "b"}},
		{"several loaded, in order", choice{Loaded: []string{"c", "b"}, Heads: []head{b(5, 1), a(3, 2), c(9, 0)}}, []string{"c", "b", "a"}},
		{"drain current below the cap", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 7, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{b(1, 30*time.Second), a(2, 10*time.Second)}}, []string{"a", "b"}},
		{"cap reached while others wait: switch", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 8, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{c(4, 0), b(3, 0), a(2, 0)}}, []string{"b", "c", "a"}},
		{"cap reached, nobody else waits: keep going", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 20, MaxConsecutive: 8,
			Heads: []head{a(2, 0)}}, []string{"a"}},
		{"another model waited too long: switch", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{a(1, 5*time.Minute), b(3, 61*time.Second), c(2, 30*time.Second)}}, []string{"c", "b", "a"}},
		{"exactly MaxWait is not too long", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{a(9, 0), b(3, time.Minute)}}, []string{"a", "b"}},
		{"current's own old job does not force a switch", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{a(1, time.Hour), b(3, time.Second)}}, []string{"a", "b"}},
		{"loaded differs from current (ps is fresher)", choice{Loaded: []string{"b"}, Current: "a", Consecutive: 3, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{a(1, 0), b(3, 0)}}, []string{"b", "a"}},
		{"forced switch ignores the loaded preference", choice{Loaded: []string{"a", "c"}, Current: "a", Consecutive: 2, MaxConsecutive: 2, MaxWait: time.Minute,
			Heads: []head{a(1, 0), b(3, 0), c(5, 0)}}, []string{"b", "c", "a"}},
		// Only another runner's late job breaks the drain: with Current's own job late, the
		// loaded runners still go first, in their order, not every runner by age.
		{"current's own old job keeps the loaded order", choice{Loaded: []string{"a", "c"}, Current: "a", Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{a(1, time.Hour), b(3, 0), c(5, 0)}}, []string{"a", "c", "b"}},
		// Loaded is most trusted first: a runner listed again further down keeps its first place.
		{"a runner listed twice keeps its first place", choice{Loaded: []string{"b", "a", "b"}, Heads: []head{a(3, 0), b(5, 0)}}, []string{"b", "a"}},
		// Before this process's first job there is no streak to break (ADR-0027, amended):
		// the loaded runner goes first even past another runner's late normal job.
		{"before the first job a late job does not break the loaded order", choice{Loaded: []string{"a"}, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{b(1, time.Hour), a(3, 0)}}, []string{"a", "b"}},
		// Another Mac runs b (ADR-0027, amended 2026-12-06): the cap yields only to c,
		// which nobody runs, and with no c, not at all; b's late job still breaks the drain.
		{"the cap does not yield to a runner another Mac runs", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 8, MaxConsecutive: 8, MaxWait: time.Minute,
			RunElsewhere: map[string]bool{"b": true}, Heads: []head{a(5, 0), b(3, 0)}}, []string{"a", "b"}},
		{"the cap yields to one nobody runs", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 8, MaxConsecutive: 8, MaxWait: time.Minute,
			RunElsewhere: map[string]bool{"b": true}, Heads: []head{a(5, 0), b(3, 0), c(4, 0)}}, []string{"b", "c", "a"}},
		{"a late job of a runner another Mac runs breaks the drain", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Minute,
			RunElsewhere: map[string]bool{"b": true}, Heads: []head{a(5, 0), b(3, 2*time.Minute)}}, []string{"b", "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.Now = now
			got := plan(tt.in)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("plan = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	c := Config{RetryDelay: time.Second}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 10: time.Minute, 100: time.Minute} {
		if got := c.retryDelay(n); got != want {
			t.Errorf("retryDelay(%d) = %v, want %v", n, got, want)
		}
	}
}

// The wait after the target's "not now" doubles with each such answer in a row, to at
// most 30 s, and starts again from RetryDelay once the target answers otherwise.
func TestBusyWait(t *testing.T) {
	t.Parallel()
	w := &Worker{cfg: Config{RetryDelay: time.Second}}
	if got := w.busyWait(); got != time.Second {
		t.Errorf("before any busy answer: %v, want 1s", got)
	}
	var got []time.Duration
	for range 7 {
		w.countBusy(true)
		got = append(got, w.busyWait())
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	if !slices.Equal(got, want) {
		t.Errorf("busy answers in a row: waits %v, want %v", got, want)
	}
	w.countBusy(false)
	w.countBusy(true)
	if got := w.busyWait(); got != time.Second {
		t.Errorf("a busy answer after another answer: %v, want 1s", got)
	}
}
