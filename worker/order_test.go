package worker

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// fixedCosts gives every model the same durations, or per-model ones.
type fixedCosts map[string][2]time.Duration

func (f fixedCosts) estimate(model string) (time.Duration, time.Duration) {
	d := f[model]
	return d[0], d[1]
}

func queueKey(t testing.TB, model, program string, class broker.Priority) string {
	t.Helper()
	k, err := broker.KeyOf(&broker.Job{Model: model, Program: program, Priority: class}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k.String()
}

func runnerKey(t testing.TB, model string) string {
	t.Helper()
	tok, err := broker.ModelToken(model)
	if err != nil {
		t.Fatal(err)
	}
	return broker.RunnerKey(tok, broker.DefaultLoadOptions)
}

// The expected start of each job is the running job's remainder plus, for each job
// ahead, a load when the runner changes and the model's mean run time.
func TestOrderETAs(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var msgs []broker.QueuedMessage
	for i, m := range []string{"tiny-a", "tiny-b", "tiny-a"} {
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, m, "", ""), Seq: uint64(i + 1), Enqueued: now, JobID: fmt.Sprint(i), Model: m})
	}
	a := runnerKey(t, "tiny-a")
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Hour}
	cost := fixedCosts{"tiny-a": {10 * time.Second, 3 * time.Second}, "tiny-b": {20 * time.Second, 5 * time.Second}}
	free := now.Add(4 * time.Second) // the running job's remainder
	got := order(c, 1, msgs, free, cost, nil)
	want := []struct {
		id    string
		start time.Duration
	}{
		{"0", 4 * time.Second},  // tiny-a is loaded: starts when the running job ends
		{"2", 14 * time.Second}, // drained before the swap
		{"1", 24 * time.Second}, // then tiny-b: its load (5s) is part of its run, not of its start
	}
	if len(got) != len(want) {
		t.Fatalf("got %d jobs", len(got))
	}
	for i, w := range want {
		if got[i].Msg.JobID != w.id || got[i].Position != i+1 || !got[i].Start.Equal(now.Add(w.start)) {
			t.Fatalf("#%d: job %s position %d start +%v, want job %s start +%v", i, got[i].Msg.JobID, got[i].Position, got[i].Start.Sub(now), w.id, w.start)
		}
	}
}

// The simulation ages jobs by the expected clock: a job of another model that will have
// waited past MaxWait by then goes before the loaded model's backlog, as the worker
// would switch at that time.
func TestOrderAgesByExpectedClock(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var msgs []broker.QueuedMessage
	add := func(id, model string) {
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, model, "", ""), Seq: uint64(len(msgs) + 1), Enqueued: now, JobID: id, Model: model})
	}
	add("b", "tiny-b")
	for i := range 5 {
		add(fmt.Sprint("a", i), "tiny-a")
	}
	a := runnerKey(t, "tiny-a")
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 100, MaxWait: 25 * time.Second}
	cost := fixedCosts{"tiny-a": {10 * time.Second, 0}, "tiny-b": {10 * time.Second, 0}}
	var ids []string
	for _, p := range order(c, 1, msgs, now, cost, nil) {
		ids = append(ids, p.Msg.JobID)
	}
	// a0 starts at 0s, a1 at 10s, a2 at 20s; at 30s b has waited 30s > 25s.
	if got, want := fmt.Sprint(ids), "[a0 a1 a2 b a3 a4]"; got != want {
		t.Fatalf("order %s, want %s", got, want)
	}
}

// A queue the worker leaves to another Mac (ADR-0066) joins the simulated picks only
// once its hold ends: the jobs the worker runs meanwhile go first, even though the held
// queue's runner is loaded and its jobs are older, and with nothing else to run the
// clock goes on to the hold's end. A hold that ends before the target is free changes
// nothing.
func TestOrderHeldQueueJoinsAtItsHoldsEnd(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var msgs []broker.QueuedMessage
	add := func(id, model string) {
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, model, "", ""), Seq: uint64(len(msgs) + 1), Enqueued: now, JobID: id, Model: model})
	}
	add("a0", "tiny-a")
	add("a1", "tiny-a")
	add("b0", "tiny-b")
	a := runnerKey(t, "tiny-a")
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 100, MaxWait: time.Hour}
	cost := fixedCosts{"tiny-a": {10 * time.Second, 0}, "tiny-b": {10 * time.Second, 0}}
	heldA := func(d time.Duration) map[string]time.Time {
		return map[string]time.Time{queueKey(t, "tiny-a", "", ""): now.Add(d)}
	}
	for _, tc := range []struct {
		name string
		held map[string]time.Time
		want string
	}{
		{"none", nil, "[a0@0s a1@10s b0@20s]"},
		{"ended before the target is free", heldA(0), "[a0@0s a1@10s b0@20s]"},
		{"ends while another queue runs", heldA(5 * time.Second), "[b0@0s a0@10s a1@20s]"},
		{"ends after the rest ran", heldA(45 * time.Second), "[b0@0s a0@45s a1@55s]"},
	} {
		var got []string
		for _, p := range order(c, 1, msgs, now, cost, tc.held) {
			got = append(got, fmt.Sprintf("%s@%v", p.Msg.JobID, p.Start.Sub(now)))
		}
		if fmt.Sprint(got) != tc.want {
			t.Errorf("%s: order %v, want %s", tc.name, got, tc.want)
		}
	}
}

