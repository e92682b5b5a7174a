package worker

import (
	"fmt"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// An old normal backlog does not hold up a fresh high job until it is MaxWait old too:
// the aged class gets one pick per MaxWait, then yields to high.
func TestOrderOldBacklogYieldsToHigh(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var msgs []broker.QueuedMessage
	for i := range 50 {
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, "tiny-a", "", ""), Seq: uint64(i + 1),
			Enqueued: now.Add(-10 * time.Minute), JobID: fmt.Sprint(i), Model: "tiny-a"})
	}
	msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, "tiny-a", "", broker.PriorityHigh), Seq: 51,
		Enqueued: now, JobID: "high", Model: "tiny-a", Priority: broker.PriorityHigh})
	a := runnerKey(t, "tiny-a")
	cost := fixedCosts{"tiny-a": {20 * time.Second, time.Second}}
	position := func(c choice) int {
		for _, p := range order(c, 1, msgs, now, cost, nil) {
			if p.Msg.JobID == "high" {
				return p.Position
			}
		}
		t.Fatal("the high job is not in the order")
		return 0
	}
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 8, MaxWait: 5 * time.Minute}
	// Normal never had a pick: it is starved and gets one, then high runs.
	if got := position(c); got != 2 {
		t.Fatalf("high job at position %d, want 2 (after the starved class's one pick)", got)
	}
	// Normal had a pick within MaxWait: high runs first.
	c.ClassPicked[broker.PriorityNormal.Rank()] = now.Add(-time.Minute)
	if got := position(c); got != 1 {
		t.Fatalf("high job at position %d, want 1", got)
	}
}

// The aged class is served once per MaxWait: a low backlog older than MaxWait gets a
// pick whenever it had none for MaxWait, and yields to normal in between.
func TestPlanAgedClassOncePerMaxWait(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	heads := []head{
		{Token: "a-lo", Runner: "a", Class: broker.PriorityLow, Seq: 1, Enqueued: now.Add(-time.Hour)},
		{Token: "a", Runner: "a", Seq: 9, Enqueued: now},
	}
	c := choice{Loaded: []string{"a"}, Current: "a", MaxWait: time.Minute, Heads: heads, Now: now}
	c.ClassPicked[broker.PriorityLow.Rank()] = now.Add(-30 * time.Second)
	if got := plan(c)[0]; got != "a" {
		t.Fatalf("low picked %v ago: first %q, want the normal queue", 30*time.Second, got)
	}
	// At most once per MaxWait: a pick now, exactly MaxWait after the last one, would
	// be a second within MaxWait (as a job that waited exactly MaxWait is not late).
	c.ClassPicked[broker.PriorityLow.Rank()] = now.Add(-time.Minute)
	if got := plan(c)[0]; got != "a" {
		t.Fatalf("low picked %v ago: first %q, want the normal queue", time.Minute, got)
	}
	c.ClassPicked[broker.PriorityLow.Rank()] = now.Add(-2 * time.Minute)
	if got := plan(c)[0]; got != "a-lo" {
		t.Fatalf("low not picked for 2m: first %q, want the low queue", got)
	}
}

// The worker records each class's last pick when it takes a job: plan's starvation rule
// reads it.
func TestTookRecordsClassPick(t *testing.T) {
	t.Parallel()
	w := &Worker{cfg: Config{serverNow: time.Now}, served: map[string]uint64{}}
	before := time.Now()
	w.took(queueKey(t, "tiny-a", "", broker.PriorityLow))
	if got := w.classPicked[broker.PriorityLow.Rank()]; got.Before(before) {
		t.Fatalf("low's last pick %v, want the take's time", got)
	}
	for _, k := range []broker.Priority{broker.PriorityHigh, broker.PriorityNormal} {
		if got := w.classPicked[k.Rank()]; !got.IsZero() {
			t.Fatalf("%s's last pick %v, want none", k, got)
		}
	}
}

// A high flood of one runner keeps it current; the low class still gets its aged pick
// every MaxWait, and the oldest low job, of that very runner, runs at one of the first
// of them. It went last in its class (the starvation bound demoted Current in every
// class), behind another runner's low jobs arriving once a minute: it never ran while
// the flood lasted (3 simulated hours here).
func TestLowJobOfAFloodedRunnerRuns(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const maxWait, jobTime = 2 * time.Minute, 10 * time.Second
	type queue struct {
		runner string
		class  broker.Priority
		jobs   []head
	}
	queues := map[string]*queue{
		"a-hi": {runner: "a", class: broker.PriorityHigh},
		"a-lo": {runner: "a", class: broker.PriorityLow},
		"b-lo": {runner: "b", class: broker.PriorityLow},
	}
	now, seq := start, uint64(0)
	add := func(tok string) {
		seq++
		q := queues[tok]
		q.jobs = append(q.jobs, head{Token: tok, Runner: q.runner, Class: q.class, Seq: seq, Enqueued: now})
	}
	add("a-lo")
	firstLow := seq
	add("b-lo")
	lastB := now
	c := choice{Served: map[string]uint64{}, MaxConsecutive: 8, MaxWait: maxWait}
	var picks uint64
	for now.Sub(start) < 3*time.Hour {
		for len(queues["a-hi"].jobs) < 3 {
			add("a-hi")
		}
		if now.Sub(lastB) >= time.Minute {
			add("b-lo")
			lastB = now
		}
		c.Heads = c.Heads[:0]
		for tok, q := range queues {
			if len(q.jobs) == 0 {
				continue
			}
			c.Heads = append(c.Heads, q.jobs[0])
			if _, ok := c.Served[tok]; !ok {
				c.Served[tok] = joinedAt(picks)
			}
		}
		c.Now = now
		tok := plan(c)[0]
		q := queues[tok]
		picked := q.jobs[0]
		if q.jobs = q.jobs[1:]; len(q.jobs) == 0 {
			delete(c.Served, tok)
		}
		picks++
		c.Served[tok] = turnAt(picks)
		c.ClassPicked[q.class.Rank()] = now
		if q.runner == c.Current {
			c.Consecutive++
		} else {
			c.Current, c.Consecutive = q.runner, 1
		}
		c.CurrentClass, c.Loaded = q.class, []string{q.runner}
		if picked.Seq == firstLow {
			// The low class's first aged pick comes once the job waited MaxWait; the
			// next one MaxWait later at the latest.
			if waited := now.Sub(picked.Enqueued); waited > 2*maxWait+jobTime {
				t.Fatalf("the oldest low job ran after %v; want within two aged picks (%v)", waited, 2*maxWait+jobTime)
			}
			return
		}
		now = now.Add(jobTime)
	}
	t.Fatalf("the oldest low job, of the runner the high flood keeps current, never ran in %v", now.Sub(start))
}
