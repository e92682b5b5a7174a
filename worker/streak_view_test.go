package worker_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// The queue view of an old backlog (every job two hours old by the server's clock, past
// MaxWait) predicts the streaks the worker runs: it reads the start of the running job's
// streak and advances it as the worker does. Counting the jobs' whole age, the view and
// the worker both swapped at every job; with the streak's start left out of the view's
// input, it would predict b1 (past MaxWait) where the worker drains tiny-a.
func TestQueueViewPredictsAnOldBacklogsStreaks(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 0)
	cfg := worker.WithServerClock(worker.Config{MaxConsecutive: 3, MaxWait: time.Hour}, func() time.Time { return time.Now().Add(2 * time.Hour) })
	w := tb.start(t, cfg)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	tagOf := map[string]string{}
	for i := range 4 {
		for _, m := range []string{"tiny-b", "tiny-a"} {
			tag := fmt.Sprintf("%s%d", m[len(m)-1:], i)
			body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]}`, m, tag)
			j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: m, Kind: broker.KindChat}, []byte(body))
			if err != nil {
				t.Fatalf("submit %s: %v", tag, err)
			}
			tagOf[j.ID] = tag
		}
	}
	v, err := w.QueueView(ctxT(t), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if v.Running != first.ID {
		t.Fatalf("running %q, want the held job %s", v.Running, first.ID)
	}
	var predicted []string
	for _, q := range v.Queued {
		predicted = append(predicted, tagOf[q.JobID])
	}
	// The held job is the first of tiny-a's streak: two more, then tiny-b's three, ...
	want := []string{"a0", "a1", "b0", "b1", "b2", "a2", "a3", "b3"}
	if !slices.Equal(predicted, want) {
		t.Fatalf("view predicts %v, want %v (streaks of 3)", predicted, want)
	}
	release()
	for id := range tagOf {
		tb.waitState(t, id, broker.StateDone)
	}
	var ran []string
	for _, c := range tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil && string(m[1]) != "question" {
			ran = append(ran, string(m[1]))
		}
	}
	if !slices.Equal(ran, want) {
		t.Fatalf("ran %v, want %v as the view predicted", ran, want)
	}
}