// A held queue (ADR-0066) whose runner and class are those of a queue that ran empty
// before the hold's end joins that runner's picks all the same: its jobs are in the
// order, not dropped with the group the other queue left.
func TestOrderHeldQueueJoinsAGroupThatRanEmpty(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	alice, bob := queueKey(t, "tiny-a", "alice", ""), queueKey(t, "tiny-a", "bob", "")
	msgs := []broker.QueuedMessage{
		{Token: alice, Seq: 1, Enqueued: now, JobID: "alice0", Model: "tiny-a"},
		{Token: bob, Seq: 2, Enqueued: now, JobID: "bob0", Model: "tiny-a"},
		{Token: alice, Seq: 3, Enqueued: now, JobID: "alice1", Model: "tiny-a"},
		{Token: queueKey(t, "tiny-b", "", ""), Seq: 4, Enqueued: now, JobID: "b0", Model: "tiny-b"},
	}
	a := runnerKey(t, "tiny-a")
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 100, MaxWait: time.Hour}
	cost := fixedCosts{"tiny-a": {10 * time.Second, 0}, "tiny-b": {10 * time.Second, 0}}
	for _, tc := range []struct {
		name string
		end  time.Duration
		want string
	}{
		{"after the rest ran", 45 * time.Second, "[bob0@0s b0@10s alice0@45s alice1@55s]"},
		{"while another runner's job runs", 15 * time.Second, "[bob0@0s b0@10s alice0@20s alice1@30s]"},
		{"before another runner's job", 5 * time.Second, "[bob0@0s alice0@10s alice1@20s b0@30s]"},
	} {
		var got []string
		for _, p := range order(c, 1, msgs, now, cost, map[string]time.Time{alice: now.Add(tc.end)}) {
			got = append(got, fmt.Sprintf("%s@%v", p.Msg.JobID, p.Start.Sub(now)))
		}
		if fmt.Sprint(got) != tc.want {
			t.Errorf("%s: order %v, want %s", tc.name, got, tc.want)
		}
	}
}

// Durations start from the priors, take the first sample as it is, then move by a
// fraction of each new one.
func TestDurationsLearn(t *testing.T) {
	t.Parallel()
	d := newDurations(maxLearnedModels, func(string) bool { return true })
	if run, load := d.estimate("m"); run != PriorRunTime || load != PriorLoadTime {
		t.Fatalf("priors %v %v", run, load)
	}
	d.observeRun("m", 10*time.Second)
	d.observeLoad("m", 2*time.Second)
	if run, load := d.estimate("m"); run != 10*time.Second || load != 2*time.Second {
		t.Fatalf("after one sample %v %v", run, load)
	}
	d.observeRun("m", 20*time.Second)
	if run, _ := d.estimate("m"); run != 13*time.Second {
		t.Fatalf("after 10s and 20s: %v, want 13s", run)
	}
	if run, _ := d.estimate("other"); run != PriorRunTime {
		t.Fatalf("another model: %v", run)
	}
}

