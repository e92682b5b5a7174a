package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"slices"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

func batchChat(n int) string {
	return fmt.Sprintf(`{"model":"tiny-a","messages":[{"role":"user","content":"batch %d"}],"stream":false,"options":{"temperature":0,"num_predict":96}}`, n)
}

const interactiveChat = `{"model":"tiny-a","messages":[{"role":"user","content":"hello"}],"stream":false,"options":{"temperature":0,"num_predict":8}}`

// An interactive (high) chat queued behind 30 normal batch jobs of its model runs next,
// after the job already running. Its time to answer, through foreman and through Ollama
// alone (which serves its queue in arrival order), is logged for comparison; only the
// order is asserted.
func TestRealOllamaHighChatOvertakesBatch(t *testing.T) {
	url := ollamatest.RealOllama(t)
	rb := setupReal(t, url, "FOREMAN_TEST_OLLAMA_LOG")
	rb.call(t, interactiveChat) // load tiny-a
	var batch []string
	for i := range 30 {
		batch = append(batch, rb.submit(t, "tiny-a", broker.KindChat, batchChat(i)).ID)
	}
	rb.start(t, worker.Config{Inventory: rb.inv})
	rb.waitTaken(t, batch[0]) // a batch job runs, 29 wait
	start := time.Now()
	hi, err := rb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Priority: broker.PriorityHigh}, []byte(interactiveChat))
	if err != nil {
		t.Fatal(err)
	}
	queued := time.Now().UTC()
	done := rb.waitState(t, hi.ID, broker.StateDone)
	viaForeman := time.Since(start)
	var before, overtook int
	for _, id := range batch {
		j := rb.waitState(t, id, broker.StateDone)
		if j.StartedAt.Before(*done.StartedAt) {
			before++
			if j.StartedAt.After(queued) {
				overtook++
			}
		}
	}
	// A pick under way when the high job was queued may not have seen it yet; any later
	// one must take it.
	if overtook > 1 {
		t.Errorf("%d batch jobs started after the high chat was queued and before it, want at most 1", overtook)
	}
	viaOllama := ollamaAloneBehind(t, url, 30)
	t.Logf("high chat behind 30 batch jobs (one running): through foreman %v (%d batch jobs before it); Ollama alone %v", viaForeman.Round(time.Millisecond), before, viaOllama.Round(time.Millisecond))
}

// waitTaken polls job id until the worker has taken it (any state but queued).
func (rb *realBundle) waitTaken(t *testing.T, id string) {
	t.Helper()
	eventually(t, 30*time.Second, "job "+id+" taken", func() bool {
		j, _, err := rb.b.Store.Get(ctxT(t), id)
		return err == nil && j.State != broker.StateQueued
	})
}

// ollamaAloneBehind sends n batch chats straight to Ollama, then the interactive one once
// all n are written, and returns the interactive one's time to answer. The figure is for
// the log only: Ollama running n+1 generations on a loaded CPU may take minutes, so the
// calls get five, and a call that fails is logged, not a failure of the test (-1).
func ollamaAloneBehind(t *testing.T, base string, n int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var failed sync.Once
	fail := func(err error) { failed.Do(func() { t.Logf("Ollama alone not measured: %v", err) }) }
	var wrote, all sync.WaitGroup
	wrote.Add(n)
	post := func(ctx context.Context, body string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/chat", bytes.NewReader([]byte(body)))
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = bytes.NewBuffer(nil).ReadFrom(resp.Body)
		return err
	}
	for i := range n {
		all.Add(1)
		go func() {
			defer all.Done()
			once := sync.OnceFunc(wrote.Done)
			defer once()
			tctx := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { once() }})
			if err := post(tctx, batchChat(100+i)); err != nil {
				fail(err)
			}
		}()
	}
	wrote.Wait()
	start := time.Now()
	err := post(ctx, interactiveChat)
	took := time.Since(start)
	all.Wait()
	if err != nil {
		fail(err)
		return -1
	}
	return took
}

// A second program's 3 jobs queued behind a 24-job flood of one program run among the
// next jobs, taking turns with the flood, not after it.
func TestRealOllamaProgramsTakeTurns(t *testing.T) {
	rb := setupReal(t, ollamatest.RealOllama(t), "FOREMAN_TEST_OLLAMA_LOG")
	var ids []string
	sub := func(program string, n int) {
		j, err := rb.b.Store.Submit(ctxT(t), &broker.Job{ID: broker.NewID(), Model: "tiny-a", Kind: broker.KindChat, Program: program}, []byte(realChat("tiny-a", n, "")))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	for i := range 24 {
		sub("flood", i)
	}
	for i := range 3 {
		sub("few", 100+i)
	}
	rb.start(t, worker.Config{Inventory: rb.inv})
	type started struct {
		at  time.Time
		few bool
	}
	var order []started
	for i, id := range ids {
		j := rb.waitState(t, id, broker.StateDone)
		order = append(order, started{*j.StartedAt, i >= 24})
	}
	slices.SortFunc(order, func(a, b started) int { return a.at.Compare(b.at) })
	var places []int
	for i, s := range order {
		if s.few {
			places = append(places, i+1)
		}
	}
	t.Logf("places of the second program's 3 jobs among 27 (24-job flood first): %v", places)
	if !slices.Equal(places, []int{2, 4, 6}) {
		t.Errorf("places %v, want [2 4 6]", places)
	}
}
