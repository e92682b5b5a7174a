package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// BenchmarkQueuedBacklog times how fast a backlog drains: b.N async chats are queued
// while the fake holds every call, then let go; ns/op is the drain time per job, with
// the target answering at once, so it is all foreman's. The per-stage trace gives, at
// p50, when each job reached each stage counted from the job before it reaching its final
// marker (its answer given): the worker's time between jobs and within one.
func BenchmarkQueuedBacklog(b *testing.B) {
	qb, st := newBenchBundle(b, withBroker(brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 << 20 })))
	body := chatBody("tiny-a", "bench", "false")
	post := func() string {
		resp, raw := qb.request(b, http.MethodPost, "/jobs", body)
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("POST /jobs: %d %s", resp.StatusCode, raw)
		}
		var j struct {
			ID string `json:"job_id"`
		}
		if err := json.Unmarshal(raw, &j); err != nil {
			b.Fatal(err)
		}
		return j.ID
	}
	waitDone := func(id string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		w, err := qb.Broker.Store.WatchJob(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Stop()
		j, _, err := qb.Broker.Store.Get(ctx, id)
		for ; err == nil; j, err = w.Next(ctx) {
			if j.State.Terminal() {
				return
			}
		}
		b.Fatalf("job %s not done: %v", id, err)
	}
	waitDone(post()) // warm: the model is loaded and known
	release := qb.Fake.Hold("tiny-a")
	post() // held at the target: the ones after it queue up
	ids := make([]string, 0, b.N)
	for range b.N {
		ids = append(ids, post())
	}
	b.ResetTimer()
	release()
	waitDone(ids[len(ids)-1])
	b.StopTimer()
	st.reportGaps(b, ids)
}

// reportGaps reports, for each worker stage, the p50 time from the previous job's final
// marker to this job reaching the stage (ms), over jobs run one after the other.
func (st *stageTrace) reportGaps(b *testing.B, ids []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	stages := []string{worker.StageFetched, worker.StageRecord, worker.StageCalled, worker.StageStarted, worker.StageFirstFrame, worker.StageFinal}
	var line strings.Builder
	for _, stage := range stages {
		var ds []time.Duration
		for i := 1; i < len(ids); i++ {
			prev, ok := st.at[ids[i-1]][worker.StageFinal]
			at, ok2 := st.at[ids[i]][stage]
			if ok && ok2 {
				ds = append(ds, at.Sub(prev))
			}
		}
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		ms := float64(ds[len(ds)/2]) / float64(time.Millisecond)
		b.ReportMetric(ms, "gap-"+stage+"-ms")
		fmt.Fprintf(&line, " %s=%.3f", stage, ms)
	}
	b.Logf("stage p50 from the previous job's final marker (ms):%s", line.String())
}

// BenchmarkJobsSubmit times POST /jobs over HTTP from one caller with the worker held
// (the fake holds the one job it runs), so only the submits touch the store: the
// gateway's part of a submit beside broker's BenchmarkSubmit.
func BenchmarkJobsSubmit(b *testing.B) {
	qb, _ := newBenchBundle(b, withBroker(brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 << 20 })))
	body := chatBody("tiny-a", "bench", "false")
	release := qb.Fake.Hold("tiny-a")
	defer release()
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		resp, raw := qb.request(b, http.MethodPost, "/jobs", body)
		if resp.StatusCode != http.StatusAccepted {
			b.Fatalf("POST /jobs: %d %s", resp.StatusCode, raw)
		}
		lat = append(lat, time.Since(start))
	}
	p50, p99 := percentiles(lat)
	b.ReportMetric(float64(p50)/float64(time.Millisecond), "p50-ms")
	b.ReportMetric(float64(p99)/float64(time.Millisecond), "p99-ms")
}