// orderEachQueue is order as plainly as it reads: plan sees every queue's head at each
// pick. order must agree with it.
func orderEachQueue(c choice, picks uint64, msgs []broker.QueuedMessage, free time.Time, cost costs, held map[string]time.Time) []planned {
	queues := map[string][]broker.QueuedMessage{}
	later := map[string][]broker.QueuedMessage{} // held queues, until their hold's end
	for _, m := range msgs {
		switch {
		case !broker.TokenValid(m.Token):
		case held[m.Token].After(free):
			later[m.Token] = append(later[m.Token], m)
		default:
			queues[m.Token] = append(queues[m.Token], m)
		}
	}
	c.Served = cloneServed(c.Served)
	for t := range later {
		delete(c.Served, t)
	}
	for t := range queues {
		if _, ok := c.Served[t]; !ok {
			c.Served[t] = joinedAt(picks)
		}
	}
	c.Loaded = slices.Clone(c.Loaded)
	var out []planned
	at := free
	for len(queues) > 0 || len(later) > 0 {
		if len(queues) == 0 {
			first := time.Time{}
			for t := range later {
				if first.IsZero() || held[t].Before(first) {
					first = held[t]
				}
			}
			if first.After(at) {
				at = first
			}
		}
		for t, q := range later {
			if !held[t].After(at) {
				queues[t], c.Served[t] = q, joinedAt(picks)
				delete(later, t)
			}
		}
		var heads []head
		for t, q := range queues {
			heads = append(heads, queueHead(t, q[0]))
		}
		c.Heads, c.Now = heads, at
		tok := plan(c)[0]
		m := queues[tok][0]
		out = append(out, planned{Msg: m, Position: len(out) + 1, Start: at})
		c.ClassPicked[queueHead(tok, m).Class.Rank()] = at
		r := runnerOf(tok)
		run, load := cost.estimate(m.Model)
		swap := !slices.Contains(c.Loaded, r)
		if swap {
			at = at.Add(load)
		}
		c.Loaded = withLoaded(c.Loaded, r)
		at = at.Add(run)
		if r == c.Current {
			c.Consecutive++
		} else if c.Current, c.Consecutive = r, 1; swap {
			c.StreakStart = out[len(out)-1].Start
		}
		c.CurrentClass = queueHead(tok, m).Class
		picks++
		c.Served[tok] = turnAt(picks)
		if queues[tok] = queues[tok][1:]; len(queues[tok]) == 0 {
			delete(queues, tok)
			delete(c.Served, tok)
		}
	}
	return out
}

// order, which gives plan one head per runner and class, orders random backlogs exactly
// as plan does given every queue's head.
func TestOrderMatchesPlanOfEveryQueue(t *testing.T) {
	t.Parallel()
	models := []string{"tiny-a", "tiny-b", "tiny-c"}
	classes := []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}
	programs := []string{"", "p", "q", "r"}
	optTokens := []string{broker.DefaultLoadOptions, broker.LoadOptionsToken([]byte(`{"options":{"num_ctx":256}}`))}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for seed := range 200 {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		var msgs []broker.QueuedMessage
		n := 1 + rng.IntN(80)
		for i := range n {
			model := models[rng.IntN(len(models))]
			k, err := broker.KeyOf(&broker.Job{Model: model, Program: programs[rng.IntN(len(programs))], Priority: classes[rng.IntN(3)]}, nil)
			if err != nil {
				t.Fatal(err)
			}
			k.Opts = optTokens[rng.IntN(2)]
			msgs = append(msgs, broker.QueuedMessage{Token: k.String(), Seq: uint64(i + 1), JobID: fmt.Sprint(i), Model: model,
				Enqueued: now.Add(time.Duration(i-n) * time.Duration(rng.IntN(20)) * time.Second)})
		}
		cur := runnerKey(t, models[rng.IntN(3)])
		c := choice{Loaded: []string{cur}, Current: cur, Consecutive: rng.IntN(4), CurrentClass: classes[rng.IntN(3)], MaxConsecutive: 1 + rng.IntN(5),
			MaxWait: time.Duration(1+rng.IntN(300)) * time.Second, Served: map[string]uint64{msgs[0].Token: turnAt(1)}}
		if rng.IntN(3) == 0 {
			c.Loaded = append(c.Loaded, runnerKey(t, models[rng.IntN(3)]))
		}
		if rng.IntN(3) > 0 { // the streak began a while ago (zero: long ago)
			c.StreakStart = now.Add(-time.Duration(rng.IntN(600)) * time.Second)
		}
		if rng.IntN(2) == 0 { // jobs cut short by the last stop: a queue's head, or a job behind it
			c.Resume = map[string]uint64{}
			for range 1 + rng.IntN(3) {
				m := msgs[rng.IntN(len(msgs))]
				c.Resume[m.Token] = m.Seq
			}
		}
		var held map[string]time.Time
		if rng.IntN(2) == 0 { // queues left to another Mac (ADR-0066), some until before now
			held = map[string]time.Time{}
			for range 1 + rng.IntN(3) {
				held[msgs[rng.IntN(len(msgs))].Token] = now.Add(time.Duration(rng.IntN(600)-60) * time.Second)
			}
		}
		cost := fixedCosts{"tiny-a": {7 * time.Second, 3 * time.Second}, "tiny-b": {20 * time.Second, 5 * time.Second}, "tiny-c": {time.Second, 0}}
		got, want := order(c, 1, msgs, now, cost, held), orderEachQueue(c, 1, msgs, now, cost, held)
		if len(got) != len(want) {
			t.Fatalf("seed %d: %d jobs, want %d", seed, len(got), len(want))
		}
		for i := range want {
			if got[i].Msg.JobID != want[i].Msg.JobID || !got[i].Start.Equal(want[i].Start) || got[i].Position != i+1 {
				t.Fatalf("seed %d, #%d: job %s at %v, want job %s at %v", seed, i, got[i].Msg.JobID, got[i].Start, want[i].Msg.JobID, want[i].Start)
			}
		}
	}
}

