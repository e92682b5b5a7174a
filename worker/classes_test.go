package worker_test

import (
	"fmt"
	"regexp"
	"slices"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// queued is one job of an ordering test: tag names it in the order served.
type queued struct {
	tag, model string
	class      broker.Priority
	program    string
	options    string // the request's "options" object, "" for none
}

var tagRE = regexp.MustCompile(`"content":"(\w+)"`)

// runOrdered holds a first tiny-a job on the fake, queues jobs behind it, releases it and
// returns the tags of the queued jobs in the order the fake served them.
func runOrdered(t *testing.T, cfg worker.Config, jobs ...queued) []string {
	t.Helper()
	tb := setup(t)
	release := tb.fake.Hold("tiny-a")
	first := tb.chat(t, "tiny-a", 0)
	tb.start(t, cfg)
	if err := tb.fake.WaitStarted(waitCtx(t), "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, q := range jobs {
		body := fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]`, q.model, q.tag)
		if q.options != "" {
			body += `,"options":` + q.options
		}
		body += "}"
		j, err := tb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: q.model, Kind: broker.KindChat, Priority: q.class, Program: q.program}, []byte(body))
		if err != nil {
			t.Fatalf("submit %s: %v", q.tag, err)
		}
		ids = append(ids, j.ID)
	}
	release()
	tb.waitState(t, first.ID, broker.StateDone)
	for _, id := range ids {
		tb.waitState(t, id, broker.StateDone)
	}
	var got []string
	for _, c := range tb.fake.Calls() {
		if m := tagRE.FindSubmatch(c.Body); m != nil && string(m[1]) != "question" {
			got = append(got, string(m[1]))
		}
	}
	return got
}

// A high job for another model runs before the loaded model's normal backlog (one swap),
// and the backlog drains after it; low comes last.
func TestHighClassRunsFirst(t *testing.T) {
	t.Parallel()
	got := runOrdered(t, worker.Config{},
		queued{tag: "a1", model: "tiny-a"},
		queued{tag: "lowb", model: "tiny-b", class: broker.PriorityLow},
		queued{tag: "a2", model: "tiny-a"},
		queued{tag: "hib", model: "tiny-b", class: broker.PriorityHigh},
		queued{tag: "a3", model: "tiny-a"},
		queued{tag: "hia", model: "tiny-a", class: broker.PriorityHigh},
	)
	want := []string{"hia", "hib", "a1", "a2", "a3", "lowb"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v", got, want)
	}
}

// Within one model and class, programs take turns, each program's jobs in order: a flood
// of one program does not hold back another's few jobs.
func TestProgramsTakeTurns(t *testing.T) {
	t.Parallel()
	var jobs []queued
	for i := range 6 {
		jobs = append(jobs, queued{tag: fmt.Sprintf("flood%d", i), model: "tiny-a", program: "flood"})
	}
	jobs = append(jobs, queued{tag: "few0", model: "tiny-a", program: "few"}, queued{tag: "few1", model: "tiny-a", program: "few"},
		queued{tag: "anon0", model: "tiny-a"})
	got := runOrdered(t, worker.Config{}, jobs...)
	want := []string{"flood0", "few0", "anon0", "flood1", "few1", "flood2", "flood3", "flood4", "flood5"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v", got, want)
	}
}

// Jobs of one model with different load options are different runners: each value's jobs
// drain together, as models do.
func TestLoadOptionsDrainTogether(t *testing.T) {
	t.Parallel()
	got := runOrdered(t, worker.Config{},
		queued{tag: "c256a", model: "tiny-a", options: `{"num_ctx":256}`},
		queued{tag: "da", model: "tiny-a", options: `{"temperature":0}`},
		queued{tag: "c256b", model: "tiny-a", options: `{"num_ctx":256,"temperature":1}`},
		queued{tag: "db", model: "tiny-a"},
		queued{tag: "c128", model: "tiny-a", options: `{"num_ctx":128}`},
	)
	want := []string{"da", "db", "c256a", "c256b", "c128"}
	if !slices.Equal(got, want) {
		t.Fatalf("served %v, want %v", got, want)
	}
}
