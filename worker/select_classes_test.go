package worker

import (
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

func TestPlanClassesAndTurns(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	// q is a queue: token, runner, class, oldest job's seq and age.
	q := func(token, runner string, class broker.Priority, seq uint64, age time.Duration) head {
		return head{Token: token, Runner: runner, Class: class, Seq: seq, Enqueued: now.Add(-age)}
	}
	const hi, lo = broker.PriorityHigh, broker.PriorityLow
	// picked is ClassPicked with class's last pick ago.
	picked := func(class broker.Priority, ago time.Duration) (p [3]time.Time) {
		p[class.Rank()] = now.Add(-ago)
		return p
	}
	tests := []struct {
		name string
		in   choice
		want []string
	}{
		{"high before the loaded model's normal backlog", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 3, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{q("a", "a", "", 1, 0), q("b-hi", "b", hi, 5, 0)}}, []string{"b-hi", "a"}},
		{"low after normal, whatever is loaded", choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute,
			Heads: []head{q("a-lo", "a", lo, 1, 0), q("b", "b", "", 5, 0)}}, []string{"b", "a-lo"}},
		{"within high: loaded first, then by age", choice{Loaded: []string{"c"}, Current: "c", MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 1, 0), q("c-hi", "c", hi, 5, 0), q("b-hi", "b", hi, 3, 0), q("c", "c", "", 0, 0)}},
			[]string{"c-hi", "a-hi", "b-hi", "c"}},
		{"the consecutive cap applies within a class", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 8, CurrentClass: hi, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 1, 0), q("b-hi", "b", hi, 3, 0), q("c", "c", "", 0, 0)}}, []string{"b-hi", "a-hi", "c"}},
		{"a streak of another class is no streak here", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 8, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 3, 0), q("b-hi", "b", hi, 1, 0), q("c", "c", "", 0, 0)}}, []string{"a-hi", "b-hi", "c"}},
		{"a late job of Current in an aged class goes by age, not last", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 30, CurrentClass: hi,
			MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 50, 0), q("a-lo", "a", lo, 1, 20*time.Minute), q("b-lo", "b", lo, 40, 2*time.Minute)}},
			[]string{"a-lo", "b-lo", "a-hi"}},
		{"the cap does not let another class's job jump", choice{Loaded: []string{"a"}, Current: "a", Consecutive: 8, MaxConsecutive: 8, MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 1, 0), q("b", "b", "", 0, 0)}}, []string{"a-hi", "b"}},
		{"a low job past MaxWait goes before high", choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 9, 0), q("b-lo", "b", lo, 1, 2*time.Minute), q("c", "c", "", 5, 0)}}, []string{"b-lo", "a-hi", "c"}},
		// The class had its aged pick within MaxWait, so it no longer goes before normal;
		// within it, a job past MaxWait still sends its runners by age alone.
		{"a late job sends its class by age even after the class's aged pick", choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute,
			ClassPicked: picked(hi, 30*time.Second),
			Heads:       []head{q("a-hi", "a", hi, 5, 0), q("b-hi", "b", hi, 1, 2*time.Minute), q("c", "c", "", 3, 0)}}, []string{"b-hi", "a-hi", "c"}},
		{"the loaded runner's own low job past MaxWait goes first too", choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute,
			Heads: []head{q("a-hi", "a", hi, 9, 0), q("a-lo", "a", lo, 1, 2*time.Minute)}}, []string{"a-lo", "a-hi"}},
		{"load options: another runner of the loaded model is a swap", choice{Loaded: []string{"m.d"}, Current: "m.d", MaxWait: time.Minute,
			Heads: []head{q("m.x", "m.x", "", 1, 0), q("m", "m.d", "", 4, 0), q("n", "n.d", "", 2, 0)}}, []string{"m", "m.x", "n"}},
		{"programs take turns, served longest ago first", choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute,
			Served: map[string]uint64{"a-p1": 7, "a-p2": 3},
			Heads:  []head{q("a-p1", "a", "", 1, 0), q("a-p2", "a", "", 2, 0), q("a-p3", "a", "", 9, 0), q("a-p4", "a", "", 8, 0)}},
			[]string{"a-p4", "a-p3", "a-p2", "a-p1"}},
		{"turns are per runner and class", choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute,
			Served: map[string]uint64{"a-p1": 7},
			Heads:  []head{q("a-p1", "a", "", 1, 0), q("b-p2", "b", "", 2, 0), q("a-p1-hi", "a", hi, 5, 0)}},
			[]string{"a-p1-hi", "a-p1", "b-p2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.in.Now = now
			if got := plan(tt.in); !slices.Equal(got, tt.want) {
				t.Fatalf("plan = %v, want %v", got, tt.want)
			}
		})
	}
}