// A job cut short by the last stop (choice.Resume) goes first in the worker's pick and in
// the view's order, before the loaded runner's drain and higher classes, only while it
// heads its queue; then the rule goes on as before.
func TestResumedJobGoesFirst(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	high, low := queueKey(t, "tiny-a", "", broker.PriorityHigh), queueKey(t, "tiny-b", "bob", broker.PriorityLow)
	msgs := []broker.QueuedMessage{
		{Token: high, Seq: 1, Enqueued: now, JobID: "h1", Model: "tiny-a"},
		{Token: low, Seq: 2, Enqueued: now, JobID: "cut", Model: "tiny-b"},
		{Token: high, Seq: 3, Enqueued: now, JobID: "h2", Model: "tiny-a"},
		{Token: low, Seq: 4, Enqueued: now, JobID: "l2", Model: "tiny-b"},
	}
	a := runnerKey(t, "tiny-a")
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Hour, Resume: map[string]uint64{low: 2}}
	cost := fixedCosts{"tiny-a": {time.Second, time.Second}, "tiny-b": {time.Second, time.Second}}
	var ids []string
	for _, p := range order(c, 1, msgs, now, cost, nil) {
		ids = append(ids, p.Msg.JobID)
	}
	if want := []string{"cut", "h1", "h2", "l2"}; !slices.Equal(ids, want) {
		t.Errorf("order %v, want %v", ids, want)
	}
	if len(c.Resume) != 1 {
		t.Error("order changed the caller's Resume")
	}

	// The cut job's queue is not its group's first: another program's older job of the
	// same runner and class goes first in their rotation.
	alice, bob := queueKey(t, "tiny-a", "alice", ""), queueKey(t, "tiny-a", "bob", "")
	shared := []broker.QueuedMessage{
		{Token: alice, Seq: 1, Enqueued: now, JobID: "a1", Model: "tiny-a"},
		{Token: alice, Seq: 2, Enqueued: now, JobID: "a2", Model: "tiny-a"},
		{Token: bob, Seq: 3, Enqueued: now, JobID: "b1", Model: "tiny-a"},
	}
	ids = nil
	for _, p := range order(choice{MaxConsecutive: 8, MaxWait: time.Hour, Resume: map[string]uint64{bob: 3}}, 0, shared, now, cost, nil) {
		ids = append(ids, p.Msg.JobID)
	}
	if want := []string{"b1", "a1", "a2"}; !slices.Equal(ids, want) {
		t.Errorf("order in a shared group %v, want %v", ids, want)
	}

	c.Heads = []head{{Token: high, Seq: 1, Enqueued: now}, {Token: low, Seq: 2, Enqueued: now}}
	if got := plan(c); got[0] != low {
		t.Errorf("plan %v, want the resumed job's queue first", got)
	}
	c.Heads[1].Seq = 4 // the cut job left; the queue's next job has no such right
	if got := plan(c); got[0] != high {
		t.Errorf("plan %v after the resumed job left, want the high queue first", got)
	}
}

// withLoaded keeps the loaded runners most recently used first: the runner that ran goes
// first, and one that was not loaded takes the place of the least recently used one once
// as many are loaded as before (one, with none).
func TestWithLoaded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		loaded []string
		r      string
		want   []string
	}{
		{nil, "a", []string{"a"}},
		{[]string{"a"}, "a", []string{"a"}},
		{[]string{"a"}, "b", []string{"b"}},
		{[]string{"a", "b"}, "a", []string{"a", "b"}},
		{[]string{"a", "b"}, "b", []string{"b", "a"}},
		{[]string{"a", "b", "c"}, "b", []string{"b", "a", "c"}},
		{[]string{"a", "b"}, "c", []string{"c", "a"}},
	} {
		if got := withLoaded(slices.Clone(tc.loaded), tc.r); !slices.Equal(got, tc.want) {
			t.Errorf("withLoaded(%v, %s) = %v, want %v", tc.loaded, tc.r, got, tc.want)
		}
	}
}

