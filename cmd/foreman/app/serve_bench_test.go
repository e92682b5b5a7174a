package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// BenchmarkServeSubmitRun measures the whole process as `foreman bench submit` sees it,
// in one process so that `go test -cpuprofile` profiles it: jobs posted to POST /jobs over
// HTTP from 1 and from 16 callers while the worker runs them against the fake Ollama.
// ns/op and submits/s time the posting alone; after it the benchmark waits, untimed, for
// the last job to be done and reports the NATS messages foreman's connection sent and
// received per job, submit and run.
func BenchmarkServeSubmitRun(b *testing.B) {
	for _, callers := range []int{1, 16} {
		b.Run(map[int]string{1: "callers=1", 16: "callers=16"}[callers], func(b *testing.B) {
			benchServeSubmitRun(b, callers)
		})
	}
}

func benchServeSubmitRun(b *testing.B, callers int) {
	fake := ollamatest.New(b)
	// Info is serve's default level: what it logs per job is part of the cost.
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := app.Start(context.Background(), app.Config{
		Addr: "127.0.0.1:0", OllamaURL: fake.URL, DataDir: b.TempDir(), MaxQueue: 1 << 30,
	}, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	})
	body, _ := json.Marshal(map[string]any{
		"model": "tiny-a", "stream": false, "options": map[string]any{"num_predict": 1},
		"messages": []map[string]string{{"role": "user", "content": "bench"}},
	})
	base := "http://" + a.Addr()
	post := func(hc *http.Client) string {
		resp, err := hc.Post(base+"/jobs", "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		var j struct {
			ID string `json:"job_id"`
		}
		if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&j) != nil {
			b.Fatalf("POST /jobs: %s", resp.Status)
		}
		return j.ID
	}
	// waitDone waits until job id is done: jobs of one model and priority run in order.
	waitDone := func(id string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		w, err := a.Store().WatchJob(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Stop()
		j, _, err := a.Store().Get(ctx, id)
		for ; err == nil; j, err = w.Next(ctx) {
			if j.State.Terminal() {
				return
			}
		}
		b.Fatalf("job %s not done: %v", id, err)
	}
	waitDone(post(http.DefaultClient)) // warm: the model is known, connections open
	before := a.Conn().Stats()
	b.ResetTimer()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		last string
		next = make(chan struct{})
	)
	go func() {
		for range b.N {
			next <- struct{}{}
		}
		close(next)
	}()
	for range callers {
		wg.Go(func() {
			hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer hc.CloseIdleConnections()
			for range next {
				id := post(hc)
				mu.Lock()
				if id > last {
					last = id
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "submits/s")
	waitDone(last)
	after := a.Conn().Stats()
	b.ReportMetric(float64(after.OutMsgs-before.OutMsgs)/float64(b.N), "natsout/op")
	b.ReportMetric(float64(after.InMsgs-before.InMsgs)/float64(b.N), "natsin/op")
}