// A queue whose hold (ADR-0066) ended by the time the target is free is the worker's
// from the first pick: it keeps its turn as the worker does (joinTurns keeps a turn it
// has), rather than rejoining the rotation as a queue whose hold ends later does. Here
// alice had the last pick, so bob's turn comes first.
func TestOrderQueueWhoseHoldEndedKeepsItsTurn(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	alice, bob := queueKey(t, "tiny-a", "alice", ""), queueKey(t, "tiny-a", "bob", "")
	msgs := []broker.QueuedMessage{
		{Token: alice, Seq: 1, Enqueued: now, JobID: "alice0", Model: "tiny-a"},
		{Token: bob, Seq: 2, Enqueued: now, JobID: "bob0", Model: "tiny-a"},
	}
	a := runnerKey(t, "tiny-a")
	const picks = 1
	c := choice{Loaded: []string{a}, Current: a, Consecutive: 1, MaxConsecutive: 8, MaxWait: time.Hour,
		Served: map[string]uint64{alice: turnAt(picks)}}
	cost := fixedCosts{"tiny-a": {10 * time.Second, 0}}
	for _, tc := range []struct {
		name string
		end  time.Time
	}{
		{"ended before the target is free", now.Add(-10 * time.Second)},
		{"ends as the target is free", now},
	} {
		var got []string
		for _, p := range order(c, picks, msgs, now, cost, map[string]time.Time{alice: tc.end}) {
			got = append(got, p.Msg.JobID)
		}
		if want := []string{"bob0", "alice0"}; !slices.Equal(got, want) {
			t.Errorf("%s: order %v, want %v", tc.name, got, want)
		}
	}
}

// The queue view's simulation places every group's head at each of its picks: 50,000
// picks over the 120 runners and classes of 40 models made 12 million map look-ups and
// copied 6 million heads, most of a 0.7 s view (BenchmarkQueueView). Its heads stand one
// for each runner and class, so placing them needs no map, and only the picked group's
// head changes from one pick to the next.
func TestOrderLooksUpNoMapPerHead(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	classes := []broker.Priority{broker.PriorityHigh, broker.PriorityNormal, broker.PriorityLow}
	const models, programs, n = 10, 4, 3000
	var msgs []broker.QueuedMessage
	cost := fixedCosts{}
	for i := range n {
		model := fmt.Sprintf("m%d", i%models)
		cost[model] = [2]time.Duration{time.Second, time.Second}
		msgs = append(msgs, broker.QueuedMessage{Token: queueKey(t, model, fmt.Sprintf("p%d", i%programs), classes[i%3]),
			Seq: uint64(i + 1), JobID: fmt.Sprint(i), Model: model, Enqueued: now.Add(time.Duration(i-n) * time.Second)})
	}
	cur := runnerKey(t, "m1")
	c := choice{Loaded: []string{cur}, Current: cur, MaxConsecutive: 8, MaxWait: 2 * time.Minute, Served: map[string]uint64{}}
	sc := planScratch{groupHeads: true}
	got := orderWith(&sc, c, 0, msgs, now, cost, nil)
	if len(got) != n {
		t.Fatalf("%d jobs ordered, want %d", len(got), n)
	}
	if sc.lookups != 0 {
		t.Errorf("%d map look-ups placing the heads of %d picks, want none", sc.lookups, n)
	}
	if groups := models * len(classes); sc.copied > n+groups {
		t.Errorf("%d heads copied for %d picks over %d groups, want at most %d (each group once, then the picked one)", sc.copied, n, groups, n+groups)
	}
	// The same order as the plan of every queue (TestOrderMatchesPlanOfEveryQueue).
	want := orderEachQueue(c, 0, msgs, now, cost, nil)
	for i := range want {
		if got[i].Msg.JobID != want[i].Msg.JobID || !got[i].Start.Equal(want[i].Start) {
			t.Fatalf("#%d: job %s at %v, want job %s at %v", i, got[i].Msg.JobID, got[i].Start, want[i].Msg.JobID, want[i].Start)
		}
	}
}
